"""MNIST-format datasets: an IDX reader and writer, dataset lookup, and verified downloads.

Lookup order, first folder holding all four IDX files wins:
  1. `data.dir` (or --data-dir): its `<dataset>/` subfolder, then the folder itself
  2. $NEURON_LAYOUT_DATA: its `<dataset>/` subfolder, then the folder itself
  3. the user cache: <cache>/datasets/<dataset>/
  4. the system folder: /usr/share/datasets/<dataset>/ (Debian's dataset-fashion-mnist)
  5. a download into the user cache from the standard mirrors, checked against SHA-256
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from layout.config import DataConfig
from layout.errors import DataError
from layout.files import cache_dir, write_atomic

SYSTEM_ROOT = Path("/usr/share/datasets")
IMAGE_SHAPE = (28, 28)
GZIP_MAGIC = b"\x1f\x8b"
N_LABELS = 10
SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
STEMS = tuple(stem for pair in SPLIT_FILES.values() for stem in pair)

# IDX type codes (third byte of the magic number) and their big-endian numpy types.
IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


@dataclass(frozen=True)
class Source:
    """Where a dataset comes from when no local copy is found."""

    mirrors: tuple[str, ...]
    sha256: dict  # file name (.gz) -> hex digest
    class_names: tuple[str, ...]


SOURCES = {
    "mnist": Source(
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
            "http://yann.lecun.com/exdb/mnist/",
        ),
        sha256={
            "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
            "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
            "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
            "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
        },
        class_names=tuple(str(d) for d in range(10)),
    ),
    "fashion-mnist": Source(
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        sha256={
            "train-images-idx3-ubyte.gz": "08dc20ab1689590a0bcd66e874647b6ee8464e2d501b5a3f1f78831db19a3fdc",
            "train-labels-idx1-ubyte.gz": "b0197879cbda89f3dc7b894f9fd52b858e68ea4182b6947c9d8c2b67e5f18dcc",
            "t10k-images-idx3-ubyte.gz": "78dcbbfb5a27efaf1b6c1d616caca68560be8766c5bffcb2791df9273a534229",
            "t10k-labels-idx1-ubyte.gz": "42bd18137a62d5998cdeae52bf3a0676ac6b706f5cf8439b47bb5b151ae3dccf",
        },
        class_names=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                     "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
    ),
}


@dataclass(frozen=True)
class Split:
    """One split. images: [n, 28, 28] uint8; labels: [n] int32 in 0..n_classes-1."""

    images: np.ndarray
    labels: np.ndarray


@dataclass(frozen=True)
class Dataset:
    """A dataset ready for training, after `classes` and `limit` were applied.

    classes[k] is the original label of class index k; class_names[k] its name.
    digest is the SHA-256 over the four source files, so a cache can tell datasets apart.
    """

    name: str
    train: Split
    test: Split
    classes: tuple[int, ...]
    class_names: tuple[str, ...]
    source: Path
    digest: str

    @property
    def n_classes(self) -> int:
        return len(self.classes)


# ---------------------------------------------------------------------------------------------
# IDX files


def parse_idx(data: bytes, name: str) -> np.ndarray:
    """Decode the bytes of an (uncompressed) IDX file, checking its header against its length."""
    if len(data) < 4:
        raise DataError(f"{name} is not an IDX file: only {len(data)} bytes long")
    if data[0] != 0 or data[1] != 0 or data[2] not in IDX_TYPES:
        magic = int.from_bytes(data[:4], "big")
        raise DataError(f"{name} is not an IDX file: bad magic number 0x{magic:08x} "
                        f"(expected 0x00000801 for labels or 0x00000803 for images)")
    ndim = data[3]
    header = 4 + 4 * ndim
    if ndim == 0:
        raise DataError(f"{name} has a bad IDX header: it declares 0 dimensions")
    if len(data) < header:
        raise DataError(f"{name} is truncated: its header needs {header} bytes, the file has {len(data)}")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    dtype = np.dtype(IDX_TYPES[data[2]])
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    actual = len(data) - header
    if actual < expected:
        raise DataError(f"{name} is truncated: its header promises {expected} bytes of data "
                        f"(dimensions {'x'.join(map(str, dims))}), the file has {actual}")
    if actual > expected:
        raise DataError(f"{name} has {actual - expected} bytes after the data that its header "
                        f"(dimensions {'x'.join(map(str, dims))}) does not account for")
    array = np.frombuffer(data, dtype=dtype, count=expected // dtype.itemsize, offset=header)
    return array.reshape(dims).astype(dtype.newbyteorder("="), copy=False)


def decompress(raw: bytes, name: str) -> bytes:
    """Gunzip `raw` if it starts with the gzip magic bytes; plain IDX passes through."""
    if raw[:2] != GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{name} is a damaged gzip file ({e}): delete it or download it again") from None


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file, gzip-compressed or raw."""
    path = Path(path)
    return parse_idx(decompress(read_bytes(path), str(path)), str(path))


