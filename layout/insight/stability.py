"""Layouts run again: null networks laid out by the same forces (the 3D nulls), the same network laid
out from several random starts (stability), and the network trained again with other seeds and laid
out the same way (stability across retraining); each batch side by side in one vmapped simulation."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import jax
import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.spatial import procrustes
from scipy.spatial.distance import cdist

from layout.core.config import LayoutConfig, RunConfig
from layout.engine.energies import build_energy
from layout.engine.features import NeuronFeatures, neuron_features
from layout.engine.particles import Particles, make_particles
from layout.engine.simulate import initial_positions, simulate_many
from models.data.datasets import Dataset
from models.network.store import obtain_network


def relayout(features: NeuronFeatures, null_vectors: np.ndarray, cfg: LayoutConfig,
             seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(final neuron positions [L, N, 3], dominant labels [L, N]) of L null networks, network l having
    the output vectors null_vectors[l] [N, C], laid out exactly as the real one (same forces, same
    simulation settings, same kind of start)."""
    particles = [make_particles(dataclasses.replace(features, output_vectors=v, dominant=v.argmax(1)), cfg.anchors)
                 for v in null_vectors]
    keys = jax.random.split(jax.random.key(seed), len(particles))
    starts = np.stack([initial_positions(p, cfg.sim.init, k) for p, k in zip(particles, keys)])
    finals = simulate_many([build_energy(p, cfg.forces) for p in particles], particles, cfg.sim, starts)
    n = features.n_neurons
    return finals[:, :n], null_vectors.argmax(2)


@dataclass(frozen=True)
class Stability:
    """The layout from several random starts, aligned by Procrustes (see `stability`)."""

    seeds: int
    disparity: np.ndarray  # [S-1] Procrustes disparity of each layout to the first
    spread: np.ndarray  # [N] per neuron, in units of the layout's RMS radius


def stability(particles: Particles, cfg: LayoutConfig, seeds: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lay the network out from `seeds` random starts (seeds 0..S-1); align every layout to the first
    by Procrustes (translation, rotation, reflection, scale). Returns (disparity [S-1]: scipy's
    Procrustes disparity of each layout to the first, 0 = identical up to similarity; spread [P]: each
    particle's RMS distance from its mean aligned position, in units of the layout's RMS radius;
    the aligned layouts [S, P, 3])."""
    terms = build_energy(particles, cfg.forces)
    starts = np.stack([initial_positions(particles, "random", jax.random.key(s)) for s in range(seeds)])
    finals = simulate_many([terms] * seeds, [particles] * seeds, cfg.sim, starts)
    finals = finals[np.isfinite(finals).all((1, 2))]
    aligned, disparity = [], []
    for x in finals:
        reference, fitted, d = procrustes(finals[0], x)  # both centred and scaled to unit norm
        aligned.append(fitted)
        disparity.append(d)
    aligned = np.stack(aligned)
    rms_radius = np.sqrt((aligned.mean(0) ** 2).sum(1).mean())
    spread = np.sqrt(((aligned - aligned.mean(0)) ** 2).sum(2).mean(0)) / max(rms_radius, 1e-12)
    return np.array(disparity[1:]), spread, aligned


# ---------------------------------------------------------------------------------------------
# Across retraining


@dataclass(frozen=True)
class Retrained:
    """The network trained again with other seeds and laid out the same way. Neurons of two trainings
    do not correspond, so two things are compared with the original layout, per retrained network:
    class_disparity: Procrustes disparity between the 3D centroids of each (layer, dominant class)
      group of neurons, for the groups both have (is the arrangement of the digits reproducible?);
    class_p: the fraction of relabellings of the retrained centroids that align at least as well;
    neuron_disparity: Procrustes disparity of the neurons' positions after pairing each layer's neurons
      by output-vector similarity (Hungarian matching)."""

    train_seeds: tuple[int, ...]
    class_disparity: np.ndarray
    class_p: np.ndarray
    neuron_disparity: np.ndarray


def group_centroids(positions: np.ndarray, layer: np.ndarray, dominant: np.ndarray) -> dict[tuple[int, int], np.ndarray]:
    """{(layer, class): mean 3D position of that group's neurons}."""
    return {(int(l), int(c)): positions[(layer == l) & (dominant == c)].mean(0)
            for l, c in sorted(set(zip(layer.tolist(), dominant.tolist())))}


def arrangement_test(a: np.ndarray, b: np.ndarray, rng: np.random.Generator, count: int) -> tuple[float, float]:
    """(Procrustes disparity of point sets a and b [K, 3] with rows corresponding, p): p the fraction of
    row permutations of b aligning at least as well, (1 + hits) / (1 + count)."""
    if len(a) < 3:
        return float("nan"), float("nan")
    observed = procrustes(a, b)[2]
    null = np.array([procrustes(a, b[rng.permutation(len(b))])[2] for _ in range(count)])
    return float(observed), float((1 + (null <= observed).sum()) / (1 + count))


def matched_disparity(a: NeuronFeatures, pa: np.ndarray, b: NeuronFeatures, pb: np.ndarray) -> float:
    """Procrustes disparity of two layouts after pairing each layer's neurons by output-vector
    distance (scipy's linear_sum_assignment)."""
    rows, cols = [], []
    for l in range(a.n_layers):
        ia, ib = np.flatnonzero(a.layer == l), np.flatnonzero(b.layer == l)
        r, c = linear_sum_assignment(cdist(a.output_vectors[ia], b.output_vectors[ib]))
        rows.append(ia[r])
        cols.append(ib[c])
    return float(procrustes(pa[np.concatenate(rows)], pb[np.concatenate(cols)])[2])


def retrained_stability(cfg: RunConfig, dataset: Dataset, features: NeuronFeatures, positions: np.ndarray, runs: int,
                        permutations: int, seed: int) -> Retrained:
    """Train the network again with train seeds train.seed + 1 .. + runs (cached like any network), lay
    each out with the same forces and simulation settings (side by side), and compare with `positions`."""
    seeds = tuple(cfg.train.seed + r for r in range(1, runs + 1))
    nets = [obtain_network(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seed=s)), dataset).network
            for s in seeds]
    others = [neuron_features(net, dataset.test, cfg.layout.influence, cfg.layout.layers) for net in nets]
    particles = [make_particles(f, cfg.layout.anchors) for f in others]
    key = jax.random.key(cfg.layout.sim.seed)
    starts = np.stack([initial_positions(p, cfg.layout.sim.init, key) for p in particles])
    finals = simulate_many([build_energy(p, cfg.layout.forces) for p in particles], particles, cfg.layout.sim,
                           starts)[:, :features.n_neurons]
    rng = np.random.default_rng([seed, 7])
    mine = group_centroids(positions, features.layer, features.dominant)

    def compare(other: NeuronFeatures, final: np.ndarray) -> tuple[float, float, float]:
        """(class-arrangement disparity, its p, matched-neuron disparity); NaN for a failed layout."""
        if not np.isfinite(final).all():
            return np.nan, np.nan, np.nan
        theirs = group_centroids(final, other.layer, other.dominant)
        shared = sorted(set(mine) & set(theirs))
        d, p = arrangement_test(np.array([mine[g] for g in shared]), np.array([theirs[g] for g in shared]), rng,
                                permutations)
        return d, p, matched_disparity(features, positions, other, final)

    class_d, class_p, neuron_d = (np.array(column) for column in zip(*map(compare, others, finals)))
    return Retrained(seeds, class_d, class_p, neuron_d)
