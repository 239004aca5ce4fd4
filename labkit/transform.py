"""``labkit transform --config FILE.toml``: load a trained checkpoint, quantise it, compare.

The lab's TOML, as written (see ``configs/lab2_transform_jsc_custom.toml``)::

    model = "jsc-custom"
    dataset = "jsc"
    load_name = "./outputs/lab-1_jsc-custom/software/training_ckpts/best.ckpt"
    load_type = "pl"
    project = "lab-2_transform"

    [passes.quantize]
    by = "type"
    [passes.quantize.default.config]
    name = "NA"
    [passes.quantize.linear.config]
    name = "integer"
    data_in_width = 8
    ...

What happens: the checkpoint is loaded into the model, traced into a MaseGraph with
metadata, quantised by ``quantize_transform_pass``; the summary table is printed; test
accuracy is measured before and after; and ``outputs/<project>/transform/`` receives the
transformed model (``transformed.pt``: state dict, the quantisation config and the dataset's
shape), the config used (``config.json``), the summary tables and ``results.json``.
:func:`load_transformed` rebuilds the quantised model from ``transformed.pt``.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime as dt
import json
import shutil
import sys
from pathlib import Path

import torch

from .cache import atomic_write, atomic_write_text
from .checks import path_like
from .config import default_project
from .lock import project_lock
from .paths import check_name, outputs_dir, project_root

PASSES = ("quantize",)


def check_passes(passes) -> dict:
    """The ``[passes]`` section: a dict with a ``quantize`` table (the only transform here)."""
    if passes is None:
        raise ValueError("the config has no [passes] section; add [passes.quantize] with 'by' and the "
                         "per-op configs (see configs/lab2_transform_jsc_custom.toml)")
    if not isinstance(passes, dict):
        raise ValueError(f"passes must be a table, got {passes!r}")
    unknown = sorted(set(passes) - set(PASSES))
    if unknown:
        raise ValueError(f"unknown pass [passes.{unknown[0]}]; allowed passes: {', '.join(PASSES)}")
    if "quantize" not in passes:
        raise ValueError("the [passes] section has no [passes.quantize] table; nothing to transform")
    if not isinstance(passes["quantize"], dict):
        raise ValueError(f"[passes.quantize] must be a table, got {passes['quantize']!r}")
    return passes


def resolve_checkpoint(load_name) -> Path:
    """``load_name`` as given, or relative to the project root (where ``outputs/`` lives)."""
    if not load_name:
        raise ValueError("no checkpoint given: set load_name = \"path/to/best.ckpt\" (and load_type = \"pl\")")
    path = Path(load_name).expanduser()
    if path.is_file() or path.is_absolute():
        return path
    alt = project_root() / path
    return alt if alt.is_file() else path


def _config_dict(config) -> dict:
    from .config import load_config, validate
    if isinstance(config, (str, Path)):
        return load_config(config)
    if not isinstance(config, dict):
        raise TypeError(f"run_transform needs a config dict or a TOML path, got {type(config).__name__}")
    return validate(dict(config), source="transform config")


def run_transform(config, *, data=None, save: bool = True, verbose: bool = True) -> dict:
    """Run the config's transform. ``config``: a dict (as parsed from the TOML) or a path.

    ``data`` (a JSCData) overrides loading ``dataset``. Returns accuracies before/after,
    the summary DataFrames, both graphs and the paths written.
    """
    from .passes.quantize import summarize_quantization_analysis_pass
    from .training import evaluate

    config = _config_dict(config)
    for key in ("model", "dataset"):
        if not config.get(key):
            raise ValueError(f"the transform config needs {key} = \"...\"")
    quant_args = check_passes(config.get("passes"))["quantize"]
    # no load_name: MASE's transform quantises the freshly initialised (seeded) model
    ckpt = resolve_checkpoint(config["load_name"]) if config.get("load_name") else None
    data = data if data is not None else _load_data(config)
    model = _model_to_transform(config, ckpt, data)
    mg, ori_mg, qinfo = _quantise(model, data, config, quant_args)

    project = check_name(config["project"], "project") if config.get("project") else \
        default_project(config["model"], data.info.name)
    out = outputs_dir() / project / "transform"
    # One transform or training at a time per project; a re-run archives the previous outputs.
    with project_lock(out.parent) if save else contextlib.nullcontext():
        archived = _archive_previous_outputs(out) if save else None
        if save:
            out.mkdir(parents=True, exist_ok=True)
        _, summary = summarize_quantization_analysis_pass(
            mg, {"original_graph": ori_mg, "save_dir": out if save else None, "verbose": verbose})
        before, after = evaluate(ori_mg.model, data, "test"), evaluate(mg.model, data, "test")
        result = {
            "model": config["model"], "dataset": data.info.name, "synthetic": data.info.synthetic,
            "checkpoint": str(ckpt) if ckpt else None, "project": project,
            "test_acc_before": before["acc"], "test_acc_after": after["acc"],
            "test_loss_before": before["loss"], "test_loss_after": after["loss"], "n_test": after["n"],
            "changed": qinfo["changed"],
        }
        if verbose:
            print(f"[labkit] transform {config['model']} on {data.info.label}: test acc {before['acc']:.4f} -> "
                  f"{after['acc']:.4f} after quantisation ({len(qinfo['changed'])} nodes changed)")
        if save:
            result.update(_save_transform(out, mg, config, quant_args, data, result, verbose))
    result.update(summary=summary["summary"], nodes=summary["nodes"], graph=mg, original_graph=ori_mg,
                  archived_previous=str(archived) if archived else None)
    return result


def _load_data(config: dict):
    from .data import load_dataset
    kwargs = {"size": config["data_size"]} if config.get("data_size") else {}
    return load_dataset(config["dataset"], **kwargs)


def _model_to_transform(config: dict, ckpt: Path | None, data):
    """The config's model in eval mode: loaded from ``ckpt``, or (none given, as MASE does)
    freshly initialised with the config's seed."""
    from .models import get_model
    from .training import load_model
    seed = int(config.get("seed") or 0)
    torch.manual_seed(seed)
    if ckpt is not None:
        return load_model(config["model"], ckpt, config.get("load_type") or "pl", info=data.info).eval()
    print(f"labkit: warning: no load_name: transforming an untrained {config['model']} "
          f"(initialised with seed {seed}), as MASE does", file=sys.stderr)
    return get_model(config["model"], data.info).eval()


