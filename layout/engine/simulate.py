"""The force simulation: velocity integration with friction and a cooling alpha, as in d3-force.

Each step: alpha = alpha_min ** (step / (steps - 1)) cools from 1 (or a warm start's alpha) to
alpha_min; forces are -grad of
the summed energy; v <- (v + alpha F)(1 - velocity_decay); x <- x + v (fixed particles stay put).
The step is compiled once; chunks of steps run as lax.scan, frames are kept every `record_every`
steps, and the run stops early once no particle moves more than `settle` x the layout's size.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from dataclasses import dataclass
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from layout.core import ctrl_c
from layout.core.config import SimConfig
from layout.core.errors import UserError
from layout.engine.energies import Energy, Term, on_device
from layout.engine.native import available
from layout.engine.pairs import PairTerm, pair_energies_function, pair_step_function, with_rest_lengths
from layout.engine.particles import Particles
from layout.engine.sampled import SampledTerm, pairs_mode, sampled_step_function, with_sampling


class SimulationError(UserError):
    """The simulation produced a non-finite value."""


@dataclass(frozen=True)
class Trajectory:
    """positions [T, P, 3] float32 (frames), energy [T, n_terms] float32 (each term at that frame),
    step [T] int (simulation step of each frame), terms: the term names in energy's column order,
    settled_step: the step at which the layout settled (None if it ran all its steps)."""

    positions: np.ndarray
    energy: np.ndarray
    step: np.ndarray
    terms: tuple[str, ...]
    settled_step: int | None

    @property
    def final(self) -> np.ndarray:
        return self.positions[-1]


class State(NamedTuple):
    x: jax.Array  # [P, 3]
    v: jax.Array  # [P, 3]
    step: jax.Array  # steps taken
    stop: jax.Array  # step at which the run settled or failed, -1 while running
    failed: jax.Array  # whether it stopped on a non-finite value


def initial_positions(particles: Particles, init: str, key: jax.Array) -> np.ndarray:
    """[P, 3]: PCA of the output vectors (plus a tiny seeded jitter) or seeded random, RMS radius 1;
    fixed particles at home."""
    n = particles.n_particles
    # numpy's generator seeded by the key's bits: the same key gives the same start, without compiling
    # JAX's random number generator (0.4 s in a new process)
    noise = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().tolist()).standard_normal((n, 3))
    noise = noise.astype(np.float32)
    if init == "pca" and n > 1:
        centred = particles.vectors - particles.vectors.mean(0)
        u, s, _ = np.linalg.svd(centred, full_matrices=False)
        pcs = np.zeros((n, 3), np.float32)
        k = min(3, u.shape[1])
        pcs[:, :k] = u[:, :k] * s[:k]
        x = pcs + 1e-3 * (np.sqrt((pcs**2).sum(1).mean()) + 1e-6) * noise
    else:
        x = noise
    x = x / (np.sqrt((x**2).sum(1).mean()) + 1e-12)
    return np.where(particles.movable[:, None], x, particles.home).astype(np.float32)


PAIR_KINDS = (PairTerm, SampledTerm)


def as_term(fn: Energy) -> Term | PairTerm | SampledTerm:
    """Terms as pytrees; a plain function becomes a static Term without data."""
    return fn if isinstance(fn, (Term, *PAIR_KINDS)) else Term(lambda x, fn=fn: fn(x))


def split_terms(terms: tuple[Energy, ...]) -> tuple[list[int], list[int]]:
    """The positions of the pair terms (evaluated together in one pass, exact or sampled: one kind in a
    run) and of the others."""
    pairs = [i for i, fn in enumerate(terms) if isinstance(fn, PAIR_KINDS)]
    return pairs, [i for i in range(len(terms)) if i not in pairs]


class Parts(NamedTuple):
    """The terms in two parts: the pair terms, evaluated together in one pass (by the native kernel or
    not: see pair_energy_function), and the others. `measured`: positions -> (each of the part's terms'
    energies, the gradient of their sum), what a frame records and the step that starts there needs;
    pairs_step: (positions, measure, step) -> the same, the energies NaN unless `measure` (see
    pair_step_function; sampled terms draw their partners from the step's key); others_grad:
    positions -> the others' gradient. Energies of the pairs, then the n_others others, [order]: the
    terms' own order."""

    pairs_step: Callable
    pairs_measured: Callable
    others_grad: Callable
    others_measured: Callable
    order: np.ndarray
    n_others: int

    def energies(self, pair_values: jax.Array, other_values: jax.Array) -> jax.Array:
        """Each term's energy, in the terms' own order, from the two parts' energies."""
        return jnp.concatenate([pair_values, other_values])[self.order]

    def others_step(self, x: jax.Array, running: jax.Array, measure: jax.Array) -> tuple[jax.Array, jax.Array]:
        """The others' (energies, zeros unless `measure`; gradient, zeros unless `running`): one
        conditional (see while_running)."""
        def unmeasured(x):
            return jnp.zeros(self.n_others, x.dtype), self.others_grad(x)

        def stopped(x):
            return jnp.zeros(self.n_others, x.dtype), jnp.zeros_like(x)

        if not self.n_others:
            return stopped(x)
        branch = jnp.where(running, jnp.where(measure, 2, 1), 0)
        return jax.lax.switch(branch, (stopped, unmeasured, self.others_measured), x)


def split_parts(terms: tuple[Energy, ...], native: bool | None = None) -> Parts:
    pairs, others = split_terms(terms)
    pair_terms, other_terms = tuple(terms[i] for i in pairs), tuple(terms[i] for i in others)

    def others_energies(x):
        values = jnp.stack([fn(x) for fn in other_terms]) if other_terms else jnp.zeros(0, x.dtype)
        return values.sum(), values

    def others_measured(x):
        (_, values), grad = jax.value_and_grad(others_energies, has_aux=True)(x)
        return values, grad

    if pair_terms and isinstance(pair_terms[0], SampledTerm):
        pairs_step = sampled_step_function(pair_terms)
        pairs_measured = lambda x: pairs_step(x, True, 0)  # noqa: E731
    elif pair_terms:
        exact_step = pair_step_function(pair_terms, native=native)
        pairs_step = lambda x, measure, step: exact_step(x, measure)  # noqa: E731
        pairs_measured = pair_energies_function(pair_terms, native=native)
    else:
        pairs_measured = lambda x: (jnp.zeros(0, x.dtype), jnp.zeros_like(x))  # noqa: E731
        pairs_step = lambda x, measure, step: pairs_measured(x)  # noqa: E731
    return Parts(pairs_step, pairs_measured, jax.grad(lambda x: others_energies(x)[0]), others_measured,
                 np.argsort(np.array(pairs + others, dtype=int)), len(others))


def while_running(state: State, fn: Callable, stopped: Callable, *args):
    """fn(*args) if the simulation is still running, else stopped(*args), as a conditional.

    Past the pair kernel, a step is a few dozen tiny XLA operations. XLA's CPU runtime spreads a
    sequence of more than 8 of them over its thread pool, which costs more than they compute; a
    conditional is one operation of the step and runs its own short sequence in order on one thread.
    Measured at N = 1,000 on a running simulation: the whole step 1.16x faster than with them inline
    (2,419 and 2,799 steps/s, compiled side by side). It also skips the work once the run has stopped."""
    return jax.lax.cond(state.stop < 0, fn, stopped, *args)


# How XLA compiles the simulation (a new process's first run at N = 1,000, measured with jax 0.10):
# - its older fusion code generator: 0.27 s instead of 0.35-0.47 s, the steps as fast (4,120 vs 4,096
#   steps/s);
# - the compiled kernels in 2 parts per core for LLVM, instead of 32 parts: 0.11 vs 0.14 s (medians of
#   7 on 2 cores; each part is optimised on its own).
# Other jax versions compile with XLA's defaults: an option XLA does not know is an error, and these may
# come and go.
COMPILE_OPTIONS = {"xla_cpu_use_fusion_emitters": False,
                   "xla_cpu_parallel_codegen_split_count": 2 * (os.cpu_count() or 1),
                   } if jax.__version_info__[:2] == (0, 10) else {}


def one_pass(x: jax.Array, v: jax.Array, moved: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(sum of x^2, the largest |v|, whether `moved` is finite): what a step checks, as one reduction
    over floats. `moved` counts as finite when the sum of its squares is, so a coordinate beyond
    1.8e19 (whose square overflows) counts as a blow-up too.

    XLA compiles each reduction of its own into up to three kernels: with three reductions, compiling
    the simulation took 0.03 s longer at N = 1,000 (0.19 vs 0.16 s, medians of 5), and the checks 6 us
    longer a step (8.2 vs 2.4 us; a reduction over booleans is slow)."""
    squares, fastest, moved_squares = jax.lax.reduce(
        (x * x, jnp.abs(v), moved * moved), (np.float32(0), np.float32(0), np.float32(0)),
        lambda a, b: (a[0] + b[0], jnp.maximum(a[1], b[1]), a[2] + b[2]), (0, 1))
    return squares, fastest, jnp.isfinite(moved_squares)


DEFAULT_DECAY = SimConfig().velocity_decay


def friction_scale(velocity_decay: float) -> float:
    """How much smaller the settle threshold is than `layout.sim.settle` under this friction.

    Under a steady force a particle comes to move alpha F (1 - d) / d per step (d the velocity decay), so
    with more friction than the default a small step no longer means the forces are near balance: with
    d = 0.999 every particle moves 1/1000 of what its force asks, and the run would "settle" after one
    step. The threshold shrinks in proportion to (1 - d) / d, relative to the default (1 at and below it,
    so the default's layouts are unchanged)."""
    ratio = lambda d: (1 - d) / d  # noqa: E731
    return 1.0 if velocity_decay <= DEFAULT_DECAY else ratio(velocity_decay) / ratio(DEFAULT_DECAY)


def chunk(state: State, terms: tuple, movable: jax.Array, cfg: SimConfig, n_frames: int,
          alpha_start: float, native: bool, end_energies: bool = True):
    """n_frames x record_every steps from `state`; returns the new State; per frame, the positions and
    each term's energy at the frame's first step; and, with end_energies, each term's energy where the
    run stopped if it did (else NaN; the trajectory's last frame, measured in the chunk that stops,
    not by a program of its own). A step measures the energies on a frame's first step only (with the
    gradient, from the same pass on the native kernel). native: whether the pair terms run on the
    native kernel (layout/native.py). run_chunk is this compiled, once per shape and settings: terms
    are traced data.

    Every step, a frame's first one too, is the same code in one loop, so that the integrator is
    compiled once: compiling the simulation took a third less time than with a frame's first step
    written apart (0.22 vs 0.33 s at N = 1,000, a new process's first run)."""
    parts = split_parts(terms, native)
    movable = movable[:, None]
    last = max(cfg.steps - 1, 1)
    settle = cfg.settle * friction_scale(cfg.velocity_decay)

    def advance(state: State, g: jax.Array, bad: jax.Array) -> State:
        """The next state of a running simulation, g the gradient at its positions; a step that moves a
        particle to a non-finite place, or `bad` (an energy was not finite), stops the run where it is."""
        alpha = alpha_start * (cfg.alpha_min / alpha_start) ** (state.step / last)
        v = (state.v + alpha * jnp.where(movable, -g, 0.0)) * (1 - cfg.velocity_decay)
        x = state.x + v
        squares, fastest, finite = one_pass(state.x, v, x)
        ok = finite & ~bad
        size = jnp.sqrt(squares / state.x.shape[0]) + 1e-12  # RMS distance from the origin
        settled = fastest <= settle * size  # no coordinate moved more than settle x size (friction-scaled)
        stop_now = ~ok | settled | (state.step + 1 >= cfg.steps)
        return State(
            x=jnp.where(ok, x, state.x),
            v=jnp.where(ok, v, state.v),
            step=state.step + 1,
            stop=jnp.where(stop_now, state.step + ok.astype(state.step.dtype), state.stop),
            failed=~ok,
        )

    def record_and_advance(state: State, values: jax.Array, first: jax.Array, pair_values: jax.Array,
                           pair_grad: jax.Array, other_values: jax.Array, other_grad: jax.Array):
        """A running simulation's step: on a frame's first step, the energies become the frame's, and
        one that is not finite stops the run there (an energy went bad before the positions did)."""
        measured = parts.energies(pair_values, other_values)
        bad = first & ~jnp.isfinite(measured).all()
        return advance(state, pair_grad + other_grad, bad), jnp.where(first, measured, values)

    def step(carry: tuple[State, jax.Array], k: jax.Array):
        state, values = carry
        first = k == 0  # the frame's first step
        pair_values, pair_grad = parts.pairs_step(state.x, first, state.step)
        other_values, other_grad = parts.others_step(state.x, state.stop < 0, first)
        unchanged = lambda state, values, *_: (state, values)  # noqa: E731
        return while_running(state, record_and_advance, unchanged, state, values, first, pair_values, pair_grad,
                             other_values, other_grad), None

    def frame(state: State, _):
        (end, values), _ = jax.lax.scan(step, (state, jnp.zeros(len(parts.order), jnp.float32)),
                                        jnp.arange(cfg.record_every))
        return end, (state.x, values)

    def measured(x):
        return parts.energies(parts.pairs_measured(x)[0], parts.others_measured(x)[0])

    def unmeasured(x):
        return jnp.full(len(parts.order), jnp.nan, jnp.float32)

    end, recorded = jax.lax.scan(frame, state, None, length=n_frames)
    return end, recorded, jax.lax.cond(end.stop >= 0, measured, unmeasured, end.x) if end_energies else None


run_chunk = jax.jit(chunk, static_argnames=("cfg", "n_frames", "alpha_start", "native", "end_energies"),
                    compiler_options=COMPILE_OPTIONS)


def make_chunk(terms: dict[str, Energy], movable: np.ndarray, cfg: SimConfig, n_frames: int,
               alpha_start: float = 1.0) -> Callable:
    """state -> run_chunk(state, ...) for these terms."""
    native = available()
    bound = with_rest_lengths(tuple(as_term(fn) for fn in terms.values()), native)
    movable = on_device(movable)
    return lambda state: run_chunk(state, bound, movable, cfg, n_frames, alpha_start, native)


def simulate(terms: dict[str, Energy], particles: Particles, cfg: SimConfig, key: jax.Array,
             on_chunk: Callable[[int, int], None] | None = None, start: np.ndarray | None = None,
             alpha_start: float = 1.0) -> Trajectory:
    """Run the simulation from initial positions drawn with `key` (or from `start`, warm, with alpha
    cooling from `alpha_start`); same key, same trajectory."""
    x0 = initial_positions(particles, cfg.init, key) if start is None else np.asarray(start, np.float32)
    if pairs_mode(cfg.pairs, particles.n_particles) == "sampled":
        terms = with_sampling(terms, particles.vectors, cfg.neighbours, cfg.partners, jax.random.key_data(key),
                              devices=cfg.devices)
    frames_per_chunk = max(1, cfg.chunk // cfg.record_every)
    run = make_chunk(terms, particles.movable, cfg, frames_per_chunk, alpha_start)
    # numpy, not jnp: each jnp call here would compile a small program of its own in a new process
    state = State(x0, np.zeros_like(x0), np.int32(0), np.int32(-1), np.bool_(False))
    positions, energies = [], []
    while True:
        ctrl_c.check()
        state, (xs, values), end_values = run(state)
        positions.append(np.asarray(xs))
        energies.append(np.asarray(values))
        stop = int(state.stop)
        if on_chunk:
            on_chunk(int(state.step), cfg.steps)
        if stop >= 0:
            break
    if bool(state.failed):
        raise SimulationError(diagnose(terms, np.asarray(state.x), stop))
    steps = np.arange(sum(len(p) for p in positions)) * cfg.record_every
    keep = steps < stop
    return Trajectory(
        positions=np.concatenate([np.concatenate(positions)[keep], np.asarray(state.x)[None]]).astype(np.float32),
        energy=np.concatenate([np.concatenate(energies)[keep], np.asarray(end_values)[None]]).astype(np.float32),
        step=np.concatenate([steps[keep], [stop]]).astype(np.int64),
        terms=tuple(terms),
        settled_step=stop if stop < cfg.steps else None,
    )


def simulate_many(terms: list[dict[str, Energy]], particles: Sequence[Particles], cfg: SimConfig,
                  starts: np.ndarray) -> np.ndarray:
    """Final positions [B, P, 3] of B simulations run side by side (jax.vmap), simulation b with the
    terms terms[b] (same names and shapes, other data) of particles[b] from starts[b]; no frames are
    kept. A run that blows up gives NaN positions instead of an error (a null sample that is then left
    out). With sampled pairs (layout.sim.pairs), one after another, each as `simulate` runs it."""
    if pairs_mode(cfg.pairs, particles[0].n_particles) == "sampled":
        return np.stack([final_or_nan(t, p, cfg, s) for t, p, s in zip(terms, particles, starts)])
    movable = particles[0].movable
    bound = [tuple(as_term(fn) for fn in t.values()) for t in terms]
    native = available()
    stacked = with_rest_lengths(jax.tree.map(lambda *leaves: jnp.stack(leaves), *bound), native)
    frames = max(1, cfg.chunk // cfg.record_every)
    movable = jnp.asarray(movable)
    b = len(terms)
    x0 = jnp.asarray(starts, jnp.float32)
    state = State(x0, jnp.zeros_like(x0), jnp.zeros(b, jnp.int32), jnp.full(b, -1, jnp.int32), jnp.zeros(b, bool))
    while bool((state.stop < 0).any()):
        ctrl_c.check()
        state = _run_many(state, stacked, movable, cfg, frames, native)
    return np.where(np.asarray(state.failed)[:, None, None], np.nan, np.asarray(state.x))


def final_or_nan(terms: dict[str, Energy], particles: Particles, cfg: SimConfig, start: np.ndarray) -> np.ndarray:
    """The final positions of one simulation from `start` (its pairs sampled with layout.sim.seed's key),
    NaN where it blew up."""
    record = dataclasses.replace(cfg, record_every=cfg.chunk)  # a frame a chunk: only the last one is kept
    try:
        return simulate(terms, particles, record, jax.random.key(cfg.seed), start=start).final
    except SimulationError:
        return np.full_like(np.asarray(start, np.float32), np.nan)


@functools.partial(jax.jit, static_argnames=("cfg", "frames", "native"), compiler_options=COMPILE_OPTIONS)
def _run_many(state: State, terms: tuple, movable: jax.Array, cfg: SimConfig, frames: int, native: bool) -> State:
    return jax.vmap(lambda s, t: chunk(s, t, movable, cfg, frames, 1.0, native, end_energies=False)[0])(state, terms)


def diagnose(terms: dict[str, Energy], x: np.ndarray, step: int) -> str:
    """Name the term whose energy or force is not finite at the last good positions."""
    for name, fn in terms.items():
        value, g = jax.value_and_grad(fn)(jnp.asarray(x))
        if not (np.isfinite(float(value)) and np.isfinite(np.asarray(g)).all()):
            return (f"the simulation became non-finite at step {step} in the '{name}' term: lower "
                    f"layout.forces.{name}.strength or raise layout.sim.velocity_decay")
    return (f"the simulation became non-finite at step {step} (positions ran away): lower the force "
            "strengths or raise layout.sim.velocity_decay")
