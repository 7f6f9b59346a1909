"""MNIST-format datasets: lookup, verified downloads, the bundled sample, and the classes a config keeps.

Lookup order, first folder holding all four IDX files wins:
  1. `data.dir` (or --data-dir): its `<dataset>/` subfolder, then the folder itself
  2. $NEURON_LAYOUT_DATA: its `<dataset>/` subfolder, then the folder itself
  3. the user cache: <cache>/datasets/<dataset>/
  4. the system folder: /usr/share/datasets/<dataset>/ (Debian's dataset-fashion-mnist)
  5. a download into the user cache from the standard mirrors, checked against SHA-256
  6. for mnist, the sample bundled with the package (models/data/sample/: 5,000 training images, 500 per
     digit, and the official 10,000 test images), with a note saying so; `data.dataset: mnist-sample`
     asks for it directly
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pooch

from layout.core.config import DataConfig
from layout.core.errors import DataError
from layout.core.files import cache_dir
from layout.core.layers import MAX_SIDE  # pixels: the largest image side of the user's own data
from layout.core.plain import fingerprint
from models.data.idx import file_header, read_bytes, read_idx_cached
from models.data.own import folder_splits, npz_splits

SYSTEM_ROOT = Path("/usr/share/datasets")
IMAGE_SHAPE = (28, 28)  # MNIST's and Fashion-MNIST's; the user's own data may have any (up to MAX_SIDE)
N_LABELS = 10  # MNIST's and Fashion-MNIST's classes
MAX_LABELS = 100  # the user's own data: labels 0-99 (EMNIST's 47 or 62 classes fit; colours cycle past ten)
SAMPLE_FOLDER = Path(__file__).with_name("sample")
SAMPLE_SHA256 = {  # the bundled sample: the official test set, and 500 training images per digit
    "train-images-idx3-ubyte.gz": "2c9c1df9c96791cbe2db901ec6fa96714107f0c7f3b861c7fc7a635ac38b37b6",
    "train-labels-idx1-ubyte.gz": "c5d05298659f6a5aab997bfcb12d64f2317fa4210820002feb1a2f0a66139f3a",
    "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}
FULL_SET = ("for all 60,000 training images pass --data-dir FOLDER (or set NEURON_LAYOUT_DATA) to a folder "
            "holding MNIST, or run once with a network connection")
CONNECT_SECONDS, READ_SECONDS = 5, 30  # a mirror that does not answer is given up after 5 s, not pooch's 30
SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
STEMS = tuple(stem for pair in SPLIT_FILES.values() for stem in pair)
OWN = ("idx", "npz", "folder")  # the user's own data: an IDX folder (data.dir), an .npz (data.file), images
DOMAIN = {"mnist-sample": "mnist"}  # a dataset's name as networks record it: the sample is MNIST

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
    "mnist-sample": Source(mirrors=(), sha256=SAMPLE_SHA256, class_names=tuple(str(d) for d in range(10))),
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
    """One split. images: [n, H, W] uint8 greyscale (28 x 28 for MNIST), or [n, H, W, 3] uint8 colour (RGB);
    labels: [n] int32 in 0..n_classes-1."""

    images: np.ndarray
    labels: np.ndarray


@dataclass(frozen=True)
class Dataset:
    """A dataset ready for training, after `classes` and `limit` were applied.

    classes[k] is the original label of class index k; class_names[k] its name.
    digest is the SHA-256 over the four source files; key identifies the data actually used (those files,
    the classes and the limit): every cached result that depends on the data is keyed by it.
    notes: what the user should know about where the data came from (one line each), e.g. that it is the
    bundled sample.
    """

    name: str
    train: Split
    test: Split
    classes: tuple[int, ...]
    class_names: tuple[str, ...]
    source: Path
    digest: str
    key: str
    notes: tuple[str, ...] = ()

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int]:
        """(H, W) of every image."""
        return tuple(self.train.images.shape[1:3])

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of every image as a network takes it: 1 channel for greyscale, 3 for colour."""
        return channels(self.train.images), *self.image_shape


