"""Forces as energies: each term a pure function `energy(positions [P, 3]) -> scalar`.

`build_energy` binds every enabled term to its data (a Term or PairTerm); the simulation sums them
and moves particles along `-jax.grad(total)`. The particles (layout/engine/particles.py) are the N
hidden neurons followed by the C output anchors (when anchors are on). Every term is scaled so that one particle feels a force of
order one at unit strength, whatever N is, so strengths mean the same for small and large networks.

All-pairs terms (euclid, repulsion) are PairTerms (layout/pairs.py), which the simulation evaluates
together in one pass over the pairs, by the native kernel where it can.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from layout.core.config import WEIGHTINGS, ForcesConfig
from layout.engine.pairs import TILE, PairTerm, squared_distances
from layout.engine.particles import Particles

DISTANCE_FLOOR = 1e-3  # added to output-vector distances in 1/d weights, so identical vectors stay finite
EUCLID_SOFTENING = 1e-3  # 3D distances are sqrt(d^2 + this^2): smooth, finite gradients at d = 0

Energy = Callable[[jax.Array], jax.Array]


def on_device(value, dtype=None) -> jax.Array:
    """A term's data as a JAX array, placed without compiling anything (jnp.asarray and jnp.float32
    cost about 40 ms the first time in a process: a new process's first layout pays it)."""
    return jax.device_put(np.asarray(value, dtype))


# ---------------------------------------------------------------------------------------------
# Terms


@dataclass(frozen=True)
class Term:
    """An energy term: energy(positions) = fn(positions, *data, **options).

    A pytree: `data` (arrays and numbers) are its leaves, traced by jax.jit; `fn` and `options`
    (hashable settings) are static. So a compiled simulation is reused for new data of the same shapes
    (the training timeline's snapshots) instead of compiling again."""

    fn: Callable
    data: tuple = ()
    options: tuple = ()  # (name, value) pairs

    def __call__(self, positions: jax.Array) -> jax.Array:
        return self.fn(positions, *self.data, **dict(self.options))


jax.tree_util.register_dataclass(Term, data_fields=["data"], meta_fields=["fn", "options"])


# ---------------------------------------------------------------------------------------------
# Energy terms


def euclid_pair(d2, rows, cols, weighting):
    """w_ij (|x_i - x_j| - r_ij)^2 where r_ij is the scaled output-vector distance; 0 unless both
    particles take part. rows/cols: (scaled vectors, included)."""
    r = jnp.sqrt(squared_distances(rows[0], cols[0]))
    return euclid_spring(d2, (r, rows[1][:, None] & cols[1][None, :]), weighting)


def euclid_rest(rows, cols):
    """(rest length r_ij, whether both take part) of matched pairs: rows and cols are the two ends'
    (scaled vectors [..., C], included [...])."""
    return jnp.sqrt(((rows[0] - cols[0]) ** 2).sum(-1)), rows[1] & cols[1]


def euclid_spring(d2, rest, weighting):
    """euclid_pair's energy from the pairs' squared 3D distances and rest = (r_ij, both)."""
    r, both = rest
    d = jnp.sqrt(d2 + EUCLID_SOFTENING**2)
    return jnp.where(both, pair_weight(r, weighting) * (d - r) ** 2, 0.0)


def euclid_term(vectors, include, weighting, strength) -> PairTerm:
    """Metric stress: springs with rest length proportional to the output-vector distance.

    Vectors are scaled so that the mean rest length is 1; w is 1, 1/r or 1/r^2. The sum over pairs is
    divided by (particles taking part x mean w), so each particle feels its mean spring error.
    """
    scale, mean_w = rest_statistics(vectors, include, weighting)
    n = max(int(include.sum()), 1)
    data = (on_device(vectors * scale, np.float32), on_device(include))
    native = (("term", "euclid"), ("weighting", WEIGHTINGS.index(weighting)), ("softening", EUCLID_SOFTENING),
              ("floor", DISTANCE_FLOOR))
    per_pair = on_device(strength / (n * mean_w), np.float32)
    return PairTerm(euclid_pair, data, per_pair, (("weighting", weighting),), native,
                    between=euclid_rest, along=euclid_spring)


