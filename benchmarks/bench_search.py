"""Mixed-precision search speed: trials per minute for notebook 07's search, and where a trial's time goes.

The search is ``configs/lab3_search_jsc_custom.toml`` (jsc-custom, three Linear layers, TPE,
accuracy vs BitOPs) on the full-size ``jsc-synthetic`` stand-in, evaluated on the whole
validation split (66,400 rows). It runs in a fresh output folder, so every trial is evaluated.
Printed for 1 and 2 worker processes: trials/min, and the share of the time spent tracing
(once per search), quantising, evaluating, counting BitOPs, and in the sampler + SQLite store.

The baseline, measured in the same run, is a trial as MASE's search does it: the graph traced
and its metadata recomputed every trial, evaluation through a DataLoader (batch 512) under
``no_grad``, and ``study.optimize`` on a plain SQLite storage.

    python benchmarks/bench_search.py                 # 200 trials per setting (target: >= 120 trials/min on 2 cores)
    python benchmarks/bench_search.py --trials 50     # a quicker look
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def baseline(data, config, trials: int) -> float:
    """MASE-style trials per minute: trace + metadata + quantise per trial, DataLoader evaluation."""
    import optuna
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from labkit.graph import MaseGraph
    from labkit.models import get_model
    from labkit.passes.metadata import add_common_metadata_analysis_pass, init_metadata_analysis_pass
    from labkit.passes.quantize import quantize_transform_pass
    from labkit.precision_search import average_bitwidth, build_search_space, check_search_config

    checked = check_search_config(config["search"])
    torch.manual_seed(0)
    model = get_model("jsc-custom", data.info).eval()
    x, y = data.split("val")

    def graph():
        mg = MaseGraph(model=model)
        mg, _ = init_metadata_analysis_pass(mg, None)
        mg, _ = add_common_metadata_analysis_pass(mg, {"dummy_in": {"x": x[:8]}})
        return mg
    space = build_search_space(graph(), checked)
    dists = space.distributions()

    def objective(trial):
        params = {k: trial.suggest_categorical(k, d.choices) for k, d in dists.items()}
        q, _ = quantize_transform_pass(graph(), space.to_pass_args(params))
        correct = 0
        with torch.no_grad():
            for xb, yb in DataLoader(TensorDataset(x, y), batch_size=512):
                correct += int((q.model(xb).argmax(1) == yb).sum())
        return correct / len(y), average_bitwidth(q.model)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        study = optuna.create_study(storage=f"sqlite:///{tmp}/study.db", directions=["maximize", "minimize"],
                                    sampler=optuna.samplers.TPESampler(seed=0))
        start = time.perf_counter()
        study.optimize(objective, n_trials=trials)
        return trials / (time.perf_counter() - start) * 60


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=200)
    ap.add_argument("--baseline-trials", type=int, default=20)
    args = ap.parse_args()

    import torch
    from labkit.data import load_dataset
    from labkit.precision_search import search

    torch.set_num_threads(1)
    data = load_dataset("jsc-synthetic", progress=False)
    config = tomllib.loads((ROOT / "configs" / "lab3_search_jsc_custom.toml").read_text())
    config.update(dataset="jsc-synthetic")
    config.pop("load_name")  # an untrained jsc-custom: a trial's cost does not depend on the weights
    print(f"jsc-custom on full-size jsc-synthetic: {len(data.split('val')[1]):,} validation rows per trial; "
          f"{os.cpu_count()} CPU cores; {args.trials} trials per setting\n")

    rows = []
    for workers in (1, 2):
        with tempfile.TemporaryDirectory() as tmp:
            os.environ["LABKIT_OUTPUT_DIR"] = tmp
            start = time.perf_counter()
            r = search(config, data=data, workers=workers, overrides={"n_trials": args.trials},
                       progress=False, verbose=False)
            wall = time.perf_counter() - start
        s = r.stats
        n = s["evaluated"] + s["reused"]
        busy = sum(s["trial_seconds"].values())
        # worker time in the trials themselves; the rest of the search's wall time x workers is the
        # main process's sampler, SQLite writes, task hand-over and start-up (workers and tracing)
        total = s["seconds"] * s["workers"]
        parts = {"tracing (once)": s["trace_s"], "quantising": s["trial_seconds"]["quantise_s"],
                 "evaluating": s["trial_seconds"]["evaluate_s"], "BitOPs + bit widths": s["trial_seconds"]["hw_s"],
                 "sampler, storage, hand-over": max(0.0, total - busy)}
        share = ", ".join(f"{k} {100 * v / (total + s['trace_s']):.0f}%" for k, v in parts.items())
        rate = n / s["seconds"] * 60
        rows.append(rate)
        print(f"{workers} worker(s): {n} trials ({s['evaluated']} evaluated, {s['reused']} repeats reused) in "
              f"{s['seconds']:.1f} s = {rate:.0f} trials/min (whole call {wall:.1f} s)")
        print(f"   per evaluated trial: quantise {1000 * parts['quantising'] / max(1, s['evaluated']):.1f} ms, "
              f"evaluate {1000 * parts['evaluating'] / max(1, s['evaluated']):.1f} ms, "
              f"BitOPs {1000 * parts['BitOPs + bit widths'] / max(1, s['evaluated']):.1f} ms")
        print(f"   share of the time: {share}")

    base = baseline(data, config, args.baseline_trials)
    print(f"\nbaseline (MASE-style trial: trace + metadata per trial, DataLoader 512, optimize on SQLite): "
          f"{base:.0f} trials/min")
    print(f"labkit: {rows[0] / base:.1f}x the baseline with 1 worker, {rows[1] / base:.1f}x with 2; "
          f"target >= 120 trials/min on 2 cores: {'met' if max(rows) >= 120 else 'MISSED'} ({max(rows):.0f})")


if __name__ == "__main__":
    main()
