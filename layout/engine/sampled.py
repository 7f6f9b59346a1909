"""Sampled pair terms: the all-pairs energies (euclid, repulsion) of a large network estimated each step
from O(P) pairs instead of P^2 / 2.

Each particle's pairs fall in two groups:
- its k nearest neighbours by output vector (layout/engine/neighbours.py), fixed for the run, their
  rest lengths made once: every such pair is summed exactly (a pair that is a neighbour both ways
  counts once: each of its two entries weighs 1/2);
- every other pair, estimated from `partners` fresh random partners per particle and step: the
  particles are put in a fixed random order and each step draws `partners` shifts s in 1..P-1 from the
  step's key, pairing the particle at place a with the one at place a + s (mod P). Each such pair is
  a uniform draw from a particle's P - 1 others, so (P - 1) / (2 partners) x the sum over the drawn pairs
  that are not neighbour pairs is an unbiased estimate of the sum over all the others.

So the estimate's mean over keys is the exact energy, and its gradient's mean the exact gradient
(tests/test_scale.py checks both). The gradient is JAX's: jax.grad of the neighbour pairs' energy, and
for the shifted pairs the derivative of each pair's energy with respect to its squared distance
(jax.jvp, as pairs.jax_pair_energy) added to both ends; it runs inside the simulation's compiled chunk
of steps. Same key, same trajectory: the order and the shifts come from the key. A step costs
O(P (k + partners)); a shift's partners are a contiguous slice of arrays stored three times over, not
a gather. Three ways to run the same step: the native kernel (pair_forces.cc: SampledForces, on one
CPU device), the JAX definition on one device, or sharded over several (sharded_forward).
Measured (benchmarks/scale.py, FACTS.md): fresh partners reach the exact layout's stress within 1%,
where a fixed subset of as many partners reaches 1.18x.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from layout.core.errors import UserError
from layout.engine.native import SAMPLED_TARGET
from layout.engine.neighbours import nearest_neighbours
from layout.engine.pairs import PairTerm, native_settings, runs_native, with_gradient

SAMPLED_ABOVE = 20_000  # layout.sim.pairs: auto samples above this many particles (see benchmarks/scale.py)


HITS = 64  # neighbour pairs a shift can meet per side: their number is Poisson with mean k (16), so 64
# are exceeded with probability below 1e-18 per shift


@dataclass(frozen=True)
class Sampling:
    """Which pairs a sampled step visits, for P particles and k neighbours each.

    neighbours [P, k] int32: each particle's nearest by output vector; weight [P, k] float32: 1, or 1/2
    for a pair that is a neighbour both ways; order [P] int32: the particles in a fixed random order, in
    which a shift pairs places a and a + s; hit_shift, hit_place [2 P k] int32: every neighbour pair
    seen from either end, as the shift s at which place a meets it (sorted by shift) and a, so that a
    step finds the neighbour pairs its shifts meet by binary search; key: the key data the step keys
    fold from; partners: shifts per step (static); native: the native kernel's own inputs (see
    native_arrays), where it runs these terms, else None."""

    neighbours: jax.Array
    weight: jax.Array
    order: jax.Array
    hit_shift: jax.Array
    hit_place: jax.Array
    key: jax.Array
    partners: int
    native: tuple | None = None
    devices: int = 1  # the particles are spread over this many of JAX's devices (sharded_forward)


jax.tree_util.register_dataclass(Sampling, data_fields=["neighbours", "weight", "order", "hit_shift", "hit_place",
                                                        "key", "native"], meta_fields=["partners", "devices"])


@dataclass(frozen=True)
class SampledTerm:
    """A PairTerm estimated by sampling: `near` holds the pair data (PairTerm.between) of every
    (i, neighbours[i, q]), [P, k] each. Calling it gives the estimate at step 0."""

    term: PairTerm
    near: tuple
    sampling: Sampling

    def __call__(self, positions: jax.Array, step: jax.Array | int = 0) -> jax.Array:
        return sampled_energy((self,), positions, step)


jax.tree_util.register_dataclass(SampledTerm, data_fields=["term", "near", "sampling"], meta_fields=[])


def neighbour_weights(neighbours: np.ndarray) -> np.ndarray:
    """[P, k]: 1/2 where the pair (i, neighbours[i, q]) is also listed from the other end, else 1."""
    n = len(neighbours)
    rows = np.repeat(np.arange(n, dtype=np.int64), neighbours.shape[1])
    forward = rows * n + neighbours.ravel()
    backward = neighbours.ravel().astype(np.int64) * n + rows
    listed = np.sort(forward)
    place = np.minimum(np.searchsorted(listed, backward), len(listed) - 1)
    mutual = listed[place] == backward
    return np.where(mutual, 0.5, 1.0).astype(np.float32).reshape(neighbours.shape)


def neighbour_hits(neighbours: np.ndarray, order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(shift, place) of every neighbour pair from both ends, sorted by shift (Sampling.hit_shift)."""
    n = len(order)
    place = np.empty(n, np.int64)
    place[order] = np.arange(n)
    a = np.repeat(place, neighbours.shape[1])
    b = place[neighbours.ravel()]
    shift = np.concatenate([(b - a) % n, (a - b) % n])
    at = np.concatenate([a, b])
    sorted_ = np.argsort(shift, kind="stable")
    return shift[sorted_].astype(np.int32), at[sorted_].astype(np.int32)


