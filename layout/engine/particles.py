"""The simulated particles: every hidden neuron, then the output units as anchors (fixed on a sphere or a
ring, free, or left out)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from layout.core.config import AnchorsConfig
from layout.engine.features import NeuronFeatures


@dataclass(frozen=True)
class Particles:
    """The simulated particles: N neurons, then C anchors (if any). P = N + C.

    vectors [P, C]: output vectors (anchors: scaled one-hot). group [P]: dominant class (anchors: their
    own class). layer [P]: hidden layer (anchors: the output layer, n_layers). is_anchor [P], movable [P].
    home [P, 3]: where fixed anchors sit (rows of movable particles are unused).
    """

    vectors: np.ndarray
    group: np.ndarray
    layer: np.ndarray
    is_anchor: np.ndarray
    movable: np.ndarray
    home: np.ndarray
    anchor_mode: str

    @property
    def n_particles(self) -> int:
        return len(self.group)


def anchor_positions(n: int, shape: str, radius: float) -> np.ndarray:
    """n points spread evenly on a sphere (Fibonacci lattice) or a ring in the z = 0 plane: [n, 3]."""
    k = np.arange(n) + 0.5
    if shape == "ring":
        angle = 2 * np.pi * k / n
        return radius * np.stack([np.cos(angle), np.sin(angle), np.zeros(n)], 1)
    z = 1 - 2 * k / n
    angle = np.pi * (1 + 5**0.5) * k
    rho = np.sqrt(1 - z**2)
    return radius * np.stack([rho * np.cos(angle), rho * np.sin(angle), z], 1)


def make_particles(features: NeuronFeatures, cfg: AnchorsConfig) -> Particles:
    n, c = features.n_neurons, features.n_classes
    m = 0 if cfg.mode == "none" else c
    norm = float(np.linalg.norm(features.output_vectors, axis=1).mean())
    anchor_vectors = np.eye(c, dtype=np.float32) * cfg.scale * norm
    home = np.zeros((n + m, 3), np.float32)
    if cfg.mode == "fixed":
        home[n:] = anchor_positions(c, cfg.shape, cfg.radius)
    return Particles(
        vectors=np.concatenate([features.output_vectors, anchor_vectors[:m]]).astype(np.float32),
        group=np.concatenate([features.dominant, np.arange(m)]).astype(np.int32),
        layer=np.concatenate([features.layer, np.full(m, features.n_layers)]).astype(np.int32),
        is_anchor=np.arange(n + m) >= n,
        movable=(np.arange(n + m) < n) | (cfg.mode == "free"),
        home=home,
        anchor_mode=cfg.mode,
    )
