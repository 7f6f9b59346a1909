"""Networks made by Keras itself (issue 19), on its JAX backend: a 784-100-10 sigmoid MLP and a LeNet-like
CNN (max and average pooling, dropout, a final softmax), trained briefly on the 5,000 training images and
saved as `.keras` and as legacy `.h5`, are read with h5py alone with Keras' own test accuracy (to 0.001);
the CNN's weights saved as a plain npz, in Keras' order, fill the config's model.layers. Models this
tool cannot run faithfully are refused in one line.

Keras is not a dependency of the tool: these tests need `pip install keras`, which .ci/run installs;
elsewhere they are skipped."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from layout.core.config import DataConfig, ModelConfig
from layout.core.errors import UserError
from layout.core.layers import parse_layers
from models.data.datasets import load_dataset
from models.formats.imported import read_network_file
from models.formats.keras import translate
from tests.conftest import WHOLE_TOOL_QUICKLY, colour_digits
from tests.data.make_reference import settings

os.environ.setdefault("KERAS_BACKEND", "jax")  # the backend these machines have; set before Keras is imported
if os.environ.get("CI"):  # in CI Keras is installed (.ci/run): a missing one fails, never skips
    import keras
else:
    keras = pytest.importorskip("keras")
from keras import layers  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # Keras' own, numpy 2
LENET = ("[{conv: {channels: 6, kernel: 5, padding: 2}}, {pool: {kind: max, size: 2}}, {conv: {channels: 16, "
         "kernel: 5}}, {pool: {kind: avg, size: 2}}, flatten, {dense: {units: 120}}, {dense: {units: 84}}]")


def mlp():
    return keras.Sequential([keras.Input((28, 28, 1)), layers.Flatten(), layers.Dense(100, activation="sigmoid"),
                             layers.Dense(10, activation="softmax")])


def lenet():
    return keras.Sequential([
        keras.Input((28, 28, 1)), layers.Conv2D(6, 5, padding="same", activation="relu"), layers.MaxPooling2D(2),
        layers.Conv2D(16, 5, activation="relu"), layers.AveragePooling2D(2), layers.Flatten(),
        layers.Dense(120, activation="relu"), layers.Dropout(0.2), layers.Dense(84), layers.Activation("relu"),
        layers.Dense(10, activation="softmax")])


def trained(model, dataset, epochs: int):
    """The model after a few epochs of Adam on the training images scaled to 0..1, and its test accuracy
    as Keras computes it."""
    keras.utils.set_random_seed(0)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    def hwc(images):  # Keras' images are channels last: [n, H, W, C]
        return (images if images.ndim == 4 else images[..., None]) / 255.0

    model.fit(hwc(dataset.train.images), dataset.train.labels, epochs=epochs, batch_size=64, verbose=0)
    predicted = model.predict(hwc(dataset.test.images), verbose=0).argmax(1)
    return model, float((predicted == dataset.test.labels).mean())


@pytest.fixture(scope="module")
def dataset(shared_data):
    return load_dataset(DataConfig(dir=str(shared_data)))


@pytest.fixture(scope="module")
def networks(dataset):
    """{"mlp" | "cnn": (the trained Keras model, Keras' test accuracy)}."""
    return {"mlp": trained(mlp(), dataset, 2), "cnn": trained(lenet(), dataset, 2)}


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_a_keras_network_is_read_with_keras_own_test_accuracy(tmp_path, dataset, networks, kind, suffix):
    model, theirs = networks[kind]
    assert theirs > 0.85  # trained: a wrong import would show
    path = tmp_path / f"model{suffix}"
    model.save(path)
    network, notes = read_network_file(path, ModelConfig(activation="tanh"), dataset)  # the file's activation wins
    assert abs(network.test_accuracy - theirs) <= 0.001, (network.test_accuracy, theirs)
    expected = (784, 100, 10) if kind == "mlp" else (784, 6, 16, 120, 84, 10)
    assert network.sizes == expected and network.activation == ("sigmoid" if kind == "mlp" else "relu")
    if kind == "cnn":  # the pooling kinds, the 'same' padding and the flatten as Keras has them
        assert network.layers == parse_layers(yaml.safe_load(LENET))
    assert notes == (f"{path}: {'an MLP' if kind == 'mlp' else 'a CNN (7 layers)'}, {'-'.join(map(str, expected))}, "
                     f"Keras{' (legacy .h5)' if suffix == '.h5' else ''}",)


def test_a_keras_cnns_weights_as_npz_fill_model_layers_in_keras_order(tmp_path, dataset, networks):
    """model.get_weights() saved with np.savez: kernels [kh, kw, in, out], and the first dense layer's rows
    in Keras' (H, W, C) flatten order, which this tool reorders to (C, H, W)."""
    model, theirs = networks["cnn"]
    path = tmp_path / "weights.npz"
    np.savez(path, *model.get_weights())
    cnn = ModelConfig(activation="relu", layers=parse_layers(yaml.safe_load(LENET)))
    network, notes = read_network_file(path, cnn, dataset)
    assert abs(network.test_accuracy - theirs) <= 0.001, (network.test_accuracy, theirs)
    assert "Keras' [in, out] (conv [kh, kw, in, out]) order" in notes[0]


@pytest.mark.parametrize("kind", ["mlp", "cnn", "mlp weights"])
def test_a_keras_network_for_colour_images_is_read_with_keras_accuracy(tmp_path, dataset, kind):
    """Real MNIST digits in colour inks, [n, 28, 28, 3] as Keras takes them: an MLP that flattens the
    colour pixels in Keras' (H, W, C) order, a CNN whose kernels read three channels, and the MLP's
    get_weights() as a plain npz, all read with Keras' accuracy."""
    (x_train, y_train), (x_test, y_test) = colour_digits(dataset.train, 0), colour_digits(dataset.test, 1)
    np.savez(tmp_path / "colour.npz", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    colour = load_dataset(DataConfig(dataset="npz", file=str(tmp_path / "colour.npz")))
    top = [layers.Flatten(), layers.Dense(64, activation="sigmoid")] if kind != "cnn" else [
        layers.Conv2D(6, 5, activation="relu"), layers.MaxPooling2D(2), layers.Flatten()]
    model, theirs = trained(keras.Sequential([keras.Input((28, 28, 3)), *top, layers.Dense(10, activation="softmax")]),
                            colour, 2)
    path = tmp_path / ("weights.npz" if kind == "mlp weights" else "model.keras")
    if kind == "mlp weights":
        np.savez(path, *model.get_weights())
    else:
        model.save(path)
    network, notes = read_network_file(path, ModelConfig(), colour)
    assert theirs > 0.8 and abs(network.test_accuracy - theirs) <= 0.001, (network.test_accuracy, theirs)
    assert network.inputs.shape == (3, 28, 28) and network.sizes[0] == 2352
    if kind == "mlp weights":
        assert "Keras' [in, out] (first-layer rows in (H, W, C) pixel order) order" in notes[0]


def test_a_keras_cnn_runs_through_layout_structure_tests_and_snapshot(tmp_path, shared_data, networks):
    model, theirs = networks["cnn"]
    path, out = tmp_path / "model.keras", tmp_path / "out"
    model.save(path)
    result = subprocess.run([sys.executable, "-m", "layout.run", "configs/euclid.yaml", "--no-window", "--data-dir",
                             str(shared_data), "--out", str(out), "--network", str(path), "--expect-accuracy",
                             f"{theirs:.4f}", "--export", "png", *settings(*WHOLE_TOOL_QUICKLY)],
                            cwd=REPO, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert abs(metrics["test_accuracy"] - theirs) <= 0.001 and metrics["network_file"] == str(path)
    assert len((out / "neurons.csv").read_text().splitlines()) == 1 + 120 + 84  # the dense layers, laid out
    assert any("dominance clustering" in v for v in metrics["structure"]["verdicts"])
    assert next(out.glob("*.png")).stat().st_size > 10_000
    assert "replaces the config's model" in result.stderr


def test_a_layer_outside_the_supported_list_is_refused_in_one_line(tmp_path, shared_data):
    model = keras.Sequential([keras.Input((28, 28, 1)), layers.Conv2D(4, 3, activation="relu"),
                              layers.BatchNormalization(), layers.Flatten(), layers.Dense(10)])
    path = tmp_path / "model.keras"
    model.save(path)
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "layout.run", "configs/euclid.yaml", "--no-window", "--data-dir",
                             str(shared_data), "--out", str(out), "--network", str(path), "--export", "none"],
                            cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 2 and result.stdout == "" and not out.exists(), result.stderr[-2000:]
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert "(BatchNormalization) is not supported here: the layers read are InputLayer, Conv2D" in result.stderr


@pytest.mark.parametrize("model, message", [
    (lambda: keras.Sequential([keras.Input((28, 28, 1)), layers.Conv2D(4, 3, strides=2, padding="same",
                                                                       activation="relu"), layers.Flatten(),
                               layers.Dense(10)]), "only channels_last, ungrouped, undilated convolutions"),
    (lambda: keras.Sequential([keras.Input((32, 32, 1)), layers.Flatten(), layers.Dense(10, activation="relu"),
                               layers.Dense(10)]), "takes inputs of shape [32, 32, 1], but the data's images are 28"),
    (lambda: keras.Sequential([keras.Input((784,)), layers.Dense(30, activation="relu"),
                               layers.Dense(20, activation="tanh"), layers.Dense(10)]),
     "uses the activations relu, tanh"),
    (lambda: keras.Sequential([keras.Input((784,)), layers.Dense(30), layers.Dense(10)]), "follows a layer with no "
                                                                                          "activation"),
])
def test_models_that_cannot_be_run_faithfully_are_refused(tmp_path, dataset, model, message):
    path = tmp_path / "model.keras"
    model().save(path)
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("]", r"\]")):
        read_network_file(path, ModelConfig(), dataset)


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_a_truncated_or_corrupt_keras_file_is_refused(tmp_path, dataset, networks, suffix):
    path = tmp_path / f"model{suffix}"
    networks["mlp"][0].save(path)
    whole = path.read_bytes()
    for damaged in (whole[:len(whole) // 2], whole[:4096] + bytes(len(whole) - 4096)):
        path.write_bytes(damaged)
        with pytest.raises(UserError, match="is not an intact Keras file|weights of layer .* are missing"):
            read_network_file(path, ModelConfig(), dataset)


def test_a_functional_model_is_refused_with_the_way_out(tmp_path, dataset):
    inputs = keras.Input((784,))
    model = keras.Model(inputs, layers.Dense(10)(layers.Dense(30, activation="relu")(inputs)))
    path = tmp_path / "model.keras"
    model.save(path)
    with pytest.raises(UserError, match="not a Sequential model: only keras.Sequential"):
        read_network_file(path, ModelConfig(), dataset)


def test_a_kernel_linked_to_another_file_is_never_read(tmp_path, dataset, networks):
    """A legacy .h5 whose first kernel is an HDF5 external link to a file holding that very kernel: refused,
    though following the link would have given a working network."""
    path, elsewhere = tmp_path / "model.h5", tmp_path / "elsewhere.h5"
    networks["mlp"][0].save(path)
    with h5py.File(path, "r+") as f, h5py.File(elsewhere, "w") as other:
        layer = f["model_weights"][f["model_weights"].attrs["layer_names"][1]]
        name = layer.attrs["weight_names"][0]
        other["kernel"] = layer[name][()]
        del layer[name]
        layer[name] = h5py.ExternalLink(str(elsewhere), "/kernel")
    with h5py.File(path, "r") as f:  # the link works: h5py itself would follow it
        assert f["model_weights"][f["model_weights"].attrs["layer_names"][1]][name].shape == (784, 100)
    with pytest.raises(UserError, match="kept in another file"):
        read_network_file(path, ModelConfig(), dataset)


def test_a_model_config_without_layers_is_refused():
    with pytest.raises(UserError, match="holds a Sequential model without layers"):
        translate({"class_name": "Sequential", "config": {"layers": []}}, None, "model.keras", (1, 28, 28), 10)
