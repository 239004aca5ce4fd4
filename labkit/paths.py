"""Where labkit reads and writes: one place to change it.

By default everything lives in the project checkout (``data/``, ``outputs/``, ``figures/``),
found from this file, so notebooks (which run inside ``notebooks/``) and the CLI agree.
``LABKIT_HOME`` moves all three; ``LABKIT_DATA_DIR`` / ``LABKIT_OUTPUT_DIR`` /
``LABKIT_FIGURES_DIR`` move one each.
"""

from __future__ import annotations

import os
from pathlib import Path


def project_root() -> Path:
    if os.environ.get("LABKIT_HOME"):
        return Path(os.environ["LABKIT_HOME"]).expanduser().resolve()
    here = Path(__file__).resolve().parent.parent
    if (here / "pyproject.toml").exists():  # a checkout / editable install
        return here
    return Path.cwd()


def _dir(env: str, default: str) -> Path:
    path = Path(os.environ[env]).expanduser() if os.environ.get(env) else project_root() / default
    path.mkdir(parents=True, exist_ok=True)
    return path


def data_dir() -> Path:
    return _dir("LABKIT_DATA_DIR", "data")


def outputs_dir() -> Path:
    return _dir("LABKIT_OUTPUT_DIR", "outputs")


def figures_dir() -> Path:
    return _dir("LABKIT_FIGURES_DIR", "figures")


_NAME_CHARS = "[A-Za-z0-9][A-Za-z0-9._-]{0,63}"


def check_name(value, what: str = "project") -> str:
    """A user-given name that becomes a folder or file name: one path component of letters,
    digits, ``.``, ``_`` and ``-`` (first a letter or digit, at most 64), so it can never climb
    out of ``outputs/`` (``..``, ``/``) or surprise a shell. Returns ``value``; ValueError if not."""
    import re
    if not isinstance(value, str) or not re.fullmatch(_NAME_CHARS, value):
        raise ValueError(f"{what} name {value!r} is not allowed: use 1-64 letters, digits, '.', '_' or '-', "
                         "starting with a letter or digit")
    return value
