"""From a raw jet table to training-ready splits, with an on-disk cache of the result.

The recipe follows MASE / hls4ml (``train_test_split(test_size=0.2, random_state=42)`` after
``drop_duplicates()``, then a ``StandardScaler``), with one fix: MASE validates on its own
training data, here a real validation split is held out of ``train_val``.

1. drop duplicate rows (features + label), keeping the first occurrence;
2. test split: the first ``ceil(test_fraction * n)`` rows of ``RandomState(seed).permutation(n)``
   (exactly sklearn's ``train_test_split``, so the test set matches MASE's);
3. validation split: the last ``ceil(val_fraction * len(train_val))`` rows of ``train_val``;
4. standardise with the mean and (population) std of the *training* rows only.

The processed cache is one ``torch.save`` file (unscaled float32 features in train|val|test
order, int64 labels, split sizes, the scaler and the manifest), loaded with
``weights_only=True``, plus the same manifest as readable JSON. Its name carries a hash of
everything that decides its content (source checksum, seeds, sizes, fractions, versions).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..cache import atomic_write, atomic_write_text, settings_hash
from ..checks import instance_of
from .base import CLASS_NAMES, FEATURE_NAMES, DatasetInfo, JSCData

PREP_VERSION = 1
DEFAULT_SEED = 42              # MASE / hls4ml random_state
DEFAULT_TEST_FRACTION = 0.2
DEFAULT_VAL_FRACTION = 0.1     # of train_val


def check_size(size, maximum: int | None = None, of: str = "") -> int:
    """A row count: an integer of at least 100 (and at most ``maximum``, the rows ``of`` has)."""
    instance_of("size", size, (int, np.integer), "an integer number of rows")
    if size < 100:
        raise ValueError(f"size must be at least 100 rows, got {size}")
    if maximum is not None and size > maximum:
        raise ValueError(f"size must be at most {maximum} rows{' (' + of + ')' if of else ''}, got {size}")
    return int(size)


def subsample(x: np.ndarray, y: np.ndarray, size: int | None, seed: int):
    """A seeded random ``size``-row subset, in file order (all rows if ``size`` is None or larger)."""
    if size is None or size >= len(y):
        return x, y
    keep = np.sort(np.random.RandomState(seed).permutation(len(y))[:size])
    return x[keep], y[keep]


def drop_duplicates(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Remove repeated (features, label) rows, keeping first occurrences in order."""
    table = pd.DataFrame(x)
    table["label"] = y
    keep = ~table.duplicated().to_numpy()
    return x[keep], y[keep]


def split_indices(n: int, seed: int, test_fraction: float, val_fraction: float):
    """Row indices of (train, val, test); test as in sklearn's ``train_test_split``."""
    perm = np.random.RandomState(seed).permutation(n)
    n_test = math.ceil(test_fraction * n)
    test, train_val = perm[:n_test], perm[n_test:]
    n_val = math.ceil(val_fraction * len(train_val))
    train, val = train_val[:len(train_val) - n_val], train_val[len(train_val) - n_val:]
    if min(len(train), len(val), len(test)) == 0:
        raise ValueError(f"{n} rows are too few to split into train/val/test "
                         f"(test_fraction={test_fraction}, val_fraction={val_fraction})")
    return train, val, test


def cache_key(settings: dict) -> str:
    return settings_hash({**settings, "prep_version": PREP_VERSION})


def processed_path(data_dir: Path, name: str, settings: dict) -> Path:
    return Path(data_dir) / "processed" / f"{name}-{cache_key(settings)}.pt"


