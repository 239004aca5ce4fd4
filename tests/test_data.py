"""The JSC data layer: real download path (against a loopback HTTP server), caches,
preprocessing, bad input, and the batch iterator / DataModule."""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import json
import math
import socket
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from labkit.data import (CLASS_NAMES, FEATURE_NAMES, BatchIterator, DatasetInfo, DataUnavailableError, JSCDataModule,
                         choose_dataset, epoch_permutation, load_dataset, raw_frame)
from labkit.data import DATASETS, jsc, prepare
from labkit.data.formats import (DataFormatError, file_digest, file_digests, read_arff, read_hdf5, read_table,
                                 write_arff, write_hdf5)
from labkit.data.synthetic import generate, write_source_files

ROWS = 20_000


# --- a loopback HTTP server serving files in the real formats ----------------------------------------

class Loopback:
    """``http.server`` on 127.0.0.1 (port 0) serving ``root``; ``routes`` override paths with
    (status, body, headers); every request path is recorded in ``requests``."""

    def __init__(self, root: Path):
        self.root, self.routes, self.requests = root, {}, []
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=str(root), **kwargs)

            def do_GET(self):
                server.requests.append(self.path)
                if self.path in server.routes:
                    status, body, headers = server.routes[self.path]
                    self.send_response(status)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    if "Content-Length" not in headers:
                        self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                super().do_GET()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def url(self, name) -> str:
        return f"{self.base}/{name}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """Synthetic jets written as the real source files and served over loopback HTTP."""
    root = tmp_path_factory.mktemp("www")
    server = Loopback(root)
    files = write_source_files(root, size=ROWS, seed=7, base_url=server.base)
    yield server, files
    server.close()


@pytest.fixture
def server(served):
    server, files = served
    server.requests.clear()
    server.routes.clear()
    return server


@pytest.fixture
def files(served):
    return served[1]


@pytest.fixture
def default_sources(monkeypatch, server, files):
    """Point the built-in source list (OpenML JSON, then HDF5) at the loopback server."""
    monkeypatch.delenv(jsc.SOURCE_ENV, raising=False)
    sources = (server.url(files["json"].name), server.url(files["hdf5"].name))
    monkeypatch.setattr(jsc, "DEFAULT_SOURCES", sources)
    return sources


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/hls4ml_lhc_jets_hlf.arff"


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.name.endswith((".part", ".tmp")))


# --- the real download path, end to end ----------------------------------------------------------------

def test_openml_json_then_arff_end_to_end(tmp_path, server, files, default_sources):
    data = load_dataset("jsc", data_dir=tmp_path, progress=False)
    assert server.requests == ["/openml-42468.json", "/hls4ml_lhc_jets_hlf.arff"]
    # the file is labkit's stand-in written in the real format: it stays marked SYNTHETIC
    assert data.info.synthetic and "SYNTHETIC" in data.info.label and data.manifest["synthetic"]
    assert data.info.source == server.url("hls4ml_lhc_jets_hlf.arff")
    assert (tmp_path / jsc.ARFF_FILE).stat().st_size == files["arff"].stat().st_size
    assert sum(data.sizes().values()) == ROWS and data.x_train.dtype == torch.float32
    assert data.manifest["format"] == "arff" and data.manifest["checksum"].startswith("sha256:")
    assert leftovers(tmp_path) == []
    # The table that came over HTTP is the one that was written (ARFF keeps 8 digits).
    x, y = generate(ROWS, 7)
    frame = raw_frame("jsc", data_dir=tmp_path, progress=False)
    np.testing.assert_allclose(np.sort(frame[list(FEATURE_NAMES)].to_numpy(), axis=0), np.sort(x, axis=0),
                               rtol=1e-6, atol=1e-9)
    counts = frame["label"].astype(str).value_counts()
    assert [counts[c] for c in CLASS_NAMES] == np.bincount(y).tolist()


def test_only_unmarked_files_count_as_real_data(tmp_path, files):
    """A file without the stand-in mark (like the real downloads) is labelled real."""
    unmarked = tmp_path / "real-looking.arff"
    lines = files["arff"].read_text().splitlines(keepends=True)
    unmarked.write_text("".join(line for line in lines if "NOT real data" not in line))
    data = load_dataset("jsc", source=str(unmarked), data_dir=tmp_path / "d", progress=False)
    assert not data.info.synthetic and "real JSC data" in data.info.label


def test_hdf5_source_end_to_end(tmp_path, server, files):
    data = load_dataset("jsc", source=server.url(files["hdf5"].name), data_dir=tmp_path, progress=False)
    assert data.info.synthetic  # labkit's stand-in, marked in the file's attributes
    assert server.requests == [f"/{jsc.HDF5_FILE}"]
    assert (tmp_path / jsc.HDF5_FILE).exists() and not (tmp_path / jsc.ARFF_FILE).exists()
    assert data.manifest["format"] == "hdf5" and sum(data.sizes().values()) == ROWS
    assert leftovers(tmp_path) == []


def test_sources_are_tried_in_order(tmp_path, server, files, monkeypatch):
    server.routes["/gone.json"] = (404, b"not found", {})
    monkeypatch.setattr(jsc, "DEFAULT_SOURCES", (server.url("gone.json"), server.url(files["hdf5"].name)))
    data = load_dataset("jsc", data_dir=tmp_path, progress=False)
    assert server.requests == ["/gone.json", f"/{jsc.HDF5_FILE}"]
    assert data.manifest["format"] == "hdf5"


def test_second_load_reuses_the_cache_without_any_request(tmp_path, server, default_sources):
    first = load_dataset("jsc", data_dir=tmp_path, progress=False)
    n_requests = len(server.requests)
    again = load_dataset("jsc", data_dir=tmp_path, progress=False)
    other_split = load_dataset("jsc", data_dir=tmp_path, seed=1, progress=False)  # new processing, same raw file
    assert len(server.requests) == n_requests
    assert torch.equal(first.x_test, again.x_test) and again.manifest == first.manifest
    assert not torch.equal(first.y_test, other_split.y_test)
    assert other_split.manifest["checksum"] == first.manifest["checksum"]



@pytest.fixture
def counted(monkeypatch):
    """Count how often jsc parses a raw file and reads it for digests (and with which algorithms)."""
    calls = {"read_table": 0, "file_digests": []}
    read, digests = jsc.read_table, jsc.file_digests

    def counting_read(*args, **kwargs):
        calls["read_table"] += 1
        return read(*args, **kwargs)

    def counting_digests(path, algorithms=("sha256",), *args, **kwargs):
        calls["file_digests"].append(tuple(algorithms))
        return digests(path, algorithms, *args, **kwargs)

    monkeypatch.setattr(jsc, "read_table", counting_read)
    monkeypatch.setattr(jsc, "file_digests", counting_digests)
    return calls


def test_first_download_is_hashed_in_one_pass_and_parsed_once(tmp_path, default_sources, counted):
    load_dataset("jsc", data_dir=tmp_path, progress=False)
    assert counted == {"read_table": 1, "file_digests": [("md5", "sha256")]}
    load_dataset("jsc", data_dir=tmp_path, seed=1, progress=False)   # trusted raw file, new split
    assert counted == {"read_table": 2, "file_digests": [("md5", "sha256")]}


def test_local_file_is_parsed_once_on_first_use(tmp_path, files, counted):
    local = tmp_path / "jets.h5"
    local.write_bytes(files["hdf5"].read_bytes())
    load_dataset("jsc", source=local, data_dir=tmp_path / "d", progress=False)
    assert counted == {"read_table": 1, "file_digests": [("sha256",)]}


def test_file_digests_in_one_pass_match_hashlib(tmp_path):
    path = tmp_path / "blob"
    path.write_bytes(bytes(range(256)) * 5000)
    both = file_digests(path, ("md5", "sha256"), chunk=1000)
    assert both == {"md5": hashlib.md5(path.read_bytes()).hexdigest(),
                    "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    assert file_digest(path, "md5") == both["md5"] and file_digest(path) == both["sha256"]

def test_local_file_from_env_var_is_used_in_place(tmp_path, files, monkeypatch):
    monkeypatch.setenv(jsc.SOURCE_ENV, str(files["hdf5"]))
    data = load_dataset("jsc", data_dir=tmp_path, progress=False)
    assert data.manifest["raw_file"] == str(files["hdf5"])
    assert not (tmp_path / jsc.HDF5_FILE).exists()      # not copied
    assert sum(data.sizes().values()) == ROWS


def test_file_url_source_is_unquoted(tmp_path, files):
    """``file://`` URLs escape spaces as %20; the file they name is used in place."""
    folder = tmp_path / "my data"
    folder.mkdir()
    local = folder / "jets copy.h5"
    local.write_bytes(files["hdf5"].read_bytes())
    assert "%20" in local.as_uri()
    data = load_dataset("jsc", source=local.as_uri(), data_dir=tmp_path / "d", progress=False)
    assert data.manifest["raw_file"] == str(local) and sum(data.sizes().values()) == ROWS
    assert jsc._sources(f"file://localhost{local}") == [str(local)]
    with pytest.raises(ValueError, match="names the host 'elsewhere'"):
        load_dataset("jsc", source="file://elsewhere/data.arff", data_dir=tmp_path / "d")


