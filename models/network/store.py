"""Saving, loading and reusing trained networks.

network.npz holds arrays only (np.load(..., allow_pickle=False) reads it) plus one `meta` entry: a
JSON string with sizes, activation, dataset, classes, accuracy and the cache key. A trained network
is kept in <cache>/networks/<key>.npz, where the key hashes the data, model and train sections and
the dataset files' checksum, so changing anything else never retrains.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from layout.core.config import ACTIVATIONS, RunConfig
from layout.core.config_values import excerpt
from layout.core.errors import ConfigError, UserError
from layout.core.files import cache_dir, list_of, number, read_npz, require_arrays, require_meta, whole, write_atomic
from layout.core.layers import INPUT_SHAPE, parse_layers, plain_layers, widths
from layout.core.plain import fingerprint
from models.data.datasets import Dataset
from models.network.cnn import weight_shapes as cnn_weight_shapes
from models.network.network import History, Inputs, Network, Snapshots, inputs_of
from models.network.train import EpochStats, train

FORMAT_VERSION = 1
HISTORY_FIELDS = ("epoch", "train_loss", "test_loss", "test_accuracy")
META_FIELDS = ("sizes", "activation", "dataset", "classes", "class_names", "test_accuracy",
               "train_accuracy", "train_seconds", "epochs")
META_CHECKS = {
    "sizes": (lambda v: list_of(lambda n: whole(n, 1))(v) and len(v) >= 3,
              "a list of at least three layer widths (inputs, hidden..., outputs)"),
    "activation": (lambda v: isinstance(v, str) and v in ACTIVATIONS, f"one of {', '.join(ACTIVATIONS)}"),
    "dataset": (lambda v: isinstance(v, str), "a dataset name"),
    "classes": (list_of(whole), "a list of class labels (whole numbers)"),
    "class_names": (list_of(lambda n: isinstance(n, str)), "a list of class names (text)"),
    "test_accuracy": (lambda v: number(v, 0, 1), "a fraction between 0 and 1"),
    "train_accuracy": (lambda v: number(v, 0, 1), "a fraction between 0 and 1"),
    "train_seconds": (lambda v: number(v, 0), "a number of seconds"),
    "epochs": (whole, "a whole number of epochs"),
}


def network_key(cfg: RunConfig, dataset: Dataset) -> str:
    """What decides the trained weights: the data actually used (its files, classes and limit: where the
    files live does not change them), the model and the training settings."""
    inputs = inputs_of(cfg.data, dataset.input_shape)
    return fingerprint({"version": FORMAT_VERSION, "data": dataset.key, "inputs": inputs,
                        "model": cfg.model, "train": cfg.train})[:20]


def network_arrays(network: Network, key: str) -> dict[str, np.ndarray]:
    meta = {name: getattr(network, name) for name in META_FIELDS}
    meta.update(n_params=network.n_params, key=key, format=FORMAT_VERSION,
                inputs={"gain": list(network.inputs.gain), "offset": list(network.inputs.offset),
                        "shape": list(network.inputs.shape)})
    if network.layers is not None:
        meta["layers"] = plain_layers(network.layers)
    arrays = {"meta": np.array(json.dumps(meta))}
    for l, (w, b) in enumerate(zip(network.weights, network.biases)):
        arrays[f"w{l}"], arrays[f"b{l}"] = w, b
        arrays[f"snapshot_w{l}"] = network.snapshots.weights[l]
        arrays[f"snapshot_b{l}"] = network.snapshots.biases[l]
    for name in HISTORY_FIELDS:
        arrays[f"history_{name}"] = getattr(network.history, name)
    for name in ("step", "epoch", "test_accuracy"):
        arrays[f"snapshot_{name}"] = getattr(network.snapshots, name)
    return arrays


def save_network(path: str | Path, network: Network, key: str = "") -> Path:
    """Write network.npz under a temporary name, then rename it."""
    arrays = network_arrays(network, key)
    return write_atomic(path, lambda f: np.savez(f, **arrays))


def load_network(path: str | Path) -> Network:
    """Read a network.npz written by save_network, checking every array's shape against its sizes."""
    return read_network(path)[0]


