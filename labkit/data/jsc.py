"""The real JSC data: where it comes from, how it is downloaded, checked and cached.

Sources, tried in order until one works:

1. OpenML dataset 42468 ``hls4ml_lhc_jets_hlf`` (830,000 jets): the JSON API names the
   ARFF file and its md5; the ARFF is saved as ``data/hls4ml_lhc_jets_hlf.arff``.
2. The hls4ml HDF5 file that MASE downloads from CERNBox, saved under its own name
   ``data/processed-pythia82-lhc13-all-pt1-50k-r1_h022_e0175_t220_nonu_truth.z``.

``source=`` (or the environment variable ``LABKIT_JSC_SOURCE``) replaces that list with a
mirror URL (either format, or an OpenML-style JSON description) or a local file.

Every download goes to a temp file in ``data/`` with a progress bar and a socket timeout,
is checked (size, md5 when OpenML gives one, schema, row count, classes, finite values)
and only then renamed into place. A valid cached file is never downloaded again; a cached
file that fails the check (empty, truncated, an HTML error page) is moved aside to
``*.corrupt`` and fetched again. A small ``.<file>.check.json`` next to each raw file
remembers its size, mtime and sha256, so later runs skip re-hashing and re-parsing it.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import sys
import tempfile
import threading
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from .. import paths
from .. import checks
from .base import DatasetInfo, JSCData, register_dataset
from .formats import DataFormatError, file_digests, is_stand_in, parse_openml_description, read_table, sniff
from .prepare import (DEFAULT_SEED, DEFAULT_TEST_FRACTION, DEFAULT_VAL_FRACTION, atomic_write_text,
                      check_size, load_or_build, subsample)

OPENML_ID = 42468
OPENML_API_URL = f"https://api.openml.org/api/v1/json/data/{OPENML_ID}"
OPENML_PAGE = f"https://www.openml.org/d/{OPENML_ID}"
CERNBOX_URL = "https://cernbox.cern.ch/index.php/s/jvFd5MoWhGs1l5v/download"
ARFF_FILE = "hls4ml_lhc_jets_hlf.arff"
HDF5_FILE = "processed-pythia82-lhc13-all-pt1-50k-r1_h022_e0175_t220_nonu_truth.z"
CACHE_FILES = {"arff": ARFF_FILE, "hdf5": HDF5_FILE}      # in the order they are preferred
DEFAULT_SOURCES = (OPENML_API_URL, CERNBOX_URL)
SOURCE_ENV = "LABKIT_JSC_SOURCE"
DEFAULT_TIMEOUT = 30.0          # seconds without a byte (connect or read) before giving up


class DataUnavailableError(RuntimeError):
    """The real JSC data could not be found, downloaded or validated."""


@dataclass(frozen=True)
class RawFile:
    """A validated raw JSC file on disk."""

    path: Path
    kind: str          # "arff" or "hdf5"
    sha256: str
    origin: str        # the URL or path it came from
    # The validated (x, y) when checking the file just parsed it, so the first preprocessing
    # does not parse it again; None when the file was trusted from its check record.
    table: tuple | None = field(default=None, repr=False, compare=False)


def is_url(source: str) -> bool:
    return urllib.parse.urlparse(str(source)).scheme in ("http", "https")


# --- the check record next to each raw file ----------------------------------------------------

def _check_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.check.json")


def _stamp(path: Path) -> dict:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _record_check(path: Path, kind: str, sha256: str, origin: str, rows: int):
    record = {**_stamp(path), "kind": kind, "sha256": sha256, "origin": origin, "rows": rows}
    try:
        atomic_write_text(_check_path(path), json.dumps(record, indent=2) + "\n")
    except OSError:  # e.g. a read-only folder holding the user's own copy: just check it every time
        pass


def checked_file(path: Path, origin: str | None = None) -> RawFile:
    """``path`` as a :class:`RawFile` if it is a valid JSC table; DataFormatError otherwise.

    A file checked before (same size and mtime) is trusted without re-reading it.
    """
    path = Path(path)
    try:
        record = json.loads(_check_path(path).read_text())
        if {k: record[k] for k in ("size", "mtime_ns")} == _stamp(path):
            return RawFile(path, record["kind"], record["sha256"], origin or record["origin"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    kind = sniff(path)
    x, y = read_table(path, kind)          # raises DataFormatError with the reason
    sha = file_digests(path)["sha256"]
    _record_check(path, kind, sha, origin or str(path), len(y))
    return RawFile(path, kind, sha, origin or str(path), table=(x, y))


def _set_aside(path: Path, reason) -> None:
    bad = path.with_name(path.name + ".corrupt")
    os.replace(path, bad)
    _check_path(path).unlink(missing_ok=True)
    print(f"[labkit] WARNING: cached {path.name} is not valid JSC data ({reason}); "
          f"moved it to {bad.name} and will fetch it again", file=sys.stderr)


def cached_raw(data_dir: Path) -> RawFile | None:
    """The first valid raw file already in ``data_dir``; invalid ones are set aside."""
    for kind, name in CACHE_FILES.items():
        path = data_dir / name
        if not path.exists():
            continue
        try:
            return checked_file(path)
        except DataFormatError as err:
            _set_aside(path, err)
    return None


# --- downloading -------------------------------------------------------------------------------

def _resolve(url: str, timeout: float):
    """Look the host up within ``timeout``: name lookups ignore socket timeouts, and on a
    machine without a reachable DNS server they can block for a long time."""
    parsed = urllib.parse.urlparse(url)
    if not parsed.hostname or urllib.request.getproxies().get(parsed.scheme):
        return                                   # behind a proxy the proxy resolves it
    failure = []

    def lookup():
        try:
            socket.getaddrinfo(parsed.hostname, parsed.port or 443)
        except OSError as err:
            failure.append(err)

    worker = threading.Thread(target=lookup, daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise TimeoutError(f"looking up {parsed.hostname} took more than {timeout:g} s (offline?)")
    if failure:
        raise urllib.error.URLError(failure[0])


def download(url: str, folder: Path, *, timeout: float, progress: bool = True, desc: str = "") -> Path:
    """Stream ``url`` into a new temp file in ``folder`` and return its path.

    The temp file is deleted if anything goes wrong (timeout, HTTP error, short read).
    """
    folder.mkdir(parents=True, exist_ok=True)
    _resolve(url, timeout)
    request = urllib.request.Request(url, headers={"User-Agent": "labkit (MASE JSC labs)"})
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".download-", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(request, timeout=timeout) as response:
            total = response.headers.get("Content-Length")
            total = int(total) if total and total.isdigit() else None
            written = 0
            with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, disable=not progress,
                      desc=desc or Path(urllib.parse.urlparse(url).path).name or "download") as bar:
                while block := response.read(1 << 20):
                    out.write(block)
                    written += len(block)
                    bar.update(len(block))
        if total is not None and written != total:
            raise DataFormatError(f"truncated download: got {written} of {total} bytes")
        return Path(tmp)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _install(tmp: Path, data_dir: Path, origin: str, md5: str | None = None) -> RawFile:
    """Check a downloaded temp file and rename it to its cache name (or delete it).

    The file is read twice in all: once for its digests (md5 and sha256 together), once to parse it."""
    try:
        digests = file_digests(tmp, ("md5", "sha256") if md5 else ("sha256",))
        if md5 and digests["md5"] != md5.lower():
            raise DataFormatError(f"md5 mismatch (expected {md5}) - corrupt or truncated download")
        kind = sniff(tmp)
        if kind not in CACHE_FILES:
            raise DataFormatError(f"got a {kind} file, expected ARFF or HDF5")
        x, y = read_table(tmp, kind)
        final = data_dir / CACHE_FILES[kind]
        os.replace(tmp, final)
        _record_check(final, kind, digests["sha256"], origin, len(y))
        return RawFile(final, kind, digests["sha256"], origin, table=(x, y))
    finally:
        tmp.unlink(missing_ok=True)


def fetch(url: str, data_dir: Path, *, timeout: float, progress: bool = True) -> RawFile:
    """Download one source (an ARFF, an HDF5, or an OpenML JSON description of an ARFF)."""
    tmp = download(url, data_dir, timeout=timeout, progress=progress)
    try:
        head_kind = sniff(tmp)
    except DataFormatError:
        tmp.unlink(missing_ok=True)
        raise
    if head_kind == "json":
        try:
            arff_url, md5 = parse_openml_description(tmp, url)
        finally:
            tmp.unlink(missing_ok=True)
        tmp = download(arff_url, data_dir, timeout=timeout, progress=progress, desc=ARFF_FILE)
        return _install(tmp, data_dir, arff_url, md5)
    return _install(tmp, data_dir, url)


def _describe(err: BaseException) -> str:
    if isinstance(err, http.client.IncompleteRead):
        return f"truncated download: connection closed after {len(err.partial)} bytes"
    if isinstance(err, urllib.error.HTTPError):
        return f"HTTP {err.code} {err.reason}"
    if isinstance(err, urllib.error.URLError):
        return f"cannot connect ({err.reason})"
    return f"{type(err).__name__}: {err}"


def unavailable_message(data_dir: Path, attempts: list[tuple[str, str]]) -> str:
    tried = "\n".join(f"  {i}. {src}\n     -> {why}" for i, (src, why) in enumerate(attempts, 1))
    return (
        "\n" + "=" * 78 + "\n"
        "REAL JSC DATA UNAVAILABLE\n"
        f"Tried:\n{tried or '  (nothing)'}\n"
        "To provide it by hand, download ONE of these and save it under exactly this name:\n"
        f"  - OpenML 42468 'hls4ml_lhc_jets_hlf' ARFF ({OPENML_PAGE})\n"
        f"      -> {data_dir / ARFF_FILE}\n"
        f"  - the hls4ml HDF5 file MASE uses ({CERNBOX_URL})\n"
        f"      -> {data_dir / HDF5_FILE}\n"
        f"or point labkit at a file or mirror URL: export {SOURCE_ENV}=/path/or/https://mirror/file\n"
        "(or load_dataset(\"jsc\", source=...)). To run offline on the stand-in instead:\n"
        "load_dataset(\"jsc-synthetic\") / make run DATASET=jsc-synthetic (results marked SYNTHETIC).\n"
        + "=" * 78
    )


def _local_path(source) -> str:
    """A local source as a path: ``file:///x/my%20data.arff`` is ``/x/my data.arff``."""
    source = os.fspath(source)
    if not source.startswith("file:"):
        return source
    parsed = urllib.parse.urlparse(source)
    if parsed.netloc not in ("", "localhost"):
        raise ValueError(f"file URL {source!r} names the host {parsed.netloc!r}; only local "
                         "files (file:///path) can be read")
    return urllib.request.url2pathname(parsed.path)


