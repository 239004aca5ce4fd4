"""The lab report's whole Lab-1 sweep, timed: labkit sweeps run by run, with shared prefixes, planned (prefixes + stacks), vs the standard recipe.

The report trains jsc-tiny 17 times from three bash loops (MASE defaults: batch size 128,
learning rate 1e-5, where not swept):

* batch sizes 64, 128, 256, 512, 1024, 2048 (10 epochs each);
* max epochs 10, 20, 50, 100, 200;
* learning rates 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1 (10 epochs each).

Here they run on full-size ``jsc-synthetic``, spread over the CPU cores, into a fresh cache
(so every run really trains), one mode after another: run by run (three
:func:`labkit.sweep.sweep` calls, ``share_prefixes=False, stack_runs=False``), and twice as
ONE :func:`labkit.sweep.sweeps` call for all three, planned together by :mod:`labkit.schedule`:
"shared" with shared prefixes only (:mod:`labkit.prefix`: the max-epochs runs are one training to
200 epochs; bit for bit the per-run results) and "planned" with stacks too. In both the run all three sweeps contain, batch 128 / lr 1e-5 / 10 epochs,
trains once, as a prefix of the 200-epoch chain; the other runs, the learning-rate ones as one
stacked model (:mod:`labkit.stack`) when planned, train on the other worker meanwhile. We check the
results against run by run
(shared prefixes: identical; stacks: equal to float rounding, the largest difference printed).
We also compute what the 200-epoch run at batch 128 costs alone at full size from its measured
time per step: it is one serial chain of steps, so no plan can finish the sweep sooner. We print the
wall time of each sweep and of each run, and next to it the time the standard recipe
(Lightning + ``DataLoader(TensorDataset)`` + per-step torchmetrics logging, from
``bench_train.py``) would take for the same runs one after another, extrapolated from one
measured epoch at each batch size. (That estimate leaves out validation and checkpoints,
which the labkit runs include, so it flatters the standard recipe.)

    python benchmarks/bench_sweep.py                 # the real thing (target, issue 13: <= 4 min on 2 cores, quiet)
    python benchmarks/bench_sweep.py --scale 0.02    # 2% of the rows and epochs: a quick check
    python benchmarks/bench_sweep.py --reuse         # keep the cache in outputs/bench/ and reuse it
    python benchmarks/bench_sweep.py --modes per-run shared   # the modes to time (default: all three)
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from tabulate import tabulate
from torch.utils.data import DataLoader, TensorDataset

from bench_train import SameOrderSampler, StandardLit, trainer  # the standard recipe, as benchmarked there
from labkit.data import load_dataset
from labkit.data.synthetic import DEFAULT_SIZE
from labkit.models import get_model
from labkit.paths import outputs_dir
from labkit.sweep import sweep, sweeps
from labkit.runtime import quiet_lightning

FIXED = {"batch_size": 128, "learning_rate": 1e-5, "max_epochs": 10}  # MASE's defaults, 10 epochs
SWEEPS = [
    ("batch_size", [64, 128, 256, 512, 1024, 2048]),
    ("max_epochs", [10, 20, 50, 100, 200]),
    ("learning_rate", [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1]),
]


def scaled_epochs(epochs: int, scale: float) -> int:
    return max(1, math.ceil(epochs * scale))


def plan(scale: float) -> list[tuple[str, list, dict]]:
    """The three sweeps, with epochs scaled (duplicates after scaling dropped)."""
    out = []
    for param, values in SWEEPS:
        fixed = {k: v for k, v in FIXED.items() if k != param}
        if param == "max_epochs":
            values = sorted({scaled_epochs(v, scale) for v in values})
        else:
            fixed["max_epochs"] = scaled_epochs(fixed["max_epochs"], scale)
        out.append((param, values, fixed))
    return out


MODES = {"per-run": {"share_prefixes": False, "stack_runs": False},
         "shared": {"share_prefixes": True, "stack_runs": False},
         "planned": {"share_prefixes": True, "stack_runs": True}}


def run_mode(mode: str, data, workers: int, root: Path, scale: float) -> dict:
    """The Lab-1 sweep in one mode: ``{param: SweepResult}``. Shared and planned: the three sweeps
    as one :func:`labkit.sweep.sweeps` call (the run all three share trains once, the max-epochs
    chain and the other runs share the workers; its plan is printed), with shared prefixes only
    (bit for bit the per-run results) or with stacks too; per-run: one ``sweep()`` per setting."""
    if mode != "per-run":
        fixed = {**FIXED, "max_epochs": scaled_epochs(FIXED["max_epochs"], scale)}
        grid = {param: values for param, values, _ in plan(scale)}
        return sweeps("jsc-tiny", data, grid, data=data, workers=workers, root=root, **MODES[mode], **fixed)
    return {param: sweep("jsc-tiny", data, param, values, data=data, workers=workers, cache_dir=root / param,
                         name=f"lab1-{param}", **MODES[mode], **fixed) for param, values, fixed in plan(scale)}


def same_results(a, b) -> bool:
    """The same runs with the same histories and test accuracies (wall times aside)."""
    cols = ["epochs", "best_val_acc", "final_val_acc", "test_acc"]
    return (a.table[cols].equals(b.table[cols]) and a.histories.keys() == b.histories.keys()
            and all(a.histories[k].equals(b.histories[k]) for k in a.histories))


def largest_difference(a, b) -> float:
    """The largest absolute difference in any accuracy or history value (NaN if the runs differ in shape)."""
    cols = ["best_val_acc", "final_val_acc", "test_acc"]
    if not a.table["epochs"].equals(b.table["epochs"]) or a.histories.keys() != b.histories.keys():
        return math.nan
    worst = float((a.table[cols] - b.table[cols]).abs().max().max())
    for k in a.histories:
        ha, hb = a.histories[k], b.histories[k]
        if ha.shape != hb.shape:
            return math.nan
        worst = max(worst, float((ha - hb).abs().max().max()))
    return worst


def standard_epoch_seconds(data, batch_size: int, seed: int = 0) -> float:
    """One training epoch of jsc-tiny with the standard recipe (no validation), in seconds."""
    x, y = data.split("train")
    torch.manual_seed(seed)
    model = get_model("jsc-tiny", data.info)
    loader = DataLoader(TensorDataset(x, y), batch_size=batch_size, sampler=SameOrderSampler(len(y), seed))
    with tempfile.TemporaryDirectory() as logdir:
        start = time.perf_counter()
        trainer(1, logdir).fit(StandardLit(model, 1e-5), train_dataloaders=loader)
        return time.perf_counter() - start


def chain(results, mode, data, scale):
    """The full-size 200-epoch batch-128 run alone, from this run's measured time per step."""
    res = results.get((mode, "max_epochs"))
    if res is None:
        return
    longest = res.table.loc[res.table["max_epochs"].idxmax()]
    steps_here = longest["epochs"] * math.ceil(data.sizes()["train"] / FIXED["batch_size"])
    per_step = longest["wall_time_s"] / steps_here  # training steps plus their share of validation
    full_train = round(DEFAULT_SIZE * data.sizes()["train"] / sum(data.sizes().values()))
    full_steps = 200 * math.ceil(full_train / FIXED["batch_size"])
    print(f"the 200-epoch batch-128 run is one chain of steps: measured {per_step * 1e3:.3f} ms per step here "
          f"(its {int(longest['epochs'])} epochs, validation included) -> at full size {full_steps:,} steps = "
          f"{full_steps * per_step / 60:.1f} min on its own"
          + (" (full size measured directly above)" if scale == 1.0 else ""))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of rows and epochs (default 1: the full sweep)")
    ap.add_argument("--workers", type=int, default=None, help="processes (default: one per CPU core)")
    ap.add_argument("--reuse", action="store_true", help="cache in outputs/bench/ and reuse finished runs")
    ap.add_argument("--no-standard", dest="standard", action="store_false", help="skip the standard-recipe estimate")
    ap.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES),
                    help="modes to time, in this order (default: all; ratios against per-run)")
    args = ap.parse_args()
    if not 0 < args.scale <= 1:
        raise SystemExit(f"--scale must be in (0, 1], got {args.scale}")
    torch.set_num_threads(1)
    quiet_lightning()

    size = max(5000, round(DEFAULT_SIZE * args.scale))
    data = load_dataset("jsc-synthetic", size=size, progress=True)
    workers = args.workers or os.cpu_count() or 1
    load0 = os.getloadavg()[0]
    print(f"data: {data.info.label}, {size:,} rows, splits {data.sizes()}; {workers} worker process(es), "
          f"{os.cpu_count()} CPU core(s); load average at start {load0:.2f}")

    root_ctx = None
    if args.reuse:
        root = outputs_dir() / "bench" / f"lab1-sweep-{size}"
    else:
        root_ctx = tempfile.TemporaryDirectory(prefix="bench-sweep-")
        root = Path(root_ctx.name)

    modes = args.modes
    rows, sweep_times, results = [], [], {}
    for mode in modes:
        for param, res in run_mode(mode, data, workers, root / mode, args.scale).items():
            results[mode, param] = res
        if mode != "per-run":  # one call: its sweeps' elapsed_s is the whole call's
            sweep_times.append(("all three", mode, sum(len(v) for _, v, _ in plan(args.scale)),
                                results[mode, "batch_size"].elapsed_s))
        else:
            sweep_times += [(p, mode, len(v), results[mode, p].elapsed_s) for p, v, _ in plan(args.scale)]
    for param, values, fixed in plan(args.scale):
        for r in results[modes[-1], param].table.itertuples():
            setting = {**fixed, param: getattr(r, param)}
            rows.append({"sweep": param, "batch_size": setting["batch_size"],
                         "learning_rate": setting["learning_rate"], "max_epochs": setting["max_epochs"],
                         "epochs": r.epochs, "test_acc": r.test_acc, "labkit_s": r.wall_time_s, "cached": r.cached})
    table = pd.DataFrame(rows)
    mode_total = {m: sum(t for _, mm, _, t in sweep_times if mm == m) for m in modes}
    total = mode_total[modes[-1]]
    load1 = os.getloadavg()[0]

    if args.standard:
        print("measuring one epoch of the standard recipe at each batch size ...", flush=True)
        epoch_s = {int(b): standard_epoch_seconds(data, int(b)) for b in sorted(table["batch_size"].unique())}
        table["standard_s (est.)"] = [epoch_s[b] * e for b, e in zip(table["batch_size"], table["max_epochs"])]
        print(tabulate([(b, f"{s:.2f}") for b, s in epoch_s.items()],
                       headers=["batch size", "standard recipe: s/epoch"], tablefmt="github"))

    print()
    print(tabulate(table, headers="keys", tablefmt="github", showindex=False, floatfmt=".4g"))
    print()
    print(tabulate([(p, m, n, f"{t:.1f}", f"{t / n:.1f}") for p, m, n, t in sweep_times],
                   headers=["sweep", "mode", "runs", "wall s", "wall s per run"], tablefmt="github"))
    n = len(table)
    print(f"\nlabkit ({modes[-1]}): {n} runs in {total:.1f} s wall ({total / 60:.1f} min; {total / n:.1f} s per run) "
          f"with {workers} worker(s); the runs' own training time adds up to {table['labkit_s'].sum():.1f} s")
    if "per-run" in modes:
        per_run = mode_total["per-run"]
        for mode in (m for m in modes if m != "per-run"):
            pairs = [(results["per-run", p], results[mode, p]) for p, _, _ in plan(args.scale)]
            same = all(same_results(a, b) for a, b in pairs)
            diff = max(largest_difference(a, b) for a, b in pairs)
            print(f"{mode}: {mode_total[mode]:.1f} s vs {per_run:.1f} s run by run -> "
                  f"{per_run / mode_total[mode]:.2f}x faster; results identical (histories, test accuracies): "
                  f"{'yes' if same else f'no, largest difference {diff:.2g} (float rounding when below 1e-4)'}")
    chain(results, modes[-1], data, args.scale)
    if args.standard:
        std = table["standard_s (est.)"].sum()
        print(f"standard recipe, one run after another (estimated): {std:.1f} s ({std / 60:.1f} min; "
              f"{std / n:.1f} s per run) -> labkit is {std / total:.1f}x faster in wall time, "
              f"{std / table['labkit_s'].sum():.1f}x per run")
    print(f"load average: {load0:.2f} at start, {load1:.2f} after the sweeps "
          f"(other work on the machine slows both)")
    if args.scale == 1.0:
        for mode in modes:
            t = mode_total[mode]
            verdict = "meets" if t <= 4 * 60 else "misses"
            print(f"target: the full sweep in <= 4 min on this machine, quiet -> {mode}: {verdict} it ({t / 60:.1f} min)")
    if root_ctx is not None:
        root_ctx.cleanup()


if __name__ == "__main__":
    main()
