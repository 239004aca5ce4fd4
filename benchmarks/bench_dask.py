"""The Lab-1 sweep on a Dask cluster vs labkit's local default, in the same run.

The report's 17 runs (``bench_sweep.plan``: batch sizes, max epochs, learning rates) run
three times, each into a fresh cache so every run really trains:

1. the local default: one worker process per core (``workers=None``);
2. a ``LocalCluster`` on 127.0.0.1 with 2 single-threaded worker processes (``cluster=``);
3. ``--workers 1 2 4``: a LocalCluster of each size, for the time-vs-workers points.

Printed: each wall time, the cluster's extra time per run vs the local default
((cluster - local) / runs; the target is < 1 s), and Dask's own round trip per task (a
trivial task, mapped 50 times). Cluster start-up is timed apart: a real cluster is started
once and outlives many sweeps.

    python benchmarks/bench_dask.py                          # 5% of the epochs on 100k rows
    python benchmarks/bench_dask.py --scale 1 --size 0       # the full sweep (slow: minutes per pass)
    python benchmarks/bench_dask.py --workers 1 2 4          # + time vs N workers
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_sweep import plan  # noqa: E402  (the report's three sweeps, epochs scaled)

from labkit import executor  # noqa: E402
from labkit.data import load_dataset  # noqa: E402
from labkit.sweep import sweep  # noqa: E402


def run_sweeps(data, sweeps, root: Path, **where) -> tuple[float, int]:
    """Every run of the three sweeps into a fresh cache under ``root``; (seconds, runs)."""
    start, runs = time.perf_counter(), 0
    for param, values, fixed in sweeps:
        res = sweep("jsc-tiny", data, param, values, cache_dir=root / param, progress=False, **fixed, **where)
        assert not res.table["cached"].any()
        runs += len(res.table)
    return time.perf_counter() - start, runs


def noop(x):
    return x


def start_cluster(n: int):
    from distributed import Client, LocalCluster
    t = time.perf_counter()
    lc = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address="127.0.0.1:0", silence_logs=50)
    client = Client(lc, set_as_default=False)
    client.wait_for_workers(n)
    return lc, client, time.perf_counter() - t


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=0.05, help="fraction of the report's epochs (default 0.05)")
    ap.add_argument("--size", type=int, default=100_000, help="rows of jsc-synthetic (0: all)")
    ap.add_argument("--workers", type=int, nargs="*", default=[], help="also time LocalClusters of these sizes")
    args = ap.parse_args(argv)
    data = load_dataset("jsc-synthetic", progress=False, **({"size": args.size} if args.size else {}))
    sweeps = plan(args.scale)
    print(f"jsc-tiny, Lab-1 sweep (epochs x{args.scale}) on {sum(data.sizes().values())} jsc-synthetic rows; "
          f"{executor.cpu_count()} cores", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.environ.pop(executor.CLUSTER_ENV, None)
        local_s, n_runs = run_sweeps(data, sweeps, tmp / "local")
        rows.append({"where": "local default (a process per core)", "workers": executor.cpu_count(),
                     "start s": "", "sweep s": local_s, "s per run": local_s / n_runs})
        print(f"local default: {local_s:.1f} s for {n_runs} runs", flush=True)

        lc, client, start_s = start_cluster(2)
        try:
            cluster_s, _ = run_sweeps(data, sweeps, tmp / "cluster2", cluster=client)
            t = time.perf_counter()
            list(executor.map_unordered(noop, range(50), cluster=client))
            trip = (time.perf_counter() - t) / 50
        finally:
            client.close()
            lc.close()
        rows.append({"where": "LocalCluster", "workers": 2, "start s": start_s, "sweep s": cluster_s,
                     "s per run": cluster_s / n_runs})
        print(f"LocalCluster(2): {cluster_s:.1f} s (+{start_s:.1f} s start)", flush=True)

        for n in args.workers:
            lc, client, start_s = start_cluster(n)
            try:
                secs, _ = run_sweeps(data, sweeps, tmp / f"cluster{n}x", cluster=client)
            finally:
                client.close()
                lc.close()
            rows.append({"where": "LocalCluster", "workers": n, "start s": start_s, "sweep s": secs,
                         "s per run": secs / n_runs})
            print(f"LocalCluster({n}): {secs:.1f} s", flush=True)

    print()
    print(tabulate(rows, headers="keys", tablefmt="github", floatfmt=".2f"))
    extra = (cluster_s - local_s) / n_runs
    print(f"\ncluster vs local default: {cluster_s / local_s:.2f}x the wall time; "
          f"{extra:+.2f} s per run ({'within' if extra < 1 else 'OVER'} the 1 s target); "
          f"Dask round trip per trivial task: {trip * 1000:.0f} ms")


if __name__ == "__main__":
    main()