def channels(images: np.ndarray) -> int:
    """1 for greyscale images [n, H, W], C for images [n, H, W, C]."""
    return images.shape[3] if images.ndim == 4 else 1


def flat_pixels(images: np.ndarray) -> np.ndarray:
    """uint8 images [n, H, W] or [n, H, W, C] as networks take them, [n, C * H * W], each image's pixels
    in (C, H, W) order (the order PyTorch flattens in and this tool's networks read)."""
    if images.ndim == 4:
        images = images.transpose(0, 3, 1, 2)
    return images.reshape(len(images), -1)


def check_shapes(images, labels, names: tuple[str, str], image_shape: tuple[int, int] | None = IMAGE_SHAPE) -> None:
    """Check that an image file and a label file can form an MNIST-style split: uint8 images of
    image_shape (None: any size up to MAX_SIDE), as many uint8 labels. `images` and `labels` are arrays, or
    their IDX headers (checked before a byte of data is decompressed)."""
    shape = tuple(images.shape[1:])
    if image_shape is None and len(shape) == 2 and images.dtype == np.uint8 and not 1 <= min(shape) <= max(
            shape) <= MAX_SIDE:
        raise DataError(f"{names[0]} holds {'x'.join(map(str, shape))} images: each side must be 1 to {MAX_SIDE} "
                        "pixels")
    if len(images.shape) != 3 or image_shape is not None and shape != image_shape or images.dtype != np.uint8:
        wanted = "x".join(map(str, image_shape)) + " uint8 images" if image_shape else "uint8 images [n, H, W]"
        raise DataError(f"{names[0]} should hold {wanted}, found a {images.dtype} array of shape "
                        f"{'x'.join(map(str, images.shape))}")
    if len(labels.shape) != 1 or labels.dtype != np.uint8:
        raise DataError(f"{names[1]} should hold a list of uint8 labels, found a {labels.dtype} array of shape "
                        f"{'x'.join(map(str, labels.shape))}")
    if len(images) != len(labels):
        raise DataError(f"{names[0]} has {len(images)} images but {names[1]} has {len(labels)} labels: "
                        "the two files do not belong together")


def check_split(images: np.ndarray, labels: np.ndarray, names: tuple[str, str],
                image_shape: tuple[int, int] | None = IMAGE_SHAPE, n_labels: int = N_LABELS) -> Split:
    """Check that an image file and a label file form an MNIST-style split, labels in range included."""
    check_shapes(images, labels, names, image_shape)
    if len(labels) and labels.max() >= n_labels:
        raise DataError(f"{names[1]} has label {labels.max()}; labels must be 0-{n_labels - 1}")
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
           progressbar: bool = False) -> tuple[dict[str, Path], tuple[str, ...]]:
    """(the four files of `cfg.dataset`, notes): the first folder in lookup order that has them, else a
    download, else (for mnist) the bundled sample, with a note saying so."""
    environ = os.environ if environ is None else environ
    if cfg.dataset == "idx":
        folder = Path(cfg.dir or "").expanduser()
        files = find_files(folder) if cfg.dir and folder.is_dir() else None
        if files is None:
            raise DataError(f"data.dataset = idx needs data.dir (or --data-dir): a folder holding "
                            f"{', '.join(STEMS)} (each .gz or not); {cfg.dir or 'none'} does not")
        return files, ()
    if cfg.dataset == "mnist-sample":
        return sample_files(), (f"data.dataset = mnist-sample: the bundled sample, 5,000 of MNIST's training "
                                f"images and its 10,000 test images; {FULL_SET} and set data.dataset: mnist",)
    if cfg.dir and not Path(cfg.dir).expanduser().is_dir():
        raise DataError(f"data.dir '{cfg.dir}' is not a folder: fix --data-dir or data.dir in the config")
    tried = []
    for label, folder in candidate_folders(cfg, environ, system_root):
        files = find_files(folder)
        if files:
            return files, ()
        tried.append(f"{label} {folder}")
    target = cache_dir() / "datasets" / cfg.dataset
    mirrors = cfg.mirrors or SOURCES[cfg.dataset].mirrors
    try:
        return download(cfg.dataset, target, mirrors, progressbar), ()
    except DownloadFailed as e:
        if cfg.dataset == "mnist":
            return sample_files(), (f"mnist is not on this machine and could not be downloaded "
                                    f"({', '.join(sorted(set(e.reasons)))}): using the bundled sample, 5,000 of the "
                                    f"60,000 training images and the 10,000 test images; {FULL_SET}",)
        raise DataError(
            f"{cfg.dataset} not found: looked in {'; '.join(tried)}; then {e}. "
            f"Fix: pass --data-dir FOLDER (or set NEURON_LAYOUT_DATA) to a folder holding "
            f"{', '.join(f'{s}.gz' for s in STEMS)}"
        ) from None


