"""Run configuration: MASE-style TOML files, validated as data (never executed).

The keys are the lab's (``model``, ``dataset``, ``max_epochs``, ``batch_size``,
``learning_rate``, ``load_name``, ``[passes.quantize]`` ...). Precedence, lowest first:
labkit's defaults < the TOML file < command-line flags. :func:`settings_table` shows how
each value was decided, like MASE's "Name | Default | Manual Override | Effective" table.
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

# The training settings' defaults, help and checks live in labkit.settings.TrainSettings (no torch
# there, so the CLI can build its parser without it); train(), sweeps and the command line all read them.
from .settings import ACCELERATORS, DEFAULTS, SCHEDULERS, TrainSettings  # noqa: F401  (re-exported)
from .settings import FIELDS as _SETTING_FIELDS

TEST_BATCH_SIZE = 8192  # evaluation batches only group the rows: any size gives the same results
LOAD_TYPES = ("pl", "pt")
TASKS = ("cls", "classification")

# What MASE's `ch` reads from a config that labkit has no use for: MASE's other command-line
# settings and config sections ([transform] style, ...). ([search] is read by `labkit search`.)
# MASE drops *any* key it does not know, silently; labkit drops only these, with one warning
# line naming them, and still rejects a key neither knows (a typo would otherwise be lost).
MASE_ONLY_KEYS = (
    "report", "transform", "search_space", "strategy", "cf_args",
    "to_debug", "log_level", "training_optimizer", "trainer_precision", "max_steps",
    "accumulate_grad_batches", "num_nodes", "is_to_auto_requeue", "github_ci",
    "disable_dataset_cache", "target", "num_targets", "is_pretrained", "max_token_len", "project_dir",
)
# [passes.<name>] keys MASE's passes never read (its example configs set `report = true`)
MASE_ONLY_PASS_KEYS = {"quantize": ("report",)}
MIN_DATA_SIZE = 100  # the data layer's smallest dataset
MAX_DATA_SIZE = 830_000  # the whole JSC table; the synthetic stand-in is capped at the same size


def _setting(name: str):
    """A training setting's row: no types here (TrainSettings checks it), its default and help."""
    return (None, _SETTING_FIELDS[name].default, _SETTING_FIELDS[name].metadata["help"])


# key -> (allowed python types, default, help); a training setting's types are None: TrainSettings checks it
KEYS: dict[str, tuple[tuple[type, ...], object, str]] = {
    "model": ((str,), None, "registered model name, e.g. jsc-tiny"),
    "dataset": ((str,), None, "registered dataset name: jsc or jsc-synthetic"),
    "data_size": ((int,), None, f"use only this many rows (at least {MIN_DATA_SIZE}; synthetic: generate this many)"),
    "task": ((str,), "cls", "cls (classification); the only task of the JSC labs"),
    "accelerator": _setting("accelerator"),
    "project": ((str,), None, "output folder name under outputs/ (letters, digits, . _ -; at most 64)"),
    "seed": _setting("seed"),
    "log_every_n_steps": _setting("log_every_n_steps"),
    "load_name": ((str,), None, "checkpoint to load"),
    "load_type": ((str,), LOAD_TYPES[0], "pl (Lightning .ckpt) or pt (state dict)"),
    "max_epochs": _setting("max_epochs"),
    "batch_size": _setting("batch_size"),
    "learning_rate": _setting("learning_rate"),
    "weight_decay": _setting("weight_decay"),
    "scheduler": _setting("scheduler"),
    "early_stopping": _setting("early_stopping"),
    "max_time": _setting("max_time"),
    "num_threads": _setting("num_threads"),
    # MASE's --cpu and --gpu: data-loader workers and devices. labkit's data are tensors in
    # memory (no loader workers to start) and it trains on one device.
    "num_workers": ((int,), None, "MASE's --cpu (data-loader workers); labkit loads no worker processes, "
                                  "so any value >= 0 is accepted and changes nothing"),
    "num_devices": ((int,), None, "MASE's --gpu (devices); labkit trains on one device: 1"),
    "passes": ((dict,), None, "transform passes, e.g. [passes.quantize]"),
    "search": ((dict,), None, "a [search] section: search space and strategy (labkit search)"),
}
TABLE_KEYS = ("passes", "search")  # tables, not settings: not in the settings table


class ConfigError(ValueError):
    """A configuration value is unknown, of the wrong type or out of range."""


def default_project(model: str, dataset: str) -> str:
    """The output folder when none is given: ``outputs/<model>_<dataset>/`` (a model registered
    under a name unfit for a folder, e.g. ``"a/b"``, must be given a project explicitly)."""
    from .paths import check_name
    return check_name(f"{model}_{dataset}", "project")


def defaults() -> dict:
    return {k: v[1] for k, v in KEYS.items() if k not in TABLE_KEYS}


