"""The training settings: one frozen dataclass, checked once when it is built.

Like nanoGPT's ``GPTConfig``: every setting is a field with its default and a help line (the
command line's ``--help`` reads them). The boundaries build it -- the command line, a TOML
config (:func:`labkit.config.validate`), ``train(**overrides)``, a sweep's grid
(``dataclasses.replace``) -- and everything inside trusts it::

    s = TrainSettings(batch_size=256, learning_rate=1e-3)
    dataclasses.replace(s, batch_size=0)     # ValueError: batch_size must be a positive integer, got 0

Only the standard library is imported here, so the command line can build its parser
without importing torch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from . import checks

SCHEDULERS = (None, "none", "cosine")  # None and "none": a constant learning rate
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")


def _setting(default, help: str, **flag):
    """A field: its default, a help line, and what argparse needs beyond them (type, choices)."""
    return field(default=default, metadata={"help": help, "flag": flag})


@dataclass(frozen=True)
class TrainSettings:
    """Everything that decides how :func:`labkit.train` trains (not what: model and data)."""

    max_epochs: int = _setting(20, "maximum training epochs", type=int)
    batch_size: int = _setting(128, "mini-batch size", type=int)
    learning_rate: float = _setting(1e-5, "Adam learning rate", type=float)
    seed: int = _setting(0, "random seed, in [0, 2**32)", type=int)
    weight_decay: float = _setting(0.0, "Adam weight decay", type=float)
    scheduler: str | None = _setting(None, "learning-rate schedule: cosine, or none (the default: a constant rate)",
                                     choices=[s for s in SCHEDULERS if s])
    early_stopping: int | None = _setting(None, "early-stopping patience in epochs on val accuracy (default: off)",
                                          type=int, metavar="PATIENCE")
    max_time: float | None = _setting(None, "training time limit in seconds (default: none)", type=float, metavar="SECONDS")
    accelerator: str = _setting("auto", "device to train on: auto (as Lightning chooses), cpu, gpu or cuda, mps",
                                choices=ACCELERATORS)
    log_every_n_steps: int = _setting(50, "Lightning logging interval", type=int)
    num_threads: int | None = _setting(None, "CPU threads for torch (default: one when training on the CPU)", type=int)

    def __post_init__(self):
        # Each value is checked, then stored normalised (64.0 -> 64, "none" -> None): the one
        # place a training setting is checked (the accelerator's *hardware* is looked for when a
        # run starts, by labkit.runtime.check_usable: a config naming "gpu" is still valid data).
        scheduler = checks.one_of("scheduler", self.scheduler, SCHEDULERS)
        normalised = {
            "max_epochs": checks.positive_int("max_epochs", self.max_epochs),
            "batch_size": checks.positive_int("batch_size", self.batch_size),
            "learning_rate": checks.positive_float("learning_rate", self.learning_rate),
            "seed": checks.seed("seed", self.seed),
            "weight_decay": checks.non_negative_float("weight_decay", self.weight_decay),
            "scheduler": None if scheduler == "none" else scheduler,
            "early_stopping": checks.optional(checks.positive_int, "early_stopping (patience in epochs; None: off)",
                                              self.early_stopping),
            "max_time": checks.optional(checks.positive_float, "max_time (seconds; None: no limit)", self.max_time),
            "accelerator": checks.one_of("accelerator", self.accelerator, ACCELERATORS),
            "log_every_n_steps": checks.positive_int("log_every_n_steps", self.log_every_n_steps),
            "num_threads": checks.optional(checks.positive_int, "num_threads", self.num_threads),
        }
        for name, value in normalised.items():
            object.__setattr__(self, name, value)  # frozen: only __post_init__ may set them

    @classmethod
    def build(cls, settings: TrainSettings | None = None, **overrides) -> TrainSettings:
        """``settings`` (default: the defaults) with ``overrides``; an unknown name is a TypeError
        listing the settings (``dataclasses.replace`` would only say "unexpected keyword")."""
        unknown = [k for k in overrides if k not in NAMES]
        if unknown:
            raise TypeError(f"unknown training setting {unknown[0]!r}; the settings are {', '.join(NAMES)}")
        base = cls() if settings is None else checks.instance_of("settings", settings, cls, "a TrainSettings or None")
        return dataclasses.replace(base, **overrides) if overrides else base

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


FIELDS = {f.name: f for f in dataclasses.fields(TrainSettings)}
NAMES = tuple(FIELDS)
DEFAULTS = {name: f.default for name, f in FIELDS.items()}