def sample_files() -> dict[str, Path]:
    """The bundled MNIST sample's four files, checked against their SHA-256."""
    files = find_files(SAMPLE_FOLDER)
    damaged = [stem for stem in STEMS if files is None or files[stem].suffix != ".gz"
               or hashlib.sha256(files[stem].read_bytes()).hexdigest() != SAMPLE_SHA256[f"{stem}.gz"]]
    if damaged:
        raise DataError(f"the bundled MNIST sample in {SAMPLE_FOLDER} is missing or damaged ({', '.join(damaged)}): "
                        "reinstall neuron-layout, or pass --data-dir FOLDER to a folder holding MNIST")
    return files


class DownloadFailed(DataError):
    """No mirror gave a file; `reasons`: each mirror's, short."""

    def __init__(self, message: str, reasons: list[str]):
        super().__init__(message)
        self.reasons = reasons


def download(dataset: str, target: Path, mirrors: tuple[str, ...], progressbar: bool) -> dict[str, Path]:
    """Fetch the four files into `target`, each verified by SHA-256 before it gets its final name."""
    pooch.get_logger().setLevel("WARNING")  # our own error says what failed; the progress bar shows progress
    downloader = pooch.HTTPDownloader(progressbar=progressbar, timeout=(CONNECT_SECONDS, READ_SECONDS))
    source = SOURCES[dataset]
    files = {}
    for stem in STEMS:
        name = f"{stem}.gz"
        errors, reasons = [], []
        for base in mirrors:
            url = base.rstrip("/") + "/" + name
            try:
                path = pooch.retrieve(url, known_hash=f"sha256:{source.sha256[name]}", fname=name,
                                      path=target, downloader=downloader)
                files[stem] = Path(path)
                break
            except Exception as e:  # network errors, HTTP errors and checksum mismatches alike
                reasons.append(one_line(e))
                errors.append(f"{url}: {reasons[-1]}")
        else:
            raise DownloadFailed(f"the download failed ({'; '.join(errors)})", reasons)
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
    if cfg.dataset == "npz":
        if not cfg.file:
            raise DataError("data.dataset = npz needs data.file: the .npz file holding x_train, y_train, x_test and "
                            "y_test")
        path = Path(cfg.file).expanduser()
        arrays, names, digest, notes = npz_splits(path, MAX_SIDE, MAX_LABELS)
        return made_dataset(cfg, f"npz:{path.name}", as_splits(arrays), names, path, digest, notes)
    if cfg.dataset == "folder":
        folder = Path(cfg.dir or "").expanduser()
        if not cfg.dir:
            raise DataError("data.dataset = folder needs data.dir (or --data-dir): a folder with one subfolder of "
                            "images per class")
        arrays, names, digest, notes = folder_splits(folder, MAX_SIDE, MAX_LABELS, cfg.test_fraction,
                                                     cfg.split_seed)
        return made_dataset(cfg, f"folder:{folder.name}", as_splits(arrays), names, folder, digest, notes)
    files, notes = locate(cfg, environ=environ, system_root=system_root, progressbar=progressbar)
    raw = {stem: read_bytes(files[stem]) for stem in STEMS}
    image_shape = None if cfg.dataset in OWN else IMAGE_SHAPE
    for img, lab in SPLIT_FILES.values():  # from the headers alone, before anything is decompressed
        check_shapes(*(file_header(raw[stem], str(files[stem])) for stem in (img, lab)),
                     (str(files[img]), str(files[lab])), image_shape)
    digest = hashlib.sha256()
    arrays = {}
    for stem in STEMS:
        decoded = read_idx_cached(files[stem], raw[stem])
        arrays[stem] = decoded.array
        digest.update(decoded.digest.encode())
        notes += (decoded.note,) if decoded.note else ()
    n_labels = MAX_LABELS if cfg.dataset in OWN else N_LABELS
    splits = {split: check_split(arrays[img], arrays[lab], (str(files[img]), str(files[lab])), image_shape, n_labels)
              for split, (img, lab) in SPLIT_FILES.items()}
    if cfg.dataset == "idx":
        name, names = f"idx:{files[STEMS[0]].parent.name}", None
    else:
        name, names = DOMAIN.get(cfg.dataset, cfg.dataset), SOURCES[cfg.dataset].class_names
    return made_dataset(cfg, name, splits, names, files[STEMS[0]].parent, digest.hexdigest(), notes)


