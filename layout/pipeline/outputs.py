"""The run's per-neuron table (neurons.csv) and its figures (metrics.json)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np

from layout.core.files import write_atomic, write_text
from layout.engine.features import NeuronFeatures
from layout.insight.selectivity import indices

NEURON_COLUMNS = ("id", "layer", "index", "dominant", "activation_dominant", "x", "y", "z", "distortion",
                  "selectivity", "effective_classes")


def write_neurons_csv(path: Path, features: NeuronFeatures, positions: np.ndarray, distortion: np.ndarray,
                      classes: tuple[int, ...], extra: dict[str, np.ndarray] | None = None) -> Path:
    """One row per laid-out neuron; layers numbered from 1 among the hidden layers (a CNN's conv layers
    count), classes written as their
    original labels; `extra` adds columns (the structure stage's ablation drops and stability spread)."""
    extra = extra or {}
    selective = indices(features.class_activation)
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(NEURON_COLUMNS + tuple(extra))
    labels, numbers = np.asarray(classes), features.layer_numbers
    for i in range(features.n_neurons):
        values = (distortion[i], selective["selectivity"][i], selective["effective_classes"][i],
                  *(column[i] for column in extra.values()))
        writer.writerow([i, int(numbers[i]), int(features.index[i]), int(labels[features.dominant[i]]),
                         int(labels[features.activation_dominant[i]]), *(f"{v:.6g}" for v in positions[i]),
                         *("" if np.isnan(v) else f"{v:.6g}" for v in values)])
    return write_text(path, text.getvalue())


def write_top_images(path: Path, top: np.ndarray, bottom: np.ndarray) -> Path:
    """top_images.npz: `top` and `bottom` [N, k] test-set indices (rows as neurons.csv's), and `meta`."""
    meta = {"k": int(top.shape[1]), "rows": "neurons, in the order of neurons.csv",
            "top": "the k test images that activate the neuron most, most first",
            "bottom": "the k that activate it least, least first", "ties": "the lower test index first"}
    arrays = {"top": top, "bottom": bottom, "meta": np.array(json.dumps(meta))}
    return write_atomic(path, lambda f: np.savez(f, **arrays))


def run_figures(training: dict, layout: dict, structure: dict | None = None) -> dict:
    """metrics.json of a run: the training figures, "layout" and (when tested) "structure"."""
    return {**training, "layout": layout, **({"structure": structure} if structure is not None else {})}
