"""GPU vs CPU training throughput on the same machine (run on a GPU machine).

Trains jsc-tiny and jsc-custom for one epoch on full-size jsc-synthetic with labkit's
trainer on the GPU (data moved there once) and on the CPU, and prints samples/s and the
ratio. Tiny MLPs are launch-bound on a GPU, so expect the GPU to win only at large batches.

    python benchmarks/bench_gpu.py [--epochs 1] [--batch-sizes 256 4096]
"""

from __future__ import annotations

import argparse

import pandas as pd
import torch

from labkit.data import load_dataset
from labkit.training import train


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[256, 4096])
    ap.add_argument("--models", nargs="+", default=["jsc-tiny", "jsc-custom"])
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_gpu: no CUDA GPU here; run it on a GPU machine")
    print(f"GPU: {torch.cuda.get_device_name(0)}; torch {torch.__version__}; CPU threads {torch.get_num_threads()}")
    data = load_dataset("jsc-synthetic", progress=False)
    n = data.sizes()["train"] * args.epochs
    rows = []
    for model in args.models:
        for b in args.batch_sizes:
            for accel in ("gpu", "cpu"):
                r = train(model, data, max_epochs=args.epochs, batch_size=b, learning_rate=1e-3,
                          accelerator=accel, project=f"bench-gpu-{model}-{b}-{accel}",
                          progress=False, verbose=False)
                rows.append({"model": model, "batch": b, "device": r["device"], "seconds": r["wall_time_s"],
                             "samples/s": n / r["wall_time_s"], "best val acc": r["best_val_acc"]})
    table = pd.DataFrame(rows)
    print(table.to_string(index=False, float_format=lambda v: f"{v:,.3f}"))
    wide = table.pivot_table(index=["model", "batch"], columns=table["device"].str[:4], values="samples/s")
    wide["gpu/cpu"] = wide["cuda"] / wide["cpu"]
    print(wide.to_string(float_format=lambda v: f"{v:,.2f}"))


if __name__ == "__main__":
    main()