def make_sampling(vectors: np.ndarray, k: int, partners: int, seed: np.ndarray) -> Sampling:
    """The sampling of a run over particles with output vectors [P, C]; seed: the run's key data."""
    n = len(vectors)
    neighbours = nearest_neighbours(vectors, k)
    # numpy's generator, seeded by the key's bits and 1 (the starting positions' noise uses the bits alone)
    order = np.random.default_rng([*np.asarray(seed).ravel().tolist(), 1]).permutation(n).astype(np.int32)
    arrays = (neighbours, neighbour_weights(neighbours), order, *neighbour_hits(neighbours, order),
              np.asarray(seed, np.uint32))
    return Sampling(*(jax.device_put(a) for a in arrays), partners)


def sampled_term(term: PairTerm, sampling: Sampling) -> SampledTerm:
    """term, estimated with `sampling`: its pair data for the neighbour pairs made here, once."""
    rows = tuple(a[:, None] for a in term.data)
    cols = tuple(a[sampling.neighbours] for a in term.data)
    return SampledTerm(term, term.between(rows, cols), sampling)


def pair_values(terms: tuple[SampledTerm, ...], d2: jax.Array, pair_data) -> jax.Array:
    """[len(terms), ...]: each term's unscaled energy of the pairs with squared distances d2."""
    return jnp.stack([t.term.along(d2, data, **dict(t.term.options)) for t, data in zip(terms, pair_data)])


def near_energies(terms: tuple[SampledTerm, ...], x: jax.Array, block: tuple | None = None) -> jax.Array:
    """Each term's unscaled energy over the neighbour pairs (each counted once), x [P, 3]; of every
    particle, or of a block of rows: (their particle ids [B], neighbours [B, k], weights [B, k], each
    term's pair data [B, k]), as a device holds them (sharded_forward)."""
    s = terms[0].sampling
    ids, neighbours, weight, near = block or (jnp.arange(x.shape[0]), s.neighbours, s.weight, [t.near for t in terms])
    d2 = ((x[ids][:, None, :] - x[neighbours]) ** 2).sum(-1)
    return (pair_values(terms, d2, near) * weight).sum((1, 2))


def step_shifts(s: Sampling, step, n: int) -> jax.Array:
    """[partners] int32: this step's shifts, 1 .. n - 1, drawn from the step's key."""
    key = jax.random.fold_in(jax.random.wrap_key_data(s.key), step)
    return jax.random.randint(key, (s.partners,), 1, max(n, 2))


def met_neighbours(s: Sampling, shifts: jax.Array) -> tuple[jax.Array, jax.Array]:
    """For each shift, the places (up to HITS per side) whose pair at that shift is a neighbour pair:
    (places [m, 2 HITS], whether each is one [m, 2 HITS])."""
    first = jnp.searchsorted(s.hit_shift, shifts)
    at = jnp.minimum(first[:, None] + jnp.arange(2 * HITS)[None, :], s.hit_shift.shape[0] - 1)
    return s.hit_place[at], s.hit_shift[at] == shifts[:, None]


