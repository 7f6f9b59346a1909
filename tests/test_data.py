"""IDX files, dataset lookup order, and downloads from a local HTTP server."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import shutil
import struct
import threading
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, arrays

from layout.core.config import DataConfig
from layout.core.errors import DataError
from models.data import datasets as data
from models.data import idx
from models.data.datasets import STEMS, Source, load_dataset
from models.data.idx import encode_idx, read_idx, write_idx
from tests.conftest import make_idx_dataset

# ---------------------------------------------------------------------------------------------
# IDX reading and writing


@pytest.mark.parametrize("suffix", [".gz", ""])
@pytest.mark.parametrize("array", [
    np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28),
    np.array([0, 9, 3, 7], dtype=np.uint8),
    np.array([[-5, 300], [7, -32000]], dtype=np.int16),
    np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4),
    np.array([1.5, -2.25], dtype=np.float64),
])
def test_idx_round_trip(tmp_path, array, suffix):
    path = write_idx(tmp_path / f"a.idx{suffix}", array)
    back = read_idx(path)
    assert back.dtype == array.dtype and back.shape == array.shape
    np.testing.assert_array_equal(back, array)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == (suffix == ".gz")


def test_idx_header_is_the_standard_one(tmp_path):
    raw = encode_idx(np.zeros((3, 28, 28), np.uint8))
    assert raw[:4] == bytes([0, 0, 8, 3])  # magic 0x00000803 for images
    assert struct.unpack(">3I", raw[4:16]) == (3, 28, 28)
    assert encode_idx(np.zeros(5, np.uint8))[:8] == bytes([0, 0, 8, 1, 0, 0, 0, 5])


GOOD = encode_idx(np.arange(12, dtype=np.uint8).reshape(3, 4))


@pytest.mark.parametrize("raw, expected", [
    (b"\x00\x00", "not an IDX file: only 2 bytes long"),
    (b"\x12\x34" + GOOD[2:], "bad magic number 0x12340802"),
    (b"\x00\x00\x07\x02" + GOOD[4:], "bad magic number 0x00000702"),
    (b"\x00\x00\x08\x00", "declares 0 dimensions"),
    (GOOD[:10], "truncated: its header needs 12 bytes"),
    (GOOD[:-1], "truncated: its header promises 12 bytes of data (dimensions 3x4), the file has 11"),
    (GOOD + b"\x00\x00", "has 2 bytes after the data"),
    (gzip.compress(GOOD, mtime=0)[:-6], "damaged gzip file"),  # mtime 0: the same test id in every worker
])
def test_bad_headers_are_rejected_with_a_clear_error(tmp_path, raw, expected):
    path = tmp_path / "bad-idx"
    path.write_bytes(raw)
    with pytest.raises(DataError) as info:
        read_idx(path)
    assert expected in str(info.value) and str(path) in str(info.value)


def replace_file(folder: Path, stem: str, array: np.ndarray) -> None:
    write_idx(folder / f"{stem}.gz", array)


@pytest.mark.parametrize("stem, array, expected", [
    ("train-images-idx3-ubyte", np.zeros((16, 27, 28), np.uint8), "should hold 28x28 uint8 images"),
    ("train-images-idx3-ubyte", np.zeros((16, 28, 28), np.float32), "should hold 28x28 uint8 images"),
    ("t10k-labels-idx1-ubyte", np.zeros((16, 2), np.uint8), "should hold a list of uint8 labels"),
    ("t10k-labels-idx1-ubyte", np.zeros(15, np.uint8), "has 16 images but"),
    ("train-labels-idx1-ubyte", np.full(16, 10, np.uint8), "has label 10; labels must be 0-9"),
])
def test_inconsistent_files_are_rejected(tmp_path, stem, array, expected):
    folder = make_idx_dataset(tmp_path / "d")
    replace_file(folder, stem, array)
    with pytest.raises(DataError, match=expected):
        load_dataset(DataConfig(dir=str(folder)), environ={}, system_root=tmp_path / "none")


# ---------------------------------------------------------------------------------------------
# Lookup order


def marker_of(dataset) -> int:
    return int(dataset.train.images[0, 0, 0])


@pytest.fixture
def places(tmp_path, isolated_cache):
    """The same dataset name in all four places, each with its own marker pixel."""
    root = tmp_path
    folders = {
        "dir": make_idx_dataset(root / "given" / "mnist", marker=1),
        "env": make_idx_dataset(root / "env", marker=2),
        "cache": make_idx_dataset(isolated_cache / "datasets" / "mnist", marker=3),
        "system": make_idx_dataset(root / "system" / "mnist", marker=4),
    }
    return root, folders


def lookup(root: Path, *, with_dir: bool = True, with_env: bool = True) -> int:
    cfg = DataConfig(dir=str(root / "given") if with_dir else None, mirrors=("http://127.0.0.1:9/",))
    environ = {"NEURON_LAYOUT_DATA": str(root / "env")} if with_env else {}
    return marker_of(load_dataset(cfg, environ=environ, system_root=root / "system"))


def test_lookup_order_data_dir_then_env_then_cache_then_system(places):
    root, folders = places
    assert lookup(root) == 1
    assert lookup(root, with_dir=False) == 2
    assert lookup(root, with_dir=False, with_env=False) == 3
    for path in folders["cache"].iterdir():
        path.unlink()
    assert lookup(root, with_dir=False, with_env=False) == 4


def test_env_folder_prefers_its_dataset_subfolder(tmp_path):
    make_idx_dataset(tmp_path / "env", marker=5)
    make_idx_dataset(tmp_path / "env" / "mnist", marker=6)
    environ = {"NEURON_LAYOUT_DATA": str(tmp_path / "env")}
    assert marker_of(load_dataset(DataConfig(), environ=environ, system_root=tmp_path)) == 6


def test_folder_with_only_some_files_is_skipped(tmp_path):
    given = make_idx_dataset(tmp_path / "given", marker=1)
    (given / "t10k-labels-idx1-ubyte.gz").unlink()
    make_idx_dataset(tmp_path / "system" / "mnist", marker=4)
    cfg = DataConfig(dir=str(given))
    assert marker_of(load_dataset(cfg, environ={}, system_root=tmp_path / "system")) == 4


def test_uncompressed_files_are_found(tmp_path):
    make_idx_dataset(tmp_path / "raw", marker=7, gz=False)
    cfg = DataConfig(dir=str(tmp_path / "raw"))
    assert marker_of(load_dataset(cfg, environ={}, system_root=tmp_path)) == 7


def test_missing_data_dir_is_an_error(tmp_path):
    with pytest.raises(DataError, match="data.dir '.*nowhere' is not a folder"):
        load_dataset(DataConfig(dir=str(tmp_path / "nowhere")), environ={}, system_root=tmp_path)


def test_nothing_found_lists_every_place_tried_and_the_fix(tmp_path, isolated_cache):
    (tmp_path / "given").mkdir()
    cfg = DataConfig(dataset="fashion-mnist", dir=str(tmp_path / "given"), mirrors=("http://127.0.0.1:9/",))
    environ = {"NEURON_LAYOUT_DATA": str(tmp_path / "env")}
    with pytest.raises(DataError) as info:
        load_dataset(cfg, environ=environ, system_root=tmp_path / "system")
    message = str(info.value)
    for place in (tmp_path / "given" / "fashion-mnist", tmp_path / "given", tmp_path / "env" / "fashion-mnist",
                  tmp_path / "env", isolated_cache / "datasets" / "fashion-mnist", tmp_path / "system" / "fashion-mnist"):
        assert str(place) in message
    assert "http://127.0.0.1:9/train-images-idx3-ubyte.gz" in message
    assert "--data-dir" in message and "\n" not in message


def test_mnist_found_nowhere_comes_from_the_bundled_sample_with_one_note(tmp_path, isolated_cache):
    cfg = DataConfig(mirrors=("http://127.0.0.1:9/",))  # nothing on disk, and the download is refused
    ds = load_dataset(cfg, environ={}, system_root=tmp_path / "system")
    assert ds.source == data.SAMPLE_FOLDER and ds.name == "mnist"
    assert ds.train.images.shape == (5000, 28, 28) and ds.test.images.shape == (10000, 28, 28)
    assert np.bincount(ds.train.labels).tolist() == [500] * 10
    official = data.SOURCES["mnist"].sha256  # the test set is the official one, byte for byte
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        assert hashlib.sha256((data.SAMPLE_FOLDER / name).read_bytes()).hexdigest() == official[name]
    [note] = ds.notes
    assert "connection refused" in note and "bundled sample" in note and "60,000" in note and "--data-dir" in note
    assert "\n" not in note


def test_mnist_sample_is_the_bundled_sample_without_looking_elsewhere(tmp_path, isolated_cache):
    elsewhere = make_idx_dataset(tmp_path / "d" / "mnist-sample")
    cfg = DataConfig(dataset="mnist-sample", dir=str(elsewhere.parent), mirrors=("http://127.0.0.1:9/",))
    ds = load_dataset(cfg, environ={"NEURON_LAYOUT_DATA": str(elsewhere.parent)}, system_root=tmp_path)
    assert ds.source == data.SAMPLE_FOLDER and ds.name == "mnist" and len(ds.train.labels) == 5000
    assert len(ds.notes) == 1 and "data.dataset: mnist" in ds.notes[0]
    other = load_dataset(DataConfig(dataset="mnist-sample", classes=(3, 8)), environ={}, system_root=tmp_path)
    assert other.classes == (3, 8) and other.class_names == ("3", "8") and len(other.train.labels) == 1000


def test_a_damaged_bundled_sample_is_refused_in_one_line(tmp_path, monkeypatch):
    copy = tmp_path / "sample"
    shutil.copytree(data.SAMPLE_FOLDER, copy)
    raw = bytearray((copy / "train-labels-idx1-ubyte.gz").read_bytes())
    raw[-12] ^= 0xFF
    (copy / "train-labels-idx1-ubyte.gz").write_bytes(bytes(raw))
    monkeypatch.setattr(data, "SAMPLE_FOLDER", copy)
    with pytest.raises(DataError, match=r"bundled MNIST sample .* damaged \(train-labels-idx1-ubyte\): reinstall"):
        load_dataset(DataConfig(dataset="mnist-sample"), environ={}, system_root=tmp_path)


def test_classes_and_limit_select_and_remap(tmp_path):
    folder = make_idx_dataset(tmp_path / "d", n=40)
    cfg = DataConfig(dir=str(folder), classes=(7, 2), limit=5)
    ds = load_dataset(cfg, environ={}, system_root=tmp_path)
    assert ds.classes == (7, 2) and ds.class_names == ("7", "2") and ds.n_classes == 2
    original = (np.arange(40) % 10)
    keep = np.isin(original, [7, 2])
    assert len(ds.train.labels) == 5
    np.testing.assert_array_equal(ds.train.labels, np.where(original[keep] == 7, 0, 1)[:5])
    full = read_idx(folder / "train-images-idx3-ubyte.gz")
    np.testing.assert_array_equal(ds.train.images, full[keep][:5])


def test_real_mnist_files(shared_data):
    ds = load_dataset(DataConfig(), environ={"NEURON_LAYOUT_DATA": str(shared_data)}, system_root=Path("/nonexistent"))
    assert ds.train.images.shape == (5000, 28, 28) and ds.test.images.shape == (10000, 28, 28)
    assert np.bincount(ds.train.labels).tolist() == [500] * 10
    assert np.bincount(ds.test.labels, minlength=10).sum() == 10000
    official = data.SOURCES["mnist"].sha256
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        assert hashlib.sha256((shared_data / "mnist" / name).read_bytes()).hexdigest() == official[name]


# ---------------------------------------------------------------------------------------------
# Downloads from a local HTTP server


@pytest.fixture
def server(tmp_path):
    """An HTTP server on 127.0.0.1 serving tmp_path/www; yields its base URL."""
    www = tmp_path / "www"
    www.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(www)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield www, f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


def served_source(www: Path, monkeypatch, corrupt: str | None = None) -> None:
    """Serve a tiny dataset and register its true checksums (one of them wrong if `corrupt` names a file)."""
    make_idx_dataset(www, marker=9)
    sums = {f"{s}.gz": hashlib.sha256((www / f"{s}.gz").read_bytes()).hexdigest() for s in STEMS}
    if corrupt:
        sums[corrupt] = "0" * 64
    monkeypatch.setitem(data.SOURCES, "mnist", Source(mirrors=(), sha256=sums, class_names=data.SOURCES["mnist"].class_names))


def test_download_into_the_cache_then_reuse(server, monkeypatch, tmp_path, isolated_cache):
    www, url = server
    served_source(www, monkeypatch)
    cfg = DataConfig(mirrors=("http://127.0.0.1:9/", url))  # the first mirror is down
    ds = load_dataset(cfg, environ={}, system_root=tmp_path / "none")
    assert marker_of(ds) == 9
    cached = isolated_cache / "datasets" / "mnist"
    assert sorted(p.name for p in cached.iterdir()) == sorted(f"{s}.gz" for s in STEMS)
    for path in www.iterdir():
        path.unlink()  # the server has nothing now: a second load must come from the cache
    assert marker_of(load_dataset(cfg, environ={}, system_root=tmp_path / "none")) == 9


def test_checksum_mismatch_leaves_nothing_in_the_cache(server, monkeypatch, tmp_path, isolated_cache):
    www, url = server
    served_source(www, monkeypatch, corrupt="train-images-idx3-ubyte.gz")
    ds = load_dataset(DataConfig(mirrors=(url,)), environ={}, system_root=tmp_path / "none")
    assert ds.source == data.SAMPLE_FOLDER  # mnist falls back to the bundled sample, saying why
    assert "checksum mismatch, file discarded" in ds.notes[0]
    cached = isolated_cache / "datasets" / "mnist"
    assert not cached.exists() or list(cached.iterdir()) == []


def test_decoded_files_are_cached_and_a_damaged_cache_entry_is_ignored(tmp_path, isolated_cache):
    folder = make_idx_dataset(tmp_path / "d", marker=3)
    cfg = DataConfig(dir=str(folder))
    first = load_dataset(cfg, environ={}, system_root=tmp_path)
    decoded = sorted((isolated_cache / "decoded").iterdir())
    sums = {hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}  # equal files share an entry
    assert {p.name for p in decoded} == {f"{s}.npz" for s in sums}
    assert first.notes == () and load_dataset(cfg, environ={}, system_root=tmp_path).notes == ()  # used as is
    for path in decoded:
        path.write_bytes(b"garbage")
    again = load_dataset(cfg, environ={}, system_root=tmp_path)
    np.testing.assert_array_equal(first.train.images, again.train.images)
    np.testing.assert_array_equal(first.test.labels, again.test.labels)
    assert first.digest == again.digest and first.key == again.key
    assert len(again.notes) == 3 and all("is damaged: decoded the file again" in n for n in again.notes)


def test_a_decoded_cache_entry_that_does_not_match_its_file_is_never_used(tmp_path, isolated_cache):
    """An entry copied over another's name, or rewritten (here: every pixel shifted by one), is decoded again."""
    folder = make_idx_dataset(tmp_path / "d", n=40, marker=4)
    cfg = DataConfig(dir=str(folder))
    first = load_dataset(cfg, environ={}, system_root=tmp_path)
    entry = {stem: isolated_cache / "decoded" / f"{hashlib.sha256((folder / f'{stem}.gz').read_bytes()).hexdigest()}.npz"
             for stem in STEMS}  # (both splits' label files are equal here: one entry)
    shutil.copy(entry["t10k-images-idx3-ubyte"], entry["train-labels-idx1-ubyte"])  # another file's entry
    with np.load(entry["train-images-idx3-ubyte"]) as z:
        shifted = {"data": z["data"] + 1, "meta": z["meta"]}
    np.savez(entry["train-images-idx3-ubyte"], **shifted)  # the same record, other pixels
    again = load_dataset(cfg, environ={}, system_root=tmp_path)
    np.testing.assert_array_equal(again.train.images, first.train.images)
    np.testing.assert_array_equal(again.train.labels, first.train.labels)
    assert again.key == first.key
    assert [n.split(" in the cache")[0] for n in again.notes] == [
        f"the decoded copy of {folder / 'train-images-idx3-ubyte.gz'}", f"the decoded copy of {folder / 'train-labels-idx1-ubyte.gz'}"]
    assert "does not hold what was decoded: decoded the file again" in again.notes[0]
    assert "was decoded from another file: decoded the file again" in again.notes[1]
    assert load_dataset(cfg, environ={}, system_root=tmp_path).notes == ()  # the entries were replaced


