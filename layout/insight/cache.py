"""The structure tests' results in the cache: one .npz per tested layout (arrays only, never pickled),
so that a run that changes only render settings reports the same tests without running them again."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from layout.core.errors import UserError
from layout.core.files import read_npz, write_atomic
from layout.insight.ablation import Ablation
from layout.insight.stability import Retrained, Stability
from layout.insight.structure import LayerStructure, NullTest
from layout.insight.suite import Tested


def save_tested(path: Path, t: Tested, key: str) -> Path:
    """The results, stored under `key` (recorded in the entry, and checked when it is read)."""
    arrays: dict[str, np.ndarray] = {}
    layers = []
    for i, layer in enumerate(t.layers):
        tests = []
        for j, test in enumerate(layer.tests):
            arrays[f"layer{i}_test{j}"] = np.asarray(test.null_values, np.float64)
            tests.append({"statistic": test.statistic, "space": test.space, "labels": test.labels,
                          "null": test.null, "observed": test.observed})
        if layer.confusion is not None:
            arrays[f"layer{i}_confusion"] = np.asarray(layer.confusion)
        layers.append({"layer": layer.layer, "n_neurons": layer.n_neurons, "tests": tests, "name": layer.name,
                       "number": layer.number, "tested": layer.tested, "untested_3d": layer.untested_3d})
    a = t.ablation
    arrays.update(ablation_baseline=a.baseline, ablation_drop=a.drop, ablation_class_drop=a.class_drop)
    meta = {"version": 1, "key": key, "layers": layers, "ablation_groups": list(a.groups), "stability": None,
            "retrained": None, "selectivity": {str(k): v for k, v in (t.selectivity or {}).items()} or None}
    if t.stability is not None:
        meta["stability"] = t.stability.seeds
        arrays.update(stability_disparity=t.stability.disparity, stability_spread=t.stability.spread)
    if t.retrained is not None:
        r = t.retrained
        meta["retrained"] = list(r.train_seeds)
        arrays.update(retrained_class_disparity=r.class_disparity, retrained_class_p=r.class_p,
                      retrained_neuron_disparity=r.neuron_disparity)
    for layer, png in (t.plots_png or {}).items():
        arrays[f"plot{layer}"] = np.frombuffer(png, np.uint8)
    arrays["meta"] = np.array(json.dumps(meta))
    return write_atomic(path, lambda f: np.savez(f, **arrays))


def load_tested(path: Path, key: str) -> tuple[Tested | None, str | None]:
    """(the results save_tested stored under `key`, None); (None, None) when there are none; (None, why)
    when the entry is damaged or was stored under another key (it is then replaced)."""
    if not path.is_file():
        return None, None
    try:
        arrays, meta = read_npz(path, "structure cache entry")
        if meta.get("version") != 1 or meta.get("key") != key:
            return None, "the cached structure results were stored for other inputs: tested again"
        layers = tuple(LayerStructure(
            layer["layer"], layer["n_neurons"],
            tuple(NullTest(**test, null_values=arrays[f"layer{i}_test{j}"]) for j, test in enumerate(layer["tests"])),
            arrays.get(f"layer{i}_confusion"), layer.get("name", ""), layer.get("number", 0), layer.get("tested", 0),
            layer.get("untested_3d", ""))
            for i, layer in enumerate(meta["layers"]))
        ablation = Ablation(arrays["ablation_baseline"], arrays["ablation_drop"], arrays["ablation_class_drop"],
                            tuple(meta["ablation_groups"]))
        stability = None if meta["stability"] is None else Stability(
            meta["stability"], arrays["stability_disparity"], arrays["stability_spread"])
        retrained = None if meta["retrained"] is None else Retrained(
            tuple(meta["retrained"]), arrays["retrained_class_disparity"], arrays["retrained_class_p"],
            arrays["retrained_neuron_disparity"])
    except (UserError, KeyError, TypeError, ValueError):
        return None, "the cached structure results are damaged: tested again"
    plots = {l.layer: arrays[f"plot{l.layer}"].tobytes() for l in layers if f"plot{l.layer}" in arrays}
    selectivity = meta.get("selectivity")
    if selectivity is not None:
        selectivity = {int(k): v for k, v in selectivity.items()}
    return Tested(layers, ablation, stability, retrained, plots, selectivity), None