def read_idx_cached(path: Path) -> tuple[np.ndarray, str]:
    """(array, SHA-256 of the file). A gzip file is decoded once and kept as .npy in the cache, keyed by
    its checksum: reading 47 MB of .npy is about 20 times faster than gunzipping it again."""
    raw = read_bytes(path)
    digest = hashlib.sha256(raw).hexdigest()
    if raw[:2] != GZIP_MAGIC:
        return parse_idx(raw, str(path)), digest
    decoded = cache_dir() / "decoded" / f"{digest}.npy"
    try:
        return np.load(decoded, allow_pickle=False), digest
    except (OSError, ValueError):
        pass
    array = parse_idx(decompress(raw, str(path)), str(path))
    try:
        write_atomic(decoded, lambda f: np.save(f, array))
    except OSError:
        pass  # the cache only saves time; a read-only or full disk must not stop the run
    return array, digest


def read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror}") from None


def encode_idx(array: np.ndarray) -> bytes:
    """The IDX encoding of an array (big-endian, header with type code and dimensions)."""
    codes = {np.dtype(v).newbyteorder("="): k for k, v in IDX_TYPES.items()}
    code = codes.get(array.dtype.newbyteorder("="))
    if code is None or array.ndim == 0:
        raise ValueError(f"cannot store a {array.ndim}-d {array.dtype} array as IDX")
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, dtype=IDX_TYPES[code]).tobytes()


def write_idx(path: str | Path, array: np.ndarray) -> Path:
    """Write an IDX file, gzip-compressed when the name ends in .gz."""
    data = encode_idx(np.asarray(array))
    if str(path).endswith(".gz"):
        data = gzip.compress(data, mtime=0)
    return write_atomic(path, lambda f: f.write(data))


def check_split(images: np.ndarray, labels: np.ndarray, names: tuple[str, str]) -> Split:
    """Check that an image file and a label file form an MNIST-style split."""
    if images.ndim != 3 or images.shape[1:] != IMAGE_SHAPE or images.dtype != np.uint8:
        raise DataError(f"{names[0]} should hold 28x28 uint8 images, found a {images.dtype} array of shape "
                        f"{'x'.join(map(str, images.shape))}")
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise DataError(f"{names[1]} should hold a list of uint8 labels, found a {labels.dtype} array of shape "
                        f"{'x'.join(map(str, labels.shape))}")
    if len(images) != len(labels):
        raise DataError(f"{names[0]} has {len(images)} images but {names[1]} has {len(labels)} labels: "
                        "the two files do not belong together")
    if len(labels) and labels.max() >= N_LABELS:
        raise DataError(f"{names[1]} has label {labels.max()}; labels must be 0-{N_LABELS - 1}")
    return Split(images=images, labels=labels.astype(np.int32))


# ---------------------------------------------------------------------------------------------
# Lookup


def find_files(folder: Path) -> dict[str, Path] | None:
    """The four IDX files in `folder` (each .gz or raw), or None unless all four are there."""
    found = {}
    for stem in STEMS:
        hits = [folder / name for name in (f"{stem}.gz", stem) if (folder / name).is_file()]
        if not hits:
            return None
        found[stem] = hits[0]
    return found


def candidate_folders(cfg: DataConfig, environ: dict, system_root: Path) -> list[tuple[str, Path]]:
    """(label, folder) pairs in lookup order; see the module docstring."""
    out = []
    for label, root in (("data.dir", cfg.dir), ("$NEURON_LAYOUT_DATA", environ.get("NEURON_LAYOUT_DATA"))):
        if root:
            root = Path(root).expanduser()
            out += [(label, root / cfg.dataset), (label, root)]
    out.append(("cache", cache_dir() / "datasets" / cfg.dataset))
    out.append(("system", system_root / cfg.dataset))
    return out


