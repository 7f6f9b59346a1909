"""Your own data (issue 19): an .npz file of images and labels with class names (data.dataset: npz), and
any folder of IDX files (data.dataset: idx), read as data and checked; names escaped where written;
anything unreadable refused in one line."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from layout.core.config import DataConfig, ModelConfig, TrainConfig
from layout.core.errors import DataError
from models.data.datasets import SPLIT_FILES, load_dataset
from models.data.idx import write_idx
from models.network.train import train
from tests.conftest import WHOLE_TOOL_QUICKLY
from tests.data.make_reference import settings

REPO = Path(__file__).resolve().parents[1]
NAMES = ["zero <b>", "one|1", "two*", "three"]  # markup in Markdown and HTML: written literally


@pytest.fixture(scope="module")
def mnist(shared_data):
    return load_dataset(DataConfig(dir=str(shared_data)))


def four_digits(mnist, folder: Path, **extra) -> Path:
    """The digits 0-3 of the real MNIST files as an .npz: training images as floats in 0..1, test images
    as uint8 [n, 28, 28, 1], and the class names."""
    train, test = (s.labels < 4 for s in (mnist.train, mnist.test))
    path = folder / "digits.npz"
    arrays = dict(x_train=mnist.train.images[train].astype(np.float32) / 255, y_train=mnist.train.labels[train],
                  x_test=mnist.test.images[test][..., None], y_test=mnist.test.labels[test],
                  class_names=np.array(NAMES))
    np.savez(path, **{**arrays, **extra})
    return path


def test_an_npz_dataset_is_read_as_its_images_labels_and_names(tmp_path, mnist):
    path = four_digits(mnist, tmp_path)
    data = load_dataset(DataConfig(dataset="npz", file=str(path)))
    keep = mnist.train.labels < 4
    assert data.name == "npz:digits.npz" and data.classes == (0, 1, 2, 3) and data.class_names == tuple(NAMES)
    np.testing.assert_array_equal(data.train.images, mnist.train.images[keep])  # 0..1 floats back to the pixels
    np.testing.assert_array_equal(data.test.labels, mnist.test.labels[mnist.test.labels < 4])
    assert data.notes == (f"{path}: x_train holds floats in 0..1: read as pixels times 255",)
    two = load_dataset(DataConfig(dataset="npz", file=str(path), classes=(1, 3)))
    assert two.class_names == ("one|1", "three") and set(two.train.labels.tolist()) == {0, 1}
    assert two.key != data.key


def test_an_npz_dataset_runs_through_the_whole_tool_with_its_names_escaped(tmp_path, mnist):
    path, out = four_digits(mnist, tmp_path), tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "layout.run", "configs/euclid.yaml", "--no-window", "--out",
                             str(out), "--export", "png", *settings("data.dataset=npz", f"data.file={path}",
                                                                     "train.epochs=3", *WHOLE_TOOL_QUICKLY)],
                            cwd=REPO, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["dataset"] == "npz:digits.npz" and metrics["sizes"] == [784, 100, 4]
    assert metrics["test_accuracy"] > 0.9
    structure = json.loads((out / "structure.json").read_text())
    assert set(structure["ablation"]["baseline_class_accuracy"]) == set(NAMES)  # JSON keeps them as they are
    report = (out / "report.md").read_text()
    assert "zero \\<b\\>" in report and "one\\|1" in report and "<b>" not in report


def test_more_than_ten_classes_are_classes_too(tmp_path, mnist):
    """Twenty classes (EMNIST letters have 26): a digit's label, plus ten for the odd-numbered images."""
    def twenty(split):
        return split.labels + 10 * (np.arange(len(split.labels)) % 2)

    path = tmp_path / "twenty.npz"
    np.savez(path, x_train=mnist.train.images, y_train=twenty(mnist.train), x_test=mnist.test.images,
             y_test=twenty(mnist.test))
    data = load_dataset(DataConfig(dataset="npz", file=str(path)))
    assert data.n_classes == 20 and data.class_names[-1] == "19"
    network = train(ModelConfig(hidden=(8,)), TrainConfig(epochs=1), data)
    assert network.sizes == (784, 8, 20) and network.class_names == data.class_names
    chosen = load_dataset(DataConfig(dataset="npz", file=str(path), classes=(3, 13)))
    assert chosen.class_names == ("3", "13") and set(chosen.test.labels.tolist()) == {0, 1}


