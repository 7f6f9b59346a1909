"""The training timeline: the layout across training snapshots, each warm-started from the last.

Every weight snapshot becomes a network of its own: its features give the particles' output
vectors, and `layout.sim.snapshot_steps` steps of the simulation move the previous snapshot's layout
to fit them. Neurons keep their identity from frame to frame, so they move continuously while the
network learns.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import numpy as np

from layout.core.config import RunConfig
from layout.engine.energies import build_energy
from layout.engine.features import NeuronFeatures, neuron_features
from layout.engine.particles import Particles, make_particles
from layout.engine.simulate import Trajectory, simulate
from models.data.datasets import Split
from models.network.network import Network


def snapshot_network(network: Network, s: int) -> Network:
    """The network as it was at snapshot s."""
    snaps = network.snapshots
    return dataclasses.replace(network, weights=tuple(w[s] for w in snaps.weights),
                               biases=tuple(b[s] for b in snaps.biases))


def training_trajectory(network: Network, test: Split, cfg: RunConfig,
                        on_snapshot: Callable[[int, int], None] | None = None
                        ) -> tuple[Trajectory, tuple[str, ...], NeuronFeatures, Particles]:
    """(frames over all snapshots, a title per frame, the last snapshot's features and particles)."""
    snaps = network.snapshots
    sim = dataclasses.replace(cfg.layout.sim, steps=cfg.layout.sim.snapshot_steps, settle=0.0)
    key = jax.random.key(cfg.layout.sim.seed)
    parts, labels, start = [], [], None
    for s in range(len(snaps.step)):
        features = neuron_features(snapshot_network(network, s), test, cfg.layout.influence, cfg.layout.layers,
                                   visualise=False)
        particles = make_particles(features, cfg.layout.anchors)
        terms = build_energy(particles, cfg.layout.forces)
        part = simulate(terms, particles, sim if start is not None else cfg.layout.sim, key, start=start,
                        alpha_start=cfg.layout.sim.snapshot_alpha if start is not None else 1.0)
        start = part.final
        parts.append(part)
        labels += [f"epoch {snaps.epoch[s]:.2f}   test accuracy {snaps.test_accuracy[s]:.3f}"] * len(part.step)
        if on_snapshot:
            on_snapshot(s + 1, len(snaps.step))
    offsets = np.cumsum([0] + [int(p.step[-1]) for p in parts[:-1]])
    trajectory = Trajectory(
        positions=np.concatenate([p.positions for p in parts]),
        energy=np.concatenate([p.energy for p in parts]),
        step=np.concatenate([p.step + o for p, o in zip(parts, offsets)]),
        terms=parts[-1].terms,
        settled_step=None,
    )
    return trajectory, tuple(labels), features, particles