IDX_DTYPES = [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64]


@settings(max_examples=60, deadline=None)
@given(arrays(st.sampled_from(IDX_DTYPES), array_shapes(min_dims=1, max_dims=4, max_side=6)), st.booleans())
def test_any_array_survives_an_idx_round_trip(array, compressed):
    raw = encode_idx(array)
    if compressed:
        raw = gzip.compress(raw)
    back = idx.parse_idx(idx.decompress(raw, "x"), "x")
    assert back.dtype == array.dtype and back.shape == array.shape
    np.testing.assert_array_equal(back, array)


def test_missing_file_on_the_mirror_is_reported(server, tmp_path, isolated_cache):
    _, url = server  # serves an empty folder
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz: HTTP 404"):
        load_dataset(DataConfig(dataset="fashion-mnist", mirrors=(url,)), environ={}, system_root=tmp_path / "none")
    folder = isolated_cache / "datasets" / "fashion-mnist"
    assert not folder.exists() or not any(folder.iterdir())
    ds = load_dataset(DataConfig(mirrors=(url,)), environ={}, system_root=tmp_path / "none")
    assert ds.source == data.SAMPLE_FOLDER and "HTTP 404" in ds.notes[0]  # mnist: the bundled sample


def test_classes_absent_from_the_data_are_named(tmp_path):
    folder = tmp_path / "d"
    folder.mkdir()
    for split, (img_stem, lab_stem) in data.SPLIT_FILES.items():
        write_idx(folder / f"{img_stem}.gz", np.zeros((6, 28, 28), np.uint8))
        write_idx(folder / f"{lab_stem}.gz", np.array([0, 1, 2, 0, 1, 2], np.uint8))  # no 7s
    with pytest.raises(DataError, match="data.classes names 7, which the train split in .* has no examples of"):
        load_dataset(DataConfig(dir=str(folder), classes=(0, 7)), environ={}, system_root=tmp_path)
    assert load_dataset(DataConfig(dir=str(folder), classes=(0, 2)), environ={}, system_root=tmp_path).n_classes == 2