def read_network(path: str | Path) -> tuple[Network, dict]:
    """(the network, its meta) of a network.npz, checked as load_network says."""
    what = "network file"
    arrays, meta = read_npz(path, what)
    require_meta(path, what, meta, META_CHECKS)
    sizes, classes = meta["sizes"], meta["classes"]
    if len(classes) != sizes[-1] or len(set(classes)) != len(classes) or len(meta["class_names"]) != len(classes):
        raise UserError(f"{path} is not a {what} written by neuron-layout: its {sizes[-1]} outputs, classes "
                        f"{excerpt(classes)} and class names {excerpt(meta['class_names'])} do not match (one "
                        "distinct class and one name per output)")
    inputs = read_inputs(path, what, meta, sizes[0])
    model_layers = read_layers(path, what, meta, sizes, inputs.shape)
    weight_shapes = (list(zip(zip(sizes[:-1], sizes[1:]), ((n,) for n in sizes[1:]))) if model_layers is None
                     else cnn_weight_shapes(model_layers, sizes[-1], inputs.shape))
    layers = range(len(weight_shapes))
    n_snapshots = len(arrays.get("snapshot_step", ()))
    shapes = {"snapshot_step": (None,), "snapshot_epoch": (n_snapshots,), "snapshot_test_accuracy": (n_snapshots,)}
    for l, (w, b) in enumerate(weight_shapes):
        shapes.update({f"w{l}": w, f"b{l}": b, f"snapshot_w{l}": (n_snapshots, *w),
                       f"snapshot_b{l}": (n_snapshots, *b)})
    n_epochs = len(arrays.get("history_epoch", ()))
    shapes.update({f"history_{name}": (n_epochs,) for name in HISTORY_FIELDS})
    require_arrays(path, what, arrays, shapes)
    network = Network(
        sizes=tuple(sizes),
        activation=meta["activation"],
        weights=tuple(arrays[f"w{l}"].astype(np.float32) for l in layers),
        biases=tuple(arrays[f"b{l}"].astype(np.float32) for l in layers),
        dataset=meta["dataset"],
        classes=tuple(classes),
        class_names=tuple(meta["class_names"]),
        history=History(**{name: arrays[f"history_{name}"] for name in HISTORY_FIELDS}),
        snapshots=Snapshots(
            step=arrays["snapshot_step"], epoch=arrays["snapshot_epoch"],
            test_accuracy=arrays["snapshot_test_accuracy"],
            weights=tuple(arrays[f"snapshot_w{l}"] for l in layers),
            biases=tuple(arrays[f"snapshot_b{l}"] for l in layers),
        ),
        test_accuracy=meta["test_accuracy"],
        train_accuracy=meta["train_accuracy"],
        train_seconds=meta["train_seconds"],
        epochs=meta["epochs"],
        layers=model_layers,
        inputs=inputs,
    )
    return network, meta


def read_inputs(path: str | Path, what: str, meta: dict, n_inputs: int) -> Inputs:
    """How the file's network takes its images: their scaling (a figure, or a list of one per channel, for
    gain and offset) and shape (files from before data.scale: 0..1, 1 x 28 x 28)."""
    inputs = meta.get("inputs", {"gain": 1.0, "offset": 0.0, "shape": list(INPUT_SHAPE)})
    figures = {}
    if isinstance(inputs, dict) and set(inputs) == {"gain", "offset", "shape"}:
        figures = {k: [inputs[k]] if number(inputs[k]) else inputs[k] for k in ("gain", "offset")}
    shape = inputs.get("shape") if figures else None
    if not (figures and all(list_of(number)(v) for v in figures.values()) and list_of(lambda n: whole(n, 1))(shape)
            and len(shape) == 3 and shape[0] * shape[1] * shape[2] == n_inputs
            and len(figures["gain"]) == len(figures["offset"]) in {1, shape[0]} and min(figures["gain"]) > 0):
        raise UserError(f"{path} is not a {what} written by neuron-layout: its meta's 'inputs' is "
                        f"{excerpt(inputs)}, not gains above 0, offsets (one, or one per channel) and the shape of "
                        f"its {n_inputs} inputs")
    return Inputs(tuple(map(float, figures["gain"])), tuple(map(float, figures["offset"])), tuple(shape))