def far_pass(terms: tuple[SampledTerm, ...], x: jax.Array, step, lo=0, rows: int | None = None
             ) -> tuple[jax.Array, jax.Array]:
    """(each term's unscaled estimate over the non-neighbour pairs, the gradient [P, 3] of the scaled
    estimates' sum) on this step, of the pairs (a, a + s) whose first end is one of the places lo ..
    lo + rows - 1 (default: all; places past P count nothing): per shift, one pass over them, their
    partners a contiguous slice of the arrays stored three times over. Positions coordinates first,
    [3, P]: XLA's loops then run along the particles (6 vs 7 ms a step at P = 100,000); the particles'
    data particles first, [P, C] (25 vs 210 ms). The gradient of each pair's energy comes from JAX's
    derivative with respect to its squared distance (as pairs.jax_pair_energy), added to both ends."""
    s = terms[0].sampling
    n = x.shape[0]
    rows = n if rows is None else rows
    thrice = lambda a, axis: jnp.concatenate([a, a, a], axis)  # noqa: E731
    xt = thrice(x[s.order].T, 1)  # [3, 3P] in place order
    data = [tuple(thrice(a[s.order], 0) for a in t.term.data) for t in terms]
    scales = jnp.stack([t.term.scale for t in terms])
    shifts = step_shifts(s, step, n)
    places, met = met_neighbours(s, shifts)
    weight = (n - 1) / (2 * s.partners)
    valid = lo + jnp.arange(rows) < n
    at = lambda a, start, axis: jax.lax.dynamic_slice_in_dim(a, start, rows, axis)  # noqa: E731
    own_x, own_data = at(xt, lo, 1), [tuple(at(a, lo, 0) for a in d) for d in data]

    def add(grad, value, start):
        return jax.lax.dynamic_update_slice_in_dim(grad, at(grad, start, 1) + value, start, 1)

    def one(carry, inputs):
        total, grad = carry
        shift, place, is_met = inputs
        partner = lo + shift  # the first partner's place
        diff = own_x - at(xt, partner, 1)
        d2 = (diff**2).sum(0)
        pair_data = [t.term.between(mine, tuple(at(a, partner, 0) for a in d))
                     for t, mine, d in zip(terms, own_data, data)]
        values, slopes = jax.jvp(lambda d2: pair_values(terms, d2, pair_data), (d2,), (jnp.ones_like(d2),))
        inside = (place >= lo) & (place < lo + rows)
        hit = jnp.zeros(rows, jnp.int32).at[jnp.where(inside, place - lo, rows)].add(is_met.astype(jnp.int32),
                                                                                   mode="drop")
        far = (hit == 0) & valid
        pull = 2 * weight * jnp.where(far, scales @ slopes, 0.0) * diff  # d(energy) / d(x_a), [3, rows]
        grad = add(add(grad, pull, lo), -pull, partner)  # and the opposite at its partner
        return (total + jnp.where(far, values, 0.0).sum(1), grad), None

    (total, grad), _ = jax.lax.scan(one, (jnp.zeros(len(terms), x.dtype), jnp.zeros_like(xt)), (shifts, places, met))
    grad = grad[:, :n] + grad[:, n:2 * n] + grad[:, 2 * n:]
    return total * weight, jnp.zeros_like(x).at[s.order].set(grad.T)


def sampled_forward(terms: tuple[SampledTerm, ...], x: jax.Array, step) -> tuple[jax.Array, jax.Array]:
    """(each term's estimated energy [len(terms)], the gradient of their sum) at x [P, 3] on this step
    (whose key draws the partners); the terms share one sampling (the first's)."""
    values, grad = rows_forward(terms, x, step)
    return jnp.stack([t.term.scale for t in terms]) * values, grad


