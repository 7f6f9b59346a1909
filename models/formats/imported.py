"""A network file given with --network, whatever made it: this tool's network.npz, an ONNX file, or the
weights of an MLP trained elsewhere (safetensors, npz). Another framework's network is run here on
the test set, by the same forward pass as a network trained here, so that the user can check that the
import computes what their framework computes."""

from __future__ import annotations

from pathlib import Path

import jax.numpy as jnp
import numpy as np

from layout.core.config import ModelConfig
from layout.core.errors import UserError
from layout.core.layers import Dense
from models.data.datasets import Dataset, Split, flat_pixels
from models.formats.keras import read_keras
from models.formats.layered import Layered
from models.formats.onnx_graph import read_onnx
from models.formats.sniff import EXPORT, sniff
from models.formats.weights import cnn_from_arrays, mlp_from_arrays, npz_arrays, safetensors_arrays
from models.network.network import History, Inputs, Network, Snapshots
from models.network.store import load_network
from models.network.train import evaluate_jit, model_functions


def read_network_file(path: str | Path, model: ModelConfig, dataset: Dataset,
                      inputs: Inputs | None = None) -> tuple[Network, tuple[str, ...]]:
    """(the network, notes for the user). A network.npz of this tool as written; an ONNX file's network
    as its graph says; weight arrays as the MLP they chain into, or the CNN of model.layers, with
    model.activation. Another framework's network is checked against `dataset` and evaluated on it, its
    pixels scaled as `inputs` says (data.scale, data.mean, data.std; default 0..1).
    Pickles (a PyTorch .pt or .pth) are refused unread, with the call that exports the model instead."""
    kind = sniff(path) if Path(path).is_file() else "unknown"
    if kind == "unknown" and Path(path).suffix.lower() == ".keras":  # the content is no Keras archive (any more)
        raise UserError(f"{path} is not an intact Keras file (not a zip archive holding config.json and "
                        "model.weights.h5): save it again with model.save")
    if kind in ("network-npz", "unknown"):  # load_network says what is wrong with anything else
        return load_network(path), ()
    if kind in ("pytorch", "pickle"):
        raise UserError(f"{path} holds pickled Python objects (a PyTorch .pt or .pth checkpoint?), which are never "
                        f"loaded (they can run code): export the model instead, with {EXPORT}")
    image_shape = dataset.input_shape
    inputs = Inputs(shape=image_shape) if inputs is None else inputs
    if kind == "onnx":
        layered = read_onnx(path, image_shape, dataset.n_classes)
        how = "ONNX"
    elif kind in ("keras", "h5"):
        layered = read_keras(path, kind, image_shape, dataset.n_classes)
        how = "Keras" + (" (legacy .h5)" if kind == "h5" else "")
    else:
        arrays = safetensors_arrays(path) if kind == "safetensors" else npz_arrays(path)
        layered, order = layered_from_arrays(arrays, model, dataset, path)
        how = f"stored in {order} order, activation {model.activation} (model.activation)"
    network = imported_network(layered, dataset, inputs)
    shape = "-".join(map(str, network.sizes))
    what = "an MLP" if network.layers is None else f"a CNN ({len(network.layers)} layers)"
    return network, (f"{path}: {what}, {shape}, {how}",)


def layered_from_arrays(arrays: list, model: ModelConfig, dataset: Dataset, path: str | Path) -> tuple[Layered, str]:
    """The network weight arrays form: model.layers filled with them where the config lists layers, else
    the MLP their shapes chain into; and the storage order found."""
    if model.layers is not None:
        return cnn_from_arrays(arrays, model.layers, dataset.n_classes, path, model.activation,
                               dataset.input_shape)
    mlp = mlp_from_arrays(arrays, dataset.input_shape, dataset.n_classes, path)
    dense = tuple(Dense(w.shape[1]) for w in mlp.weights[:-1])
    return Layered(dense, mlp.weights, mlp.biases, model.activation), mlp.order


def accuracy(layered: Layered, model: ModelConfig, split: Split, n_classes: int, inputs: Inputs) -> float:
    """The share of the split's images whose largest logit is their label, by the forward pass and
    evaluation that a network trained here is measured with."""
    forward = model_functions(model, n_classes, inputs)[1]
    params = [{"w": jnp.asarray(w), "b": jnp.asarray(b)} for w, b in zip(layered.weights, layered.biases)]
    images = jnp.asarray(flat_pixels(split.images))
    return float(evaluate_jit(params, images, jnp.asarray(split.labels), forward)[1])


def imported_network(layered: Layered, dataset: Dataset, inputs: Inputs) -> Network:
    """The Network of imported weights: an MLP's (layers None) or a CNN's; no training history and no
    snapshots (a training timeline cannot be drawn); its accuracies measured here."""
    empty = np.zeros(0)
    sizes = layered.sizes(dataset.train.images[0].size)
    layers = None if layered.is_mlp else layered.layers
    model = (ModelConfig(hidden=sizes[1:-1], activation=layered.activation) if layers is None
             else ModelConfig(activation=layered.activation, layers=layers))

    def no_snapshots(arrays):
        return tuple(np.zeros((0, *a.shape), np.float32) for a in arrays)

    return Network(
        sizes=sizes, activation=layered.activation, weights=layered.weights, biases=layered.biases,
        dataset=dataset.name, classes=tuple(dataset.classes), class_names=tuple(dataset.class_names),
        history=History(empty, empty, empty, empty),
        snapshots=Snapshots(np.zeros(0, np.int64), empty, empty, no_snapshots(layered.weights),
                            no_snapshots(layered.biases)),
        test_accuracy=accuracy(layered, model, dataset.test, dataset.n_classes, inputs),
        train_accuracy=accuracy(layered, model, dataset.train, dataset.n_classes, inputs),
        train_seconds=0.0, epochs=0, layers=layers, inputs=inputs)