def pair_weight(r, weighting: str):
    """1, 1/r or 1/r^2 (r floored), for numpy or jax arrays alike (uniform: the number 1, so that
    no [P, P] array of ones is made)."""
    if weighting == "inverse":
        return 1.0 / (r + DISTANCE_FLOOR)
    if weighting == "inverse_square":
        return 1.0 / (r + DISTANCE_FLOOR) ** 2
    return 1.0


def repulsion_pair(d2, rows, cols, softening):
    """Softened Coulomb: 1 / sqrt(d^2 + softening^2), finite when particles coincide."""
    return repulsion_charge(d2, (), softening)


def repulsion_charge(d2, rest, softening):
    """repulsion_pair for given pairs (no pair data)."""
    return jax.lax.rsqrt(d2 + softening**2)


def no_pair_data(rows, cols):
    return ()


def repulsion_term(n_particles, softening, strength) -> PairTerm:
    """All particles repel; the sum over pairs is divided by the number of particles."""
    return PairTerm(repulsion_pair, (), on_device(strength / n_particles, np.float32), (("softening", softening),),
                    (("term", "repulsion"), ("softening", softening)), between=no_pair_data, along=repulsion_charge)


def dominance_energy(positions, group, is_anchor, anchor_weight, strength, *, n_classes, use_anchors,
                     free_anchors=False):
    """Same-dominant-class neurons attract: sum_i |x_i - c_g|^2 / 2 over neurons, c_g the mean position
    of class g's neurons (equal to the sum over same-class pairs of |x_i - x_j|^2 / 2 n_g), plus
    anchor_weight x |x_i - a_g|^2 / 2, a_g the position of class g's anchor particle (if any).

    A free anchor is one particle like the others: pulled by each of its class's n_g neurons, it would
    feel n_g times the force any particle feels (no step size survives that in a large network: 300
    neurons blew up within 30 steps). So a free anchor and its class's centre attract as two bodies,
    anchor_weight x |c_g - a_g|^2 / 2 in place of n_g times that: the same resting place, the anchor at
    its class's centre, reached stably."""
    neuron = (~is_anchor).astype(positions.dtype)
    # per class: the sum of its neurons' positions and their count, in one segment sum (a [P, C] one-hot
    # matrix product and its transpose cost XLA 5x more per step)
    sums = jax.ops.segment_sum(jnp.concatenate([positions, jnp.ones_like(positions[:, :1])], 1) * neuron[:, None],
                               group, n_classes)
    counts = sums[:, 3]
    centroids = sums[:, :3] / jnp.maximum(counts, 1.0)[:, None]
    # c_g minimises the spread sum |x_i - c|^2 of its class, so the spread's gradient is the same with c_g
    # held fixed (its own derivative is sum_i (x_i - c_g) = 0): no gradient flows back through c_g
    spread = (neuron * ((positions - jax.lax.stop_gradient(centroids)[group]) ** 2).sum(1)).sum()
    energy = spread
    if use_anchors:  # anchors are the last n_classes particles, in class order
        # sum_i |x_i - a_g|^2 = spread + n_g |c_g - a_g|^2 (the parallel-axis theorem)
        anchors = positions[-n_classes:]
        bodies = jnp.minimum(counts, 1.0) if free_anchors else counts  # a class without neurons pulls nothing
        energy = (1 + anchor_weight) * spread + anchor_weight * (bodies * ((centroids - anchors) ** 2).sum(1)).sum()
    return strength * energy / 2


def centering_energy(positions, strength):
    """A weak spring from every particle to the origin: sum_i |x_i|^2 / 2."""
    return strength * (positions**2).sum() / 2


def layer_plane_energy(positions, targets, strength, *, shape):
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


EXACT_STATISTICS = 10_000  # above this many particles, rest_statistics samples SAMPLED_PAIRS pairs
SAMPLED_PAIRS = 2_000_000  # (the mean distance to within about 0.1%; all pairs at 100,000 took 26 s)


