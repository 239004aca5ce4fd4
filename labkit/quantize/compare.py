"""How much accuracy does each bit cost, and how much does quantisation-aware training win back?

    df = compare_quantization("jsc-custom", "outputs/lab-1_jsc-custom/software/training_ckpts/best.ckpt",
                              "jsc", widths=(16, 8, 4, 2), formats=("integer", "minifloat"),
                              modes=("ptq", "qat"), qat_epochs=3)
    plot_accuracy_vs_bits(df)

For every format, width and mode, the float model is quantised with the same ``width`` for
weights, biases and activations (inputs of the ``ops``, by default every Linear and ReLU),
with per-layer fractional widths (integer) or exponent biases (minifloat) chosen by
:func:`labkit.passes.quantize.auto_frac_width_pass` from the activation ranges of a
calibration batch (profiled once on the float graph), so nothing saturates. Then:

* ``ptq`` (post-training quantisation): test accuracy of the quantised model as is;
* ``qat`` (quantisation-aware training): ``qat_epochs`` of fine-tuning through the Lightning
  trainer with the quantisers in the forward pass (straight-through gradients), then test
  accuracy of the best epoch by validation accuracy (epoch 0, the PTQ model, included:
  ``qat_epoch_kept`` says which).

Each finished run is stored in a :class:`labkit.cache.ResultCache`, keyed by all of its
settings plus checksums of the checkpoint and the data, so re-running is instant and an
interrupted comparison resumes where it stopped. The runs go one after another in this
process by default; ``workers=n`` spreads them over local worker processes and ``cluster=``
(or ``$LABKIT_CLUSTER``) over a Dask cluster (:mod:`labkit.executor`), each worker building
the float graph once; results are stored here as they arrive, in the same cache entries.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from .. import checks, executor
from ..cache import ResultCache
from ..data.formats import sha256_file
from ..paths import check_name, outputs_dir
from ..runtime import device_kind
from .modules import QuantizedMixin
from .quantizers import QUANTIZERS

MODES = ("ptq", "qat")
AUTO_FORMATS = ("integer", "minifloat")
COMPARE_VERSION = 2  # bump when a change here makes old cached results wrong (2: MASE STE, unsigned ReLU)


def model_size_bits(model: nn.Module) -> int:
    """Bits to store the parameters: quantised weights/biases at their widths, the rest at 32.

    (BatchNorm running statistics are buffers, not counted: in hardware they fold into the
    scale and shift.)
    """
    total = 0
    for module in model.modules():
        quantizers = module.quantizers() if isinstance(module, QuantizedMixin) and not module.bypass else {}
        for name, p in module.named_parameters(recurse=False):
            q = quantizers.get(name)
            total += p.numel() * (q.bits if q is not None else torch.finfo(p.dtype).bits)
    return int(total)


def _check(widths, formats, modes) -> tuple[tuple, tuple, tuple]:
    """The three run axes as tuples (a single value is one run), each value checked."""
    formats = (formats,) if isinstance(formats, str) else tuple(formats)
    modes = (modes,) if isinstance(modes, str) else tuple(modes)
    widths = (widths,) if isinstance(widths, int) else tuple(widths)
    if not len(widths):
        raise ValueError(f"widths must be a non-empty list of bit widths, got {widths!r}")
    for fmt in formats:
        if fmt not in AUTO_FORMATS:
            known = ", ".join(f for f in AUTO_FORMATS if f in QUANTIZERS)
            raise ValueError(f"format {fmt!r} cannot be compared (its widths are not chosen automatically); "
                             f"formats: {known}")
    for mode in modes:
        checks.one_of("mode", mode, MODES)
    for fmt in formats:
        lowest = 1 if fmt == "integer" else 2  # a minifloat needs a sign bit and an exponent bit
        for w in widths:
            checks.integer(f"each {fmt} width", w, lowest, 32)
    return widths, formats, modes


def _float_graph(model_name, checkpoint, load_type, data, calibration, ops):
    """The float model as a MaseGraph with metadata, and the input ranges of its ``ops``
    (``range_min_max`` over the calibration batch) stored for ``auto_frac_width_pass``."""
    from ..graph import MaseGraph
    from ..passes.metadata import add_common_metadata_analysis_pass, init_metadata_analysis_pass
    from ..passes.profile import profile_statistics_analysis_pass
    from ..passes.utils import get_mase_op
    from ..training import load_model

    model = load_model(model_name, checkpoint, load_type, info=data.info).eval()
    mg = MaseGraph(model=model)
    mg, _ = init_metadata_analysis_pass(mg, None)
    mg, _ = add_common_metadata_analysis_pass(mg, {"dummy_in": {"x": calibration[:256]}})
    present = {get_mase_op(n) for n in mg.nodes}
    targets = [op for op in ops if op in present]
    if targets:
        mg, _ = profile_statistics_analysis_pass(mg, {
            "by": "type", "target_activation_nodes": targets, "activation_statistics": {"range_min_max": {}},
            "input_generator": [calibration], "num_samples": 1, "progress": False})
    return mg


def _one_run(mg, data, fmt, width, mode, ops, qat, project) -> dict:
    from ..graph import deepcopy_mase_graph
    from ..passes.quantize import auto_quantize_config, quantize_transform_pass
    from ..training import evaluate, load_model, train

    start = time.perf_counter()
    pass_args = auto_quantize_config(mg, width, format=fmt, ops=ops)  # ranges: profiled in _float_graph
    qmg, _ = quantize_transform_pass(deepcopy_mase_graph(mg), pass_args)  # mg stays float for the next run
    model = qmg.model
    extra = {}
    if mode == "qat":
        start_val = evaluate(model, data, "val")["acc"]
        start_state = {k: v.clone() for k, v in model.state_dict().items()}
        model.train()  # Lightning keeps sub-modules' modes: BatchNorm/Dropout must train too
        r = train(model, data, max_epochs=qat["epochs"], batch_size=qat["batch_size"],
                  learning_rate=qat["learning_rate"], seed=qat["seed"], project=project,
                  accelerator=qat["accelerator"], progress=False, verbose=False)
        model = model.cpu()
        # keep the best epoch by validation accuracy, counting the PTQ start as epoch 0
        kept = 0
        if r["best_ckpt"] and r["best_val_acc"] > start_val:
            model = load_model(model, r["best_ckpt"], "pl")
            kept = int(r["history"]["val_acc"].idxmax()) + 1
        else:
            model.load_state_dict(start_state)
        extra = {"ptq_val_acc": start_val, "qat_best_val_acc": r["best_val_acc"], "qat_epoch_kept": kept}
    metrics = evaluate(model, data, "test")
    return {"test_acc": metrics["acc"], "test_loss": metrics["loss"], "size_bits": model_size_bits(model),
            "config": json.dumps(pass_args), "run_s": time.perf_counter() - start, **extra}


# In a worker process: the float graph and data, built once by _init_worker.
_WORKER: dict = {}


def _init_worker(model_name, ckpt_bytes, load_type, source, calibration, ops, builders):
    from ..models import MODELS
    from ..sweep import _load_source
    torch.set_num_threads(1)
    for name, build in (builders or {}).items():
        MODELS.register(name, build)
    data = _load_source(source)  # fingerprint checked
    with tempfile.TemporaryDirectory() as tmp:  # the checkpoint travels as bytes: no shared disk needed
        path = Path(tmp) / "float.ckpt"
        path.write_bytes(ckpt_bytes)
        mg = _float_graph(model_name, path, load_type, data, calibration, ops)
    _WORKER.update(mg=mg, data=data, ops=ops)


def _run_in_worker(task):
    fmt, width, mode, qat, project = task
    return _one_run(_WORKER["mg"], _WORKER["data"], fmt, width, mode, _WORKER["ops"], qat, project)


def compare_quantization(model_name: str, checkpoint, dataset="jsc-synthetic", *,
                         widths=(16, 12, 8, 6, 4, 3, 2), formats=("integer", "minifloat"),
                         modes=("ptq", "qat"), ops=("linear", "relu"), qat_epochs: int = 3,
                         qat_learning_rate: float = 1e-4, batch_size: int = 256, seed: int = 0,
                         load_type: str = "pl", data=None, calibration_samples: int = 4096,
                         accelerator: str = "auto", cache_dir=None, progress: bool = True,
                         workers: int | None = None, cluster=None) -> pd.DataFrame:
    """Test accuracy of ``model_name`` (loaded from ``checkpoint``) quantised at each width.

    Returns one row per (format, width, mode) plus a ``float`` row (the unquantised model):
    ``format, width, mode, test_acc, test_loss, size_bits, float_acc, acc_drop, config``
    (the pass_args used, as JSON), ``cached``, ``dataset_label`` and timing.

    ``workers`` (default: this process) / ``cluster`` (default ``$LABKIT_CLUSTER`` when
    ``workers`` is not given): where the runs go, as in :func:`labkit.sweep.grid_sweep`.
    """
    from ..data import load_dataset
    from ..training import torch_threads

    widths, formats, modes = _check(widths, formats, modes)
    target = executor.choose_cluster(cluster, checks.optional_positive_int("workers", workers))
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"checkpoint not found: {checkpoint}")
    if data is None:
        data = load_dataset(dataset) if isinstance(dataset, str) else dataset
    calibration = data.split("train")[0][:calibration_samples]
    root = outputs_dir() / "quantization_compare" / check_name(model_name, "model name")
    cache = ResultCache(cache_dir or root)
    # QAT runs on the accelerator; GPU and CPU results differ in rounding, so both go in the key
    device = device_kind(accelerator)
    qat = {"epochs": qat_epochs, "learning_rate": qat_learning_rate, "batch_size": batch_size, "seed": seed,
           "accelerator": accelerator, "device": device}
    base_key = {"version": COMPARE_VERSION, "model": model_name, "checkpoint": sha256_file(checkpoint)[:16],
                "data": data.identity(), "ops": sorted(ops), "calibration_samples": calibration_samples}
    # tiny models: one CPU thread is fastest, and spares a busy machine (restored afterwards)
    with torch_threads(1 if device == "cpu" else None):
        mg = _float_graph(model_name, checkpoint, load_type, data, calibration, list(ops))
        float_row = _float_row(mg, data)  # before any run, from the float graph every run copies
        runs = [(fmt, w, mode) for fmt in formats for mode in modes for w in widths]
        keys = {run: _run_key(base_key, qat, *run) for run in runs}
        results = {run: cache.get(keys[run]) for run in runs}
        cached = {run for run, r in results.items() if r is not None}
        plan = _plan([run for run in runs if run not in cached], model_name, checkpoint, load_type, data,
                     calibration, list(ops), qat, mg, device, workers, target, root)
        with tqdm(total=len(runs), initial=len(cached), desc="quantisation runs", disable=not progress) as bar:
            _run_missing(plan, target, keys, cache, results, bar)
    rows = [{"format": fmt, "width": width, "mode": mode, **results[fmt, width, mode],
             "cached": (fmt, width, mode) in cached} for fmt, width, mode in runs]
    return _frame(float_row, rows, data)


def _run_key(base_key: dict, qat: dict, fmt: str, width: int, mode: str) -> dict:
    """A run's cache key: QAT runs also depend on how they train (not on the accelerator's
    name, only on the device it resolved to)."""
    key = {**base_key, "format": fmt, "width": width, "mode": mode}
    if mode == "qat":
        key["qat"] = {k: v for k, v in qat.items() if k != "accelerator"}
    return key


def _run_missing(plan: tuple, target, keys: dict, cache, results: dict, bar) -> None:
    """Run the planned tasks (here, in workers or on a cluster); each result is cached as
    soon as it arrives, so an interrupted comparison keeps the runs it finished."""
    tasks, fn, init, initargs, n = plan
    with contextlib.closing(executor.map_unordered(fn, tasks, workers=n, cluster=target or False,
                                                   initializer=init, initargs=initargs)) as done:
        for (fmt, width, mode, *_), result in done:
            cache.put(keys[fmt, width, mode], result)
            results[fmt, width, mode] = result
            bar.set_postfix_str(f"{fmt} {width}b {mode}")
            bar.update()


def _float_row(mg, data) -> dict:
    """The unquantised model's row: its test accuracy and loss, and its size."""
    from ..training import evaluate

    metrics = evaluate(mg.model, data, "test")
    return {"format": "float", "width": 32, "mode": "float", "test_acc": metrics["acc"], "test_loss": metrics["loss"],
            "size_bits": model_size_bits(mg.model), "config": "", "cached": False}