def rows_forward(terms: tuple[SampledTerm, ...], x: jax.Array, step, block: tuple | None = None, lo=0,
                 rows: int | None = None) -> tuple[jax.Array, jax.Array]:
    """(each term's unscaled estimate over the pairs whose first end is one of the rows, the gradient
    [P, 3] of the scaled estimates' sum): every particle's, or a device's block of rows (`block` as
    near_energies takes it, `lo` and `rows` as far_pass does)."""
    scales = jnp.stack([t.term.scale for t in terms])

    def near(x):
        values = near_energies(terms, x, block)
        return (scales * values).sum(), values

    (_, near_values), near_grad = jax.value_and_grad(near, has_aux=True)(x)
    far, far_grad = far_pass(terms, x, step, lo, rows)
    return near_values + far, near_grad + far_grad


def sampled_energy(terms: tuple[SampledTerm, ...], x: jax.Array, step) -> jax.Array:
    """The terms' summed estimated energy at x on this step, differentiable by jax.grad (its gradient
    is sampled_forward's)."""
    return with_gradient(lambda x: (lambda values, grad: (values.sum(), grad))(*sampled_forward(terms, x, step)))(x)


def sampled_step_function(terms: tuple[SampledTerm, ...]):
    """(positions, measure, step) -> (each term's estimated energy, the gradient of their sum), as
    pairs.pair_step_function; the energies come with the gradient, measured or not. By the native
    kernel where the sampling carries its inputs, over several devices where it names them, else
    sampled_forward."""
    s = terms[0].sampling
    if s.native is not None:
        forward = native_sampled_forward(terms)
    elif s.devices > 1:
        forward = sharded_forward(terms, s.devices)
    else:
        forward = lambda x, step: sampled_forward(terms, x, step)  # noqa: E731
    return lambda x, measure, step: forward(x, step)


