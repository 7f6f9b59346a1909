"""The native pair-force kernel computes the same energies and gradients as their JAX definition."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from layout.core.config import AnchorsConfig, ForcesConfig, SimConfig
from layout.engine import native
from layout.engine.energies import build_energy, euclid_term, repulsion_term
from layout.engine.pairs import REST_ROW, pair_energy, pair_step_function, rest_lengths, with_rest_lengths
from layout.engine.particles import make_particles
from layout.engine.simulate import simulate, simulate_many
from tests.conftest import messages
from tests.test_layout import synthetic_features

REPO = Path(__file__).resolve().parents[1]


def pair_terms(n: int, weighting: str, which: str, seed: int = 0, everyone: bool = False):
    """Pair terms of n particles; unless `everyone`, some take no part in euclid (fixed anchors). With
    uniform weights and everyone in euclid, the kernel takes its UNIT path (pair_forces.cc)."""
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(n, 10)).astype(np.float32)
    vectors[1] = vectors[0]  # two identical output vectors: rest length 0
    include = np.ones(n, bool) if everyone else rng.random(n) > 0.2
    terms = {"euclid": euclid_term(vectors, include, weighting, 1.3), "repulsion": repulsion_term(n, 0.05, 0.02)}
    return tuple(terms[name] for name in which.split("+"))


def positions(n: int, seed: int = 1) -> jax.Array:
    x = np.random.default_rng(seed).normal(size=(n, 3)).astype(np.float32)
    if n > 3:
        x[3] = x[2]  # two coincident particles
    return jnp.asarray(x)


def test_the_kernel_builds_here_and_is_what_the_simulation_uses():
    assert native.available(), "g++ is on every machine of this project; the kernel should build"
    terms = pair_terms(40, "uniform", "euclid+repulsion")
    jaxpr = str(jax.make_jaxpr(jax.grad(lambda x: pair_energy(terms, x)))(positions(40)))
    assert native.TARGET in jaxpr


@pytest.mark.parametrize("n", [2, 15, 16, 17, 100, 301])  # under, at and over one vector of 16 columns
@pytest.mark.parametrize("which, weighting, everyone", [
    ("euclid+repulsion", "uniform", False), ("euclid+repulsion", "uniform", True), ("euclid", "uniform", True),
    ("euclid+repulsion", "inverse", False), ("euclid", "inverse_square", False), ("euclid", "inverse", True),
    ("euclid", "uniform", False), ("repulsion", "uniform", False)])
def test_kernel_energy_and_gradient_match_the_jax_definition(n, which, weighting, everyone):
    terms, x = pair_terms(n, weighting, which, everyone=everyone), positions(n)
    value, grad = jax.jit(jax.value_and_grad(lambda p: pair_energy(terms, p, native=True)))(x)
    expected, expected_grad = jax.jit(jax.value_and_grad(lambda p: pair_energy(terms, p, native=False)))(x)
    assert float(value) == pytest.approx(float(expected), rel=1e-5)
    # (the JAX gradient, x_i sum_j g_ij - sum_j g_ij x_j, loses some digits to cancellation)
    assert_same_gradient(grad, expected_grad)
    assert np.isfinite(np.asarray(grad)).all()
    assert_simulation_steps_agree(terms, x, expected_grad)


def assert_simulation_steps_agree(terms, x, expected_grad):
    """A simulation step's pass of the kernel: with the energies (a frame's first step), or the
    gradient alone, told at run time; either way the JAX definition's gradient."""
    step = jax.jit(pair_step_function(terms, native=True))
    expected = [float(pair_energy((t,), x, native=False)) for t in terms]
    for measure in (True, False):
        values, grad = step(x, jnp.bool_(measure))
        assert_same_gradient(grad, expected_grad)
        if measure:
            np.testing.assert_allclose(np.asarray(values), expected, rtol=1e-5)
        else:
            assert np.isnan(np.asarray(values)).all()


def assert_same_gradient(grad, expected):
    np.testing.assert_allclose(np.asarray(grad), np.asarray(expected), rtol=1e-4,
                               atol=1e-4 * float(jnp.abs(expected).max()))


@pytest.mark.parametrize("everyone", [False, True])
def test_a_large_system_matches_the_jax_definition(everyone):
    # 13,000 particles: enough chunks x particles that the kernel adds its chunks' gradients on several
    # threads (pair_forces.cc: PARALLEL_SUM) wherever XLA has two or more
    terms, x = pair_terms(13_000, "uniform", "euclid+repulsion", everyone=everyone), positions(13_000)
    value, grad = jax.jit(jax.value_and_grad(lambda p: pair_energy(terms, p, native=True)))(x)
    expected, expected_grad = jax.jit(jax.value_and_grad(lambda p: pair_energy(terms, p, native=False)))(x)
    assert float(value) == pytest.approx(float(expected), rel=1e-5)
    assert_same_gradient(grad, expected_grad)
    assert_simulation_steps_agree(terms, x, expected_grad)


def test_rest_lengths_made_once_give_the_same_energy():
    terms, x = pair_terms(50, "inverse", "euclid+repulsion"), positions(50)
    prepared = with_rest_lengths(terms, native=True)
    assert prepared[0].rest.shape == (50, REST_ROW) and prepared[1].rest is None  # rows padded for the kernel
    assert_same_gradient(jax.grad(lambda p: pair_energy(prepared, p))(x),
                        jax.grad(lambda p: pair_energy(terms, p, native=False))(x))


