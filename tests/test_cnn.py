"""Convolutional networks (model.layers): the layer list checked before any training, the forward pass
against an independent numpy/scipy one built from network.npz alone, parameter counts by formula, and
training that lowers the loss."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from scipy.signal import correlate

from layout.core.config import DataConfig, ModelConfig, TrainConfig, load_config
from layout.core.errors import ConfigError
from layout.core.layers import Conv, Dense, Flatten, Pool
from models.data.datasets import load_dataset
from models.network.cnn import apply_layers, count_params, init_layers
from models.network.store import load_network
from models.network.train import train

REPO = Path(__file__).resolve().parents[1]
SMALL = (Conv(4, 5, padding=2), Pool("max", 2), Conv(6, 3, stride=2), Pool("avg", 2), Flatten(), Dense(12))


def numpy_logits(path: Path, images: np.ndarray) -> np.ndarray:
    """The logits of network.npz for uint8 images [n, 28, 28], from the file alone: its meta's layers
    and activation, and its w0, b0, w1, ... (conv weights [out, in, kh, kw], flatten in C, H, W order)."""
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k].astype(np.float64) for k in z.files if k != "meta"}
        meta = json.loads(str(z["meta"]))
    act = {"relu": lambda v: np.maximum(v, 0), "tanh": np.tanh, "sigmoid": lambda v: 1 / (1 + np.exp(-v))}[
        meta["activation"]]
    h = images.astype(np.float64)[:, None] / 255.0  # [n, 1, 28, 28]
    l = 0
    for layer in meta["layers"]:
        kind, settings = (layer, {}) if isinstance(layer, str) else next(iter(layer.items()))
        if kind == "conv":
            w, b, s, p = arrays[f"w{l}"], arrays[f"b{l}"], settings["stride"], settings["padding"]
            padded = np.pad(h, ((0, 0), (0, 0), (p, p), (p, p)))
            out = np.stack([sum(correlate(padded[:, c], w[o, c][None], mode="valid") for c in range(w.shape[1]))
                            for o in range(w.shape[0])], axis=1)[:, :, ::s, ::s] + b[None, :, None, None]
            h, l = act(out), l + 1
        elif kind == "pool":
            k = settings["size"]
            n, c, hh, ww = h.shape
            blocks = h[:, :, :hh // k * k, :ww // k * k].reshape(n, c, hh // k, k, ww // k, k)
            h = blocks.max((3, 5)) if settings["kind"] == "max" else blocks.mean((3, 5))
        elif kind == "flatten":
            h = h.reshape(len(h), -1)
        else:
            h = act(h.reshape(len(h), -1) @ arrays[f"w{l}"] + arrays[f"b{l}"])
            l += 1
    return h @ arrays[f"w{l}"] + arrays[f"b{l}"]


@pytest.fixture(scope="module")
def trained_cnn(tmp_path_factory, shared_data):
    """A small CNN trained by the command for two epochs on 1,000 images: its network.npz."""
    folder = tmp_path_factory.mktemp("cnn")
    config = folder / "small_cnn.yaml"
    config.write_text("data: {limit: 1000}\nmodel:\n  activation: relu\n  layers:\n"
                      "    - conv: {channels: 4, kernel: 5, padding: 2}\n    - pool: {kind: max, size: 2}\n"
                      "    - conv: {channels: 6, kernel: 3, stride: 2}\n    - pool: {kind: avg, size: 2}\n"
                      "    - flatten\n    - dense: {units: 12}\ntrain: {epochs: 2}\n")
    out = folder / "out"
    result = subprocess.run([sys.executable, "-m", "layout.train", str(config), "--out", str(out), "--data-dir",
                             str(shared_data)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return out


def test_the_forward_pass_equals_a_numpy_one_built_from_the_file_alone(trained_cnn, shared_data):
    network = load_network(trained_cnn / "network.npz")
    assert network.layers == SMALL and network.sizes == (784, 4, 6, 12, 10)
    images = load_dataset(DataConfig(dir=str(shared_data))).test.images[:64]
    ours, _ = apply_layers([{"w": w, "b": b} for w, b in zip(network.weights, network.biases)],
                           images.reshape(64, -1) / 255.0, network.layers, network.activation)
    np.testing.assert_allclose(np.asarray(ours), numpy_logits(trained_cnn / "network.npz", images), atol=1e-4)
    saved = load_config(trained_cnn / "config.yaml")  # config.yaml repeats the run
    assert saved.model.layers == SMALL and saved.model.activation == "relu"


def test_parameter_counts_follow_the_formula():
    lenet = (Conv(6, 5, padding=2), Pool("max", 2), Conv(16, 5), Pool("max", 2), Flatten(), Dense(120), Dense(84))
    by_formula = (6 * 1 * 25 + 6) + (16 * 6 * 25 + 16) + (16 * 5 * 5 * 120 + 120) + (120 * 84 + 84) + (84 * 10 + 10)
    params = init_layers(jax.random.key(0), lenet, "relu", 10)
    assert count_params(lenet, 10) == by_formula == 61706 == sum(p.size for p in jax.tree.leaves(params))
    assert [p["w"].shape for p in params] == [(6, 1, 5, 5), (16, 6, 5, 5), (400, 120), (120, 84), (84, 10)]


def test_training_lowers_the_loss_on_real_images(shared_data):
    data = load_dataset(DataConfig(dir=str(shared_data), limit=512))
    network = train(ModelConfig(layers=SMALL, activation="relu"),
                    TrainConfig(epochs=4, batch_size=32, learning_rate=0.005), data)
    losses = network.history.train_loss
    assert losses[-1] < losses[0] * 0.7 and network.test_accuracy > 0.5
    assert [w.shape for w in network.weights] == [(4, 1, 5, 5), (6, 4, 3, 3), (6 * 3 * 3, 12), (12, 10)]


@pytest.mark.parametrize("layers, message", [
    ("[{conv: {channels: 6, kernel: 5}}, {pool: {kind: max, size: 2}}, {conv: {channels: 8, kernel: 13}}, flatten]",
     "model.layers, layer 3 (conv 8@13x13) shrinks the 12x12 images to 0x0"),
    ("[{pool: {kind: max, size: 8}}, {pool: {kind: max, size: 8}}, flatten]",
     "model.layers, layer 2 (max pool 8) shrinks the 3x3 images to 0x0"),
    ("[{lstm: {units: 3}}]", "model.layers, layer 1 is a 'lstm' layer, which is not a kind this tool builds"),
    ("[flatten, {conv: {channels: 2, kernel: 3}}]",
     "model.layers, layer 2 (conv 2@3x3) comes after flatten, where there are no images left to convolve"),
    ("[{conv: {channels: 2, kernel: 3}}, {dense: {units: 3}}]",
     "model.layers, layer 2 (dense 3) follows image layers that were never flattened: put flatten before it"),
    ("[{conv: {channels: 2, kernel: 3}}]", "model.layers ends with images (2x26x26): end it with flatten"),
])
def test_a_layer_list_that_cannot_work_is_refused_naming_the_layer(tmp_path, layers, message):
    path = tmp_path / "c.yaml"
    path.write_text(f"model:\n  layers: {layers}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "\n" not in str(info.value) and message in str(info.value), str(info.value)


def test_a_cnn_is_refused_by_the_layout_command_in_one_line_before_training(tmp_path, shared_data):
    result = subprocess.run([sys.executable, "-m", "layout.run", str(REPO / "configs" / "cnn.yaml"), "--no-window",
                             "--out", str(tmp_path / "out"), "--data-dir", str(shared_data)], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip().splitlines()[-1].startswith(
        "error: model.layers describes a CNN, which python -m layout.train trains, but whose neurons cannot be laid "
        "out yet")
    assert not (tmp_path / "out").exists()


def test_a_cnn_network_file_given_to_the_layout_command_is_refused_in_one_line(trained_cnn, tmp_path, shared_data):
    result = subprocess.run([sys.executable, "-m", "layout.run", str(REPO / "configs" / "euclid.yaml"), "--no-window",
                             "--network", str(trained_cnn / "network.npz"), "--set", "data.limit=1000", "--out",
                             str(tmp_path / "out"), "--data-dir", str(shared_data)], cwd=REPO, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "model.layers describes a CNN" in result.stderr.strip().splitlines()[-1]