def _quantise(model, data, config: dict, quant_args: dict):
    """``(quantised graph, float graph, the pass's info)``: the model traced with MASE's metadata
    on a batch of training rows, copied, then quantised by the config's [passes.quantize]."""
    from .graph import MaseGraph, deepcopy_mase_graph
    from .passes.metadata import add_common_metadata_analysis_pass, init_metadata_analysis_pass
    from .passes.quantize import quantize_transform_pass

    batch = data.split("train")[0][: int(config.get("batch_size") or 128)]
    mg = MaseGraph(model=model)
    mg, _ = init_metadata_analysis_pass(mg, None)
    mg, _ = add_common_metadata_analysis_pass(mg, {"dummy_in": {"x": batch}})
    ori_mg = deepcopy_mase_graph(mg)  # the pass quantises mg itself (as MASE's does): keep a float copy
    mg, qinfo = quantize_transform_pass(mg, quant_args)
    return mg, ori_mg, qinfo


def _save_transform(out: Path, mg, config: dict, quant_args: dict, data, result: dict, verbose: bool) -> dict:
    """Write the quantised weights, the config and the results into ``out``; returns their paths."""
    state_path, config_path = out / "transformed.pt", out / "config.json"
    saved = {"state_dict": mg.model.state_dict(), "model_name": config["model"],
             "dataset_name": data.info.name, "dataset_info": _info_dict(data.info),
             "quantize": copy.deepcopy(quant_args)}
    atomic_write(state_path, lambda tmp: torch.save(saved, tmp))
    atomic_write_text(config_path, json.dumps(config, indent=2, default=str) + "\n")
    atomic_write_text(out / "results.json", json.dumps(result, indent=2) + "\n")
    if verbose:
        print(f"[labkit] outputs: {out}")
    return {"output_dir": str(out), "state_dict_path": str(state_path), "config_path": str(config_path)}


def _archive_previous_outputs(out: Path) -> Path | None:
    """Move an earlier transform's files to ``out/archive/<timestamp>/``, as
    training does with its checkpoints: a re-run never replaces a result without a copy."""
    old = [p for p in out.iterdir() if p.is_file()] if out.is_dir() else []
    if not old:
        return None
    dest = out / "archive" / dt.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    dest.mkdir(parents=True)
    for p in old:
        shutil.move(str(p), str(dest / p.name))
    return dest


def _info_dict(info) -> dict:
    """A DatasetInfo as plain values (``torch.load(weights_only=True)`` reads them back)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(info).items()}


def _saved_info(saved: dict):
    """The DatasetInfo a transform was run with (older files: just the dataset's name)."""
    from .data.base import DatasetInfo

    fields = {f.name for f in dataclasses.fields(DatasetInfo)}
    values = saved.get("dataset_info") or {"name": saved.get("dataset_name") or "unknown"}
    return DatasetInfo(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if k in fields})


def _info_value(info, key: str):
    return info.get(key) if isinstance(info, dict) else getattr(info, key, None)


def load_transformed(path, info=None):
    """Rebuild a quantised model saved by :func:`run_transform` (``transformed.pt``).

    The model is built for the dataset the transform ran on (its saved name and shape);
    ``info`` may override it, but must have the same number of features and classes.
    Returns a :class:`MaseGraph` whose ``.model`` runs the quantised forward pass.
    """
    from .graph import MaseGraph
    from .models import get_model
    from .passes.quantize import apply_quantize_plan, validate_quantize_args

    path = Path(path_like("path", path, "the path of a transformed.pt"))
    if not path.is_file():
        raise FileNotFoundError(f"transformed model not found: {path}")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # not a torch file, truncated, or pickled objects (never executed)
        # (torch's own message advises weights_only=False, which would run whatever the file holds)
        saved = None
    if (not isinstance(saved, dict) or not {"state_dict", "model_name", "quantize"} <= set(saved)
            or not isinstance(saved["state_dict"], dict) or not isinstance(saved["model_name"], str)):
        raise ValueError(f"{path} is not a labkit transform output (a transformed.pt written by "
                         f"`labkit transform` / run_transform, with state_dict, model_name and quantize)")
    saved_info = _saved_info(saved)
    if info is None:
        info = saved_info
    elif "dataset_info" in saved:
        for key in ("num_features", "num_classes"):
            if _info_value(info, key) != getattr(saved_info, key):
                raise ValueError(f"{path} was transformed on {saved_info.name!r} with {key}="
                                 f"{getattr(saved_info, key)}, but info has {key}={_info_value(info, key)}")
    name = saved["model_name"]
    model = get_model(name, info)
    try:
        model.load_state_dict(saved["state_dict"])
    except RuntimeError as e:
        detail = " ".join(str(e).split())[:300]
        raise ValueError(f"transformed model {path} does not fit model {name!r}: {detail}") from None
    mg = MaseGraph(model=model.eval())
    # the model was just built: quantise this graph in place
    apply_quantize_plan(mg, validate_quantize_args(mg, saved["quantize"]))
    return mg