def atomic_save(obj, path: Path):
    """``torch.save`` to a temp file in the same folder, then rename: never a half-written file."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def preprocess(x: np.ndarray, y: np.ndarray, *, seed: int, test_fraction: float,
               val_fraction: float) -> dict:
    """Dedupe, split and fit the scaler; returns the content of a processed cache file."""
    n_raw = len(y)
    x, y = drop_duplicates(np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.int64))
    train, val, test = split_indices(len(y), seed, test_fraction, val_fraction)
    order = np.concatenate([train, val, test])
    mean = x[train].mean(axis=0)
    std = x[train].std(axis=0)
    std[std == 0] = 1.0                       # a constant feature stays as it is (sklearn does the same)
    counts = {s: np.bincount(y[idx], minlength=len(CLASS_NAMES)).tolist()
              for s, idx in (("train", train), ("val", val), ("test", test))}
    return {
        "x": torch.from_numpy(x[order].astype(np.float32)),
        "y": torch.from_numpy(y[order]),
        "sizes": [len(train), len(val), len(test)],
        "mean": mean.tolist(),
        "std": std.tolist(),
        "stats": {"rows_raw": n_raw, "duplicates_dropped": n_raw - len(y), "class_counts": counts},
    }


def content_digest(payload: dict) -> str:
    """sha256 of what a processed cache holds: features, labels, split sizes and scaler."""
    h = hashlib.sha256()
    for t in (payload["x"], payload["y"]):
        t = t.contiguous()
        h.update(str((tuple(t.shape), t.dtype)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    h.update(json.dumps([[int(s) for s in payload["sizes"]], list(payload["mean"]), list(payload["std"])]).encode())
    return h.hexdigest()


def _distrust(payload: dict) -> str | None:
    """Why a well-formed cache must not be used (None: use it). A cache is one file written
    atomically with the checksum of its content inside, so a mismatch means it was changed
    afterwards; non-finite numbers would train into NaN silently."""
    if "content_sha256" not in payload:
        return "has no content checksum (written by an older labkit)"
    if payload["content_sha256"] != content_digest(payload):
        return "does not match the checksum written with it (changed since)"
    scaler = torch.tensor([*payload["mean"], *payload["std"]], dtype=torch.float64)
    if not (torch.isfinite(payload["x"]).all() and torch.isfinite(scaler).all()):
        return "holds non-finite values"
    return None


def save_processed(path: Path, content: dict, manifest: dict) -> dict:
    """Write the processed cache, with a checksum of its content inside (one atomic write),
    and a JSON copy of its manifest."""
    manifest = {**manifest, **content["stats"],
                "split_sizes": dict(zip(JSCData.SPLITS, content["sizes"])),
                "scaler": {"mean": dict(zip(FEATURE_NAMES, content["mean"])),
                           "std": dict(zip(FEATURE_NAMES, content["std"]))},
                "feature_names": list(FEATURE_NAMES), "class_names": list(CLASS_NAMES),
                "prep_version": PREP_VERSION,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "cache_file": path.name}
    payload = {k: content[k] for k in ("x", "y", "sizes", "mean", "std")}
    manifest["content_sha256"] = payload["content_sha256"] = content_digest(payload)
    payload["manifest"] = json.dumps(manifest)
    atomic_save(payload, path)
    atomic_write_text(path.with_suffix(".json"), json.dumps(manifest, indent=2) + "\n")
    return manifest


def read_processed(path: Path) -> dict | None:
    """The cached content at ``path``, or None if it is missing or unreadable (then rebuild)."""
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        x, y, sizes = payload["x"], payload["y"], [int(s) for s in payload["sizes"]]
        ok = (x.ndim == 2 and x.shape[1] == len(FEATURE_NAMES) and x.dtype == torch.float32
              and y.dtype == torch.int64 and len(y) == len(x) == sum(sizes))
        if not ok:
            raise ValueError("shapes do not match")
        payload["manifest"] = json.loads(payload["manifest"])
        why = _distrust(payload)
    except Exception as err:  # a truncated/corrupt cache file: say so, then rebuild it
        print(f"[labkit] ignoring unreadable processed cache {path} ({type(err).__name__}: {err}); rebuilding")
        return None
    if why:
        print(f"[labkit] processed cache {path} {why}: rebuilding it from the source, checked again")
        return None
    return payload


def to_jscdata(payload: dict, info: DatasetInfo) -> JSCData:
    """Standardise the cached (unscaled) features and cut them into the three splits."""
    mean = torch.tensor(payload["mean"], dtype=torch.float32)
    std = torch.tensor(payload["std"], dtype=torch.float32)
    x = (payload["x"] - mean) / std
    y = payload["y"]
    n_train, n_val, _ = payload["sizes"]
    a, b = n_train, n_train + n_val
    return JSCData(info, x[:a], y[:a], x[a:b], y[a:b], x[b:], y[b:], manifest=payload["manifest"])


def load_or_build(data_dir: Path, name: str, settings: dict, build, info: DatasetInfo,
                  manifest: dict, *, with_payload: bool = False):
    """Load the processed cache for ``settings``; on a miss call ``build() -> (x, y)``,
    preprocess, save, and return the result.

    ``with_payload=True`` returns ``(data, payload)``: the payload holds the unscaled features,
    labels, scaler and manifest, so :func:`labkit.data.raw_frame` gets physical units from the
    same single load."""
    path = processed_path(data_dir, name, settings)
    payload = read_processed(path)
    if payload is None:
        x, y = build()
        content = preprocess(x, y, seed=settings["seed"], test_fraction=settings["test_fraction"],
                             val_fraction=settings["val_fraction"])
        full_manifest = save_processed(path, content, {**manifest, "settings": settings})
        payload = {**content, "manifest": full_manifest}
    payload["manifest"]["cache_path"] = str(path)
    data = to_jscdata(payload, info)
    return (data, payload) if with_payload else data


def unscaled_frame(payload: dict) -> pd.DataFrame:
    """The cached features in physical units, with ``split`` and ``label`` columns."""
    frame = pd.DataFrame(payload["x"].numpy(), columns=list(FEATURE_NAMES))
    frame["label"] = pd.Categorical.from_codes(payload["y"].numpy(), categories=list(CLASS_NAMES))
    frame["split"] = np.repeat(list(JSCData.SPLITS), payload["sizes"])
    return frame
