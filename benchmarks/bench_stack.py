"""K runs stacked into one model (labkit.stack) vs the same K runs trained one after another.

For jsc-tiny and jsc-custom at batch sizes 128 and 1024, on ONE CPU thread:

* separate: ``labkit.train`` (the single-run fast path) for runs with learning rates
  1e-3 x 1.5^k, k = 0..7, one after another; "K separate runs" is the sum of the first K;
* stacked: ``labkit.stack.train_stacked`` with the same first K runs, for K = 1, 2, 4, 6, 8.

Both do everything a run does (Lightning set-up, validation every epoch, checkpoints). We print
samples/s per model (training rows x epochs / seconds), the samples/s of all K models together,
and the ratio of the two ways' wall times. Every measurement is repeated ``--repeats`` times,
interleaved, and the fastest kept (the machine may be shared). Target (issue 13): K = 6 stacked
at least 3x the throughput of 6 separate runs.

    python benchmarks/bench_stack.py                      # 200k rows, 2 epochs, 2 repeats
    python benchmarks/bench_stack.py --rows 50000 --repeats 1 --models jsc-tiny   # a quick look
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
from tabulate import tabulate

from labkit.data import load_dataset
from labkit.stack import train_stacked
from labkit.runtime import quiet_lightning
from labkit.training import train

KS = (1, 2, 4, 6, 8)


def lrs(k: int) -> list[float]:
    return [1e-3 * 1.5 ** j for j in range(k)]


def separate_seconds(model, data, batch, epochs, root: Path) -> list[float]:
    """Seconds of each of max(KS) single runs, one after another."""
    out = []
    for j, lr in enumerate(lrs(max(KS))):
        start = time.perf_counter()
        train(model, data, data=data, max_epochs=epochs, batch_size=batch, learning_rate=lr, num_threads=1,
              project=root / f"single{j}", progress=False, verbose=False)
        out.append(time.perf_counter() - start)
    return out


def stacked_seconds(model, data, batch, epochs, k: int, root: Path) -> float:
    start = time.perf_counter()
    train_stacked(model, data, [{"learning_rate": lr} for lr in lrs(k)], data=data, max_epochs=epochs,
                  batch_size=batch, num_threads=1, projects=[root / f"stack{k}-{j}" for j in range(k)])
    return time.perf_counter() - start


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200_000, help="rows of jsc-synthetic (default 200k)")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2, help="interleaved repeats; the fastest is kept")
    ap.add_argument("--models", nargs="+", default=["jsc-tiny", "jsc-custom"])
    ap.add_argument("--batch-sizes", nargs="+", type=int, default=[128, 1024])
    args = ap.parse_args()
    torch.set_num_threads(1)
    quiet_lightning()
    data = load_dataset("jsc-synthetic", size=args.rows, progress=False)
    n = len(data.y_train)
    load0 = os.getloadavg()[0]
    print(f"data: {data.info.label}, {args.rows:,} rows ({n:,} training rows), {args.epochs} epochs per run, "
          f"1 thread; {os.cpu_count()} CPU core(s), load average at start {load0:.2f}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-stack-") as tmp:
        root = Path(tmp)
        for model in args.models:
            for batch in args.batch_sizes:
                singles, stacks = None, {}
                for _ in range(args.repeats):  # interleaved: a change of load hits both ways alike
                    s = separate_seconds(model, data, batch, args.epochs, root)
                    singles = s if singles is None else [min(a, b) for a, b in zip(singles, s)]
                    for k in KS:
                        t = stacked_seconds(model, data, batch, args.epochs, k, root)
                        stacks[k] = min(stacks.get(k, t), t)
                for k in KS:
                    sep = sum(singles[:k])
                    samples = n * args.epochs
                    rows.append({"model": model, "batch": batch, "K": k,
                                 "stacked s": round(stacks[k], 2), "separate s": round(sep, 2),
                                 "samples/s per model": round(samples / stacks[k]),
                                 "all K models, samples/s": round(k * samples / stacks[k]),
                                 "separate, samples/s": round(k * samples / sep),
                                 "ratio": round(sep / stacks[k], 2)})
                    print(f"{model} batch {batch} K={k}: stacked {stacks[k]:.2f} s, {k} separate {sep:.2f} s "
                          f"-> {sep / stacks[k]:.2f}x", flush=True)
    print()
    print(tabulate(rows, headers="keys", tablefmt="github"))
    k6 = [r for r in rows if r["K"] == 6]
    for r in k6:
        print(f"{r['model']} batch {r['batch']}: K=6 stacked is {r['ratio']:.2f}x 6 separate runs "
              f"(target >= 3x: {'met' if r['ratio'] >= 3 else 'NOT met'})")
    print(f"load average at start {load0:.2f}, at the end {os.getloadavg()[0]:.2f} ({os.cpu_count()} cores)")


if __name__ == "__main__":
    main()
