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