def test_any_idx_folder_is_a_dataset_of_the_labels_it_has(tmp_path, mnist):
    folder = tmp_path / "kmnist-like"
    folder.mkdir()
    for split, (images, labels) in SPLIT_FILES.items():
        part = getattr(mnist, split)
        keep = (part.labels >= 5) & (part.labels <= 7)
        write_idx(folder / f"{images}.gz", part.images[keep])
        write_idx(folder / labels, part.labels[keep].astype(np.uint8))
    data = load_dataset(DataConfig(dataset="idx", dir=str(folder)))
    assert data.name == "idx:kmnist-like" and data.classes == (5, 6, 7) and data.class_names == ("5", "6", "7")
    assert data.train.labels.max() == 2 and len(data.test.labels) == int(((mnist.test.labels >= 5)
                                                                          & (mnist.test.labels <= 7)).sum())
    with pytest.raises(DataError, match="data.dataset = idx needs data.dir"):
        load_dataset(DataConfig(dataset="idx", dir=str(tmp_path / "nowhere")))


@pytest.mark.parametrize("change, message", [
    (dict(x_test=None), "lacks x_test: save x_train, y_train, x_test and y_test"),
    (dict(class_names=np.array(["a", "b"])), "its 2 class_names do not name label 3"),
    (dict(class_names=np.array([{"a": 1}], dtype=object)), "holds pickled Python objects, which are never loaded"),
    (dict(y_train=np.full(10, 120)), "labels must be whole numbers 0-99"),
    (dict(x_train=np.zeros((10, 28, 28, 4), np.uint8)), "or colour images [n, H, W, 3] (RGB, channels last)"),
    (dict(x_train=np.zeros((10, 20, 20), np.uint8), y_train=np.arange(10) % 4),
     "the training images are 20x20 and the test images 28x28"),
    (dict(x_train=np.full((10, 28, 28), 300.0)), "values outside 0..255"),
    (dict(class_names=np.array(["ok", "two\nlines", "c", "d"])), "holds control characters"),
])
def test_an_npz_dataset_that_cannot_be_read_faithfully_is_refused(tmp_path, mnist, change, message):
    path = tmp_path / "digits.npz"
    base = dict(np.load(four_digits(mnist, tmp_path)))
    arrays = {k: v for k, v in {**base, **change}.items() if v is not None}
    np.savez(path, **arrays)
    with pytest.raises(DataError, match=re.escape(message)):
        load_dataset(DataConfig(dataset="npz", file=str(path)))


