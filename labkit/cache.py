"""A small on-disk store of finished results, keyed by the settings that produced them.

Sweeps and quantisation comparisons save one JSON file per finished run, named by a hash
of its settings. Re-running reuses finished runs instantly; an interrupted sweep resumes
with only the missing runs; changing one setting invalidates only that run's entry.

    cache = ResultCache("outputs/sweeps/lab1")
    key = {"model": "jsc-tiny", "batch_size": 64, ...}
    if (hit := cache.get(key)) is None:
        cache.put(key, run(...))
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path


def settings_hash(settings: dict) -> str:
    """A stable short hash of a JSON-able settings dict (key order does not matter)."""
    blob = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux); elsewhere by
    setting and restoring it."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path, write) -> Path:
    """Create ``path`` via ``write(tmp_path)`` on a temp file in the same folder, then rename:
    readers see the old file or the new one, never half of one, and a failure leaves no trace.

    The file gets the permissions of an ordinary new file (``0o666`` minus the umask), not the
    owner-only ``0o600`` of the temp file, so a shared data folder stays readable to its group."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path, text: str) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def _well_formed(entry) -> bool:
    return (isinstance(entry, dict) and isinstance(entry.get("settings"), dict)
            and isinstance(entry.get("result"), dict))


class ResultCache:
    def __init__(self, directory):
        self.dir = Path(directory)

    def path(self, settings: dict) -> Path:
        return self.dir / f"{settings_hash(settings)}.json"

    def get(self, settings: dict, valid=None):
        """The stored result for ``settings``, or None when there is none.

        An entry that is not ``{"settings": {...}, "result": {...}}`` (or whose result fails
        ``valid(result)``) counts as missing: it is moved aside into ``corrupt/`` (kept for a
        look, out of the way of the fresh result) and the caller computes it again."""
        path = self.path(settings)
        try:
            entry = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            self._set_aside(path)
            return None
        if not _well_formed(entry) or (valid is not None and not valid(entry["result"])):
            self._set_aside(path)
            return None
        return entry["result"] if entry["settings"] == json.loads(json.dumps(settings, default=str)) else None

    def _set_aside(self, path: Path):
        dest = self.dir / "corrupt" / f"{path.stem}.{os.getpid()}.{os.urandom(3).hex()}.json"
        try:
            dest.parent.mkdir(exist_ok=True)
            os.replace(path, dest)
        except OSError:
            pass  # someone else moved it already, or the folder is read-only: put() replaces it

    def put(self, settings: dict, result: dict) -> Path:
        path = self.path(settings)
        atomic_write_text(path, json.dumps({"settings": settings, "result": result}, indent=1, default=str))
        return path

    def entries(self) -> list[dict]:
        """Every stored ``{"settings": ..., "result": ...}``, oldest first."""
        out = []
        for p in sorted(self.dir.glob("*.json"), key=lambda p: p.stat().st_mtime):
            try:
                entry = json.loads(p.read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                continue
            if _well_formed(entry):
                out.append(entry)
        return out

    def __len__(self) -> int:
        return len(list(self.dir.glob("*.json")))
