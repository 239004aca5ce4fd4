"""What each notebook costs: quick mode measured, full mode estimated from measured epochs.

    python benchmarks/notebook_cost.py                # measure quick runs and the epoch times
    python benchmarks/notebook_cost.py --skip-quick   # only the full-mode estimate

Quick mode: every notebook is executed with papermill (``quick=True``) and timed.

Full mode would take too long to run as a check, so it is *estimated*: the training it does
(the runs each notebook starts in full mode, listed in FULL_TRAINING below from the notebooks'
parameters) times the seconds per epoch measured here, by training one full-size epoch
(``jsc-synthetic``, 597,600 training rows; validation and checkpoint included) for each model
and batch size used. Sweeps spread their runs over the cores, so their epochs are divided by
the number of workers. Evaluation, plotting and start-up are left out, so the estimate is a
lower bound; the quick-mode time (which is mostly those) is added to cover them.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# (notebook, model, batch size, epochs, runs in parallel over `workers` processes?)
FULL_TRAINING = {
    "01_getting_started": [("jsc-tiny", 256, 10, False), ("jsc-tiny", 256, 10, False)],   # CLI + API
    "02_hyperparameter_sweeps": (
        [("jsc-tiny", b, 10, True) for b in (64, 128, 256, 512, 1024, 2048)]             # batch sizes
        + [("jsc-tiny", 128, e, True) for e in (10, 20, 50, 100, 200)] * 2                 # epochs, two lrs
        + [("jsc-tiny", 128, 10, True)] * 6                                                # learning rates
        + [("jsc-tiny", b, 10, True) for b in (64, 512, 2048) for _ in range(4)]),         # lr x batch grid
    "03_custom_network": [("jsc-tiny", 128, 20, False), ("jsc-custom", 128, 20, False)],
    "04_graphs_and_analysis_passes": [],      # reuses notebook 03's checkpoints
    "05_quantisation": [("jsc-custom", 256, 3, False)] * 14,   # QAT: 7 widths x 2 formats, 3 epochs each
    "06_flops_and_bitops": [],                # reuses notebook 05's cached comparison
}


def seconds_per_epoch(model: str, batch: int, data) -> float:
    from labkit.training import train
    start = time.perf_counter()
    train(model, data, max_epochs=1, batch_size=batch, learning_rate=1e-3, progress=False, verbose=False,
          project=f"bench-epoch-{model}-{batch}")
    return time.perf_counter() - start


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skip-quick", action="store_true", help="do not execute the notebooks in quick mode")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="sweep worker processes (default: cores)")
    args = ap.parse_args()
    os.environ.setdefault("LABKIT_OUTPUT_DIR", tempfile.mkdtemp(prefix="labkit-bench-cost-"))
    os.environ.setdefault("LABKIT_FIGURES_DIR", tempfile.mkdtemp(prefix="labkit-bench-fig-"))
    import torch

    from labkit.data import load_dataset
    from labkit.notebooks import run_notebooks

    quick = {}
    if not args.skip_quick:
        table = run_notebooks(quick=True, dataset="jsc-synthetic", output_dir=tempfile.mkdtemp())
        quick = {Path(n).stem: s for n, s in zip(table["notebook"], table["seconds"])}
    torch.set_num_threads(1)
    data = load_dataset("jsc-synthetic", progress=False)
    pairs = sorted({(m, b) for runs in FULL_TRAINING.values() for m, b, _, _ in runs})
    per_epoch = {}
    for model, batch in pairs:
        per_epoch[model, batch] = seconds_per_epoch(model, batch, data)
        print(f"one full-size epoch of {model} at batch {batch}: {per_epoch[model, batch]:.1f} s", flush=True)
    print(f"\n{'notebook':32s} {'quick (measured)':>17s} {'full (estimated)':>17s}")
    total = 0.0
    for book, runs in FULL_TRAINING.items():
        serial = sum(e * per_epoch[m, b] for m, b, e, par in runs if not par)
        parallel = sum(e * per_epoch[m, b] for m, b, e, par in runs if par) / max(1, args.workers)
        full = serial + parallel + quick.get(book, 0.0)
        total += full
        q = f"{quick[book]:.0f} s" if book in quick else "-"
        print(f"{book:32s} {q:>17s} {full / 60:>13.1f} min")
    print(f"{'all':32s} {sum(quick.values()):>15.0f} s {total / 60:>13.1f} min   ({args.workers} workers)")


if __name__ == "__main__":
    main()
