"""The structure stage: after the layout, test the class structure against nulls, ablate, check the
layout's stability (or reuse the results of an earlier run of the same layout), and write report.md,
structure.json, the null plots and neurons.csv again with the per-neuron results. Nothing here prints."""

from __future__ import annotations

import dataclasses
import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from layout.config import RunConfig
from layout.stages import LayoutResult, TrainResult, write_neurons_csv


@dataclass(frozen=True)
class StructureResult:
    tested: object  # structure_cache.Tested: the layers' tests, ablation, stability, retraining
    verdicts: tuple[str, ...]
    seconds: float
    written: tuple[Path, ...]
    reused: bool = False  # the results came from the cache

    @property
    def layers(self) -> tuple:
        return self.tested.layers

    @property
    def ablation(self):
        return self.tested.ablation

    @property
    def stability(self):
        return self.tested.stability


def structure_stage(cfg: RunConfig, trained: TrainResult, laid: LayoutResult, out: Path, *,
                    retest: bool = False) -> StructureResult:
    """Test the network's class structure against nulls, ablate, check the layout's stability; write
    structure.json, report.md, the null plots, and neurons.csv again with the per-neuron results.

    The results are reused from <cache>/structure/ when the network, its layout and the structure
    settings are unchanged (unless `retest`)."""
    from layout.config import fingerprint
    from layout.files import cache_dir
    from layout.report import verdicts, write_report
    from layout.structure_cache import load_tested, save_tested

    start = time.perf_counter()
    f = laid.features
    positions = laid.trajectory.final[:f.n_neurons]
    key = fingerprint({"version": 1, "network": trained.figures["network_key"], "layout": laid.figures["layout_key"],
                       "positions": hashlib.sha256(np.ascontiguousarray(positions).tobytes()).hexdigest(),
                       "structure": cfg.structure})[:20]
    cached = cache_dir() / "structure" / f"{key}.npz"
    tested = None if retest else load_tested(cached)
    reused = tested is not None
    if tested is None:
        tested = run_structure_tests(cfg, trained, laid)
    written = write_report(out, cfg.name, tested.layers, tested.ablation, tested.stability, tested.retrained,
                           f.class_names, tested.plots_png)
    if not reused or not tested.plots_png:  # (an entry without its plots gets them)
        plots = {l.layer: (out / f"structure_layer{l.layer + 1}.png").read_bytes() for l in tested.layers if l.tests}
        save_tested(cached, dataclasses.replace(tested, plots_png=plots))
    a = tested.ablation
    extra = {"ablation_drop": a.drop, "ablation_own_class_drop": a.class_drop[np.arange(f.n_neurons), f.dominant]}
    if tested.stability is not None:
        extra["spread"] = tested.stability.spread
    write_neurons_csv(out / "neurons.csv", f, positions, laid.distortion, trained.network.classes, extra)
    return StructureResult(tested, tuple(verdicts(tested.layers, tested.retrained)), time.perf_counter() - start,
                           written, reused)


def run_structure_tests(cfg: RunConfig, trained: TrainResult, laid: LayoutResult):
    """Every structure test of the network and its layout (structure_cache.Tested)."""
    from layout.ablation import ablate
    from layout.features import hidden_activations
    from layout.report import Stability
    from layout.stability import relayout, retrained_stability, stability
    from layout.structure import (
        LayerInputs,
        layer_structure,
        shuffled_columns,
        untrained,
    )
    from layout.structure_cache import Tested

    sc, f, net = cfg.structure, laid.features, trained.network
    test = trained.dataset.test
    activations = hidden_activations(net, test.images)
    positions = laid.trajectory.final[:f.n_neurons]
    rng = np.random.default_rng([sc.seed, 99])
    layers_of = [f.layer == l for l in range(f.n_layers)]
    relayouts = {}
    if sc.layout_nulls and cfg.render.timeline == "simulation":
        makers = {"shuffled_columns": lambda v, l: shuffled_columns(v, rng, sc.layout_nulls),
                  "untrained": lambda v, l: untrained(net.sizes, l, net.activation, rng, sc.layout_nulls)}
        for name, make in makers.items():
            vectors = np.concatenate([make(f.output_vectors[m], l) for l, m in enumerate(layers_of)], axis=1)
            relayouts[name] = relayout(f, vectors, cfg.layout, sc.seed)
    shuffled = shuffled_label_vectors(cfg, trained, sc.shuffled_label_runs)
    layers = tuple(layer_structure(LayerInputs(
        layer=l, sizes=net.sizes, activation=net.activation, vectors=f.output_vectors[m], dominant=f.dominant[m],
        activation_dominant=f.activation_dominant[m], positions=positions[m],
        receptive_fields=f.receptive_fields[m].reshape(int(m.sum()), -1), activations=activations[l],
        relayouts={k: (v[0][:, m], v[1][:, m]) for k, v in relayouts.items()},
        shuffled_label_vectors=None if shuffled is None else shuffled[:, m]), sc.permutations, sc.k, sc.seed)
        for l, m in enumerate(layers_of))
    ablation = ablate(net, activations, test.labels, f.dominant, f.layer, sc.ablation_groups, sc.seed)
    stable = None
    if sc.stability_seeds >= 2:
        disparity, spread, _ = stability(laid.particles, cfg.layout, sc.stability_seeds)
        stable = Stability(sc.stability_seeds, disparity, spread[:f.n_neurons])
    retrained = None
    if sc.retrain_runs:
        retrained = retrained_stability(cfg, trained.dataset, f, positions, sc.retrain_runs, sc.permutations, sc.seed)
    return Tested(layers, ablation, stable, retrained)


def shuffled_label_vectors(cfg: RunConfig, trained: TrainResult, runs: int) -> np.ndarray | None:
    """[runs, N, C] output vectors of networks trained like this one on shuffled training labels."""
    from layout.features import downstream_products
    from models.train import train

    if not runs:
        return None
    rng = np.random.default_rng(cfg.structure.seed)
    data = trained.dataset
    vectors = []
    for r in range(runs):
        split = dataclasses.replace(data.train, labels=rng.permutation(data.train.labels))
        net = train(cfg.model, dataclasses.replace(cfg.train, seed=cfg.train.seed + 1 + r),
                    dataclasses.replace(data, train=split))
        vectors.append(np.concatenate(downstream_products(net.weights)))
    return np.stack(vectors).astype(np.float32)