def _frame(float_row: dict, rows: list, data) -> pd.DataFrame:
    """The result table: the float model's row, then the runs' rows, each with its drop from
    the float model; the key columns first."""
    df = pd.DataFrame([float_row, *rows])
    df["float_acc"] = float_row["test_acc"]
    df["acc_drop"] = df["float_acc"] - df["test_acc"]
    df["dataset_label"] = data.info.label
    first = ["format", "width", "mode", "test_acc", "acc_drop", "size_bits", "float_acc"]
    return df[first + [c for c in df.columns if c not in first]]


def _plan(missing, model_name, checkpoint, load_type, data, calibration, ops, qat, mg, device, workers, target,
          root):
    """The tasks and how to run them: here (the default, as a comparison's runs are short),
    in local worker processes (``workers`` > 1, CPU) or on a cluster, each worker building
    the float graph once from the checkpoint's bytes and the data (scattered to a cluster)."""
    from ..sweep import _data_source, _spawn_works, worker_builders

    def task(fmt, width, mode, qat):
        return (fmt, width, mode, qat, root / f"qat_{fmt}_{width}b")  # a Path: train() writes there

    local = target is None
    builders = worker_builders([model_name], by_value=not local)
    if (local and (not workers or workers <= 1 or len(missing) <= 1 or device != "cpu" or builders is None
                   or not _spawn_works())):
        tasks = [task(*run, qat) for run in missing]
        return tasks, lambda t: _one_run(mg, data, t[0], t[1], t[2], ops, t[3], t[4]), None, (), 1  # noqa: E731
    # Workers train on what they have; the cache key says which device (resolved here).
    qat = {**qat, "accelerator": device}
    initargs = (model_name, Path(checkpoint).read_bytes(), load_type, _data_source(data, scatter=not local),
                calibration, ops, builders)
    return [task(*run, qat) for run in missing], _run_in_worker, _init_worker, initargs, workers or 1


