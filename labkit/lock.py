"""One run at a time per project folder: a lock file holding the PID of the run that owns it.

Two trainings into the same ``outputs/<project>/`` at once would overwrite each other's
``best.ckpt``, so the first one's printed checkpoint path would end up holding the other's
model. :func:`project_lock` makes the second run fail at once, naming the holder:

    with project_lock(outputs_dir() / "lab-1"):
        ...  # train, write checkpoints

The lock is an OS file lock (``flock``) on ``<project>/.labkit.lock``. The kernel drops it
when its process dies, however it dies (``kill -9`` included), so a lock file left behind
by a dead run is stale by construction and the next run simply takes it over. The file's
content (PID, host, start time) only serves the message. Where ``flock`` does not exist
(Windows), a lock file whose PID no longer runs counts as stale.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

LOCK_NAME = ".labkit.lock"


class ProjectBusyError(RuntimeError):
    """Another live run holds the project's lock."""


def _holder(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _busy_message(folder: Path, holder: dict) -> str:
    who = f"PID {holder['pid']}" if holder.get("pid") else "another process"
    if holder.get("host") and holder["host"] != socket.gethostname():
        who += f" on {holder['host']}"
    return (f"project folder {folder} is in use by another labkit run ({who}, lock file "
            f"{folder / LOCK_NAME}); wait for it to finish or choose another project name")


def _pid_alive(pid) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


@contextlib.contextmanager
def project_lock(folder):
    """Hold ``folder``'s lock for the block; :class:`ProjectBusyError` at once if a live run has it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if fcntl is None:
        yield from _pid_lock(folder, path, me)
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ProjectBusyError(_busy_message(folder, _holder(path))) from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(me).encode())
        try:
            yield path
        finally:
            # Empty the file before letting go: a reader never names a finished run as holder.
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # releases the flock


def _pid_lock(folder: Path, path: Path, me: dict):
    for _ in range(2):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            break
        except FileExistsError:
            holder = _holder(path)
            if _pid_alive(holder.get("pid")):
                raise ProjectBusyError(_busy_message(folder, holder)) from None
            path.unlink(missing_ok=True)  # stale: its run is gone
    else:
        raise ProjectBusyError(_busy_message(folder, _holder(path)))
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(me))
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)