@pytest.mark.parametrize("n", [1, 17, 1500])
def test_rest_lengths_made_here_and_by_the_program_agree(n):
    # one system, given as an array, is made on this thread; inside a program (and for stacked systems),
    # by the thread pool: the two must be the same rest lengths, the pairwise distances above the diagonal
    vectors = np.random.default_rng(n).normal(size=(n, 10)).astype(np.float32)
    here, program = np.asarray(rest_lengths(vectors)), np.asarray(jax.jit(rest_lengths)(vectors))
    assert here.shape == program.shape == (n, REST_ROW * -(-n // REST_ROW))
    np.testing.assert_array_equal(here, program)
    expected = np.triu(np.sqrt(((vectors[:, None] - vectors[None]) ** 2).sum(-1)), 1)
    np.testing.assert_allclose(here[:, :n], expected, rtol=1e-5, atol=1e-6)
    assert (here[:, n:] == 0).all()


def test_vmapped_systems_each_get_their_own_forces():
    # the middle system has everyone in euclid: the kernel takes its UNIT path for that one only
    systems = [pair_terms(33, "uniform", "euclid+repulsion", seed=s, everyone=s == 1) for s in range(3)]
    stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *systems)
    xs = jnp.stack([positions(33, seed=s) for s in range(3)])
    grads = jax.vmap(lambda t, x: jax.grad(lambda p: pair_energy(t, p, native=True))(x))(stacked, xs)
    for terms, x, grad in zip(systems, xs, grads):
        assert_same_gradient(grad, jax.grad(lambda p: pair_energy(terms, p, native=False))(x))


def particles_and_terms(n: int = 60):
    vectors = np.random.default_rng(4).normal(size=(n, 10))
    particles = make_particles(synthetic_features(vectors), AnchorsConfig(mode="free"))
    cfg = dataclasses.replace(ForcesConfig(), dominance=dataclasses.replace(ForcesConfig().dominance, strength=0.3))
    return particles, build_energy(particles, cfg)


def test_a_simulation_follows_the_same_path_with_either_implementation(monkeypatch):
    particles, terms = particles_and_terms()
    cfg = SimConfig(steps=60, settle=0, record_every=10, chunk=20)
    fast = simulate(terms, particles, cfg, jax.random.key(0))
    monkeypatch.setenv("NEURON_LAYOUT_NATIVE", "0")
    slow = simulate(terms, particles, cfg, jax.random.key(0))
    np.testing.assert_allclose(fast.positions, slow.positions, atol=1e-3 * np.abs(slow.positions).max())
    np.testing.assert_allclose(fast.energy, slow.energy, rtol=1e-4, atol=1e-6)


def test_side_by_side_simulations_match_with_either_implementation(monkeypatch):
    particles, terms = particles_and_terms(40)
    cfg = SimConfig(steps=40, settle=0, chunk=20)
    starts = np.random.default_rng(0).normal(size=(2, particles.n_particles, 3)).astype(np.float32)
    fast = simulate_many([terms, terms], [particles] * 2, cfg, starts)
    monkeypatch.setenv("NEURON_LAYOUT_NATIVE", "0")
    slow = simulate_many([terms, terms], [particles] * 2, cfg, starts)
    np.testing.assert_allclose(fast, slow, atol=1e-3 * np.abs(slow).max())


def test_turned_off_the_jax_definition_runs(monkeypatch):
    monkeypatch.setenv("NEURON_LAYOUT_NATIVE", "0")
    terms = pair_terms(20, "uniform", "euclid+repulsion")
    assert native.TARGET not in str(jax.make_jaxpr(jax.grad(lambda x: pair_energy(terms, x)))(positions(20)))


def test_without_a_working_compiler_the_layout_falls_back_with_one_note(tmp_path, shared_data):
    env = {**os.environ, "CXX": "/bin/false", "NEURON_LAYOUT_CACHE": str(tmp_path / "cache")}
    script = ("import jax, numpy as np\n"
              "from layout.engine import native\n"
              "from tests.test_native import pair_terms, positions\n"
              "from layout.engine.pairs import pair_energy\n"
              "print(native.available())\n"
              "print(bool(np.isfinite(jax.grad(lambda x: pair_energy(pair_terms(20, 'uniform', 'euclid'), x))"
              "(positions(20))).all()))\n"
              "print(native.unavailable_reason())\n")
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120,
                            env=env)
    assert result.returncode == 0, result.stderr
    available, finite, reason = result.stdout.splitlines()
    assert (available, finite) == ("False", "True") and result.stderr.strip() == ""  # the library says nothing
    assert reason.startswith("the native pair-force kernel could not be built") and "slower JAX" in reason
    # the command says it, once
    result = subprocess.run([sys.executable, "-m", "layout.run", "configs/binary01.yaml", "--no-window", "--export",
                             "none", "--out", str(tmp_path / "run"), "--data-dir", str(shared_data), "--set",
                             "train.epochs=1", "--set", "layout.sim.steps=30"],
                            cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr
    assert messages(result.stderr) == [f"note: {reason}"]
    assert not list(tmp_path.rglob("*.part")) and not list((REPO / "layout" / "_native").glob("*.part"))
