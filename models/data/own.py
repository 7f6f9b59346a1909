"""A user's own images as a dataset, read as data and checked like the IDX files:
- a `.npz` file of arrays (data.dataset: npz, data.file), numpy without pickles: x_train [n, H, W]
  (or [n, H, W, 1]) greyscale or [n, H, W, 3] colour (RGB), uint8 or float (0..1 or 0..255), y_train [n]
  whole numbers 0-99, the same for x_test / y_test, and optionally class_names [k] text;
- a folder of image files (data.dataset: folder, data.dir), one subfolder per class (its name the
  class name, in sorted order), PNG or JPEG read with Pillow: greyscale when every image is (whatever
  its file's mode), else colour (RGB); split into training and test images per class, seeded
  (data.test_fraction, data.split_seed)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from layout.core.errors import DataError
from layout.core.files import npz_contents

ARRAYS = ("x_train", "y_train", "x_test", "y_test")
IMAGE_FILES = (".png", ".jpg", ".jpeg")
MAX_NAMES = 100  # one per label 0-99
NAME_CHARS = 40  # a class name longer than this is refused: it is a label in the legend, not a text


def npz_splits(path: Path, max_side: int, n_labels: int
               ) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], tuple[str, ...] | None, str, tuple[str, ...]]:
    """({"train" | "test": (uint8 images [n, H, W] or [n, H, W, 3], int labels [n])}, the class names or
    None, the file's SHA-256, notes for the user)."""
    if not path.is_file():
        raise DataError(f"data.file '{path}' is not a file: set data.file to the .npz holding {', '.join(ARRAYS)}")
    reasons = {"pickled": "holds pickled Python objects, which are never loaded (they can run code): save plain "
                          "numeric arrays, and class_names as an array of text (np.array([...], dtype=str))",
               "unreadable": "is not a readable .npz archive ({})", "damaged": "is not an intact .npz archive ({})"}
    held, arrays = npz_contents(path, lambda kind, detail: DataError(f"{path} {reasons[kind].format(detail)}"),
                                (*ARRAYS, "class_names"))
    missing = [name for name in ARRAYS if name not in held]
    if missing:
        raise DataError(f"{path} lacks {', '.join(missing)}: save x_train, y_train, x_test and y_test "
                        f"(np.savez(\"{path.name}\", x_train=..., y_train=..., x_test=..., y_test=...)); it "
                        f"holds {', '.join(held) or 'nothing'}")
    notes = []
    splits = {}
    for split in ("train", "test"):
        images, note = pixels(arrays[f"x_{split}"], f"{path}: x_{split}", max_side)
        notes += [note] if note else []
        labels = whole_labels(arrays[f"y_{split}"], f"{path}: y_{split}", n_labels)
        if len(images) != len(labels):
            raise DataError(f"{path}: x_{split} has {len(images)} images but y_{split} {len(labels)} labels: one label "
                            "per image")
        splits[split] = (images, labels)
    names = class_names(arrays["class_names"], path) if "class_names" in arrays else None
    return splits, names, hashlib.sha256(path.read_bytes()).hexdigest(), tuple(dict.fromkeys(notes))


def pixels(a: np.ndarray, what: str, max_side: int) -> tuple[np.ndarray, str | None]:
    """uint8 images [n, H, W] (greyscale) or [n, H, W, 3] (colour): as stored, or floats in 0..1 (times
    255) or 0..255, rounded."""
    if a.ndim not in (3, 4) or a.ndim == 4 and a.shape[3] not in (1, 3) or not 1 <= min(a.shape[1:3]) <= max(
            a.shape[1:3]) <= max_side:
        raise DataError(f"{what} is an array of shape {list(a.shape)}: it must hold greyscale images [n, H, W] (or "
                        f"[n, H, W, 1]) or colour images [n, H, W, 3] (RGB, channels last), each side 1 to "
                        f"{max_side} pixels")
    a = a.reshape(a.shape[:3]) if a.ndim == 4 and a.shape[3] == 1 else a
    if a.dtype == np.uint8:
        return a, None
    if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)) or a.size and not (
            np.isfinite(a).all() and a.min() >= 0 and a.max() <= 255):
        raise DataError(f"{what} holds {a.dtype} values outside 0..255 (or not finite): save uint8 pixels, or floats "
                        "in 0..1 or 0..255")
    if np.issubdtype(a.dtype, np.floating) and a.size and a.max() <= 1:
        return np.round(a * 255).astype(np.uint8), f"{what} holds floats in 0..1: read as pixels times 255"
    return np.round(a).astype(np.uint8), None