def test_a_broken_npz_dataset_ends_the_command_in_one_line(tmp_path):
    path, out = tmp_path / "digits.npz", tmp_path / "out"
    path.write_bytes(b"PK\x03\x04 not really a zip")
    result = subprocess.run([sys.executable, "-m", "layout.run", "configs/euclid.yaml", "--no-window", "--out",
                             str(out), *settings("data.dataset=npz", f"data.file={path}")],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and not out.exists() and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [f"error: {path} is not an intact .npz archive (File is not a zip "
                                                  "file)"]


def image_folder(mnist, folder: Path, per_class: int = 30) -> Path:
    """The first `per_class` test images of the digits 0, 1 and 7 as PNG files, a subfolder per class."""
    for digit, name in ((0, "zero"), (1, "one"), (7, "seven")):
        (folder / name).mkdir(parents=True)
        for i, image in enumerate(mnist.test.images[mnist.test.labels == digit][:per_class]):
            Image.fromarray(image).save(folder / name / f"{i:03d}.png")
    (folder / "one" / "notes.txt").write_text("not an image")
    return folder


def test_an_image_folder_is_a_dataset_split_by_its_seed(tmp_path, mnist):
    folder = image_folder(mnist, tmp_path / "digits")
    data = load_dataset(DataConfig(dataset="folder", dir=str(folder)))
    assert data.name == "folder:digits" and data.class_names == ("one", "seven", "zero")  # sorted subfolders
    assert len(data.test.labels) == 18 and len(data.train.labels) == 72  # a fifth of each class's 30
    assert np.bincount(data.test.labels).tolist() == [6, 6, 6]
    ones = mnist.test.images[mnist.test.labels == 1][:30]
    assert all((ones == image).all(axis=(1, 2)).any() for image in data.train.images[data.train.labels == 0])
    assert data.notes == (f"{folder}: 1 files that are not PNG or JPEG images were left out",)
    again = load_dataset(DataConfig(dataset="folder", dir=str(folder)))
    other = load_dataset(DataConfig(dataset="folder", dir=str(folder), split_seed=1))
    np.testing.assert_array_equal(again.test.images, data.test.images)  # the same seed, the same split
    assert not np.array_equal(other.test.images, data.test.images) and other.key != data.key


def test_an_image_folder_that_cannot_be_read_is_refused(tmp_path, mnist):
    folder = image_folder(mnist, tmp_path / "digits", per_class=3)
    Image.new("L", (32, 32)).save(folder / "zero" / "big.png")
    with pytest.raises(DataError, match="big.png is 32 x 32 pixels: the images must be 28 x 28, as the first"):
        load_dataset(DataConfig(dataset="folder", dir=str(folder)))
    (folder / "zero" / "big.png").write_bytes(b"\x89PNG\r\n\x1a\n damaged")
    with pytest.raises(DataError, match="big.png is not a readable PNG or JPEG image"):
        load_dataset(DataConfig(dataset="folder", dir=str(folder)))
    with pytest.raises(DataError, match="holds 0 subfolders: data.dataset = folder needs one subfolder"):
        load_dataset(DataConfig(dataset="folder", dir=str(folder / "zero")))


@pytest.fixture(scope="module")
def mnist_20x20(mnist, tmp_path_factory) -> Path:
    """The real MNIST images' central 20 x 20 pixels (where the digits lie) as an IDX folder."""
    folder = tmp_path_factory.mktemp("mnist-20x20")
    for split, (images, labels) in SPLIT_FILES.items():
        part = getattr(mnist, split)
        write_idx(folder / f"{images}.gz", np.ascontiguousarray(part.images[:, 4:24, 4:24]))
        write_idx(folder / f"{labels}.gz", part.labels.astype(np.uint8))
    return folder


@pytest.mark.parametrize("config, layers", [("euclid.yaml", "dense"), ("cnn.yaml", "all")])
def test_20x20_images_run_through_the_whole_tool(tmp_path, shared_data, mnist_20x20, config, layers):
    """An MLP and a CNN on 20 x 20 images: trained, laid out, tested, drawn (movie, snapshot, atlases)
    at the data's size."""
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "layout.run", f"configs/{config}", "--no-window", "--out", str(out),
                             "--export", "mp4", "png", *settings(
                                 "data.dataset=idx", f"data.dir={mnist_20x20}", "train.epochs=2",
                                 f"layout.layers={layers}", "render.width=320", "render.height=240",
                                 "render.settle_seconds=0.5", "render.orbit_seconds=0.5", *WHOLE_TOOL_QUICKLY)],
                            cwd=REPO, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["dataset"] == f"idx:{mnist_20x20.name}" and metrics["sizes"][0] == 400
    assert metrics["test_accuracy"] > 0.8
    with np.load(out / "top_images.npz") as z:
        assert z["top"].max() < 10_000
    atlas = np.asarray(Image.open(out / "atlas_top_layer1.png"))
    assert atlas.shape[0] > 100 and atlas.std() > 5
    assert (out / "layout.mp4").stat().st_size > 1000 and (out / "snapshot.png").stat().st_size > 10_000
    network = out / "network.npz"
    with np.load(network) as z:
        assert json.loads(str(z["meta"]))["inputs"]["shape"] == [1, 20, 20]
    again = subprocess.run([sys.executable, "-m", "layout.run", f"configs/{config}", "--no-window", "--out",
                            str(tmp_path / "mnist"), "--network", str(network), "--export", "none", "--data-dir",
                            str(shared_data)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and f"{network} was trained on idx:{mnist_20x20.name} classes" in again.stderr
