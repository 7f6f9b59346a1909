"""Forces as energies: each term a pure function `energy(positions [P, 3]) -> scalar`.

`build_energy` binds every enabled term to its data with functools.partial; the simulation sums them
and moves particles along `-jax.grad(total)`. The particles are the N hidden neurons followed by the
C output anchors (when anchors are on). Every term is scaled so that one particle feels a force of
order one at unit strength, whatever N is, so strengths mean the same for small and large networks.

All-pairs terms never build an N x N x 3 array: squared distances come from the Gram identity
|a - b|^2 = |a|^2 + |b|^2 - 2 a.b (a matrix product), over row tiles of at most TILE rows, each tile
rematerialised in the backward pass so memory stays O(TILE x P).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from layout.config import AnchorsConfig, ForcesConfig
from layout.features import NeuronFeatures

TILE = 2048
DISTANCE_FLOOR = 1e-3  # added to output-vector distances in 1/d weights, so identical vectors stay finite

Energy = Callable[[jax.Array], jax.Array]


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

    @property
    def n_layers(self) -> int:
        return int(self.layer.max()) + 1


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


# ---------------------------------------------------------------------------------------------
# All-pairs sums


def squared_distances(a: jax.Array, b: jax.Array) -> jax.Array:
    """|a_i - b_j|^2 for a [T, k], b [P, k] -> [T, P], via one matrix product (clipped at 0)."""
    return jnp.maximum((a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T, 0.0)


def pair_sum(pair_fn: Callable, points: jax.Array, data: tuple, tile: int = TILE) -> jax.Array:
    """sum over i != j of pair_fn(d2_ij, data_i, data_j) / 2, i.e. over unordered pairs.

    pair_fn gets squared distances [T, P] between a tile of rows and all points, the rows' data and
    everyone's data (each a tuple entry indexed by particle), and returns [T, P] pair values.
    """
    n = points.shape[0]

    def block(rows, row_ids):
        d2 = squared_distances(points[rows], points)
        values = pair_fn(d2, tuple(x[rows] for x in data), data)
        keep = (row_ids[:, None] != jnp.arange(n)[None, :]) & (row_ids < n)[:, None]
        return jnp.where(keep, values, 0.0).sum()

    if n <= tile:
        ids = jnp.arange(n)
        return block(ids, ids) / 2
    n_tiles = -(-n // tile)
    ids = jnp.arange(n_tiles * tile).reshape(n_tiles, tile)
    rows = jnp.minimum(ids, n - 1)
    totals = jax.lax.map(lambda t: jax.checkpoint(block)(t[0], t[1]), (rows, ids))
    return totals.sum() / 2


# ---------------------------------------------------------------------------------------------
# Energy terms


def euclid_energy(positions, vectors, include, rest_scale, weighting, weight_mean, strength):
    """Metric stress: sum over pairs of w_ij (|x_i - x_j| - s r_ij)^2, r_ij the output-vector distance.

    Rest lengths are proportional to r (s = 1 / mean r, so the mean rest length is 1); w is 1, 1/r or
    1/r^2. Divided by (number of particles x mean w): each particle feels its mean spring error.
    """
    def pair(d2, rows, cols):
        r = jnp.sqrt(squared_distances(rows[0], cols[0])) * rest_scale
        d = jnp.sqrt(d2 + 1e-12)
        w = pair_weight(r, weighting)
        return jnp.where(rows[1][:, None] & cols[1][None, :], w * (d - r) ** 2, 0.0)

    n = include.sum()
    return strength * pair_sum(pair, positions, (vectors, include)) / (n * weight_mean)


def pair_weight(r: jax.Array, weighting: str) -> jax.Array:
    if weighting == "inverse":
        return 1.0 / (r + DISTANCE_FLOOR)
    if weighting == "inverse_square":
        return 1.0 / (r + DISTANCE_FLOOR) ** 2
    return jnp.ones_like(r)


def repulsion_energy(positions, softening, strength):
    """Softened Coulomb: sum over pairs of 1 / sqrt(d^2 + softening^2), over the number of particles."""
    def pair(d2, rows, cols):
        return jax.lax.rsqrt(d2 + softening**2)

    return strength * pair_sum(pair, positions, ()) / positions.shape[0]


def dominance_energy(positions, group, is_anchor, n_classes, anchor_weight, strength):
    """Same-dominant-class neurons attract: sum_i |x_i - c_g|^2 / 2 over neurons, c_g the mean position
    of class g's neurons (equal to the sum over same-class pairs of |x_i - x_j|^2 / 2 n_g), plus
    anchor_weight x |x_i - a_g|^2 / 2, a_g the position of class g's anchor particle (if any)."""
    neuron = (~is_anchor).astype(positions.dtype)
    member = jax.nn.one_hot(group, n_classes, dtype=positions.dtype) * neuron[:, None]  # [P, C]
    counts = member.sum(0)
    centroids = (member.T @ positions) / jnp.maximum(counts, 1.0)[:, None]
    within = (neuron * ((positions - centroids[group]) ** 2).sum(1)).sum()
    energy = within
    if anchor_weight:  # anchors are the last n_classes particles, in class order
        anchors = positions[-n_classes:]
        energy = energy + anchor_weight * (neuron * ((positions - anchors[group]) ** 2).sum(1)).sum()
    return strength * energy / 2


