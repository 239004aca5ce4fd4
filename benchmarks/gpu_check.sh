#!/usr/bin/env bash
# The device check, as one prepared script for a GPU machine (no internet there; its image has
# torch, Lightning, torchmetrics, pandas, matplotlib, h5py, tabulate, pytest):
#   bash benchmarks/gpu_check.sh
# GPU tests, GPU-vs-CPU training throughput, a small sweep on the GPU, and the CPU
# training benchmark on that machine's (quiet) CPU. Figures are printed and copied to $OUT.
set -uo pipefail
export PYTHONPATH="$PWD" LABKIT_HOME="$(mktemp -d)"
OUT="${OUT:-$LABKIT_HOME/out}"; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import sys, torch, pytorch_lightning as pl, torchmetrics as tm; print(sys.version.split()[0], torch.__version__, pl.__version__, tm.__version__, 'cuda', torch.cuda.is_available())"
python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py tests/test_train.py 2>&1 | tail -4 | tee "$OUT/gpu_tests.txt"
python3 benchmarks/bench_gpu.py 2>&1 | grep -v -i warn | tee "$OUT/bench_gpu.txt"
python3 - <<'PY' 2>&1 | grep -v -i warn | tee "$OUT/sweep_gpu.txt"
import time
from labkit.data import load_dataset
from labkit.sweep import sweep
data = load_dataset("jsc-synthetic", progress=False)
t = time.perf_counter()
r = sweep("jsc-tiny", data, "batch_size", [256, 1024, 4096], max_epochs=2, learning_rate=1e-3,
          accelerator="gpu", progress=False)
print(r.table.to_string(index=False))
print(f"GPU sweep of 3 runs x 2 epochs on {data.sizes()['train']} rows: {time.perf_counter() - t:.1f} s")
PY
python3 benchmarks/bench_train.py --epochs 1 2>&1 | grep -v -i warn | tee "$OUT/bench_train_device_cpu.txt"