def whole_labels(a: np.ndarray, what: str, n_labels: int) -> np.ndarray:
    if a.ndim != 1 or not np.issubdtype(a.dtype, np.integer) or a.size and (a.min() < 0 or a.max() >= n_labels):
        shown = f"values {a.min()}..{a.max()}" if a.size and np.issubdtype(a.dtype, np.number) else "no values"
        raise DataError(f"{what} is a {a.dtype} array of shape {list(a.shape)} ({shown}): labels must be whole numbers "
                        f"0-{n_labels - 1}, one per image")
    return a.astype(np.int32)


def class_names(a: np.ndarray, path: Path) -> tuple[str, ...]:
    if a.ndim != 1 or a.dtype.kind not in "US" or len(a) > MAX_NAMES:
        raise DataError(f"{path}: class_names is a {a.dtype} array of shape {list(a.shape)}: save at most "
                        f"{MAX_NAMES} names as text, one per label (np.array([\"cat\", \"dog\"]))")
    names = tuple(n.decode("utf-8", "replace") if isinstance(n, bytes) else str(n) for n in a.tolist())
    bad = [n for n in names if not n.strip() or len(n) > NAME_CHARS or not n.isprintable()]
    if bad:
        raise DataError(f"{path}: class name {bad[0][:NAME_CHARS]!r} is empty, longer than {NAME_CHARS} characters "
                        "or holds control characters: give each class a short printable name")
    return names


def folder_splits(folder: Path, max_side: int, n_labels: int, test_fraction: float, seed: int
                  ) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], tuple[str, ...], str, tuple[str, ...]]:
    """({"train" | "test": (uint8 images [n, H, W], or [n, H, W, 3] where any image has colour, labels [n])},
    the class names (the subfolders), a SHA-256 over every image file, notes): every image the size of the
    first (each side at most max_side), each class's images shuffled by `seed`, test_fraction of them (at
    least one) the test split."""
    found = folder.iterdir() if folder.is_dir() else ()
    classes = sorted(p for p in found if p.is_dir() and not p.name.startswith("."))
    if not 2 <= len(classes) <= n_labels:
        raise DataError(f"data.dir '{folder}' holds {len(classes)} subfolders: data.dataset = folder needs one "
                        f"subfolder of PNG or JPEG images per class, 2 to {n_labels} classes")
    rng = np.random.default_rng(seed)
    digest, parts, ignored, size = hashlib.sha256(), {"train": [], "test": []}, 0, []
    for label, sub in enumerate(classes):
        files = sorted(p for p in sub.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_FILES)
        ignored += sum(1 for p in sub.iterdir() if p not in files)
        if len(files) < 2:
            raise DataError(f"{sub} holds {len(files)} PNG or JPEG images: each class needs at least two (one to "
                            "train on, one to test)")
        images = np.stack([rgb_pixels(p, size, max_side, digest) for p in files])
        order = rng.permutation(len(images))
        n_test = min(max(1, round(test_fraction * len(images))), len(images) - 1)
        for split, chosen in (("test", order[:n_test]), ("train", order[n_test:])):
            parts[split].append((images[np.sort(chosen)], np.full(len(chosen), label, np.int32)))
    splits = {split: (np.concatenate([i for i, _ in p]), np.concatenate([y for _, y in p]))
              for split, p in parts.items()}
    if all(grey(images) for images, _ in splits.values()):
        splits = {split: (images[..., 0], labels) for split, (images, labels) in splits.items()}
    names = class_names(np.array([p.name for p in classes]), folder)
    notes = (f"{folder}: {ignored} files that are not PNG or JPEG images were left out",) if ignored else ()
    return splits, names, digest.hexdigest(), notes


def grey(images: np.ndarray) -> bool:
    """Whether RGB images [n, H, W, 3] have no colour: every pixel's three channels equal."""
    return bool((images[..., 1:] == images[..., :1]).all())


def rgb_pixels(path: Path, size: list, max_side: int, digest) -> np.ndarray:
    """One image file as uint8 RGB [H, W, 3] (a greyscale file's three channels equal), its size (width,
    height) checked from the header before it is decoded: the size of the first image read (kept in
    `size`), each side 1 to max_side pixels."""
    raw = path.read_bytes()
    digest.update(path.parent.name.encode() + b"/" + path.name.encode() + b"\0" + hashlib.sha256(raw).digest())
    try:
        with Image.open(path) as image:
            if not size and max(image.size) <= max_side:
                size.append(image.size)
            if not size or image.size != size[0]:
                wanted = f"{size[0][0]} x {size[0][1]}, as the first" if size else f"at most {max_side} on each side"
                raise DataError(f"{path} is {image.size[0]} x {image.size[1]} pixels: the images must be {wanted} "
                                "(resize them to one size)")
            return np.asarray(image.convert("RGB"), np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise DataError(f"{path} is not a readable PNG or JPEG image ({e})") from None
