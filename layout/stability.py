"""Layouts run again: null networks laid out by the same forces (the 3D nulls), and the same network
laid out from several random starts (stability), all side by side in one vmapped simulation."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from layout.config import LayoutConfig
from layout.features import NeuronFeatures
from layout.forces import Particles, build_energy, make_particles
from layout.simulate import initial_positions, simulate_many


def relayout(features: NeuronFeatures, null_vectors: np.ndarray, cfg: LayoutConfig,
             seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(final neuron positions [L, N, 3], dominant labels [L, N]) of L null networks, network l having
    the output vectors null_vectors[l] [N, C], laid out exactly as the real one (same forces, same
    simulation settings, same kind of start)."""
    particles = [make_particles(dataclasses.replace(features, output_vectors=v, dominant=v.argmax(1)), cfg.anchors)
                 for v in null_vectors]
    keys = jax.random.split(jax.random.key(seed), len(particles))
    starts = np.stack([initial_positions(p, cfg.sim.init, k) for p, k in zip(particles, keys)])
    finals = simulate_many([build_energy(p, cfg.forces) for p in particles], particles[0].movable, cfg.sim, starts)
    n = features.n_neurons
    return finals[:, :n], null_vectors.argmax(2)


def stability(particles: Particles, cfg: LayoutConfig, seeds: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lay the network out from `seeds` random starts (seeds 0..S-1); align every layout to the first
    by Procrustes (translation, rotation, reflection, scale). Returns (disparity [S-1]: scipy's
    Procrustes disparity of each layout to the first, 0 = identical up to similarity; spread [P]: each
    particle's RMS distance from its mean aligned position, in units of the layout's RMS radius;
    the aligned layouts [S, P, 3])."""
    from scipy.spatial import procrustes

    terms = build_energy(particles, cfg.forces)
    starts = np.stack([initial_positions(particles, "random", jax.random.key(s)) for s in range(seeds)])
    finals = simulate_many([terms] * seeds, particles.movable, cfg.sim, starts)
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
