"""A network file given with --network, whatever made it: this tool's network.npz, or the weights of an
MLP trained elsewhere (safetensors, npz), which are run here on the test set so that the user can check
the import computes what their framework computes."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from layout.core.errors import UserError
from models.data.datasets import Dataset
from models.formats.sniff import EXPORT, sniff
from models.formats.weights import Mlp, mlp_from_arrays, npz_arrays, safetensors_arrays
from models.network.mlp import apply
from models.network.network import History, Network, Snapshots
from models.network.store import load_network

NOT_YET = {"onnx": "an ONNX", "keras": "a Keras (.keras)", "h5": "an HDF5 (Keras .h5)"}


def read_network_file(path: str | Path, activation: str, dataset: Dataset) -> tuple[Network, tuple[str, ...]]:
    """(the network, notes for the user). A network.npz of this tool as written; an MLP's weight arrays
    with `activation` (the config's model.activation), checked against `dataset` and evaluated on it.
    Pickles (a PyTorch .pt or .pth) are refused unread, with the call that exports the model instead."""
    kind = sniff(path) if Path(path).is_file() else "unknown"
    if kind in ("network-npz", "unknown"):  # load_network says what is wrong with anything else
        return load_network(path), ()
    if kind in ("pytorch", "pickle"):
        raise UserError(f"{path} holds pickled Python objects (a PyTorch .pt or .pth checkpoint?), which are never "
                        f"loaded (they can run code): export the model instead, with {EXPORT}")
    if kind in NOT_YET:
        raise UserError(f"{path} is {NOT_YET[kind]} file, which this version cannot read yet: save the weights as "
                        "safetensors or npz instead (for PyTorch: safetensors.torch.save_file(model.state_dict(), "
                        "\"model.safetensors\"))")
    arrays = safetensors_arrays(path) if kind == "safetensors" else npz_arrays(path)
    mlp = mlp_from_arrays(arrays, dataset.train.images[0].size, dataset.n_classes, path)
    network = imported_network(mlp, activation, dataset)
    sizes = "-".join(map(str, mlp.sizes))
    return network, (f"{path}: a {sizes} MLP stored in {mlp.order} order, activation {activation} (model.activation)",)


def accuracy(mlp: Mlp, activation: str, images: np.ndarray, labels: np.ndarray) -> float:
    """The share of `images` (uint8) whose largest logit, by the MLP's own forward pass, is their label."""
    params = [{"w": w, "b": b} for w, b in zip(mlp.weights, mlp.biases)]
    logits, _ = apply(params, images.reshape(len(images), -1).astype(np.float32) / 255.0, activation)
    return float((np.asarray(logits).argmax(1) == labels).mean())


def imported_network(mlp: Mlp, activation: str, dataset: Dataset) -> Network:
    """The Network of imported weights: no training history and no snapshots (a training timeline
    cannot be drawn), its accuracies measured here."""
    empty = np.zeros(0)

    def no_snapshots(arrays):
        return tuple(np.zeros((0, *a.shape), np.float32) for a in arrays)

    return Network(
        sizes=mlp.sizes, activation=activation, weights=mlp.weights, biases=mlp.biases, dataset=dataset.name,
        classes=tuple(dataset.classes), class_names=tuple(dataset.class_names),
        history=History(empty, empty, empty, empty),
        snapshots=Snapshots(np.zeros(0, np.int64), empty, empty, no_snapshots(mlp.weights), no_snapshots(mlp.biases)),
        test_accuracy=accuracy(mlp, activation, dataset.test.images, dataset.test.labels),
        train_accuracy=accuracy(mlp, activation, dataset.train.images, dataset.train.labels),
        train_seconds=0.0, epochs=0)