def centering_energy(positions, strength):
    """A weak spring from every particle to the origin: sum_i |x_i|^2 / 2."""
    return strength * (positions**2).sum() / 2


def layer_plane_energy(positions, targets, shape, strength):
    """Each particle toward its layer's plane z = t_l (plane) or sphere |x| = t_l (shell)."""
    if shape == "shell":
        gap = jnp.sqrt((positions**2).sum(1) + 1e-12) - targets
    else:
        gap = positions[:, 2] - targets
    return strength * (gap**2).sum() / 2


def layer_targets(layer: np.ndarray, shape: str, spacing: float) -> np.ndarray:
    """Plane heights centred on 0, or shell radii spacing, 2 x spacing, ...; one per particle."""
    levels = layer.max() + 1
    if shape == "shell":
        return (spacing * (layer + 1)).astype(np.float32)
    return (spacing * (layer - (levels - 1) / 2)).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Binding


def rest_statistics(vectors: np.ndarray, include: np.ndarray, weighting: str) -> tuple[float, float]:
    """(1 / mean output-vector distance, mean pair weight at that scale) over included pairs."""
    v, inc = jnp.asarray(vectors), jnp.asarray(include)
    mask = lambda rows, cols: rows[1][:, None] & cols[1][None, :]  # noqa: E731
    n_pairs = float(inc.sum()) * (float(inc.sum()) - 1) / 2
    mean_r = float(pair_sum(lambda d2, r, c: jnp.where(mask(r, c), jnp.sqrt(d2), 0.0), v, (v, inc))) / n_pairs
    scale = 1.0 / max(mean_r, 1e-12)
    mean_w = float(pair_sum(lambda d2, r, c: jnp.where(mask(r, c), pair_weight(jnp.sqrt(d2) * scale, weighting),
                                                       0.0), v, (v, inc))) / n_pairs
    return scale, mean_w


def build_energy(particles: Particles, cfg: ForcesConfig) -> dict[str, Energy]:
    """The enabled terms (strength > 0), in a fixed order, each bound to its data."""
    terms: dict[str, Energy] = {}
    f = cfg
    if f.euclid.strength > 0:
        include = ~particles.is_anchor | (particles.anchor_mode == "free")
        scale, mean_w = rest_statistics(particles.vectors, include, f.euclid.weighting)
        terms["euclid"] = functools.partial(
            euclid_energy, vectors=jnp.asarray(particles.vectors), include=jnp.asarray(include), rest_scale=scale,
            weighting=f.euclid.weighting, weight_mean=mean_w, strength=f.euclid.strength)
    if f.dominance.strength > 0:
        terms["dominance"] = functools.partial(
            dominance_energy, group=jnp.asarray(particles.group), is_anchor=jnp.asarray(particles.is_anchor),
            n_classes=int(particles.group.max()) + 1,
            anchor_weight=f.dominance.anchor if particles.anchor_mode != "none" else 0.0,
            strength=f.dominance.strength)
    if f.repulsion.strength > 0:
        terms["repulsion"] = functools.partial(repulsion_energy, softening=f.repulsion.softening,
                                               strength=f.repulsion.strength)
    if f.centering.strength > 0:
        terms["centering"] = functools.partial(centering_energy, strength=f.centering.strength)
    if f.layer_plane.strength > 0:
        targets = layer_targets(particles.layer, f.layer_plane.shape, f.layer_plane.spacing)
        terms["layer_plane"] = functools.partial(layer_plane_energy, targets=jnp.asarray(targets),
                                                 shape=f.layer_plane.shape, strength=f.layer_plane.strength)
    return terms
