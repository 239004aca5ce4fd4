"""Run configuration: MASE-style TOML files, validated as data (never executed).

The keys are the lab's (``model``, ``dataset``, ``max_epochs``, ``batch_size``,
``learning_rate``, ``load_name``, ``[passes.quantize]`` ...). Precedence, lowest first:
labkit's defaults < the TOML file < command-line flags. :func:`settings_table` shows how
each value was decided, like MASE's "Name | Default | Manual Override | Effective" table.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pandas as pd

# key -> (allowed python types, default, help)
KEYS: dict[str, tuple[tuple[type, ...], object, str]] = {
    "model": ((str,), None, "registered model name, e.g. jsc-tiny"),
    "dataset": ((str,), None, "registered dataset name: jsc or jsc-synthetic"),
    "data_size": ((int,), None, "use only this many rows (synthetic: generate this many); quick runs"),
    "task": ((str,), "cls", "cls (classification); the only task of the JSC labs"),
    "accelerator": ((str,), "auto", "auto, cpu or gpu"),
    "project": ((str,), None, "output folder name under outputs/"),
    "seed": ((int,), 0, "random seed"),
    "log_every_n_steps": ((int,), 50, "Lightning logging interval"),
    "load_name": ((str,), None, "checkpoint to load"),
    "load_type": ((str,), "pl", "pl (Lightning .ckpt) or pt (state dict)"),
    "max_epochs": ((int,), 20, "maximum training epochs"),
    "batch_size": ((int,), 128, "mini-batch size"),
    "learning_rate": ((float, int), 1e-5, "Adam learning rate"),
    "weight_decay": ((float, int), 0.0, "Adam weight decay"),
    "scheduler": ((str,), None, "learning-rate schedule: cosine, or none"),
    "early_stopping": ((int,), None, "early-stopping patience in epochs (val accuracy)"),
    "max_time": ((float, int), None, "training time limit in seconds"),
    "num_threads": ((int,), None, "CPU threads for torch"),
    "passes": ((dict,), None, "transform passes, e.g. [passes.quantize]"),
}
TASKS = ("cls", "classification")
LOAD_TYPES = ("pl", "pt")


class ConfigError(ValueError):
    """A configuration value is unknown, of the wrong type or out of range."""


def defaults() -> dict:
    return {k: v[1] for k, v in KEYS.items() if k != "passes"}


def validate(config: dict, source: str = "config") -> dict:
    """Check every key is known and typed right; returns the config unchanged."""
    for key, value in config.items():
        if key not in KEYS:
            raise ConfigError(f"{source}: unknown key {key!r}; allowed keys: {', '.join(KEYS)}")
        types = KEYS[key][0]
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, types):
            want = " or ".join(t.__name__ for t in types)
            raise ConfigError(f"{source}: {key} must be {want}, got {value!r} ({type(value).__name__})")
    if config.get("task") not in (None, *TASKS):
        raise ConfigError(f"{source}: task must be one of {', '.join(TASKS)}, got {config['task']!r}")
    if config.get("load_type") not in (None, *LOAD_TYPES):
        raise ConfigError(f"{source}: load_type must be one of {', '.join(LOAD_TYPES)}, got {config['load_type']!r}")
    for key in ("max_epochs", "batch_size", "log_every_n_steps", "early_stopping", "num_threads", "data_size"):
        if config.get(key) is not None and config[key] < 1:
            raise ConfigError(f"{source}: {key} must be a positive integer, got {config[key]!r}")
    for key in ("learning_rate", "max_time"):
        if config.get(key) is not None and config[key] <= 0:
            raise ConfigError(f"{source}: {key} must be > 0, got {config[key]!r}")
    if config.get("weight_decay") is not None and config["weight_decay"] < 0:
        raise ConfigError(f"{source}: weight_decay must be >= 0, got {config['weight_decay']!r}")
    return config


def load_config(path) -> dict:
    """Read and validate a TOML config file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        config = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    return validate(config, source=str(path))


def resolve(file_config: dict | None, overrides: dict | None) -> dict:
    """defaults < file < overrides (``None`` in overrides means "not given")."""
    effective = defaults()
    effective.update({k: v for k, v in (file_config or {}).items()})
    effective.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return effective


def settings_table(file_config: dict | None, overrides: dict | None, keys=None) -> pd.DataFrame:
    """How each setting was decided: Name | Default | Config File | Manual Override | Effective."""
    effective = resolve(file_config, overrides)
    keys = keys or [k for k in KEYS if k != "passes"]
    rows = []
    for k in keys:
        rows.append({
            "Name": k,
            "Default": KEYS[k][1] if k in KEYS else None,
            "Config File": (file_config or {}).get(k),
            "Manual Override": (overrides or {}).get(k),
            "Effective": effective.get(k),
        })
    table = pd.DataFrame(rows, dtype=object)
    if file_config is None:
        table = table.drop(columns="Config File")
    return table.map(lambda v: "" if v is None else v)
