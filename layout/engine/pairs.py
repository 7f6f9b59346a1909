"""All-pairs energies: PairTerm, and its evaluation in one pass over the pairs.

A PairTerm is scale x the sum over unordered pairs of a function of the squared 3D distance and the
two particles' data (layout/forces.py defines euclid and repulsion this way). Several are evaluated
together:

- by JAX (`jax_pair_energy`, the definition): one fused loop and one matrix product per block of rows,
  all pairs at once up to ONE_BLOCK particles, tiles of TILE rows above, never an N x N x 3 array;
- by the native kernel (layout/native.py, layout/pair_forces.cc) when every term names the kernel's
  version of itself in `PairTerm.native`: each unordered pair once, on every core, about 2-3x faster.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from layout.engine.native import REST_TARGET as NATIVE_REST_TARGET
from layout.engine.native import TARGET as NATIVE_TARGET
from layout.engine.native import available, load, rest_lengths_here

TILE = 256  # rows per tile: a [TILE, P] block stays in this CPU's caches (1024 rows was ~20% slower at 10k)
ONE_BLOCK = 2048  # up to this many particles all pairs are one block; XLA then keeps the pair data that
# does not change (rest lengths, masks) from step to step instead of making it again (about 2x at 1k)


def squared_distances(a: jax.Array, columns: jax.Array) -> jax.Array:
    """|a_i - b_j|^2 for rows a [T, k] and points b given by their coordinates, columns = b.T [k, P]:
    [T, P], one broadcast per coordinate (fused by XLA into one loop, never an [T, P, k] array; the
    columns are contiguous, so every coordinate is read with unit stride)."""
    return sum((a[:, k:k + 1] - columns[k][None, :]) ** 2 for k in range(a.shape[1]))


@dataclass(frozen=True)
class PairTerm:
    """An all-pairs energy: scale x sum over unordered pairs {i, j} of pair(d2_ij, data_i, data_j).

    `pair(d2 [T, P], rows, cols, **options) -> [T, P]` gets the squared 3D distances between a tile of
    rows and all particles, the rows' entries of `data` (a tuple of per-particle arrays, particles on
    the first axis) and everyone's, with particles on the last axis (2-d data transposed, [k, P]). It
    must be elementwise in d2 and symmetric in i and j. Calling a PairTerm gives its energy. A pytree
    like Term (layout/forces.py): data, scale and rest are leaves; pair, options and native static.
    """

    pair: Callable
    data: tuple
    scale: float
    options: tuple = ()
    native: tuple = ()  # the native kernel's version of this energy: (name, value) pairs, "term" first
    rest: jax.Array | None = None  # euclid's rest lengths [P, R] for the native kernel (with_rest_lengths)
    # the same energy for given pairs (layout/engine/sampled.py), as two elementwise functions:
    # between(data_i, data_j) -> the pair's data (euclid: rest length, whether both take part), from the
    # particles' data for matched pairs (particles first); along(d2, pair_data, **options) -> each pair's energy
    between: Callable | None = None
    along: Callable | None = None

    def __call__(self, positions: jax.Array) -> jax.Array:
        return pair_energy((self,), positions)


jax.tree_util.register_dataclass(PairTerm, data_fields=["data", "scale", "rest"],
                                 meta_fields=["pair", "options", "native", "between", "along"])


def pair_energy(terms: tuple[PairTerm, ...], positions: jax.Array, tile: int = TILE,
                one_block: int = ONE_BLOCK, native: bool | None = None) -> jax.Array:
    """The summed energy of several pair terms, evaluated together in one pass over the pairs."""
    return pair_energy_function(terms, tile, one_block, native)(positions)


def pair_energy_function(terms: tuple[PairTerm, ...], tile: int = TILE, one_block: int = ONE_BLOCK,
                         native: bool | None = None) -> Callable[[jax.Array], jax.Array]:
    """positions -> pair_energy(terms, positions): by the native kernel (layout/native.py) where it
    can (`native` None: when it is available), else by JAX. What does not change from call to call
    (the kernel's rest lengths) is made here, once: make this outside a loop of steps."""
    if runs_native(terms, native):
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


REST_ROW = 1024  # the kernel's rest-length rows are padded to a multiple of this (pair_forces.cc: rest_stride)


HERE_MAX = 4096  # up to this many particles, one system's rest lengths are made without XLA (rest_lengths)


def rest_lengths(vectors: jax.Array) -> jax.Array:
    """[..., P, C] -> [..., P, R]: |v_i - v_j| for i < j (0 elsewhere), rows padded to R, a multiple of
    REST_ROW, for the native kernel, which makes them (XLA's own code takes 0.4 s at P = 10,000). One
    system of up to HERE_MAX particles, given as an array, is made on this thread (at P = 1,000, 4 ms
    instead of the 20-40 ms a new process spends compiling the program that makes them); others by
    that program, on every core."""
    if isinstance(vectors, jax.core.Tracer) or vectors.ndim != 2 or vectors.shape[0] > HERE_MAX:
        return _rest_lengths_program(vectors)
    v = np.ascontiguousarray(vectors, np.float32)
    n = v.shape[0]
    row = -(-n // REST_ROW) * REST_ROW
    buffer = np.empty(n * row + 16, np.float32)  # aligned to 64 bytes, like XLA's buffers
    out = buffer[(-buffer.ctypes.data // 4) % 16:][: n * row].reshape(n, row)
    rest_lengths_here(v, out)
    return jax.device_put(out)


@jax.jit
def _rest_lengths_program(vectors: jax.Array) -> jax.Array:
    n = vectors.shape[-2]
    row = -(-n // REST_ROW) * REST_ROW
    return jax.ffi.ffi_call(NATIVE_REST_TARGET, jax.ShapeDtypeStruct(vectors.shape[:-1] + (row,), jnp.float32),
                            vmap_method="broadcast_all")(vectors.astype(jnp.float32))


def with_rest_lengths(terms: tuple, native: bool) -> tuple:
    """The terms, the euclid PairTerm carrying its rest lengths when the native kernel will run it:
    made once per simulation instead of once per compiled chunk of steps (a fresh [P, P] array, 400 MB
    at P = 10,000, costs more than the steps of a chunk)."""
    pairs = tuple(t for t in terms if isinstance(t, PairTerm))
    if not (pairs and runs_native(pairs, bool(native))):
        return terms
    return tuple(dataclasses.replace(t, rest=rest_lengths(t.data[0])) if native_name(t) == "euclid" else t
                 for t in terms)


def with_gradient(forward: Callable, value: Callable | None = None) -> Callable:
    """x -> energy whose derivative is the gradient that forward(x) -> (energy, gradient) computes
    with it (value(x): the energy alone, where that is cheaper than forward)."""
    energy = jax.custom_vjp(value or (lambda x: forward(x)[0]))
    energy.defvjp(forward, lambda grads, cotangent: (cotangent * grads,))
    return energy


def native_name(term) -> str | None:
    """The native kernel's name for this term's energy, if it has one."""
    return dict(term.native).get("term") if isinstance(term, PairTerm) else None


def runs_native(terms: tuple[PairTerm, ...], native: bool | None) -> bool:
    """Whether the native kernel evaluates these terms: never with `native` False; with None, when it
    is available; with True, whenever it can be loaded (even if NEURON_LAYOUT_NATIVE turns it off)."""
    if native is False or not native_kernel_fits(terms):
        return False
    return available() if native is None else load() is None


def native_kernel_fits(terms: tuple[PairTerm, ...]) -> bool:
    """Whether the native kernel computes these terms: each has a native version, each at most once."""
    names = [native_name(t) for t in terms]
    return bool(names) and None not in names and len(set(names)) == len(names)


def native_pair_energy(terms: tuple[PairTerm, ...]) -> Callable[[jax.Array], jax.Array]:
    """positions -> pair_energy by the native kernel: energy and gradient from one pass over the
    unordered pairs."""
    forward = native_pair_forward(terms)

    def summed(x):
        energies, grad = forward(x)
        return energies.sum(), grad

    return with_gradient(summed)


def native_pair_forward(terms: tuple[PairTerm, ...]) -> Callable[..., tuple[jax.Array, jax.Array]]:
    """(positions, energies=True) -> (each term's energy [len(terms)], the gradient of their sum), by
    one call of the native kernel; where `energies` (a bool, or a traced one) is False, NaN instead of
    the energies, which the kernel then does not sum (7% faster). The rest lengths [P, R] come with the
    term (with_rest_lengths) or are made here, once, from the output vectors."""
    euclid, scales, attributes, order = native_settings(terms)
    if euclid is not None:
        rest = rest_lengths(euclid.data[0]) if euclid.rest is None else euclid.rest
        include = euclid.data[1].astype(bool)

    def forward(x, energies=True):
        n = x.shape[0]
        call = jax.ffi.ffi_call(
            NATIVE_TARGET, (jax.ShapeDtypeStruct((2,), jnp.float32), jax.ShapeDtypeStruct((n, 3), jnp.float32)),
            vmap_method="broadcast_all")
        wanted = jnp.asarray(energies, bool)
        if euclid is None:  # unread by the kernel
            arrays = (jnp.zeros((1, 1)), jnp.zeros(n, bool))
        else:
            arrays = (rest, include)
        values, grad = call(x.astype(jnp.float32), *arrays, scales, wanted, **attributes)
        return values[order], grad

    return forward


def native_settings(terms: tuple[PairTerm, ...]) -> tuple[PairTerm | None, jax.Array, dict, jax.Array]:
    """What the native kernels (pair_forces.cc: PairForces, SampledForces) are told about these terms:
    (the euclid term or None, the scales [2] (euclid's, repulsion's), the attributes, each term's place
    in the kernels' order (euclid, repulsion))."""
    by_name = {native_name(t): t for t in terms}
    euclid, repulsion = by_name.get("euclid"), by_name.get("repulsion")
    e, r = dict(euclid.native if euclid else ()), dict(repulsion.native if repulsion else ())
    scales = jnp.stack([jnp.float32(0.0) if t is None else jnp.asarray(t.scale, jnp.float32)
                        for t in (euclid, repulsion)])
    attributes = dict(
        weighting=np.int32(e.get("weighting", 0)), euclid=euclid is not None, repulsion=repulsion is not None,
        softening=np.float32(r.get("softening", 1.0)), euclid_softening=np.float32(e.get("softening", 1.0)),
        distance_floor=np.float32(e.get("floor", 1.0)))
    order = jnp.asarray([("euclid", "repulsion").index(native_name(t)) for t in terms])
    return euclid, scales, attributes, order


def pair_step_function(terms: tuple[PairTerm, ...], native: bool | None = None
                       ) -> Callable[[jax.Array, jax.Array], tuple[jax.Array, jax.Array]]:
    """(positions, measure) -> (each term's energy where `measure` (traced), else NaN; the gradient of
    their sum): a simulation step, which records the energies on a frame's first step only. One call
    of the native kernel, told at run time whether to sum them; in JAX, the energies' separate passes
    in a conditional (the gradient outside it, where XLA keeps what does not change from step to step
    out of the loop: 3x faster at N = 1,000 than with it inside)."""
    if runs_native(terms, native):
        return native_pair_forward(terms)
    gradient = jax.grad(pair_energy_function(terms, native=False))
    unmeasured = lambda x: jnp.full(len(terms), jnp.nan, x.dtype)  # noqa: E731
    return lambda x, measure: (jax.lax.cond(measure, jax_pair_energies(terms), unmeasured, x), gradient(x))


def jax_pair_energies(terms: tuple[PairTerm, ...]) -> Callable[[jax.Array], jax.Array]:
    """positions -> each term's energy [len(terms)], in JAX."""
    return lambda x: jnp.stack([jax_pair_energy((t,), x) for t in terms])


def pair_energies_function(terms: tuple[PairTerm, ...], native: bool | None = None
                           ) -> Callable[[jax.Array], tuple[jax.Array, jax.Array]]:
    """positions -> (each term's energy [len(terms)], the gradient of their sum): what a frame of the
    simulation records and the step after it needs, from one pass of the native kernel where it can
    (`native` as in pair_energy_function); in JAX, each energy and the gradient are separate passes."""
    if runs_native(terms, native):
        return native_pair_forward(terms)
    energies, gradient = jax_pair_energies(terms), jax.grad(pair_energy_function(terms, native=False))
    return lambda x: (energies(x), gradient(x))


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