def plot_accuracy_vs_bits(df: pd.DataFrame, *, x: str = "both", title: str | None = None, path=None):
    """Test accuracy against bit width and/or model size, one line per (format, mode).

    ``x``: "width", "size_bits" or "both" (two panels). The float model is the dashed line.
    The title names the dataset (its label says SYNTHETIC for the stand-in data).
    Returns the matplotlib Figure; saves it to ``path`` when given.
    """
    import matplotlib.pyplot as plt

    axes_for = {"width": ["width"], "size_bits": ["size_bits"], "both": ["width", "size_bits"]}
    if x not in axes_for:
        raise ValueError(f"x must be 'width', 'size_bits' or 'both', got {x!r}")
    need = {"format", "mode", "width", "size_bits", "test_acc"}
    if not need <= set(df.columns):
        raise ValueError(f"df lacks columns {sorted(need - set(df.columns))}; pass compare_quantization's result")
    panels = axes_for[x]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    from ..plots import legend_outside

    quant = df[df["format"] != "float"]
    floats = df[df["format"] == "float"]
    for ax, col in zip(axes[0], panels):
        _accuracy_panel(ax, col, quant, floats)
    legend_outside(axes[0][-1])  # one legend, right of the last panel, for both
    label = df["dataset_label"].iloc[0] if "dataset_label" in df.columns and len(df) else "unknown data"
    fig.suptitle(title or f"Accuracy vs bits: {label}", fontsize=10)
    fig.tight_layout()
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120, bbox_inches="tight")
    return fig