def sharded_forward(terms: tuple[SampledTerm, ...], devices: int):
    """(positions, step) -> sampled_forward's (energies, gradient), the particles spread over the first
    `devices` of JAX's devices: a mesh with one axis, and each particle array (positions, neighbours,
    their weights and pair data) cut into equal blocks of rows, padded with rows that weigh nothing
    (jax.sharding.NamedSharding through shard_map). Each device gathers every position (all_gather),
    sums the pairs whose first end is one of its rows into a gradient of every particle, and the
    devices add those up, each keeping its own rows (psum_scatter). The same code as on one device:
    near_energies and far_pass on a block of rows."""
    mesh = jax.make_mesh((devices,), ("particles",), (jax.sharding.AxisType.Auto,), devices=jax.devices()[:devices])
    rows, replicated = jax.sharding.PartitionSpec("particles"), jax.sharding.PartitionSpec()
    scales = jnp.stack([t.term.scale for t in terms])

    def forward(x, step):
        n = x.shape[0]
        block = -(-n // devices)

        def pad(a):
            return jnp.concatenate([a, jnp.zeros((block * devices - n,) + a.shape[1:], a.dtype)])

        def local(x_rows, neighbours, weight, near, terms, step):
            lo = jax.lax.axis_index("particles") * block
            everyone = jax.lax.all_gather(x_rows, "particles", tiled=True)[:n]
            ids = jnp.minimum(lo + jnp.arange(block), n - 1)  # padding rows weigh nothing
            values, grad = rows_forward(terms, everyone, step, (ids, neighbours, weight, near), lo, block)
            return jax.lax.psum(values, "particles"), jax.lax.psum_scatter(pad(grad), "particles", tiled=True)

        s = terms[0].sampling
        near = [tuple(map(pad, t.near)) for t in terms]
        values, grad = jax.shard_map(local, mesh=mesh, in_specs=(rows, rows, rows, rows, replicated, replicated),
                                     out_specs=(replicated, rows), check_vma=False)(
            pad(x), pad(s.neighbours), pad(s.weight), near, terms, step)
        return scales * values, grad[:n]

    return forward


def native_arrays(sampling: Sampling, euclid: PairTerm | None) -> tuple:
    """The native kernel's inputs (pair_forces.cc: SampledForces), made once: the particles' scaled
    vectors [C, S2] and euclid membership [S2] in the sampling's order, stored twice over and padded
    (S2 = 2 P + 16), and the neighbour pairs as a symmetric list in compressed rows: start [P + 1],
    col, weight, rest length and both-take-part [E], every pair listed from both of its ends."""
    nb, weight, order = (np.asarray(a) for a in (sampling.neighbours, sampling.weight, sampling.order))
    n, k = nb.shape
    rows = np.repeat(np.arange(n, dtype=np.int32), k)
    from_row, to_row = np.concatenate([rows, nb.ravel()]), np.concatenate([nb.ravel(), rows])
    by_row = np.argsort(from_row, kind="stable")
    col, w = to_row[by_row], np.tile(weight.ravel(), 2)[by_row]
    start = np.concatenate([[0], np.cumsum(np.bincount(from_row, minlength=n))]).astype(np.int32)
    doubled = 2 * n + 16
    vectors, include = np.zeros((1, doubled), np.float32), np.zeros(doubled, np.float32)
    rest, both = np.zeros(len(col), np.float32), np.zeros(len(col), np.float32)
    if euclid is not None:
        v, inc = np.asarray(euclid.data[0], np.float32), np.asarray(euclid.data[1], bool)
        vectors = np.zeros((v.shape[1], doubled), np.float32)
        vectors[:, :2 * n] = np.tile(v[order].T, 2)
        include[:2 * n] = np.tile(inc[order], 2)
        row_of = from_row[by_row]
        rest = np.sqrt(((v[row_of] - v[col]) ** 2).sum(1)).astype(np.float32)
        both = (inc[row_of] & inc[col]).astype(np.float32)
    return tuple(jax.device_put(a) for a in (vectors, include, start, col.astype(np.int32), w, rest, both))


def native_sampled_forward(terms: tuple[SampledTerm, ...]):
    """(positions, step) -> sampled_forward's (energies, gradient), by the native kernel: each pair's
    energy and gradient in one pass, on every core."""
    s = terms[0].sampling
    _, scales, attributes, order = native_settings(tuple(t.term for t in terms))

    def forward(x, step):
        n = x.shape[0]
        shifts = step_shifts(s, step, n)
        places, met = met_neighbours(s, shifts)
        vectors, include, start, col, weight, rest, both = s.native
        call = jax.ffi.ffi_call(
            SAMPLED_TARGET, (jax.ShapeDtypeStruct((2,), jnp.float32), jax.ShapeDtypeStruct((n, 3), jnp.float32)),
            vmap_method="sequential")
        values, grad = call(x.astype(jnp.float32), s.order, vectors, include, shifts.astype(jnp.int32),
                            places.astype(jnp.int32), met, start, col, weight, rest, both, scales, **attributes)
        return values[order], grad

    return forward


def pairs_mode(mode: str, n_particles: int) -> str:
    """layout.sim.pairs resolved for this many particles: exact or sampled."""
    return mode if mode != "auto" else ("sampled" if n_particles > SAMPLED_ABOVE else "exact")


def with_sampling(terms: dict, vectors: np.ndarray, k: int, partners: int, seed: np.ndarray,
                  native: bool | None = None, devices: int = 1) -> dict:
    """The terms, each PairTerm replaced by its SampledTerm (all sharing one sampling), on `devices` of
    JAX's devices; on one, on the native kernel where it can (`native` None: when it is available)."""
    pairs = tuple(t for t in terms.values() if isinstance(t, PairTerm))
    if not pairs:
        return terms
    if devices > len(jax.devices()):
        raise UserError(f"layout.sim.devices = {devices}, but JAX sees {len(jax.devices())} device(s) here: lower it "
                        "(on a CPU, XLA_FLAGS=--xla_force_host_platform_device_count=N makes N)")
    sampling = dataclasses.replace(make_sampling(vectors, k, partners, seed), devices=devices)
    if devices == 1 and runs_native(pairs, native):
        euclid = next((t for t in pairs if dict(t.native).get("term") == "euclid"), None)
        sampling = dataclasses.replace(sampling, native=native_arrays(sampling, euclid))
    return {name: sampled_term(t, sampling) if isinstance(t, PairTerm) else t for name, t in terms.items()}
