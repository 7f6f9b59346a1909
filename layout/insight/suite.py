"""Every structure test of one laid-out network, in one call: each layer's statistics against its nulls
(with the null networks laid out again for the 3D tests), the ablations, the stability of the layout
from random starts and, when asked, across retraining. The result, `Tested`, is what the report, the
cache and the scene's colourings are made from."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from layout.core.config import RunConfig, StructureConfig
from layout.engine.features import NeuronFeatures, hidden_activations, output_vectors
from layout.engine.particles import Particles
from layout.engine.sampled import pairs_mode
from layout.insight.ablation import Ablation, ablate
from layout.insight.selectivity import distribution, layer_tests, untrained_class_means
from layout.insight.stability import Retrained, Stability, relayout, retrained_stability, stability
from layout.insight.structure import (
    MIN_NEURONS,
    LayerInputs,
    LayerStructure,
    layer_structure,
    shuffled_columns,
    untrained,
)
from layout.insight.untrained import conv_influence_nulls, untrained_layer_class_means
from models.data.datasets import Dataset
from models.network.network import Network, inputs_of
from models.network.train import train


@dataclass(frozen=True)
class Tested:
    """Everything the structure stage measures; the reports and colourings are made from it."""

    layers: tuple[LayerStructure, ...]
    ablation: Ablation
    stability: Stability | None
    retrained: Retrained | None
    plots_png: dict[int, bytes] | None = None  # layer -> its null plot, once drawn
    selectivity: dict | None = None  # layer -> selectivity.distribution (quartiles, observed and untrained)


@dataclass(frozen=True)
class Subject:
    """What is tested: a network, the data it was trained and measured on, its neurons' features, its
    particles and the neurons' final positions [N, 3]."""

    network: Network
    dataset: Dataset
    features: NeuronFeatures
    particles: Particles
    positions: np.ndarray


STRUCTURE_NEURONS = 2000  # a wider layer's tests run on this many of its neurons, drawn at random


def tested_neurons(n: int, seed: int, layer: int) -> np.ndarray:
    """The indices (ascending) of the neurons of a layer of n that its tests run on: all of them up to
    STRUCTURE_NEURONS, else that many drawn at random (seeded; the nulls' neurons are exchangeable)."""
    if n <= STRUCTURE_NEURONS:
        return np.arange(n)
    return np.sort(np.random.default_rng([seed, layer, 5]).choice(n, STRUCTURE_NEURONS, replace=False))


def options_for(cfg: RunConfig, layer_sizes: Sequence[int], n_particles: int) -> StructureConfig:
    """The structure options that apply: none of the nulls' relayouts, retraining or stability runs when no
    layer has the MIN_NEURONS a test needs (a 784-1-2 network is reported "too few to test" at once); no
    3D null layouts when the layout has sampled pairs (each would be a large layout of its own)."""
    if max(layer_sizes, default=0) < MIN_NEURONS:
        return dataclasses.replace(cfg.structure, layout_nulls=0, shuffled_label_runs=0, selectivity_nulls=0,
                                   stability_seeds=0, retrain_runs=0)
    if pairs_mode(cfg.layout.sim.pairs, n_particles) == "sampled":
        return dataclasses.replace(cfg.structure, layout_nulls=0)
    return cfg.structure


def count_parts(cfg: RunConfig, layer_sizes: Sequence[int], n_particles: int) -> int:
    """How many parts run_structure_tests reports through on_part, for layers of these sizes."""
    sc = options_for(cfg, layer_sizes, n_particles)
    return (2 * bool(sc.layout_nulls and cfg.render.timeline == "simulation") + bool(sc.shuffled_label_runs)
            + bool(sc.selectivity_nulls) + len(layer_sizes) + 1 + (sc.stability_seeds >= 2) + bool(sc.retrain_runs))