def _sources(source) -> list[str]:
    """The sources to try: ``source``, else ``$LABKIT_JSC_SOURCE``, else the built-in list."""
    if source is None:
        source = os.environ.get(SOURCE_ENV) or None
    if source is None:
        return list(DEFAULT_SOURCES)
    if isinstance(source, (str, os.PathLike)):
        source = [source]
    if isinstance(source, (list, tuple)) and source and all(isinstance(s, (str, os.PathLike)) for s in source):
        return [_local_path(s) for s in source]
    raise TypeError(f"source must be a URL, a file path or a list of them, got {source!r}")


def ensure_raw(source=None, data_dir=None, *, timeout: float = DEFAULT_TIMEOUT,
               progress: bool = True) -> RawFile:
    """A valid raw JSC file: a local ``source`` as is, else the cache in ``data_dir``, else
    the first source that downloads and validates. Raises :class:`DataUnavailableError`."""
    timeout = checks.positive_float("timeout (seconds)", timeout)
    data_dir = Path(data_dir) if data_dir is not None else paths.data_dir()
    data_dir.mkdir(parents=True, exist_ok=True)
    sources = _sources(source)
    attempts = []
    local = [s for s in sources if not is_url(s)]
    for path in local:                      # a local file is used where it is, never copied
        try:
            return checked_file(Path(path).expanduser())
        except FileNotFoundError:
            attempts.append((path, "no such file"))
        except (DataFormatError, OSError) as err:
            attempts.append((path, f"not valid JSC data: {err}"))
    if local and len(local) == len(sources):
        raise DataUnavailableError(unavailable_message(data_dir, attempts))
    cached = cached_raw(data_dir)
    if cached is not None:
        return cached
    for url in (s for s in sources if is_url(s)):
        try:
            raw = fetch(url, data_dir, timeout=timeout, progress=progress)
            if progress:
                print(f"[labkit] real JSC data saved to {raw.path} ({raw.kind}, from {raw.origin})")
            return raw
        except (OSError, http.client.HTTPException, ValueError) as err:  # URLError, timeouts, bad files
            attempts.append((url, _describe(err)))
    raise DataUnavailableError(unavailable_message(data_dir, attempts))