def rest_statistics(vectors: np.ndarray, include: np.ndarray, weighting: str) -> tuple[float, float]:
    """(1 / mean output-vector distance, mean pair weight at that scale) over included pairs; numpy,
    once, in blocks of rows so that memory stays O(TILE x N); above EXACT_STATISTICS particles from
    SAMPLED_PAIRS random pairs (seeded: the same vectors give the same figures)."""
    v = np.asarray(vectors, np.float64)[include]
    n = len(v)
    if n < 2:
        return 1.0, 1.0
    if n > EXACT_STATISTICS:
        return sampled_rest_statistics(v, weighting)
    norms = (v * v).sum(1)

    def mean_over_pairs(value) -> float:
        """The mean of value(distance) over the pairs i < j: each tile of rows against the columns
        from its first row on (half the products of all pairs)."""
        total = 0.0
        for start in range(0, n, TILE):
            rows = v[start:start + TILE]  # |a - b|^2 = |a|^2 + |b|^2 - 2 a.b, in float64
            d2 = rows @ v[start:].T
            d2 *= -2
            d2 += norms[start:start + TILE, None]
            d2 += norms[None, start:]
            d = np.sqrt(np.maximum(d2, 0.0, out=d2), out=d2)
            values = np.broadcast_to(value(d), d.shape)
            total += float(values[:, len(rows):].sum()) + float(np.triu(values[:, :len(rows)], 1).sum())
        return total / (n * (n - 1) / 2)

    scale = 1.0 / max(mean_over_pairs(lambda d: d), 1e-12)
    if weighting == "uniform":  # every weight is 1
        return scale, 1.0
    return scale, mean_over_pairs(lambda d: pair_weight(d * scale, weighting))


def sampled_rest_statistics(v: np.ndarray, weighting: str) -> tuple[float, float]:
    """rest_statistics from SAMPLED_PAIRS uniform random pairs i != j of the rows of v."""
    rng = np.random.default_rng(0)
    i = rng.integers(0, len(v), SAMPLED_PAIRS)
    j = (i + rng.integers(1, len(v), SAMPLED_PAIRS)) % len(v)
    d = np.sqrt(((v[i] - v[j]) ** 2).sum(1))
    scale = 1.0 / max(float(d.mean()), 1e-12)
    return scale, 1.0 if weighting == "uniform" else float(np.mean(pair_weight(d * scale, weighting)))


def build_energy(particles: Particles, cfg: ForcesConfig) -> dict[str, Energy]:
    """The enabled terms (strength > 0), in a fixed order, each bound to its data."""
    terms: dict[str, Energy] = {}
    f = cfg
    if f.euclid.strength > 0:
        include = ~particles.is_anchor | (particles.anchor_mode == "free")
        terms["euclid"] = euclid_term(particles.vectors, include, f.euclid.weighting, f.euclid.strength)
    if f.dominance.strength > 0:
        use_anchors = particles.anchor_mode != "none" and f.dominance.anchor > 0
        terms["dominance"] = Term(
            dominance_energy,
            (on_device(particles.group), on_device(particles.is_anchor), on_device(f.dominance.anchor, np.float32),
             on_device(f.dominance.strength, np.float32)),
            (("n_classes", particles.vectors.shape[1]), ("use_anchors", use_anchors),
             ("free_anchors", particles.anchor_mode == "free")))
    if f.repulsion.strength > 0:
        terms["repulsion"] = repulsion_term(particles.n_particles, f.repulsion.softening, f.repulsion.strength)
    if f.centering.strength > 0:
        terms["centering"] = Term(centering_energy, (on_device(f.centering.strength, np.float32),))
    if f.layer_plane.strength > 0:
        targets = layer_targets(particles.layer, f.layer_plane.shape, f.layer_plane.spacing)
        terms["layer_plane"] = Term(layer_plane_energy,
                                    (on_device(targets), on_device(f.layer_plane.strength, np.float32)),
                                    (("shape", f.layer_plane.shape),))
    return terms
