"""Colour images (issue 19): [n, H, W, 3] datasets from an .npz file or a folder of colour PNGs are read
as RGB, networks take them in (C, H, W) order with one scaling per channel, and every picture of a neuron
(glyphs, atlas, panel, probe) shows its colour fields; real MNIST digits drawn in colour inks."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from layout.core.config import DataConfig, ModelConfig, TrainConfig
from layout.core.config_file import load_config
from layout.core.errors import ConfigError, UserError
from layout.engine.features import hidden_activations, neuron_features
from models.data.datasets import load_dataset
from models.network.network import inputs_of
from models.network.store import check_fits, load_network, save_network
from models.network.train import train
from render import style
from render.atlas import ZOOM, class_atlas
from render.glyphs import field_images
from tests.conftest import INK_NAMES, WHOLE_TOOL_QUICKLY, colour_digits, messages
from tests.data.make_reference import settings

REPO = Path(__file__).resolve().parents[1]
MEAN, STD = (0.1, 0.12, 0.08), (0.25, 0.3, 0.2)  # per channel, as PyTorch's transforms.Normalize takes them


@pytest.fixture(scope="module")
def mnist(shared_data):
    return load_dataset(DataConfig(dir=str(shared_data)))


def colour_npz(mnist, path: Path, by_ink: bool = False) -> Path:
    """The real MNIST splits as colour digits (tests/conftest.py colour_digits) in an .npz dataset."""
    (x_train, y_train), (x_test, y_test) = colour_digits(mnist.train, 0, by_ink), colour_digits(mnist.test, 1, by_ink)
    names = dict(class_names=np.array(INK_NAMES[:3])) if by_ink else {}
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test, **names)
    return path


@pytest.fixture(scope="module")
def colour(mnist, tmp_path_factory):
    """The colour-digits dataset, read by the tool."""
    path = colour_npz(mnist, tmp_path_factory.mktemp("colour") / "colour.npz")
    return load_dataset(DataConfig(dataset="npz", file=str(path)))


def test_an_npz_of_colour_images_is_read_as_rgb(mnist, colour):
    expected, labels = colour_digits(mnist.test, 1)
    np.testing.assert_array_equal(colour.test.images, expected)
    np.testing.assert_array_equal(colour.test.labels, labels)
    assert colour.input_shape == (3, 28, 28) and colour.image_shape == (28, 28)


def save_pngs(folder: Path, images: np.ndarray, labels: np.ndarray, mode: str) -> Path:
    for i, (image, label) in enumerate(zip(images, labels)):
        (folder / f"class{label}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).convert(mode).save(folder / f"class{label}" / f"{i:03d}.png")
    return folder


def test_a_folder_of_colour_pngs_is_rgb_and_one_of_grey_pngs_stays_greyscale(tmp_path, mnist):
    images, labels = colour_digits(mnist.test, 1)
    keep = labels < 3
    rgb = load_dataset(DataConfig(dataset="folder", dir=str(save_pngs(tmp_path / "rgb", images[keep][:60],
                                                                       labels[keep][:60], "RGB"))))
    assert rgb.input_shape == (3, 28, 28)
    assert all((images[keep][:60] == image).all(axis=(1, 2, 3)).any() for image in rgb.train.images)
    grey = load_dataset(DataConfig(dataset="folder", dir=str(save_pngs(  # grey pixels stored as RGB files
        tmp_path / "grey", mnist.test.images[:60], mnist.test.labels[:60] % 3, "RGB"))))
    assert grey.input_shape == (1, 28, 28) and grey.train.images.ndim == 3
    assert all((mnist.test.images[:60] == image).all(axis=(1, 2)).any() for image in grey.train.images)


def numpy_hidden(network, images: np.ndarray, mean, std) -> np.ndarray:
    """An independent forward pass to the first hidden layer: each channel's pixels / 255 normalised by its
    own mean and std, flattened in (C, H, W) order as PyTorch does."""
    x = (images.transpose(0, 3, 1, 2) / 255.0 - np.array(mean)[:, None, None]) / np.array(std)[:, None, None]
    return 1 / (1 + np.exp(-(x.reshape(len(x), -1) @ network.weights[0] + network.biases[0])))


def test_a_network_takes_colour_images_in_chw_order_with_one_scaling_per_channel(tmp_path, colour, mnist):
    data = DataConfig(dataset="npz", mean=MEAN, std=STD)
    inputs = inputs_of(data, colour.input_shape)
    net = train(ModelConfig(hidden=(32,)), TrainConfig(epochs=2), colour, inputs=inputs)
    assert net.sizes == (2352, 32, 10) and net.test_accuracy > 0.8
    back = load_network(save_network(tmp_path / "network.npz", net))
    assert back.inputs == inputs and len(back.inputs.gain) == 3
    hidden = numpy_hidden(back, colour.test.images[:200], MEAN, STD)
    np.testing.assert_allclose(hidden_activations(back, colour.test.images[:200])[0], hidden, rtol=1e-4, atol=1e-5)
    f = neuron_features(back, colour.test)
    assert f.receptive_fields.shape == (32, 28, 28, 3)
    w = back.weights[0].reshape(3, 28, 28, 32)  # rows in (C, H, W) order
    np.testing.assert_array_equal(f.receptive_fields, w.transpose(3, 1, 2, 0))
    check_fits(back, colour, "network.npz", inputs)
    grey = dataclasses.replace(colour, train=mnist.train, test=mnist.test)  # the same name, greyscale images
    with pytest.raises(UserError, match="takes images of 28 x 28 pixels x 3 channels, but npz:colour.npz has images "
                                        "of 28 x 28 pixels$"):
        check_fits(back, grey, "network.npz", inputs)
    with pytest.raises(ConfigError, match=r"data.mean = \[0.1, 0.2\] gives 2 figures, but the images have 3 channels"):
        inputs_of(DataConfig(mean=(0.1, 0.2)), colour.input_shape)


def test_colour_fields_are_drawn_channel_by_channel_grey_at_zero():
    weights = np.zeros((1, 2, 2, 3), np.float32)
    weights[0, 0, 0] = [1.0, -1.0, 0.0]  # the neuron's largest |weight| is 1
    rgb = style.field_rgb(weights, np.array([1.0]))
    assert rgb[0, 0, 0].tolist() == [255, 0, 128] and rgb[0, 1, 1].tolist() == [128, 128, 128]
    image = style.field_rgb(np.full((1, 2, 2, 3), 0.5, np.float32), np.array([1.0]), signed=False)
    assert image[0, 0, 0].tolist() == [128, 128, 128]  # a feature visualisation: the image itself
    assert style.picture_rgb(np.array([[[10, 20, 30]]], np.uint8)).tolist() == [[[10, 20, 30]]]
    assert style.picture_rgb(np.array([[0, 255]], np.uint8)).tolist() == [[[255] * 3, [0] * 3]]  # ink on white


@pytest.mark.parametrize("config, layers", [("euclid.yaml", "dense"), ("cnn.yaml", "all")])
def test_digits_told_apart_by_their_ink_colour_show_it_in_the_atlas(tmp_path, mnist, config, layers):
    """Three classes that only the ink's colour tells apart (red, green, blue, whatever the digit): an MLP
    and a CNN learn them through the whole tool, and in the atlas the neurons that drive "red" hardest are
    drawn redder than the others (their red channel weighs most), those that drive "blue" bluer."""
    path, out = colour_npz(mnist, tmp_path / "inks.npz", by_ink=True), tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "layout.run", f"configs/{config}", "--no-window", "--out", str(out),
                             "--export", "png", *settings(
                                 "data.dataset=npz", f"data.file={path}", "train.epochs=2", f"layout.layers={layers}",
                                 "data.mean=[0.05, 0.05, 0.05]", "render.width=320", "render.height=240",
                                 *WHOLE_TOOL_QUICKLY)],
                            cwd=REPO, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["sizes"][0] == 2352 and metrics["test_accuracy"] > 0.95
    with np.load(out / "network.npz") as z:
        assert json.loads(str(z["meta"]))["inputs"]["shape"] == [3, 28, 28]
    snapshot = np.asarray(Image.open(out / "snapshot.png").convert("RGB")).astype(int)
    assert (np.abs(snapshot[..., 0] - snapshot[..., 2]) > 60).sum() > 100  # coloured pixels, not grey ones
    atlas = np.asarray(Image.open(out / "atlas_top_layer1.png").convert("RGB")).astype(int)
    assert ((atlas[..., 0] > 150) & (atlas[..., 1] < 60) & (atlas[..., 2] < 60)).sum() > 500  # red digits shown
    if layers == "dense":  # an MLP's fields are its weights, drawn grey at 0, a channel brighter where it weighs more
        network = load_network(out / "network.npz")
        f = neuron_features(network, load_dataset(DataConfig(dataset="npz", file=str(path))).test)
        tiles = field_images(f.receptive_fields, f.dominant, f.layer, np.ones(f.n_neurons), "neuron", f.n_neurons).tiles
        sheet = class_atlas(tiles, f.dominant, np.ones(f.n_neurons), f.output_vectors, np.arange(f.n_neurons),
                            f.class_names, "inks")
        w = network.weights[0].reshape(3, 28, 28, -1).transpose(3, 1, 2, 0)  # [neurons, H, W, C]
        expected = np.rint(255 * (0.5 + 0.5 * w / np.abs(w).max((1, 2, 3), keepdims=True))).astype(np.uint8)
        for j, (x, y) in sheet.placed.items():  # each weight a ZOOM x ZOOM square inside a 1-pixel frame
            drawn = sheet.image[y + ZOOM:y + 29 * ZOOM:ZOOM, x + ZOOM:x + 29 * ZOOM:ZOOM]
            np.testing.assert_array_equal(drawn, expected[j])
        redness = [tiles[f.dominant == c][..., 0].mean() - tiles[f.dominant == c][..., 2].mean() for c in (0, 2)]
        assert redness[0] > 0 > redness[1]  # "red" neurons look red, "blue" ones blue


DEEP = ("[{conv: {channels: 4, kernel: 5}}, {pool: {kind: max, size: 2}}, {conv: {channels: 8, kernel: 5}}, "
        "{pool: {kind: max, size: 2}}, {conv: {channels: 8, kernel: 5}}, {pool: {kind: max, size: 2}}, flatten, "
        "{dense: {units: 16}}]")  # fits 64 x 64 images (64 -> 60 -> 30 -> 26 -> 13 -> 9 -> 4), not 28 x 28 ones


def test_a_cnn_that_only_fits_larger_images_is_read_for_them_and_refused_for_mnist(tmp_path, mnist):
    """A config's model.layers is checked against MNIST's 28 x 28 only when it reads MNIST; for the user's
    own data, against the data's size before training, in one line with nothing written."""
    (x_train, y_train), (x_test, y_test) = colour_digits(mnist.train, 0), colour_digits(mnist.test, 1)
    big = [np.pad(np.repeat(np.repeat(x[:300], 2, 1), 2, 2), ((0, 0), (4, 4), (4, 4), (0, 0)))  # 64 x 64
           for x in (x_train, x_test)]
    np.savez(tmp_path / "big.npz", x_train=big[0], y_train=y_train[:300], x_test=big[1], y_test=y_test[:300])
    config = tmp_path / "deep.yaml"
    config.write_text(f"data: {{dataset: npz, file: {tmp_path / 'big.npz'}}}\nmodel:\n  activation: relu\n"
                      f"  layers: {DEEP}\ntrain: {{epochs: 1}}\n")
    cfg = load_config(config)
    data = load_dataset(cfg.data)
    assert data.input_shape == (3, 64, 64)
    network = train(cfg.model, cfg.train, data)
    assert network.sizes == (3 * 64 * 64, 4, 8, 8, 16, 10) and [w.shape for w in network.weights][:1] == [(4, 3, 5, 5)]
    with pytest.raises(ConfigError, match="layer 5 .conv 8@5x5. shrinks the 4x4 images to 0x0"):
        load_config(config, ["data.dataset=mnist"])
    np.savez(tmp_path / "big.npz", x_train=x_train[:300], y_train=y_train[:300], x_test=x_test[:300],
             y_test=y_test[:300])  # now 28 x 28: refused once the data is read
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "layout.run", str(config), "--no-window", "--out", str(out)],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and not out.exists(), result.stderr[-2000:]
    assert messages(result.stderr) == ["error: model.layers, layer 5 (conv 8@5x5) shrinks the 4x4 images to 0x0: use "
                                       "a smaller kernel or pool, pad the convolutions, or fewer layers"]
