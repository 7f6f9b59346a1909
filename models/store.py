"""Saving, loading and reusing trained networks.

network.npz holds arrays only (np.load(..., allow_pickle=False) reads it) plus one `meta` entry: a
JSON string with sizes, activation, dataset, classes, accuracy and the cache key. A trained network
is kept in <cache>/networks/<key>.npz, where the key hashes the data, model and train sections and
the dataset files' checksum, so changing anything else never retrains.
"""

from __future__ import annotations

import dataclasses
import json
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np

from layout.config import RunConfig, fingerprint
from layout.errors import UserError
from layout.files import cache_dir, write_atomic
from models.data import Dataset
from models.train import EpochStats, History, Network, Snapshots, train

FORMAT_VERSION = 1
HISTORY_FIELDS = ("epoch", "train_loss", "test_loss", "test_accuracy")
META_FIELDS = ("sizes", "activation", "dataset", "classes", "class_names", "test_accuracy",
               "train_accuracy", "train_seconds", "epochs")


def network_key(cfg: RunConfig, dataset: Dataset) -> str:
    """What decides the trained weights: data selection, model, training settings and the data itself."""
    data = dataclasses.replace(cfg.data, dir=None, mirrors=None)  # where the files live does not change them
    return fingerprint({"version": FORMAT_VERSION, "data": data, "model": cfg.model, "train": cfg.train,
                        "digest": dataset.digest})[:20]


def network_arrays(network: Network, key: str) -> dict[str, np.ndarray]:
    meta = {name: getattr(network, name) for name in META_FIELDS}
    meta.update(n_params=network.n_params, key=key, format=FORMAT_VERSION)
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
    """Read a network.npz written by save_network."""
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            n_layers = len(meta["sizes"]) - 1
            arrays = {name: z[name] for name in z.files}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, json.JSONDecodeError) as e:
        raise UserError(f"{path} is not a network file written by neuron-layout ({e}): train again") from None
    layers = range(n_layers)
    return Network(
        sizes=tuple(meta["sizes"]),
        activation=meta["activation"],
        weights=tuple(arrays[f"w{l}"] for l in layers),
        biases=tuple(arrays[f"b{l}"] for l in layers),
        dataset=meta["dataset"],
        classes=tuple(meta["classes"]),
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
    )


def obtain_network(cfg: RunConfig, dataset: Dataset, *, retrain: bool = False,
                   on_epoch: Callable[[EpochStats], None] | None = None) -> tuple[Network, str, bool]:
    """(network, key, reused): the cached network for this config and data, or a newly trained one."""
    key = network_key(cfg, dataset)
    cached = cache_dir() / "networks" / f"{key}.npz"
    if cached.is_file() and not retrain:
        try:
            return load_network(cached), key, True
        except UserError:
            pass  # a damaged cache entry is replaced below
    network = train(cfg.model, cfg.train, dataset, on_epoch=on_epoch)
    save_network(cached, network, key)
    return network, key, False