# --- the "jsc" dataset -------------------------------------------------------------------------

@register_dataset("jsc")
def load_jsc(size: int | None = None, *, source=None, data_dir=None, seed: int = DEFAULT_SEED,
             val_fraction: float = DEFAULT_VAL_FRACTION, test_fraction: float = DEFAULT_TEST_FRACTION,
             timeout: float = DEFAULT_TIMEOUT, progress: bool = True, with_payload: bool = False) -> JSCData:
    """The real JSC data (downloaded once into ``data/``), preprocessed like MASE/hls4ml.

    ``size`` keeps a seeded random subset of that many rows (for quick runs); None keeps all.
    ``with_payload=True`` returns ``(data, unscaled payload)`` (see ``prepare.load_or_build``).

    Raises :class:`DataUnavailableError` (saying what failed and where to put the file by
    hand) when no source works.
    """
    settings = {"dataset": "jsc", "seed": checks.seed("seed", seed),
                "val_fraction": checks.proportion("val_fraction", val_fraction),
                "test_fraction": checks.proportion("test_fraction", test_fraction),
                "size": None if size is None else check_size(size)}
    data_dir = Path(data_dir) if data_dir is not None else paths.data_dir()
    raw = ensure_raw(source, data_dir, timeout=timeout, progress=progress)
    settings["checksum"] = "sha256:" + raw.sha256
    synthetic = is_stand_in(raw.path, raw.kind)  # our own stand-in served as "jsc" (tests) stays marked
    info = DatasetInfo("jsc", synthetic=synthetic, source=raw.origin)
    manifest = {"dataset": "jsc", "synthetic": synthetic, "source": raw.origin, "raw_file": str(raw.path),
                "format": raw.kind, "checksum": settings["checksum"], "seed": settings["seed"]}

    def build():
        if progress:
            print(f"[labkit] preprocessing {raw.path.name} (first use; cached afterwards)")
        x, y = raw.table if raw.table is not None else read_table(raw.path, raw.kind)
        if settings["size"] is not None and settings["size"] > len(y):  # say so, never quietly use fewer
            raise ValueError(f"size asks for {settings['size']} rows, but the JSC table {raw.path.name} "
                             f"has only {len(y)}; ask for at most {len(y)} (or size=None for all)")
        return subsample(x, y, settings["size"], settings["seed"])

    return load_or_build(data_dir, "jsc", settings, build, info, manifest, with_payload=with_payload)


CHOICES = ("auto", "jsc", "jsc-synthetic")


def choose_dataset(preference: str = "auto", *, source=None, data_dir=None, timeout: float = 10.0,
                   progress: bool = True) -> str:
    """Which dataset to run on: ``"jsc"`` when the real data is cached or can be fetched now.

    ``"auto"`` falls back to ``"jsc-synthetic"`` with a loud warning; ``"jsc"`` raises
    :class:`DataUnavailableError` instead; ``"jsc-synthetic"`` is returned as asked.
    """
    if preference not in CHOICES:
        raise ValueError(f"unknown dataset preference {preference!r}; choose one of {', '.join(CHOICES)}")
    if preference == "jsc-synthetic":
        return preference
    try:
        ensure_raw(source, data_dir, timeout=timeout, progress=progress)
        return "jsc"
    except DataUnavailableError as err:
        if preference == "jsc":
            raise
        print(f"{err}\n[labkit] WARNING: falling back to jsc-synthetic, a SYNTHETIC stand-in. "
              "Every table and figure will be marked SYNTHETIC; do not draw conclusions about "
              "real jets from it.", file=sys.stderr)
        return "jsc-synthetic"