def drop_mase_only(config: dict, source: str = "config") -> dict:
    """``config`` without the settings only MASE uses (:data:`MASE_ONLY_KEYS`), after one
    warning line on stderr naming them; the caller's dict is not changed."""
    dropped = [k for k in config if k in MASE_ONLY_KEYS]
    kept = {k: v for k, v in config.items() if k not in MASE_ONLY_KEYS}
    passes = kept.get("passes")
    if isinstance(passes, dict):
        for name, keys in MASE_ONLY_PASS_KEYS.items():
            table = passes.get(name)
            if isinstance(table, dict) and any(k in table for k in keys):
                dropped += [f"passes.{name}.{k}" for k in keys if k in table]
                kept["passes"] = passes = {**passes, name: {k: v for k, v in table.items() if k not in keys}}
    if dropped:
        print(f"labkit: warning: {source}: ignoring MASE settings labkit does not use: {', '.join(dropped)}",
              file=sys.stderr)
    return kept


def validate(config: dict, source: str = "config") -> dict:
    """Check every key is known and typed right, and its value allowed; returns the config, less
    the MASE-only settings (see :func:`drop_mase_only`). The training settings are checked by
    building a :class:`~labkit.settings.TrainSettings` from them; every error names ``source``."""
    config = drop_mase_only(config, source)
    try:
        _check_types(config)
        _check_run_keys(config)
        TrainSettings(**{k: v for k, v in config.items() if k in _SETTING_FIELDS and v is not None})
    except ValueError as e:
        raise ConfigError(f"{source}: {e}") from None
    return config


def _check_types(config: dict):
    for key, value in config.items():
        if key not in KEYS:
            raise ValueError(f"unknown key {key!r}; allowed keys: {', '.join(KEYS)}")
        types = KEYS[key][0]
        if value is None or types is None:
            continue
        if isinstance(value, bool) or not isinstance(value, types):
            want = " or ".join(t.__name__ for t in types)
            raise ValueError(f"{key} must be {want}, got {value!r} ({type(value).__name__})")


def _check_run_keys(config: dict):
    """The keys that are not training settings: what to run, on which data, where."""
    for key, allowed in (("task", TASKS), ("load_type", LOAD_TYPES)):
        if config.get(key) is not None and config[key] not in allowed:
            raise ValueError(f"{key} must be one of {', '.join(allowed)}, got {config[key]!r}")
    if config.get("num_workers") is not None and config["num_workers"] < 0:
        raise ValueError(f"num_workers (--cpu) must be an integer >= 0, got {config['num_workers']!r}")
    if config.get("num_devices") is not None and config["num_devices"] != 1:
        raise ValueError(f"num_devices (--gpu) must be 1 (labkit trains on one device), "
                         f"got {config['num_devices']!r}")
    size = config.get("data_size")
    if size is not None and not MIN_DATA_SIZE <= size <= MAX_DATA_SIZE:
        raise ValueError(f"data_size must be at least {MIN_DATA_SIZE} rows, got {size!r}" if size < MIN_DATA_SIZE
                         else f"data_size must be at most {MAX_DATA_SIZE} rows (the whole JSC table), got {size!r}")
    if config.get("project") is not None:
        from .paths import check_name  # one folder under outputs/, never a path elsewhere
        check_name(config["project"], "project")


def read_toml_text(path) -> str:
    """The text of a TOML file, or a ConfigError naming the file and what is wrong with it.

    A UTF-8 byte-order mark (Notepad writes one) is dropped; binary and non-UTF-8 files are
    refused by name rather than with a codec error."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"config {path} is a directory, not a TOML file")
    if not path.exists():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"config {path} cannot be read: {e.strerror or e}") from None
    if b"\0" in raw:
        raise ConfigError(f"config {path} is a binary file, not a TOML text file")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError(f"config {path} is not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start}); "
                          f"save it as UTF-8") from None


def load_config(path) -> dict:
    """Read and validate a TOML config file."""
    path = Path(path)
    text = read_toml_text(path)
    try:
        config = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    return validate(config, source=str(path))


def resolve(file_config: dict | None, overrides: dict | None, base: dict | None = None) -> dict:
    """base (default: labkit's defaults) < file < overrides (``None`` in overrides means "not given")."""
    effective = dict(defaults() if base is None else base)
    effective.update({k: v for k, v in (file_config or {}).items()})
    effective.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return effective


def settings_table(file_config: dict | None, overrides: dict | None, keys=None, *,
                   effective: dict | None = None, base: dict | None = None) -> "pandas.DataFrame":
    """How each setting was decided: Name | Default | Config File | Manual Override | Effective.

    ``base`` holds the defaults (labkit's unless given); ``effective`` the resolved settings
    (computed with :func:`resolve` unless given)."""
    import pandas as pd

    base = defaults() if base is None else base
    effective = resolve(file_config, overrides, base) if effective is None else effective
    keys = keys or [k for k in KEYS if k not in TABLE_KEYS]
    rows = []
    for k in keys:
        rows.append({
            "Name": k,
            "Default": base.get(k),
            "Config File": (file_config or {}).get(k),
            "Manual Override": (overrides or {}).get(k),
            "Effective": effective.get(k),
        })
    table = pd.DataFrame(rows, dtype=object)
    if file_config is None:
        table = table.drop(columns="Config File")
    return table.map(lambda v: "" if v is None else v)
