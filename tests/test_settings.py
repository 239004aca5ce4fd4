"""TrainSettings: the one frozen dataclass of training settings, checked once when built."""

import dataclasses

import pytest

from labkit import config as cfg
from labkit.settings import DEFAULTS, FIELDS, TrainSettings


def test_every_setting_has_a_default_and_a_help_line_the_config_and_cli_share():
    assert set(FIELDS) == set(DEFAULTS) and DEFAULTS == cfg.DEFAULTS
    assert DEFAULTS["batch_size"] == 128 and DEFAULTS["learning_rate"] == 1e-5 and DEFAULTS["accelerator"] == "auto"
    for name, f in FIELDS.items():
        assert f.metadata["help"], name
        assert cfg.KEYS[name][1:] == (f.default, f.metadata["help"])  # the TOML table reads them


def test_values_are_stored_normalised_and_the_object_is_frozen():
    s = TrainSettings(batch_size=64.0, learning_rate=1, scheduler="none", weight_decay=0, max_time=5)
    assert (s.batch_size, s.learning_rate, s.scheduler, s.weight_decay, s.max_time) == (64, 1.0, None, 0.0, 5.0)
    assert type(s.batch_size) is int and type(s.learning_rate) is float
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.batch_size = 0
    assert dataclasses.replace(s, batch_size=256).batch_size == 256  # a sweep's grid point


@pytest.mark.parametrize("kwargs, message", [
    ({"batch_size": 0}, "batch_size must be a positive integer, got 0"),
    ({"batch_size": 2.5}, "batch_size must be a positive integer, got 2.5"),
    ({"batch_size": True}, "batch_size must be a positive integer, got True"),
    ({"max_epochs": "3"}, "max_epochs must be a positive integer, got '3'"),
    ({"learning_rate": float("inf")}, "learning_rate must be a finite number > 0, got inf"),
    ({"weight_decay": -1}, "weight_decay must be a finite number >= 0, got -1"),
    ({"seed": 2**32}, r"seed must be an integer in \[0, 2\*\*32\), got 4294967296"),
    ({"scheduler": "step"}, "scheduler must be one of None, 'none', 'cosine', got 'step'"),
    ({"accelerator": "tpu"}, "accelerator must be one of 'auto', 'cpu', 'gpu', 'cuda', 'mps', got 'tpu'"),
    ({"early_stopping": 0}, r"early_stopping \(patience in epochs; None: off\) must be a positive integer, got 0"),
    ({"num_threads": -2}, "num_threads must be a positive integer, got -2"),
    ({"log_every_n_steps": 0}, "log_every_n_steps must be a positive integer, got 0"),
])
def test_one_check_and_one_message_at_every_boundary(kwargs, message):
    """TrainSettings itself, dataclasses.replace, a TOML config and a sweep value: same line."""
    from labkit.sweep import check_value
    with pytest.raises(ValueError, match=message):
        TrainSettings(**kwargs)
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(TrainSettings(), **kwargs)
    with pytest.raises(cfg.ConfigError, match="run.toml: " + message):
        cfg.validate(dict(kwargs), source="run.toml")
    (name, value), = kwargs.items()
    if name in ("max_epochs", "batch_size", "learning_rate", "seed", "weight_decay", "scheduler",
                "early_stopping"):
        with pytest.raises(ValueError, match=message):
            check_value(name, value)


def test_build_names_an_unknown_setting_and_a_wrong_base():
    assert TrainSettings.build(batch_size=32) == TrainSettings(batch_size=32)
    base = TrainSettings(seed=3)
    assert TrainSettings.build(base) is base and TrainSettings.build(base, seed=4).seed == 4
    with pytest.raises(TypeError, match="unknown training setting 'batch_sise'; the settings are max_epochs, "):
        TrainSettings.build(batch_sise=32)
    with pytest.raises(TypeError, match="settings must be a TrainSettings or None, got {'seed': 3} \\(dict\\)"):
        TrainSettings.build({"seed": 3})


def test_the_train_flags_come_from_the_fields(capsys):
    from labkit.cli import _parser
    sub = next(a for a in _parser()._actions if a.dest == "action").choices["train"]
    flags = {a.dest: a for a in sub._actions}
    for name, f in FIELDS.items():
        assert flags[name].option_strings == ["--" + name.replace("_", "-")]
        assert flags[name].default is None and f.metadata["help"] in flags[name].help
    assert flags["batch_size"].type is int and flags["learning_rate"].type is float
    assert list(flags["scheduler"].choices) == ["none", "cosine"]