def _accuracy_panel(ax, col: str, quant: pd.DataFrame, floats: pd.DataFrame) -> None:
    """Accuracy against ``col`` ("width" or "size_bits"): a line per (format, mode), float dashed."""
    from ..plots import MODE_STYLE, format_colours

    colours = format_colours(quant["format"])
    for (fmt, mode), group in quant.groupby(["format", "mode"], sort=True):
        g = group.sort_values(col)
        xs = g[col] / 1000 if col == "size_bits" else g[col]
        ax.plot(xs, g["test_acc"], color=colours[fmt], label=f"{fmt} {mode.upper()}", **MODE_STYLE.get(mode, {}))
    if len(floats):
        ax.axhline(float(floats["test_acc"].iloc[0]), color="grey", ls=":", label="float32")
        if col == "size_bits":  # the float model's size is a point on this axis too
            ax.plot(float(floats["size_bits"].iloc[0]) / 1000, float(floats["test_acc"].iloc[0]), "*",
                    color="grey", ms=11)
    if col == "width":
        ax.set_xscale("log", base=2)  # widths halve: 16, 8, 4, 2 evenly spaced
        ticks = sorted(quant["width"].unique())
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("bits per value (weights, biases and activations)")
    else:
        ax.set_xlabel("model size (kbit of parameters)")
    ax.set_ylabel("test accuracy")
    ax.grid(alpha=0.3)