def locate(cfg: DataConfig, *, environ: dict | None = None, system_root: Path = SYSTEM_ROOT,
           progressbar: bool = False) -> dict[str, Path]:
    """The four files of `cfg.dataset`: the first folder in lookup order that has them, else a download."""
    environ = os.environ if environ is None else environ
    if cfg.dir and not Path(cfg.dir).expanduser().is_dir():
        raise DataError(f"data.dir '{cfg.dir}' is not a folder: fix --data-dir or data.dir in the config")
    tried = []
    for label, folder in candidate_folders(cfg, environ, system_root):
        files = find_files(folder)
        if files:
            return files
        tried.append(f"{label} {folder}")
    target = cache_dir() / "datasets" / cfg.dataset
    mirrors = cfg.mirrors or SOURCES[cfg.dataset].mirrors
    try:
        return download(cfg.dataset, target, mirrors, progressbar)
    except DataError as e:
        raise DataError(
            f"{cfg.dataset} not found: looked in {'; '.join(tried)}; then {e}. "
            f"Fix: pass --data-dir FOLDER (or set NEURON_LAYOUT_DATA) to a folder holding "
            f"{', '.join(f'{s}.gz' for s in STEMS)}"
        ) from None


def download(dataset: str, target: Path, mirrors: tuple[str, ...], progressbar: bool) -> dict[str, Path]:
    """Fetch the four files into `target`, each verified by SHA-256 before it gets its final name."""
    import pooch  # imported here: it is only needed for downloads

    pooch.get_logger().setLevel("WARNING")  # our own error says what failed; the progress bar shows progress
    source = SOURCES[dataset]
    files = {}
    for stem in STEMS:
        name = f"{stem}.gz"
        errors = []
        for base in mirrors:
            url = base.rstrip("/") + "/" + name
            try:
                path = pooch.retrieve(url, known_hash=f"sha256:{source.sha256[name]}", fname=name,
                                      path=target, progressbar=progressbar)
                files[stem] = Path(path)
                break
            except Exception as e:  # network errors, HTTP errors and checksum mismatches alike
                errors.append(f"{url}: {one_line(e)}")
        else:
            raise DataError(f"the download failed ({'; '.join(errors)})")
    return files


def one_line(error: Exception) -> str:
    """A short reason for a failed download."""
    text = " ".join(str(error).split())
    reasons = (("does not match the known hash", "checksum mismatch, file discarded"),
               ("NameResolutionError", "host not found (no network?)"),
               ("Connection refused", "connection refused"),
               ("timed out", "timed out"))
    for needle, reason in reasons:
        if needle in text:
            return reason
    response = getattr(error, "response", None)
    if response is not None:
        return f"HTTP {response.status_code}"
    return text[:120] or type(error).__name__


# ---------------------------------------------------------------------------------------------
# Dataset


def load_dataset(cfg: DataConfig, *, environ: dict | None = None, system_root: Path = SYSTEM_ROOT,
                 progressbar: bool = False) -> Dataset:
    """Find, read and check the dataset, then apply `classes` and `limit`."""
    files = locate(cfg, environ=environ, system_root=system_root, progressbar=progressbar)
    digest = hashlib.sha256()
    arrays = {}
    for stem in STEMS:
        arrays[stem], file_digest = read_idx_cached(files[stem])
        digest.update(file_digest.encode())
    classes = cfg.classes or tuple(range(N_LABELS))
    splits = {
        split: select(check_split(arrays[img], arrays[lab], (str(files[img]), str(files[lab]))), classes, cfg.limit)
        for split, (img, lab) in SPLIT_FILES.items()
    }
    for split_name, split in splits.items():
        missing = sorted(set(range(len(classes))) - set(np.unique(split.labels).tolist()))
        if cfg.classes and missing and cfg.limit is None:
            raise DataError(f"data.classes names {', '.join(str(classes[m]) for m in missing)}, which the "
                            f"{split_name} split in {files[STEMS[0]].parent} has no examples of: choose "
                            "classes that the data has")
    names = SOURCES[cfg.dataset].class_names
    return Dataset(name=cfg.dataset, train=splits["train"], test=splits["test"], classes=tuple(classes),
                   class_names=tuple(names[c] for c in classes), source=files[STEMS[0]].parent,
                   digest=digest.hexdigest())


def select(split: Split, classes: tuple[int, ...], limit: int | None) -> Split:
    """Keep the examples whose label is in `classes` (remapped to their index), then the first `limit`."""
    remap = np.full(N_LABELS, -1, dtype=np.int32)
    remap[list(classes)] = np.arange(len(classes), dtype=np.int32)
    keep = remap[split.labels] >= 0
    images, labels = (split.images, remap[split.labels]) if keep.all() else (split.images[keep], remap[split.labels[keep]])
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return Split(images=images, labels=labels)