def test_argument_source_overrides_env_var(tmp_path, files, monkeypatch):
    monkeypatch.setenv(jsc.SOURCE_ENV, str(tmp_path / "nowhere.arff"))
    data = load_dataset("jsc", source=files["arff"], data_dir=tmp_path, progress=False)
    assert data.manifest["format"] == "arff"


# --- corrupt caches and failed downloads -----------------------------------------------------------------

def _bad_content(kind: str, files) -> bytes:
    if kind == "empty":
        return b""
    if kind == "html":
        return b"<!DOCTYPE html><html><body>Sign in to CERNBox</body></html>"
    text = files["arff"].read_bytes()
    return text[: len(text) // 2]                   # truncated mid-line


@pytest.mark.parametrize("kind", ["empty", "html", "truncated"])
def test_corrupt_cached_file_is_replaced_not_used(tmp_path, server, files, default_sources, kind, capsys):
    cached = tmp_path / jsc.ARFF_FILE
    cached.write_bytes(_bad_content(kind, files))
    data = load_dataset("jsc", data_dir=tmp_path, progress=False)
    assert "/hls4ml_lhc_jets_hlf.arff" in server.requests            # fetched again
    assert cached.read_bytes() == files["arff"].read_bytes()            # replaced by the good copy
    assert (tmp_path / (jsc.ARFF_FILE + ".corrupt")).read_bytes() == _bad_content(kind, files)
    assert "not valid JSC data" in capsys.readouterr().err
    assert sum(data.sizes().values()) == ROWS


def test_truncated_hdf5_cache_is_replaced(tmp_path, server, files, default_sources):
    good = files["hdf5"].read_bytes()
    (tmp_path / jsc.HDF5_FILE).write_bytes(good[: len(good) // 3])
    load_dataset("jsc", data_dir=tmp_path, progress=False)
    assert (tmp_path / jsc.ARFF_FILE).exists()            # first source refetched...
    assert (tmp_path / (jsc.HDF5_FILE + ".corrupt")).exists()  # ...and the broken file never used


def test_cache_edited_after_check_is_checked_again(tmp_path, files, server, default_sources, capsys):
    load_dataset("jsc", data_dir=tmp_path, progress=False)
    cached = tmp_path / jsc.ARFF_FILE
    cached.write_bytes(b"@RELATION x\n@ATTRIBUTE zlogz NUMERIC\n")   # damaged later (size/mtime change)
    load_dataset("jsc", data_dir=tmp_path, progress=False)
    assert cached.read_bytes() == files["arff"].read_bytes()
    assert "not valid JSC data" in capsys.readouterr().err


@pytest.mark.parametrize("route, why", [
    ((200, b"@RELATION x\n" * 10, {"Content-Length": "100000"}), "truncated download"),
    ((200, b"<html><body>502 Bad Gateway</body></html>", {}), "HTML"),
    ((503, b"busy", {}), "HTTP 503"),
])
def test_failed_download_leaves_nothing_behind(tmp_path, server, monkeypatch, route, why):
    server.routes["/data.arff"] = route
    monkeypatch.setattr(jsc, "DEFAULT_SOURCES", (server.url("data.arff"),))
    with pytest.raises(DataUnavailableError, match=why):
        load_dataset("jsc", data_dir=tmp_path, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_md5_mismatch_in_openml_description_is_rejected(tmp_path, server, files, monkeypatch):
    desc = json.loads(files["json"].read_text())
    desc["data_set_description"]["md5_checksum"] = "0" * 32
    server.routes["/bad-md5.json"] = (200, json.dumps(desc).encode(), {})
    monkeypatch.setattr(jsc, "DEFAULT_SOURCES", (server.url("bad-md5.json"),))
    with pytest.raises(DataUnavailableError, match="md5 mismatch"):
        load_dataset("jsc", data_dir=tmp_path, progress=False)
    assert not (tmp_path / jsc.ARFF_FILE).exists() and leftovers(tmp_path) == []


def test_unreachable_source_says_what_failed_and_what_to_do(tmp_path, monkeypatch):
    url = closed_port_url()
    monkeypatch.setattr(jsc, "DEFAULT_SOURCES", (url,))
    monkeypatch.delenv(jsc.SOURCE_ENV, raising=False)
    with pytest.raises(DataUnavailableError) as err:
        load_dataset("jsc", data_dir=tmp_path, timeout=2, progress=False)
    message = str(err.value)
    assert isinstance(err.value, RuntimeError)
    assert url in message and "cannot connect" in message
    assert str(tmp_path / jsc.ARFF_FILE) in message and str(tmp_path / jsc.HDF5_FILE) in message
    assert jsc.SOURCE_ENV in message and "jsc-synthetic" in message


def test_choose_dataset(tmp_path, server, files, monkeypatch, capsys):
    monkeypatch.delenv(jsc.SOURCE_ENV, raising=False)
    monkeypatch.setattr(jsc, "DEFAULT_SOURCES", (closed_port_url(),))
    assert choose_dataset("jsc-synthetic", data_dir=tmp_path) == "jsc-synthetic"
    assert choose_dataset("auto", data_dir=tmp_path, timeout=2, progress=False) == "jsc-synthetic"
    err = capsys.readouterr().err
    assert "REAL JSC DATA UNAVAILABLE" in err and "SYNTHETIC" in err and "falling back" in err
    with pytest.raises(DataUnavailableError):
        choose_dataset("jsc", data_dir=tmp_path, timeout=2, progress=False)
    with pytest.raises(ValueError, match="jsc-synthetic"):
        choose_dataset("real", data_dir=tmp_path)
    monkeypatch.setattr(jsc, "DEFAULT_SOURCES", (server.url(files["hdf5"].name),))
    assert choose_dataset("auto", data_dir=tmp_path, progress=False) == "jsc"
    monkeypatch.setattr(jsc, "DEFAULT_SOURCES", (closed_port_url(),))
    assert choose_dataset("jsc", data_dir=tmp_path, progress=False) == "jsc"   # cached now


# --- bad input ----------------------------------------------------------------------------------------------

def test_unknown_dataset_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown dataset 'jsc-real'.*jsc, jsc-synthetic"):
        load_dataset("jsc-real")


def test_empty_local_file_is_a_clear_error(tmp_path):
    empty = tmp_path / "empty.arff"
    empty.touch()
    with pytest.raises(DataUnavailableError, match="empty"):
        load_dataset("jsc", source=empty, data_dir=tmp_path / "data", progress=False)
    with pytest.raises(DataFormatError, match="empty"):
        read_table(empty)


def test_missing_feature_column_is_named(tmp_path):
    x, y = generate(2000, 1)
    keep = [i for i, n in enumerate(FEATURE_NAMES) if n != "j_mass_mmdt"]
    arff = tmp_path / "no_mass.arff"
    write_arff(arff, x, y)
    lines = arff.read_text().splitlines()
    lines = [ln for ln in lines if "mass_mmdt" not in ln]
    data_at = lines.index("@DATA") + 1
    lines[data_at:] = [",".join(ln.split(",")[i] for i in keep + [16]) for ln in lines[data_at:]]
    arff.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataFormatError, match="missing column.*j_mass_mmdt"):
        read_arff(arff)
    with pytest.raises(DataUnavailableError, match="j_mass_mmdt"):
        load_dataset("jsc", source=arff, data_dir=tmp_path / "data", progress=False)

    import h5py
    table = np.zeros(2000, dtype=[(n, "<f4") for n in FEATURE_NAMES if n != "j_multiplicity"]
                     + [(c, "<i4") for c in CLASS_NAMES])
    h5 = tmp_path / "no_mult.h5"
    with h5py.File(h5, "w") as f:
        f.create_dataset("t_allpar_new", data=table)
    with pytest.raises(DataFormatError, match="missing column.*j_multiplicity"):
        read_hdf5(h5)



def test_read_hdf5_reads_only_the_fields_it_needs(tmp_path, monkeypatch):
    import h5py

    x, y = generate(2000, 1)
    extra = [("j_index", "<i8"), ("j_pt", "<f8"), ("j_eta", "<f8")]
    table = np.zeros(2000, dtype=extra + [(n, "<f4") for n in FEATURE_NAMES] + [(c, "<i4") for c in CLASS_NAMES])
    for i, n in enumerate(FEATURE_NAMES):
        table[n] = x[:, i]
    for k, c in enumerate(CLASS_NAMES):
        table[c] = y == k
    with h5py.File(tmp_path / "wide.h5", "w") as f:
        f.create_dataset("t_allpar_new", data=table)
    read_fields = []
    getitem = h5py.Dataset.__getitem__

    def spy(self, *args, **kwargs):
        out = getitem(self, *args, **kwargs)
        read_fields.append(out.dtype.names)
        return out

    monkeypatch.setattr(h5py.Dataset, "__getitem__", spy)
    x2, y2 = read_hdf5(tmp_path / "wide.h5")
    assert np.array_equal(y2, y) and np.allclose(x2, x, rtol=1e-6)
    assert read_fields == [FEATURE_NAMES + CLASS_NAMES]           # j_index, j_pt, j_eta never read

def test_hdf5_labels_must_be_one_hot_and_all_classes_present(tmp_path):
    x, y = generate(2000, 1)
    write_hdf5(tmp_path / "ok.h5", x, y)
    x2, y2 = read_hdf5(tmp_path / "ok.h5")
    assert np.array_equal(y2, y) and np.allclose(x2, x, rtol=1e-6)
    write_hdf5(tmp_path / "no_top.h5", x[y != 4], y[y != 4])
    with pytest.raises(DataFormatError, match="no jets of class j_t"):
        read_hdf5(tmp_path / "no_top.h5")


def test_arff_with_prefixed_names_and_few_rows(tmp_path):
    x, y = generate(1500, 2)
    write_arff(tmp_path / "j.arff", x, y, prefix=True)
    assert np.array_equal(read_arff(tmp_path / "j.arff")[1], y)
    write_arff(tmp_path / "tiny.arff", x[:50], y[:50])
    with pytest.raises(DataFormatError, match="only 50 rows"):
        read_arff(tmp_path / "tiny.arff")


@pytest.mark.parametrize("kwargs, error, match", [
    ({"size": 0}, ValueError, "size must be at least"),
    ({"size": -5}, ValueError, "size must be at least"),
    ({"size": "big"}, TypeError, "size must be an integer"),
    ({"size": True}, TypeError, "size must be an integer"),
    ({"size": 1000.5}, TypeError, "size must be an integer"),
    ({"val_fraction": 0}, ValueError, r"val_fraction must be in \(0, 0.9\]"),
    ({"val_fraction": 1.5}, ValueError, "val_fraction"),
    ({"test_fraction": -0.1}, ValueError, "test_fraction"),
    ({"test_fraction": "20%"}, TypeError, "test_fraction"),
    ({"seed": -1}, ValueError, "seed must be an integer"),
    ({"generator_seed": 1.5}, ValueError, "seed must be an integer"),
])
def test_bad_synthetic_arguments(tmp_path, kwargs, error, match):
    with pytest.raises(error, match=match):
        load_dataset("jsc-synthetic", data_dir=tmp_path, **{"size": 2000, **kwargs})


def test_bad_real_arguments(tmp_path, files):
    with pytest.raises(ValueError, match=r"timeout \(seconds\) must be a finite number > 0, got 0"):
        load_dataset("jsc", source=files["arff"], data_dir=tmp_path, timeout=0)
    with pytest.raises(ValueError, match=r"timeout \(seconds\) must be a finite number > 0, got '30'"):
        load_dataset("jsc", source=files["arff"], data_dir=tmp_path, timeout="30")
    with pytest.raises(TypeError, match="source must be"):
        load_dataset("jsc", source=42, data_dir=tmp_path)
    with pytest.raises(ValueError, match="val_fraction"):
        load_dataset("jsc", source=files["arff"], data_dir=tmp_path, val_fraction=2)


def test_errors_never_delete_good_caches(tmp_path, files):
    load_dataset("jsc", source=files["arff"], data_dir=tmp_path, progress=False)
    load_dataset("jsc-synthetic", size=2000, data_dir=tmp_path, progress=False)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    for call in (lambda: load_dataset("jsc-synthetic", size=2000, data_dir=tmp_path, val_fraction=3),
                 lambda: load_dataset("jsc", source=tmp_path / "missing.arff", data_dir=tmp_path),
                 lambda: load_dataset("jsc", source=closed_port_url(), data_dir=tmp_path, test_fraction=0)):
        with pytest.raises((ValueError, DataUnavailableError)):
            call()
    after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before


# --- preprocessing and the processed cache ----------------------------------------------------------------

def test_processed_cache_manifest_and_reload(tmp_path):
    data = load_dataset("jsc-synthetic", size=ROWS, generator_seed=3, data_dir=tmp_path, progress=False)
    m = data.manifest
    assert m["synthetic"] is True and m["generator_version"] >= 1 and m["generator_seed"] == 3
    assert m["seed"] == 42 and m["checksum"].startswith("sha256:") and m["created"]
    assert m["split_sizes"] == data.sizes()
    assert set(m["scaler"]["mean"]) == set(FEATURE_NAMES) == set(m["scaler"]["std"])
    cache = Path(m["cache_path"])
    on_disk = json.loads(cache.with_suffix(".json").read_text())
    assert on_disk["checksum"] == m["checksum"] and on_disk["split_sizes"] == m["split_sizes"]
    payload = torch.load(cache, weights_only=True)          # a plain tensor/str payload
    assert payload["x"].shape == (ROWS, 16)
    again = load_dataset("jsc-synthetic", size=ROWS, generator_seed=3, data_dir=tmp_path, progress=False)
    for split in ("train", "val", "test"):
        assert all(torch.equal(a, b) for a, b in zip(data.split(split), again.split(split)))
    other = load_dataset("jsc-synthetic", size=ROWS, generator_seed=3, val_fraction=0.2,
                         data_dir=tmp_path, progress=False)
    assert Path(other.manifest["cache_path"]) != cache and other.sizes()["val"] > data.sizes()["val"]



def test_identity_follows_the_tensors_not_just_the_manifest(tmp_path):
    """Data changed in memory but carrying the original's manifest must not pass for it
    (sweep caches and checkpoint reuse are keyed by this identity)."""
    data = load_dataset("jsc-synthetic", size=5000, data_dir=tmp_path, progress=False)
    ident = data.identity()
    assert ident["settings"] == data.manifest["settings"]              # the recipe, for readers
    assert ident["tensors"]["x_train"] == [list(data.x_train.shape), "float32"]
    assert ident["tensors"]["y_test"] == [[data.sizes()["test"]], "int64"]
    same = dataclasses.replace(data, x_train=data.x_train.clone())
    reloaded = load_dataset("jsc-synthetic", size=5000, data_dir=tmp_path, progress=False)
    assert same.identity() == ident and reloaded.fingerprint() == data.fingerprint()
    changed = [
        dataclasses.replace(data, x_train=data.x_train * 1.01),               # same shapes, new values
        dataclasses.replace(data, y_val=data.y_val.flip(0)),                   # one split's labels
        dataclasses.replace(data, x_test=data.x_test.double()),                # dtype only
        dataclasses.replace(data, x_train=data.x_train[:-1], y_train=data.y_train[:-1]),
    ]
    prints = {d.fingerprint() for d in changed} | {data.fingerprint()}
    assert len(prints) == len(changed) + 1
    edited = dataclasses.replace(data, x_train=data.x_train.clone())
    edited.x_train[123, 4] += 1.0                                         # one value, in place
    assert edited.fingerprint() != data.fingerprint()

def test_corrupt_processed_cache_is_rebuilt(tmp_path, capsys):
    data = load_dataset("jsc-synthetic", size=5000, data_dir=tmp_path, progress=False)
    cache = Path(data.manifest["cache_path"])
    cache.write_bytes(cache.read_bytes()[:1000])
    again = load_dataset("jsc-synthetic", size=5000, data_dir=tmp_path, progress=False)
    assert "unreadable processed cache" in capsys.readouterr().out
    assert torch.equal(again.x_train, data.x_train)
    assert torch.load(cache, weights_only=True)["x"].shape == (5000, 16)


def test_failed_cache_write_leaves_no_partial_file(tmp_path, monkeypatch):
    def broken_save(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(prepare.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        load_dataset("jsc-synthetic", size=3000, data_dir=tmp_path, progress=False)
    assert [p.name for p in (tmp_path / "processed").iterdir()] == []


def test_preprocessing_like_mase(tmp_path):
    x, y = generate(4000, 5)
    x = np.concatenate([x, x[:300]])                        # 300 duplicated jets
    y = np.concatenate([y, y[:300]])
    content = prepare.preprocess(x, y, seed=42, test_fraction=0.2, val_fraction=0.1)
    n = 4000
    assert content["stats"]["duplicates_dropped"] == 300
    n_test = math.ceil(0.2 * n)                             # sklearn's train_test_split rule
    n_val = math.ceil(0.1 * (n - n_test))
    assert content["sizes"] == [n - n_test - n_val, n_val, n_test]
    perm = np.random.RandomState(42).permutation(n)
    test_rows = content["x"][-n_test:].numpy()
    np.testing.assert_array_equal(test_rows, x[perm[:n_test]].astype(np.float32))
    train = content["x"][: content["sizes"][0]].double().numpy()
    np.testing.assert_allclose(content["mean"], train.mean(0), rtol=1e-5, atol=1e-7)  # scaler: train only
    data = prepare.to_jscdata({**content, "manifest": {}}, DatasetInfo("t"))
    assert torch.allclose(data.x_train.mean(0), torch.zeros(16), atol=1e-4)
    assert torch.allclose(data.x_train.std(0, unbiased=False), torch.ones(16), atol=1e-3)
    assert not torch.allclose(data.x_test.mean(0), torch.zeros(16), atol=1e-4)


def test_raw_frame_is_unscaled_with_labels(tmp_path):
    frame = raw_frame("jsc-synthetic", size=5000, data_dir=tmp_path, progress=False)
    assert list(frame.columns) == [*FEATURE_NAMES, "label", "split"]
    assert set(frame["label"].astype(str)) == set(CLASS_NAMES)
    x, _ = generate(5000, 0)
    assert np.allclose(np.sort(frame["j_mass_mmdt"]), np.sort(x[:, 14]), rtol=1e-6)
    assert (frame["j_multiplicity"] == frame["j_multiplicity"].round()).all()
    test = raw_frame("jsc-synthetic", split="test", size=5000, data_dir=tmp_path, progress=False)
    assert len(test) == 1000 and "SYNTHETIC" in test.attrs["label"]
    with pytest.raises(ValueError, match="unknown split"):
        raw_frame("jsc-synthetic", split="valid", size=5000, data_dir=tmp_path)



def test_raw_frame_loads_the_cache_once_and_checks_split_first(tmp_path, monkeypatch):
    load_dataset("jsc-synthetic", size=3000, data_dir=tmp_path, progress=False)   # cache it
    loads = []
    torch_load = prepare.torch.load
    monkeypatch.setattr(prepare.torch, "load", lambda *a, **k: loads.append(a[0]) or torch_load(*a, **k))
    frame = raw_frame("jsc-synthetic", split="val", size=3000, data_dir=tmp_path, progress=False)
    assert len(loads) == 1 and set(frame["split"]) == {"val"}
    with pytest.raises(ValueError, match="unknown split 'training'; choose one of train, val, test"):
        raw_frame("jsc-synthetic", split="training", size=9999, data_dir=tmp_path / "new", progress=False)
    assert len(loads) == 1 and not (tmp_path / "new").exists()        # nothing loaded or generated
    fresh = raw_frame("jsc-synthetic", size=2000, data_dir=tmp_path / "fresh", progress=False)
    assert len(fresh) == 2000 and len(loads) == 1                     # built now: no load at all

def test_raw_frame_gets_the_payload_as_a_return_value(tmp_path, monkeypatch):
    data, payload = load_dataset("jsc-synthetic", size=2000, data_dir=tmp_path, progress=False, with_payload=True)
    again = load_dataset("jsc-synthetic", size=2000, data_dir=tmp_path, progress=False)
    assert torch.equal(data.x_train, again.x_train) and payload["manifest"] == again.manifest
    assert payload["x"].shape == (2000, 16) and not torch.allclose(payload["x"].mean(0), torch.zeros(16), atol=1e-3)
    assert not hasattr(prepare, "keep_payloads")                      # no side channel left
    monkeypatch.setitem(DATASETS._entries, "no-cache", lambda **kw: again)  # a loader without load_or_build
    with pytest.raises(ValueError, match="dataset 'no-cache' has no processed cache"):
        raw_frame("no-cache")


# --- BatchIterator and the DataModule ------------------------------------------------------------------------

def _xy(n=103):
    return torch.arange(n, dtype=torch.float32).unsqueeze(1).repeat(1, 16), torch.arange(n)


def test_batch_iterator_covers_every_sample_once_per_epoch():
    x, y = _xy()
    it = BatchIterator(x, y, batch_size=10, shuffle=True, seed=3)
    seen = [torch.cat([yb for _, yb in it]) for _ in range(3)]
    for s in seen:
        assert sorted(s.tolist()) == list(range(103))
    assert not torch.equal(seen[0], seen[1])               # reshuffled per epoch
    assert len(it) == it.num_batches() == 11
    again = BatchIterator(x, y, batch_size=10, shuffle=True, seed=3)
    assert torch.equal(torch.cat([yb for _, yb in again]), seen[0])   # deterministic
    xb, yb = next(iter(BatchIterator(x, y, batch_size=10)))
    assert torch.equal(xb[:, 0].long(), yb) and yb.tolist() == list(range(10))   # pairs stay paired


def test_batch_iterator_set_epoch_and_permutation():
    x, y = _xy(50)
    it = BatchIterator(x, y, batch_size=50, shuffle=True, seed=9)
    it.set_epoch(4)
    (_, yb), = list(it)
    assert torch.equal(yb, epoch_permutation(50, 9, 4))
    assert torch.equal(epoch_permutation(50, 9, 4), epoch_permutation(50, 9, 4))
    assert not torch.equal(epoch_permutation(50, 9, 4), epoch_permutation(50, 9, 5))


def test_batch_iterator_chunks_and_drop_last():
    x, y = _xy(103)
    chunked = list(BatchIterator(x, y, batch_size=10, chunk=4))
    assert [len(g) for g in chunked] == [4, 4, 3] and len(BatchIterator(x, y, 10, chunk=4)) == 3
    assert torch.equal(torch.cat([yb for group in chunked for _, yb in group]), y)
    dropped = list(BatchIterator(x, y, batch_size=10, drop_last=True))
    assert len(dropped) == 10 and all(len(yb) == 10 for _, yb in dropped)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        BatchIterator(x, y, batch_size=0)
    with pytest.raises(ValueError, match="differ in length"):
        BatchIterator(x, y[:5], batch_size=2)


@pytest.mark.parametrize("bad", [2.7, "64", True, 0.5])
def test_batch_sizes_must_be_whole_numbers(bad):
    x, y = _xy(20)
    with pytest.raises(ValueError, match=f"batch_size must be a positive integer, got {bad!r}"):
        BatchIterator(x, y, batch_size=bad)
    with pytest.raises(ValueError, match=f"batch_size must be a positive integer, got {bad!r}"):
        JSCDataModule("jsc-synthetic", batch_size=bad)
    with pytest.raises(ValueError, match=f"eval_batch_size must be a positive integer, got {bad!r}"):
        JSCDataModule("jsc-synthetic", eval_batch_size=bad)


def test_whole_float_and_numpy_batch_sizes_are_accepted():
    x, y = _xy(20)
    it = BatchIterator(x, y, batch_size=8.0)
    assert it.batch_size == 8 and type(it.batch_size) is int and len(it) == 3
    assert JSCDataModule("jsc-synthetic", batch_size=np.int64(64)).batch_size == 64


def test_datamodule_serves_the_splits(tmp_path):
    dm = JSCDataModule("jsc-synthetic", batch_size=64, seed=1, chunk=2, size=3000, data_dir=tmp_path,
                       progress=False)
    assert dm.info.synthetic and dm.info.num_features == 16 and dm.info.num_classes == 5
    dm.setup("fit")
    first = next(iter(dm.train_dataloader()))
    assert len(first) == 2 and first[0][0].shape == (64, 16)
    val = list(dm.val_dataloader())
    assert sum(len(yb) for _, yb in val) == dm.data.sizes()["val"]
    assert sum(len(yb) for _, yb in dm.test_dataloader()) == dm.data.sizes()["test"]
    with pytest.raises(ValueError, match="batch_size"):
        JSCDataModule("jsc-synthetic", batch_size=-1)


def test_slow_name_lookup_times_out_instead_of_hanging(tmp_path, monkeypatch):
    import time as _time

    monkeypatch.delenv("https_proxy", raising=False)
    monkeypatch.delenv("HTTPS_PROXY", raising=False)
    monkeypatch.setattr(jsc.socket, "getaddrinfo", lambda *a, **k: _time.sleep(30))
    monkeypatch.setattr(jsc, "DEFAULT_SOURCES", ("https://api.openml.org/api/v1/json/data/42468",))
    monkeypatch.delenv(jsc.SOURCE_ENV, raising=False)
    with pytest.raises(DataUnavailableError, match="took more than 0.2 s"):
        load_dataset("jsc", data_dir=tmp_path, timeout=0.2, progress=False)


def test_real_data_size_keeps_a_seeded_subset(tmp_path, files):
    full = load_dataset("jsc", source=files["hdf5"], data_dir=tmp_path, progress=False)
    part = load_dataset("jsc", size=5000, source=files["hdf5"], data_dir=tmp_path, progress=False)
    assert sum(part.sizes().values()) == 5000 and part.manifest["settings"]["size"] == 5000
    assert part.manifest["cache_path"] != full.manifest["cache_path"]
    with pytest.raises(ValueError, match="size must be at least 100"):
        load_dataset("jsc", size=10, source=files["hdf5"], data_dir=tmp_path)


def test_batches_already_on_the_device_are_not_walked_again():
    """A chunk whose batches are on the trainer's device is passed through as is (Lightning's walk
    over hundreds of (x, y) pairs per chunk costs more than a training step); others move."""
    from labkit.data import JSCDataModule
    dm = JSCDataModule(batch_size=4)
    chunk = [(torch.zeros(4, 16), torch.zeros(4, dtype=torch.long)) for _ in range(3)]
    assert dm.transfer_batch_to_device(chunk, torch.device("cpu"), 0) is chunk
    moved = dm.transfer_batch_to_device(chunk, torch.device("meta"), 0)
    assert all(x.device.type == "meta" and y.device.type == "meta" for x, y in moved)
    pair = (torch.zeros(4, 16), torch.zeros(4, dtype=torch.long))
    assert dm.transfer_batch_to_device(pair, torch.device("cpu"), 0) is pair
