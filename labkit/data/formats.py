"""The two file formats the real JSC data comes in: read them, check them, and write them.

* OpenML dataset 42468 ``hls4ml_lhc_jets_hlf``: an ARFF text file (16 numeric attributes,
  named with or without the ``j_`` prefix, and a nominal ``class`` in {g, q, w, z, t}),
  described by a JSON document from the OpenML API.
* The hls4ml HDF5 file that MASE downloads from CERNBox: dataset ``t_allpar_new`` is a
  compound (structured) array with one named field per jet observable, including the 16
  features and the one-hot labels ``j_g, j_q, j_w, j_z, j_t``.

Readers return ``(x, y)``: float64 features in :data:`FEATURE_NAMES` order and int64 class
indices in :data:`CLASS_NAMES` order, after :func:`validate` has checked them. Writers exist
so the tests (and anyone without the real file) can exercise the real path end to end.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from .base import CLASS_NAMES, FEATURE_NAMES

HDF5_TREE = "t_allpar_new"
MIN_ROWS = 1000                 # fewer rows than this is not a JSC table (real: 830k+)
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


STAND_IN_MARK = "written by labkit (jsc-synthetic stand-in, NOT real data)"


class DataFormatError(ValueError):
    """A data file that is not (a complete, valid copy of) the JSC table."""


def file_digests(path, algorithms=("sha256",), chunk: int = 1 << 22) -> dict[str, str]:
    """Hex digests of a file under several algorithms (e.g. ``("md5", "sha256")``) in one
    pass, read in chunks so a large file is never held in memory whole."""
    hashes = {name: hashlib.new(name) for name in algorithms}
    with open(path, "rb") as f:
        while block := f.read(chunk):
            for h in hashes.values():
                h.update(block)
    return {name: h.hexdigest() for name, h in hashes.items()}


def file_digest(path, algorithm: str = "sha256", chunk: int = 1 << 22) -> str:
    """Hex digest of a file under one algorithm."""
    return file_digests(path, (algorithm,), chunk)[algorithm]


def sha256_file(path) -> str:
    return file_digest(path, "sha256")


def md5_file(path) -> str:
    return file_digest(path, "md5")


def sniff(path) -> str:
    """What a file looks like from its first bytes: "hdf5", "arff", "json" or "html".

    Raises :class:`DataFormatError` for an empty file or anything else.
    """
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(4096)
    if not head:
        raise DataFormatError(f"{path} is empty (0 bytes)")
    if head.startswith(HDF5_MAGIC):
        return "hdf5"
    text = head.decode("utf-8", errors="replace").lstrip("\ufeff \t\r\n")
    lower = text[:200].lower()
    if lower.startswith(("<!doctype", "<html", "<?xml", "<head", "<body")) or "<html" in lower:
        raise DataFormatError(f"{path} is an HTML/XML page, not data (an error or login page saved "
                              f"as the file?); it begins: {text[:80]!r}")
    if text.startswith("{"):
        return "json"
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("%"):
            continue
        if line.lower().startswith("@relation"):
            return "arff"
        break
    raise DataFormatError(f"{path} is neither ARFF, HDF5 nor an OpenML JSON description; "
                          f"it begins: {head[:60]!r}")


def _feature_name(name: str) -> str:
    """OpenML drops the ``j_`` prefix (``zlogz``); MASE keeps it (``j_zlogz``). Accept both."""
    name = name.strip().strip("'\"")
    return name if name.startswith("j_") else f"j_{name}"


def validate(x: np.ndarray, y: np.ndarray, source) -> tuple[np.ndarray, np.ndarray]:
    """Check a parsed table: enough rows, finite features, labels in range, every class present."""
    n = len(y)
    if n < MIN_ROWS:
        raise DataFormatError(f"{source}: only {n} rows; a JSC table has hundreds of thousands "
                              f"(at least {MIN_ROWS} expected) - truncated file?")
    bad = ~np.isfinite(x)
    if bad.any():
        rows, cols = np.nonzero(bad)
        raise DataFormatError(f"{source}: {len(np.unique(rows))} rows have missing or non-finite values "
                              f"(first: row {rows[0]}, column {FEATURE_NAMES[cols[0]]}) - truncated or corrupt?")
    if (y < 0).any() or (y >= len(CLASS_NAMES)).any():
        raise DataFormatError(f"{source}: labels outside {list(CLASS_NAMES)}")
    counts = np.bincount(y, minlength=len(CLASS_NAMES))
    missing = [c for c, k in zip(CLASS_NAMES, counts) if k == 0]
    if missing:
        raise DataFormatError(f"{source}: no jets of class {', '.join(missing)}; all of "
                              f"{', '.join(CLASS_NAMES)} must be present")
    return x, y


def _require(columns, available, source):
    missing = [c for c in columns if c not in available]
    if missing:
        raise DataFormatError(f"{source}: missing column(s) {', '.join(missing)}; the JSC table needs "
                              f"all of {', '.join(FEATURE_NAMES)} and the labels")


# --- ARFF (OpenML) ---------------------------------------------------------------------------

_ATTRIBUTE = re.compile(r"@attribute\s+('[^']*'|\"[^\"]*\"|\S+)\s+(.+)", re.IGNORECASE)


def read_arff(path) -> tuple[np.ndarray, np.ndarray]:
    """Parse an OpenML ARFF file (numeric attributes + a nominal class) into ``(x, y)``."""
    path = Path(path)
    names, types = [], []
    with open(path, "r", encoding="utf-8", errors="replace") as f:
        for line in f:
            stripped = line.strip()
            if not stripped or stripped.startswith("%"):
                continue
            lower = stripped.lower()
            if lower.startswith("@attribute"):
                match = _ATTRIBUTE.match(stripped)
                if not match:
                    raise DataFormatError(f"{path}: cannot parse ARFF line {stripped[:80]!r}")
                names.append(match.group(1).strip("'\""))
                types.append(match.group(2).strip())
            elif lower.startswith("@data"):
                break
            elif not lower.startswith("@relation"):
                raise DataFormatError(f"{path}: unexpected ARFF header line {stripped[:80]!r}")
        else:
            raise DataFormatError(f"{path}: no @data section - truncated ARFF file?")
        try:
            table = pd.read_csv(f, header=None, names=names, comment="%", na_values=["?"],
                                quotechar="'", skipinitialspace=True, dtype={n: str for n, t in
                                zip(names, types) if t.startswith("{")}, low_memory=False)
        except (pd.errors.ParserError, ValueError) as err:
            raise DataFormatError(f"{path}: malformed ARFF data section ({err})") from None
    class_col = next((n for n, t in zip(names, types) if n.lower() == "class" and t.startswith("{")), None)
    if class_col is None:
        raise DataFormatError(f"{path}: no nominal 'class' attribute; attributes are {names}")
    table = table.rename(columns={n: _feature_name(n) for n in names if n != class_col})
    _require(FEATURE_NAMES, table.columns, path)
    try:
        x = table[list(FEATURE_NAMES)].to_numpy(dtype=np.float64)
    except ValueError as err:
        raise DataFormatError(f"{path}: non-numeric feature values ({err})") from None
    labels = table[class_col].astype(str).str.strip().str.strip("'\"")
    labels = labels.where(labels.str.startswith("j_"), "j_" + labels)
    codes = pd.Categorical(labels, categories=list(CLASS_NAMES)).codes.astype(np.int64)
    if (codes < 0).any():
        bad = sorted(set(labels[codes < 0]))[:5]
        raise DataFormatError(f"{path}: unknown class value(s) {bad}; expected g, q, w, z, t")
    return validate(x, codes, path)


def write_arff(path, x: np.ndarray, y: np.ndarray, *, prefix: bool = False,
               relation: str = "hls4ml_lhc_jets_hlf"):
    """Write ``(x, y)`` as OpenML does: attributes without ``j_`` (unless ``prefix``), a
    nominal ``class`` {g, q, w, z, t} last."""
    names = [n if prefix else n[2:] for n in FEATURE_NAMES]
    short = [c[2:] for c in CLASS_NAMES]
    header = [f"% {relation}: {STAND_IN_MARK}",
              f"@RELATION {relation}", ""]
    header += [f"@ATTRIBUTE {n} NUMERIC" for n in names]
    header += [f"@ATTRIBUTE class {{{','.join(short)}}}", "", "@DATA"]
    table = pd.DataFrame(x, columns=names)
    table["class"] = np.asarray(short)[y]
    with open(path, "w") as f:
        f.write("\n".join(header) + "\n")
        table.to_csv(f, header=False, index=False, float_format="%.8g", lineterminator="\n")


def openml_description(arff_url: str, md5: str, *, dataset_id: int = 42468, file_id: int = 0) -> dict:
    """A JSON document shaped like ``GET /api/v1/json/data/<id>`` from OpenML."""
    return {"data_set_description": {
        "id": str(dataset_id), "name": "hls4ml_lhc_jets_hlf", "version": "1", "format": "ARFF",
        "file_id": str(file_id), "default_target_attribute": "class", "status": "active",
        "md5_checksum": md5, "url": arff_url}}


def parse_openml_description(path, api_url: str = "") -> tuple[str, str | None]:
    """(ARFF download URL, md5 or None) from an OpenML data description."""
    try:
        desc = json.loads(Path(path).read_text())["data_set_description"]
    except (ValueError, KeyError, TypeError) as err:
        raise DataFormatError(f"{api_url or path}: not an OpenML data description ({err})") from None
    url = desc.get("url")
    if not url and desc.get("file_id"):
        base = api_url.split("/api/")[0] if "/api/" in api_url else "https://api.openml.org"
        url = f"{base}/data/v1/download/{desc['file_id']}"
    if not url:
        raise DataFormatError(f"{api_url or path}: OpenML description has neither 'url' nor 'file_id'")
    return url, desc.get("md5_checksum")


# --- HDF5 (hls4ml / CERNBox, as read by MASE) --------------------------------------------------

def read_hdf5(path) -> tuple[np.ndarray, np.ndarray]:
    """Read the ``t_allpar_new`` compound array: 16 feature fields + one-hot label fields."""
    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            if HDF5_TREE not in f:
                raise DataFormatError(f"{path}: no dataset {HDF5_TREE!r}; it holds {sorted(f.keys())}")
            tree = f[HDF5_TREE]
            fields = tree.dtype.names
            if not fields:
                raise DataFormatError(f"{path}: {HDF5_TREE!r} is not a compound (named-field) array")
            _require(FEATURE_NAMES + CLASS_NAMES, fields, path)
            table = tree.fields(list(FEATURE_NAMES + CLASS_NAMES))[()]   # only the columns we use
    except OSError as err:  # h5py: truncated, not HDF5, unreadable
        raise DataFormatError(f"{path}: unreadable HDF5 ({err}) - truncated or corrupt?") from None
    x = np.column_stack([table[n].astype(np.float64) for n in FEATURE_NAMES])
    onehot = np.column_stack([table[c].astype(np.float64) for c in CLASS_NAMES])
    if not np.all(onehot.sum(axis=1) == 1) or not np.all((onehot == 0) | (onehot == 1)):
        raise DataFormatError(f"{path}: label fields {', '.join(CLASS_NAMES)} are not one-hot in every row")
    return validate(x, onehot.argmax(axis=1).astype(np.int64), path)


def write_hdf5(path, x: np.ndarray, y: np.ndarray):
    """Write ``(x, y)`` as the hls4ml file: a ``t_allpar_new`` compound array with ``j_index``,
    the 16 features (float32) and the one-hot labels (int32)."""
    dtype = [("j_index", "<i8")] + [(n, "<f4") for n in FEATURE_NAMES] + [(c, "<i4") for c in CLASS_NAMES]
    table = np.zeros(len(y), dtype=dtype)
    table["j_index"] = np.arange(len(y))
    for i, n in enumerate(FEATURE_NAMES):
        table[n] = x[:, i]
    for k, c in enumerate(CLASS_NAMES):
        table[c] = (y == k)
    with h5py.File(path, "w") as f:
        f.create_dataset(HDF5_TREE, data=table)
        f.attrs["labkit"] = STAND_IN_MARK


def is_stand_in(path, kind: str | None = None) -> bool:
    """Was this file written by labkit's synthetic writer? Then it is no real data, whatever
    name it is loaded under (e.g. served as ``jsc`` in the loopback tests)."""
    kind = kind or sniff(path)
    if kind == "arff":
        with open(path, errors="replace") as f:
            head = f.read(512)
        return STAND_IN_MARK in head
    if kind == "hdf5":
        with h5py.File(path, "r") as f:
            return f.attrs.get("labkit") == STAND_IN_MARK
    return False


def read_table(path, kind: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read and validate a JSC file in either format (sniffed when ``kind`` is None)."""
    kind = kind or sniff(path)
    if kind == "arff":
        return read_arff(path)
    if kind == "hdf5":
        return read_hdf5(path)
    raise DataFormatError(f"{path}: a {kind} file is not a JSC table (expected ARFF or HDF5)")
