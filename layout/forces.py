"""Forces as energies: each term a pure function `energy(positions [P, 3]) -> scalar`.

`build_energy` binds every enabled term to its data (a Term or PairTerm); the simulation sums them
and moves particles along `-jax.grad(total)`. The particles are the N hidden neurons followed by the
C output anchors (when anchors are on). Every term is scaled so that one particle feels a force of
order one at unit strength, whatever N is, so strengths mean the same for small and large networks.

All-pairs terms (euclid, repulsion) are PairTerms: the simulation evaluates them together, one pass
over row tiles of TILE rows above ONE_BLOCK particles, and never builds an N x N x 3 array (nor N x N
above ONE_BLOCK).
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from layout.config import WEIGHTINGS, AnchorsConfig, ForcesConfig
from layout.features import NeuronFeatures
from layout.native import REST_TARGET as NATIVE_REST_TARGET
from layout.native import TARGET as NATIVE_TARGET
from layout.native import available

TILE = 256  # rows per tile: a [TILE, P] block stays in this CPU's caches (1024 rows was ~20% slower at 10k)
ONE_BLOCK = 2048  # up to this many particles all pairs are one block; XLA then keeps the pair data that
# does not change (rest lengths, masks) from step to step instead of making it again (about 2x at 1k)
DISTANCE_FLOOR = 1e-3  # added to output-vector distances in 1/d weights, so identical vectors stay finite
EUCLID_SOFTENING = 1e-3  # 3D distances are sqrt(d^2 + this^2): smooth, finite gradients at d = 0

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
# All-pairs terms


def squared_distances(a: jax.Array, columns: jax.Array) -> jax.Array:
    """|a_i - b_j|^2 for rows a [T, k] and points b given by their coordinates, columns = b.T [k, P]:
    [T, P], one broadcast per coordinate (fused by XLA into one loop, never an [T, P, k] array; the
    columns are contiguous, so every coordinate is read with unit stride)."""
    return sum((a[:, k:k + 1] - columns[k][None, :]) ** 2 for k in range(a.shape[1]))


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


@dataclass(frozen=True)
class PairTerm:
    """An all-pairs energy: scale x sum over unordered pairs {i, j} of pair(d2_ij, data_i, data_j).

    `pair(d2 [T, P], rows, cols, **options) -> [T, P]` gets the squared 3D distances between a tile of
    rows and all particles, the rows' entries of `data` (a tuple of per-particle arrays, particles on
    the first axis) and everyone's, with particles on the last axis (2-d data transposed, [k, P]). It
    must be elementwise in d2 and symmetric in i and j. Calling a PairTerm gives its energy. A pytree
    like Term: data and scale are leaves, pair and options static.
    """

    pair: Callable
    data: tuple
    scale: float
    options: tuple = ()
    rest: jax.Array | None = None  # euclid's rest lengths [P, P] for the native kernel (with_rest_lengths)

    def __call__(self, positions: jax.Array) -> jax.Array:
        return pair_energy((self,), positions)


jax.tree_util.register_dataclass(Term, data_fields=["data"], meta_fields=["fn", "options"])
jax.tree_util.register_dataclass(PairTerm, data_fields=["data", "scale", "rest"], meta_fields=["pair", "options"])


def pair_energy(terms: tuple[PairTerm, ...], positions: jax.Array, tile: int = TILE,
                one_block: int = ONE_BLOCK, native: bool | None = None) -> jax.Array:
    """The summed energy of several pair terms, evaluated together in one pass over the pairs."""
    return pair_energy_function(terms, tile, one_block, native)(positions)


def pair_energy_function(terms: tuple[PairTerm, ...], tile: int = TILE, one_block: int = ONE_BLOCK,
                         native: bool | None = None) -> Callable[[jax.Array], jax.Array]:
    """positions -> pair_energy(terms, positions): by the native kernel (layout/native.py) where it
    can (`native` None: when it is available), else by JAX. What does not change from call to call
    (the kernel's rest lengths) is made here, once: make this outside a loop of steps."""
    if native is not False and native_kernel_fits(terms) and (native or available()):
        return native_pair_energy(terms)
    return functools.partial(jax_pair_energy, terms, tile=tile, one_block=one_block)


def jax_pair_energy(terms: tuple[PairTerm, ...], positions: jax.Array, tile: int = TILE,
                    one_block: int = ONE_BLOCK) -> jax.Array:
    """pair_energy in JAX: the definition, and the fallback for the native kernel.

    Its gradient is jax's derivative of the pair functions with respect to d2, reduced without ever
    materialising more than one [tile, P] block: dE/dx_i = 2 sum_j e'(d2_ij) (x_i - x_j)
    = 2 (x_i rowsum(G) - G x), one matrix product per tile.
    """
    def pair(d2, rows, cols):
        return sum(t.scale * t.pair(d2, r, c, **dict(t.options)) for t, r, c in zip(terms, rows, cols))

    data = tuple(t.data for t in terms)
    # everyone's data with particles on the last axis, made once, outside the tile loop
    cols = jax.tree.map(lambda a: a.T if a.ndim == 2 else a, data)

    def value(x):
        xt = x.T
        return _tiled(lambda rows, ids: _block_energy(pair, cols, xt, rows, ids), x.shape[0], tile,
                      (x, data), one_block).sum() / 2

    def forward(x):  # energy and gradient from the same pass over the pairs
        xt = x.T
        partial, grads = _tiled(lambda rows, ids: _block_gradient(pair, cols, xt, rows, ids), x.shape[0], tile,
                                (x, data), one_block)
        return partial.sum() / 2, grads.reshape(-1, 3)[: x.shape[0]]

    return with_gradient(forward, value)(positions)


@jax.jit
def rest_lengths(vectors: jax.Array) -> jax.Array:
    """[..., P, C] -> [..., P, P]: |v_i - v_j| for i < j (0 elsewhere), by the native kernel (XLA's
    own code takes 0.4 s at P = 10,000)."""
    n = vectors.shape[-2]
    return jax.ffi.ffi_call(NATIVE_REST_TARGET, jax.ShapeDtypeStruct(vectors.shape[:-1] + (n,), jnp.float32),
                            vmap_method="broadcast_all")(vectors.astype(jnp.float32))


def with_rest_lengths(terms: tuple, native: bool) -> tuple:
    """The terms, the euclid PairTerm carrying its rest lengths when the native kernel will run it:
    made once per simulation instead of once per compiled chunk of steps (a fresh [P, P] array, 400 MB
    at P = 10,000, costs more than the steps of a chunk)."""
    pairs = tuple(t for t in terms if isinstance(t, PairTerm))
    if not (native and pairs and native_kernel_fits(pairs)):
        return terms
    return tuple(dataclasses.replace(t, rest=rest_lengths(t.data[0]))
                 if isinstance(t, PairTerm) and t.pair is euclid_pair else t for t in terms)


def with_gradient(forward: Callable, value: Callable | None = None) -> Callable:
    """x -> energy whose derivative is the gradient that forward(x) -> (energy, gradient) computes
    with it (value(x): the energy alone, where that is cheaper than forward)."""
    energy = jax.custom_vjp(value or (lambda x: forward(x)[0]))
    energy.defvjp(forward, lambda grads, cotangent: (cotangent * grads,))
    return energy


def native_kernel_fits(terms: tuple[PairTerm, ...]) -> bool:
    """Whether the native kernel computes these terms: euclid and repulsion, each at most once."""
    pairs = [t.pair for t in terms]
    return bool(pairs) and set(pairs) <= {euclid_pair, repulsion_pair} and len(set(pairs)) == len(pairs)


def native_pair_energy(terms: tuple[PairTerm, ...]) -> Callable[[jax.Array], jax.Array]:
    """positions -> pair_energy by the native kernel: energy and gradient from one pass over the
    unordered pairs. The rest lengths [P, P] are made here, once, from the output vectors."""
    by_pair = {t.pair: t for t in terms}
    euclid, repulsion = by_pair.get(euclid_pair), by_pair.get(repulsion_pair)
    if euclid is not None:
        rest = rest_lengths(euclid.data[0]) if euclid.rest is None else euclid.rest
        include = euclid.data[1].astype(jnp.float32)
    scales = jnp.stack([jnp.float32(0.0) if t is None else jnp.asarray(t.scale, jnp.float32)
                        for t in (euclid, repulsion)])
    attributes = dict(
        weighting=np.int32(WEIGHTINGS.index(dict(euclid.options)["weighting"]) if euclid else 0),
        euclid=euclid is not None, repulsion=repulsion is not None,
        softening=np.float32(dict(repulsion.options)["softening"] if repulsion else 1.0),
        euclid_softening=np.float32(EUCLID_SOFTENING), distance_floor=np.float32(DISTANCE_FLOOR))

    def forward(x):
        n = x.shape[0]
        call = jax.ffi.ffi_call(
            NATIVE_TARGET, (jax.ShapeDtypeStruct((), jnp.float32), jax.ShapeDtypeStruct((n, 3), jnp.float32)),
            vmap_method="broadcast_all")
        if euclid is None:  # unread by the kernel
            return call(x.astype(jnp.float32), jnp.zeros((1, 1)), jnp.zeros(n), scales, **attributes)
        return call(x.astype(jnp.float32), rest, include, scales, **attributes)

    return with_gradient(forward)


def _tiled(fn: Callable, n: int, tile: int, arrays: tuple, one_block: int) -> jax.Array:
    """fn(rows, row_ids) over row tiles of at most `tile` rows, where rows holds each of `arrays`
    sliced to the tile (the last tile padded with copies of the last row; its ids run past n); all
    rows at once when n <= one_block."""
    if n <= max(tile, one_block):
        return fn(arrays, jnp.arange(n))
    n_tiles = -(-n // tile)
    padded = jax.tree.map(lambda a: jnp.concatenate([a, jnp.repeat(a[-1:], n_tiles * tile - n, axis=0)]), arrays)

    def one(i):
        return fn(jax.tree.map(lambda a: jax.lax.dynamic_slice_in_dim(a, i * tile, tile), padded),
                  i * tile + jnp.arange(tile))

    return jax.lax.map(one, jnp.arange(n_tiles))


def _pair_mask(row_ids: jax.Array, n: int) -> jax.Array:
    """[T, P]: False on the diagonal and on padding rows."""
    return (row_ids[:, None] != jnp.arange(n)[None, :]) & (row_ids < n)[:, None]


def _block_energy(pair, cols, xt, rows, row_ids):
    """The pair energies of one tile of rows (rows = (their positions, their data)), summed; xt is
    every position, transposed [3, P]."""
    xr, dr = rows
    d2 = squared_distances(xr, xt)
    return jnp.where(_pair_mask(row_ids, xt.shape[1]), pair(d2, dr, cols), 0.0).sum()


def _block_gradient(pair, cols, xt, rows, row_ids):
    """(summed pair energies, their gradient with respect to the rows' positions) for one tile."""
    xr, dr = rows
    d2 = squared_distances(xr, xt)
    ones = jnp.ones_like(d2)
    values, slope = jax.jvp(lambda d: pair(d, dr, cols), (d2,), (ones,))  # e and de / d(d2)
    keep = _pair_mask(row_ids, xt.shape[1])
    slope = jnp.where(keep, slope, 0.0)
    sums = slope @ jnp.concatenate([xt.T, jnp.ones((xt.shape[1], 1), xt.dtype)], 1)  # [T, 4]: G x, rowsum G
    return jnp.where(keep, values, 0.0).sum(), 2 * (xr * sums[:, 3:] - sums[:, :3])


# ---------------------------------------------------------------------------------------------
# Energy terms


def euclid_pair(d2, rows, cols, weighting):
    """w_ij (|x_i - x_j| - r_ij)^2 where r_ij is the scaled output-vector distance; 0 unless both
    particles take part. rows/cols: (scaled vectors, included)."""
    r = jnp.sqrt(squared_distances(rows[0], cols[0]))
    d = jnp.sqrt(d2 + EUCLID_SOFTENING**2)
    both = rows[1][:, None] & cols[1][None, :]
    return jnp.where(both, pair_weight(r, weighting) * (d - r) ** 2, 0.0)


def euclid_term(vectors, include, weighting, strength) -> PairTerm:
    """Metric stress: springs with rest length proportional to the output-vector distance.

    Vectors are scaled so that the mean rest length is 1; w is 1, 1/r or 1/r^2. The sum over pairs is
    divided by (particles taking part x mean w), so each particle feels its mean spring error.
    """
    scale, mean_w = rest_statistics(vectors, include, weighting)
    n = max(int(include.sum()), 1)
    data = (jnp.asarray(vectors * scale, jnp.float32), jnp.asarray(include))
    return PairTerm(euclid_pair, data, jnp.float32(strength / (n * mean_w)), (("weighting", weighting),))


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
    return jax.lax.rsqrt(d2 + softening**2)


def repulsion_term(n_particles, softening, strength) -> PairTerm:
    """All particles repel; the sum over pairs is divided by the number of particles."""
    return PairTerm(repulsion_pair, (), jnp.float32(strength / n_particles), (("softening", softening),))


def dominance_energy(positions, group, is_anchor, anchor_weight, strength, *, n_classes, use_anchors):
    """Same-dominant-class neurons attract: sum_i |x_i - c_g|^2 / 2 over neurons, c_g the mean position
    of class g's neurons (equal to the sum over same-class pairs of |x_i - x_j|^2 / 2 n_g), plus
    anchor_weight x |x_i - a_g|^2 / 2, a_g the position of class g's anchor particle (if any)."""
    neuron = (~is_anchor).astype(positions.dtype)
    member = jax.nn.one_hot(group, n_classes, dtype=positions.dtype) * neuron[:, None]  # [P, C]
    counts = member.sum(0)
    centroids = (member.T @ positions) / jnp.maximum(counts, 1.0)[:, None]
    within = (neuron * ((positions - centroids[group]) ** 2).sum(1)).sum()
    energy = within
    if use_anchors:  # anchors are the last n_classes particles, in class order
        anchors = positions[-n_classes:]
        energy = energy + anchor_weight * (neuron * ((positions - anchors[group]) ** 2).sum(1)).sum()
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


def rest_statistics(vectors: np.ndarray, include: np.ndarray, weighting: str) -> tuple[float, float]:
    """(1 / mean output-vector distance, mean pair weight at that scale) over included pairs; numpy,
    once, in blocks of rows so that memory stays O(TILE x N)."""
    from scipy.spatial.distance import cdist

    v = np.asarray(vectors, np.float64)[include]
    n = len(v)
    if n < 2:
        return 1.0, 1.0

    def mean_over_pairs(value) -> float:
        total = 0.0
        for start in range(0, n, TILE):
            d = cdist(v[start:start + TILE], v)
            off = np.arange(n)[None, :] != np.arange(start, start + len(d))[:, None]
            total += float(np.broadcast_to(value(d), d.shape)[off].sum())
        return total / (n * (n - 1))

    scale = 1.0 / max(mean_over_pairs(lambda d: d), 1e-12)
    return scale, mean_over_pairs(lambda d: pair_weight(d * scale, weighting))


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
            (jnp.asarray(particles.group), jnp.asarray(particles.is_anchor), jnp.float32(f.dominance.anchor),
             jnp.float32(f.dominance.strength)),
            (("n_classes", particles.vectors.shape[1]), ("use_anchors", use_anchors)))
    if f.repulsion.strength > 0:
        terms["repulsion"] = repulsion_term(particles.n_particles, f.repulsion.softening, f.repulsion.strength)
    if f.centering.strength > 0:
        terms["centering"] = Term(centering_energy, (jnp.float32(f.centering.strength),))
    if f.layer_plane.strength > 0:
        targets = layer_targets(particles.layer, f.layer_plane.shape, f.layer_plane.spacing)
        terms["layer_plane"] = Term(layer_plane_energy, (jnp.asarray(targets), jnp.float32(f.layer_plane.strength)),
                                    (("shape", f.layer_plane.shape),))
    return terms