def as_splits(arrays: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, Split]:
    """The (images, labels) pairs models/data/own.py reads, as Splits."""
    return {split: Split(images, labels) for split, (images, labels) in arrays.items()}


def made_dataset(cfg: DataConfig, name: str, splits: dict[str, Split], names: tuple[str, ...] | None, source: Path,
                 digest: str, notes: tuple[str, ...]) -> Dataset:
    """The Dataset of checked splits (labels 0-9 for MNIST and Fashion-MNIST, 0-99 for the user's own data)
    after `classes` and `limit`: every class by default, or for the user's own data the labels it has;
    class names as given, else the labels themselves."""
    sizes = {split: s.images.shape[1:] for split, s in splits.items()}
    if sizes["train"] != sizes["test"]:
        raise DataError(f"{source}: the training images are {'x'.join(map(str, sizes['train']))} and the test images "
                        f"{'x'.join(map(str, sizes['test']))}: both splits must hold images of one size")
    present = sorted(set(np.unique(splits["train"].labels).tolist()))
    classes = cfg.classes or (tuple(range(N_LABELS)) if cfg.dataset not in OWN else tuple(present))
    if cfg.dataset not in OWN and max(classes) >= N_LABELS:
        raise DataError(f"data.classes names {max(classes)}, but {name} has the labels 0-{N_LABELS - 1}: choose "
                        "classes among them")
    if len(classes) < 2:
        raise DataError(f"{source} holds examples of {len(classes)} class: a network here tells at least two apart")
    if names is not None and len(names) <= max(classes):
        raise DataError(f"{source}: its {len(names)} class_names do not name label {max(classes)}: give one name per "
                        "label, in label order")
    names = names or tuple(str(c) for c in range(max(classes) + 1))
    splits = {split: select(s, classes, cfg.limit) for split, s in splits.items()}
    for split_name, split in splits.items():
        missing = sorted(set(range(len(classes))) - set(np.unique(split.labels).tolist()))
        if cfg.classes and missing and cfg.limit is None:
            raise DataError(f"data.classes names {', '.join(str(classes[m]) for m in missing)}, which the "
                            f"{split_name} split in {source} has no examples of: choose classes that the data has")
    split = (cfg.test_fraction, cfg.split_seed) if cfg.dataset == "folder" else None  # which images are tested
    key = fingerprint({"name": name, "digest": digest, "classes": classes, "limit": cfg.limit,
                       **({"split": split} if split else {})})[:20]
    return Dataset(name=name, train=splits["train"], test=splits["test"], classes=tuple(classes),
                   class_names=tuple(names[c] for c in classes), source=source, digest=digest, key=key, notes=notes)


def select(split: Split, classes: tuple[int, ...], limit: int | None) -> Split:
    """Keep the examples whose label is in `classes` (remapped to their index), then the first `limit`."""
    remap = np.full(MAX_LABELS, -1, dtype=np.int32)
    remap[list(classes)] = np.arange(len(classes), dtype=np.int32)
    keep = remap[split.labels] >= 0
    images, labels = (split.images, remap[split.labels]) if keep.all() else (split.images[keep], remap[split.labels[keep]])
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return Split(images=images, labels=labels)
