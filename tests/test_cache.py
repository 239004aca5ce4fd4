"""labkit.cache: atomic writes (permissions, no leftovers) and the settings-keyed result cache."""

from __future__ import annotations

import os
import stat

import pytest

from labkit.cache import ResultCache, atomic_write, atomic_write_text, current_umask


@pytest.fixture
def umask():
    """Set the process umask for one test, then restore it."""
    old = os.umask(0o022)
    os.umask(old)
    yield lambda mask: os.umask(mask)
    os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_atomic_write_gives_new_files_the_umask_permissions(tmp_path, umask, mask, expected):
    umask(mask)
    assert current_umask() == mask
    path = atomic_write_text(tmp_path / "sub" / "a.json", "{}")
    assert mode(path) == expected                      # not mkstemp's owner-only 0o600
    cache = ResultCache(tmp_path / "sweep")
    assert mode(cache.put({"lr": 1e-3}, {"acc": 0.5})) == expected


def test_atomic_write_replaces_whole_files_and_leaves_no_temp_on_failure(tmp_path):
    path = atomic_write_text(tmp_path / "a.txt", "old")

    def broken(tmp):
        with open(tmp, "w") as f:
            f.write("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, broken)
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_result_cache_round_trip_and_key(tmp_path):
    cache = ResultCache(tmp_path)
    key = {"model": "jsc-tiny", "batch_size": 64}
    assert cache.get(key) is None
    cache.put(key, {"acc": 0.7})
    assert cache.get({"batch_size": 64, "model": "jsc-tiny"}) == {"acc": 0.7}   # key order does not matter
    assert cache.get({**key, "batch_size": 128}) is None and len(cache) == 1
    assert cache.entries() == [{"settings": key, "result": {"acc": 0.7}}]
