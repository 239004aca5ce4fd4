"""Where labkit reads and writes: one place to change it.

By default everything lives in the project checkout (``data/``, ``outputs/``, ``figures/``),
found from this file, so notebooks (which run inside ``notebooks/``) and the CLI agree.
``LABKIT_HOME`` moves all three; ``LABKIT_DATA_DIR`` / ``LABKIT_OUTPUT_DIR`` /
``LABKIT_FIGURES_DIR`` move one each.
"""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

# A name that becomes one folder under outputs/ (a project, a sweep): one path component of
# safe characters, bounded so it fits any file system, and never "..", a hidden file or an
# option-looking "-x". A config shared between students must not write anywhere else.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
NAME_RULE = ("1-64 characters from A-Z a-z 0-9 . _ -, starting with a letter or digit "
             "(one folder name under outputs/, no '/' or '..')")


def check_name(value, what: str = "project") -> str:
    """``value`` if it is a safe single folder name, else a ValueError naming ``what``, the
    value and what is allowed (a TypeError when it is not a string at all)."""
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a string ({NAME_RULE}), got {value!r} ({type(value).__name__})")
    if not NAME_PATTERN.fullmatch(value):
        shown = repr(value) if len(value) <= 80 else repr(value[:60]) + f"... ({len(value)} characters)"
        raise ValueError(f"{what} {shown} is not allowed: use {NAME_RULE}")
    return value


class PathUnusableError(OSError):
    """A folder labkit must write to cannot be used (an environment fault, not bad input)."""


def unusable(path, err: OSError | None = None, env: str | None = None) -> PathUnusableError:
    """One line naming ``path``, what is wrong with it and what to do."""
    path = Path(path)
    blocker = next((p for p in [path, *path.parents] if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        problem = f"{blocker} is a regular file, not a folder; move it away"
    elif err is not None and isinstance(err, PermissionError):
        problem = "permission denied; make it writable for this user"
    else:
        problem = (err.strerror or str(err)) if err is not None else "it cannot be used"
    hint = f" (or set {env} to a writable folder)" if env else ""
    return PathUnusableError(f"cannot write to {path}: {problem}{hint}")


def project_root() -> Path:
    if os.environ.get("LABKIT_HOME"):
        return Path(os.environ["LABKIT_HOME"]).expanduser().resolve()
    here = Path(__file__).resolve().parent.parent
    if (here / "pyproject.toml").exists():  # a checkout / editable install
        return here
    return Path.cwd()


def _dir(env: str, default: str, writable: bool = False) -> Path:
    path = Path(os.environ[env]).expanduser() if os.environ.get(env) else project_root() / default
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise unusable(path, e, env) from None
    if writable and not os.access(path, os.W_OK | os.X_OK):  # say so now, not from inside Lightning
        raise unusable(path, PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path)), env)
    return path


def env_for(path) -> str | None:
    """The environment variable that moves the labkit folder ``path`` lies in, if any."""
    path = Path(path).absolute()
    for env, default in (("LABKIT_DATA_DIR", "data"), ("LABKIT_OUTPUT_DIR", "outputs"),
                         ("LABKIT_FIGURES_DIR", "figures")):
        root = Path(os.environ[env]).expanduser() if os.environ.get(env) else project_root() / default
        if path.is_relative_to(root.absolute()):
            return env
    return None


def data_dir() -> Path:
    return _dir("LABKIT_DATA_DIR", "data")


def outputs_dir(write: bool = True) -> Path:
    """``outputs/``; ``write=False`` for browsing what is there (a shared, read-only copy is fine)."""
    return _dir("LABKIT_OUTPUT_DIR", "outputs", writable=write)


def figures_dir() -> Path:
    return _dir("LABKIT_FIGURES_DIR", "figures", writable=True)