def run_structure_tests(cfg: RunConfig, subject: Subject,
                        on_part: Callable[[int], None] | None = None) -> Tested:
    """Every structure test of the subject; on_part(n) after each of count_parts' parts."""
    done = 0

    def part_done() -> None:
        nonlocal done
        done += 1
        if on_part:
            on_part(done)

    f, net = subject.features, subject.network
    layers_of = [f.layer == l for l in range(f.n_layers)]
    sizes = f.layer_sizes
    sc = options_for(cfg, sizes, subject.particles.n_particles)
    chosen = [tested_neurons(n, sc.seed, l) for l, n in enumerate(sizes)]
    no_3d = (f"not made at this size: the {subject.particles.n_particles} particles are laid out with sampled "
             "pairs, and each null would be a layout of its own" if cfg.structure.layout_nulls > sc.layout_nulls
             and cfg.render.timeline == "simulation" else "")
    test = subject.dataset.test
    hidden = f.hidden_layers or tuple(range(f.n_layers))  # each laid-out layer's place among the hidden ones
    activations = hidden_activations(net, test.images, hidden, chosen)  # of the tested neurons only
    rng = np.random.default_rng([sc.seed, 99])
    conv_nulls = {h: conv_influence_nulls(net, h, test.images, max(sc.permutations, sc.layout_nulls), sc.seed)
                  for h in hidden if net.hidden_kinds[h] == "conv"}

    def untrained_vectors(l: int, generator: np.random.Generator, count: int, tested: bool = False) -> np.ndarray:
        """[count, n_l, C] (a conv layer: at most CONV_NULLS) output vectors of untrained networks; with
        `tested`, of as many neurons as layer l's tests run on."""
        if hidden[l] in conv_nulls:
            return conv_nulls[hidden[l]][:count][:, chosen[l]] if tested else conv_nulls[hidden[l]][:count]
        rows = len(chosen[l]) if tested and len(chosen[l]) < sizes[l] else None
        return untrained(net.sizes, hidden[l], net.activation, generator, count, rows)

    relayouts = {}
    if sc.layout_nulls and cfg.render.timeline == "simulation":
        makers = {"shuffled_columns": lambda v, l: shuffled_columns(v, rng, sc.layout_nulls),
                  "untrained": lambda v, l: untrained_vectors(l, rng, sc.layout_nulls)}
        for name, make in makers.items():
            vectors = np.concatenate([make(f.output_vectors[m], l) for l, m in enumerate(layers_of)], axis=1)
            relayouts[name] = relayout(f, vectors, cfg.layout, sc.seed)
            part_done()
    shuffled = shuffled_label_vectors(cfg, subject.dataset, sc.shuffled_label_runs, hidden)
    if shuffled is not None:
        part_done()
    null_means = None
    if sc.selectivity_nulls and net.has_conv:
        null_means = untrained_layer_class_means(net, hidden, test.images, test.labels, sc.selectivity_nulls, sc.seed)
        part_done()
    elif sc.selectivity_nulls:
        last = len(net.sizes) - 3  # the last hidden layer: only as many of its neurons as are tested
        last_width = next((len(c) for l, c in enumerate(chosen) if hidden[l] == last and len(c) < sizes[l]), None)
        null_means = untrained_class_means(net.sizes, net.activation, test.images, test.labels, sc.selectivity_nulls,
                                           np.random.default_rng([sc.seed, 7]), net.inputs, last_width)
        part_done()
    if null_means is not None:
        null_means = [means[:, :len(c)] for means, c in zip(null_means, chosen)]
    layers = []
    for l, m in enumerate(layers_of):
        c = chosen[l]
        layers.append(layer_structure(LayerInputs(
            layer=l, sizes=net.sizes, activation=net.activation, vectors=f.output_vectors[m][c],
            dominant=f.dominant[m][c],
            untrained_vectors=(lambda generator, count, l=l: untrained_vectors(l, generator, count, tested=True)),
            activation_dominant=f.activation_dominant[m][c], positions=subject.positions[m][c],
            receptive_fields=f.receptive_fields[m][c].reshape(len(c), -1), activations=activations[l],
            relayouts={k: (v[0][:, m][:, c], v[1][:, m][:, c]) for k, v in relayouts.items()},
            shuffled_label_vectors=None if shuffled is None else shuffled[:, m][:, c]), sc.permutations, sc.k, sc.seed))
        layers[-1] = dataclasses.replace(layers[-1], n_neurons=sizes[l], tested=len(c) if len(c) < sizes[l] else 0,
                                         untested_3d=no_3d)
        if f.field_kind != "weights":  # a CNN: the layer by its place among the hidden layers and its kind
            layers[-1] = dataclasses.replace(layers[-1], name=f.layer_name(l), number=hidden[l] + 1)
        if null_means is not None and layers[-1].tests:
            layers[-1] = dataclasses.replace(layers[-1], tests=layers[-1].tests + tuple(
                layer_tests(f.class_activation[m][c], null_means[l])))
        part_done()
    distributions = None if null_means is None else {
        l: distribution(f.class_activation[m][chosen[l]], null_means[l]) for l, m in enumerate(layers_of)}
    ablation = ablate(net, test, f.dominant, f.layer, sc.ablation_groups, sc.seed, hidden)
    part_done()
    stable = None
    if sc.stability_seeds >= 2:
        disparity, spread, _ = stability(subject.particles, cfg.layout, sc.stability_seeds)
        stable = Stability(sc.stability_seeds, disparity, spread[:f.n_neurons])
        part_done()
    retrained = None
    if sc.retrain_runs:
        retrained = retrained_stability(cfg, subject.dataset, f, subject.positions, sc.retrain_runs, sc.permutations,
                                        sc.seed)
        part_done()
    return Tested(tuple(layers), ablation, stable, retrained, selectivity=distributions)


def shuffled_label_vectors(cfg: RunConfig, data: Dataset, runs: int, hidden: tuple[int, ...]) -> np.ndarray | None:
    """[runs, N, C] output vectors (of hidden layers `hidden`) of networks trained like this one on shuffled
    training labels."""
    if not runs:
        return None
    rng = np.random.default_rng(cfg.structure.seed)
    vectors = []
    for r in range(runs):
        split = dataclasses.replace(data.train, labels=rng.permutation(data.train.labels))
        net = train(cfg.model, dataclasses.replace(cfg.train, seed=cfg.train.seed + 1 + r),
                    dataclasses.replace(data, train=split), inputs=inputs_of(cfg.data, data.input_shape))
        vectors.append(np.concatenate(output_vectors(net.params(), net, data.test.images, hidden,
                                                     cfg.layout.influence)))
    return np.stack(vectors).astype(np.float32)