def read_layers(path: str | Path, what: str, meta: dict, sizes: list[int], input_shape: tuple[int, int, int]
                ) -> tuple | None:
    """A CNN file's layer list (None for an MLP), checked as a config's is, and against its sizes."""
    if meta.get("layers") is None:
        return None
    try:
        layers = parse_layers(meta["layers"], "its meta's layers", input_shape)
    except ConfigError as e:
        raise UserError(f"{path} is not a {what} written by neuron-layout: {e}") from None
    if [sizes[0], *widths(layers)] != sizes[:-1]:
        raise UserError(f"{path} is not a {what} written by neuron-layout: its sizes {excerpt(sizes)} do not match "
                        "its layers")
    return layers


def check_fits(network: Network, dataset: Dataset, path: str | Path, inputs: Inputs = Inputs()) -> None:
    """A network given with --network must have been trained on the dataset and classes the config selects."""
    if network.dataset != dataset.name or tuple(network.classes) != tuple(dataset.classes):
        raise UserError(f"{path} was trained on {network.dataset} classes {list(network.classes)}, but the config "
                        f"selects {dataset.name} classes {list(dataset.classes)}: set data.dataset and data.classes "
                        "to match (the config.yaml written beside the network has them)")
    if network.inputs.shape != dataset.input_shape:
        raise UserError(f"{path} takes images of {shape_words(network.inputs.shape)}, but {dataset.name} has images "
                        f"of {shape_words(dataset.input_shape)}")
    if network.inputs != inputs:
        raise UserError(f"{path} was trained on {network.inputs.scaling()}, but the config gives "
                        f"{inputs.scaling()}: set data.scale, data.mean and data.std as in the config.yaml written "
                        "beside the network")


def shape_words(shape: tuple[int, int, int]) -> str:
    """'28 x 28 pixels' (one channel), '32 x 32 pixels x 3 channels'."""
    c, h, w = shape
    return f"{h} x {w} pixels" + (f" x {c} channels" if c > 1 else "")


@dataclass(frozen=True)
class Obtained:
    """A network for a config: from the cache (reused) or trained now, with its cache key, and notes on
    a cache entry that was found and refused."""

    network: Network
    key: str
    reused: bool
    notes: tuple[str, ...] = ()


def obtain_network(cfg: RunConfig, dataset: Dataset, *, retrain: bool = False,
                   on_epoch: Callable[[EpochStats], None] | None = None) -> Obtained:
    """The cached network for this config and data, or a newly trained one. A cache entry is used only
    if it is intact and records the key it is stored under (an entry copied over another is not)."""
    key = network_key(cfg, dataset)
    cached = cache_dir() / "networks" / f"{key}.npz"
    notes = ()
    if cached.is_file() and not retrain:
        try:
            network, meta = read_network(cached)
            if meta.get("key") == key:
                return Obtained(network, key, True)
            why = "was stored for other settings or data"
        except UserError:
            why = "is damaged"
        notes = (f"the cached network {cached} {why}: trained it again",)
    network = train(cfg.model, cfg.train, dataset, on_epoch=on_epoch, inputs=inputs_of(cfg.data, dataset.input_shape))
    save_network(cached, network, key)
    return Obtained(network, key, False, notes)
