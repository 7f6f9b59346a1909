"""The layout engine: neuron features, energies, the simulation and the faithfulness metrics."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from layout.core.config import AnchorsConfig, ForcesConfig, SimConfig
from layout.engine.energies import build_energy, dominance_energy
from layout.engine.features import NeuronFeatures, neuron_features
from layout.engine.metrics import distances, layout_metrics, off_diagonal, silhouette, trustworthiness
from layout.engine.pairs import PairTerm, pair_energy, squared_distances
from layout.engine.particles import anchor_positions, make_particles
from layout.engine.simulate import SimulationError, friction_scale, simulate
from models.data.datasets import Split
from models.network.network import History, Network, Snapshots

# ---------------------------------------------------------------------------------------------
# Helpers


def hand_network(weights, biases, activation="relu"):
    sizes = (weights[0].shape[0],) + tuple(w.shape[1] for w in weights)
    empty = np.zeros(0, np.float32)
    return Network(
        sizes=sizes, activation=activation, weights=tuple(np.asarray(w, np.float32) for w in weights),
        biases=tuple(np.asarray(b, np.float32) for b in biases), dataset="mnist",
        classes=tuple(range(sizes[-1])), class_names=tuple(str(c) for c in range(sizes[-1])),
        history=History(empty, empty, empty, empty),
        snapshots=Snapshots(empty, empty, empty, (), ()), test_accuracy=0.0, train_accuracy=0.0,
        train_seconds=0.0, epochs=0)


def synthetic_features(vectors, dominant=None, layer=None):
    vectors = np.asarray(vectors, np.float32)
    n, c = vectors.shape
    return NeuronFeatures(
        output_vectors=vectors, dominant=vectors.argmax(1) if dominant is None else np.asarray(dominant),
        activation_dominant=np.zeros(n, int), class_activation=np.zeros((n, c), np.float32),
        receptive_fields=np.zeros((n, 28, 28), np.float32),
        layer=np.zeros(n, int) if layer is None else np.asarray(layer), index=np.arange(n),
        class_names=tuple(str(i) for i in range(c)), influence="weights")


def all_terms_config(**changes) -> ForcesConfig:
    cfg = ForcesConfig()
    cfg = dataclasses.replace(
        cfg,
        dominance=dataclasses.replace(cfg.dominance, strength=0.5),
        layer_plane=dataclasses.replace(cfg.layer_plane, strength=0.3),
    )
    return dataclasses.replace(cfg, **changes)


def random_rotation(seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def rotation_about_z(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


@pytest.fixture(scope="module")
def particles():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(24, 10))
    layer = np.repeat([0, 1], 12)
    return make_particles(synthetic_features(vectors, layer=layer), AnchorsConfig(mode="free"))


@pytest.fixture(scope="module")
def terms(particles):
    return build_energy(particles, all_terms_config())


# ---------------------------------------------------------------------------------------------
# Features


def test_output_vectors_dominance_and_fields_of_a_hand_built_network():
    rng = np.random.default_rng(1)
    w0, w1, w2 = rng.normal(size=(784, 3)), rng.normal(size=(3, 2)), rng.normal(size=(2, 4))
    net = hand_network([w0, w1, w2], [np.full(3, 50.0), np.full(2, 50.0), np.zeros(4)])
    images = rng.integers(0, 256, size=(8, 28, 28), dtype=np.uint8)
    labels = np.array([0, 1, 2, 3, 0, 1, 2, 3], np.int32)
    f = neuron_features(net, Split(images, labels))
    assert f.n_neurons == 5 and f.layer.tolist() == [0, 0, 0, 1, 1] and f.index.tolist() == [0, 1, 2, 0, 1]
    np.testing.assert_allclose(f.output_vectors[3:], w2, rtol=1e-5)  # last hidden layer: outgoing weights
    np.testing.assert_allclose(f.output_vectors[:3], w1 @ w2, rtol=1e-4)  # earlier: downstream product
    assert f.dominant.tolist() == f.output_vectors.argmax(1).tolist()
    np.testing.assert_allclose(f.receptive_fields[:3].reshape(3, -1), w0.T, rtol=1e-5)
    np.testing.assert_allclose(f.receptive_fields[3:].reshape(2, -1), (w0 @ w1).T, rtol=1e-4)
    # mean activation per class, by hand
    x = images.reshape(8, -1) / 255.0
    h0 = np.maximum(x @ w0 + 50, 0)
    for c in range(4):
        np.testing.assert_allclose(f.class_activation[:3, c], h0[labels == c].mean(0), rtol=1e-4)
    assert f.activation_dominant.tolist() == f.class_activation.argmax(1).tolist()


def test_jacobian_influence_equals_the_weight_product_where_every_unit_is_active():
    # relu with large positive biases: every unit is in its linear region, so d logits / d h is exact
    rng = np.random.default_rng(2)
    w0, w1, w2 = rng.normal(size=(784, 3)) * 0.01, rng.normal(size=(3, 2)), rng.normal(size=(2, 4))
    net = hand_network([w0, w1, w2], [np.full(3, 50.0), np.full(2, 50.0), np.zeros(4)])
    images = rng.integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    f = neuron_features(net, Split(images, np.zeros(5, np.int32)), influence="jacobian")
    np.testing.assert_allclose(f.output_vectors[:3], w1 @ w2, rtol=1e-4)
    np.testing.assert_allclose(f.output_vectors[3:], w2, rtol=1e-5)
    # with the second layer never active, the first layer has no path to the logits under the Jacobian
    # view, while the weight product still sees one
    dead = hand_network([w0, w1, w2], [np.full(3, 50.0), np.full(2, -500.0), np.zeros(4)])
    g = neuron_features(dead, Split(images, np.zeros(5, np.int32)), influence="jacobian")
    np.testing.assert_allclose(g.output_vectors[:3], 0, atol=1e-6)
    np.testing.assert_allclose(g.output_vectors[3:], w2, rtol=1e-5)
    assert np.abs(neuron_features(dead, Split(images, np.zeros(5, np.int32))).output_vectors[:3]).min() > 0


def test_anchors_fixed_free_or_none():
    f = synthetic_features(np.eye(4)[[0, 1, 2, 3, 0]] * 2)
    fixed = make_particles(f, AnchorsConfig(mode="fixed", radius=2.0))
    assert fixed.n_particles == 9 and fixed.is_anchor.tolist() == [False] * 5 + [True] * 4
    assert fixed.movable.tolist() == [True] * 5 + [False] * 4
    np.testing.assert_allclose(np.linalg.norm(fixed.home[5:], axis=1), 2.0, rtol=1e-6)
    free = make_particles(f, AnchorsConfig(mode="free", scale=1.0))
    assert free.movable.all() and free.group[5:].tolist() == [0, 1, 2, 3]
    np.testing.assert_allclose(free.vectors[5:], np.eye(4) * 2.0)  # one-hot x mean neuron norm (2)
    assert make_particles(f, AnchorsConfig(mode="none")).n_particles == 5


@pytest.mark.parametrize("shape", ["sphere", "ring"])
def test_anchor_positions_are_evenly_spread(shape):
    pts = anchor_positions(10, shape, 1.0)
    np.testing.assert_allclose(np.linalg.norm(pts, axis=1), 1.0, rtol=1e-6)
    d = np.linalg.norm(pts[:, None] - pts[None], axis=2) + np.eye(10) * 9
    nearest = d.min(1)
    assert nearest.max() / nearest.min() < 1.5  # no two anchors crowd together
    if shape == "ring":
        np.testing.assert_allclose(pts[:, 2], 0)


# ---------------------------------------------------------------------------------------------
# Energies


def positions_for(particles, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=(particles.n_particles, 3)), jnp.float32)


@pytest.mark.parametrize("name", ["euclid", "repulsion", "dominance"])
def test_pairwise_terms_are_invariant_under_translation_and_rotation(terms, particles, name):
    x = positions_for(particles)
    e = float(terms[name](x))
    moved = x + jnp.array([3.0, -1.0, 2.0])
    turned = x @ jnp.asarray(random_rotation(3).T, jnp.float32)
    assert float(terms[name](moved)) == pytest.approx(e, rel=1e-4)
    assert float(terms[name](turned)) == pytest.approx(e, rel=1e-4)


def test_centering_is_invariant_under_rotation_about_the_origin(terms, particles):
    x = positions_for(particles)
    turned = x @ jnp.asarray(random_rotation(4).T, jnp.float32)
    assert float(terms["centering"](turned)) == pytest.approx(float(terms["centering"](x)), rel=1e-5)
    assert float(terms["centering"](x + 1.0)) > float(terms["centering"](x))


def test_layer_plane_is_invariant_within_the_planes(terms, particles):
    x = positions_for(particles)
    e = float(terms["layer_plane"](x))
    assert float(terms["layer_plane"](x + jnp.array([5.0, -2.0, 0.0]))) == pytest.approx(e, rel=1e-5)
    turned = x @ jnp.asarray(rotation_about_z(0.7).T, jnp.float32)
    assert float(terms["layer_plane"](turned)) == pytest.approx(e, rel=1e-5)
    assert float(terms["layer_plane"](x + jnp.array([0.0, 0.0, 1.0]))) != pytest.approx(e, rel=1e-3)


def test_layer_plane_puts_each_layer_on_its_own_height(particles):
    cfg = dataclasses.replace(ForcesConfig(), euclid=dataclasses.replace(ForcesConfig().euclid, strength=0),
                              layer_plane=dataclasses.replace(ForcesConfig().layer_plane, strength=1.0, spacing=2.0))
    terms = build_energy(particles, cfg)
    out = simulate(terms, particles, SimConfig(steps=300, settle=0), jax.random.key(0)).final
    z = {l: out[particles.layer == l, 2].mean() for l in range(3)}  # layers 0, 1 and the anchors (2)
    assert z[0] < z[1] < z[2] and z[1] - z[0] == pytest.approx(2.0, abs=0.3)


@pytest.mark.parametrize("name", ["euclid", "repulsion", "dominance", "centering", "layer_plane"])
def test_gradients_are_finite_when_particles_coincide(terms, particles, name):
    x = positions_for(particles).at[1].set(positions_for(particles)[0])  # particles 0 and 1 coincide
    x = x.at[2].set(0.0).at[3].set(0.0)  # and 2, 3 sit at the origin
    value, grad = jax.value_and_grad(terms[name])(x)
    assert np.isfinite(float(value)) and np.isfinite(np.asarray(grad)).all()


def test_energy_falls_under_plain_gradient_descent(terms, particles):
    total = jax.jit(lambda x: sum(fn(x) for fn in terms.values()))
    grad = jax.jit(jax.grad(lambda x: sum(fn(x) for fn in terms.values())))
    x = positions_for(particles, seed=5)
    energies = [float(total(x))]
    for _ in range(60):
        x = x - 0.05 * grad(x)
        energies.append(float(total(x)))
    assert all(b <= a + 1e-6 for a, b in zip(energies, energies[1:]))
    assert energies[-1] < 0.7 * energies[0]


@pytest.mark.parametrize("anchor, free", [(0.0, False), (0.7, False), (0.7, True)])
def test_dominance_is_seed_003s_same_class_attraction_written_plainly(anchor, free):
    rng = np.random.default_rng(9)
    group = np.concatenate([rng.integers(0, 4, 30), np.arange(4)])  # 30 neurons, then 4 anchors
    is_anchor = np.arange(34) >= 30
    x = jnp.asarray(rng.normal(size=(34, 3)), jnp.float32)

    def plain(p):  # same-class pairs pull with 1 / (2 n_g) each; every neuron toward its class anchor
        total = 0.0
        for i in range(30):
            n_g = (group[:30] == group[i]).sum()
            for j in range(i + 1, 30):
                if group[i] == group[j]:
                    total += ((p[i] - p[j]) ** 2).sum() / (2 * n_g)
            if not free:
                total += anchor * ((p[i] - p[30 + group[i]]) ** 2).sum() / 2
        if free:  # every neuron toward its class centre, and each class's centre and its anchor together
            for g in range(4):
                members = p[:30][group[:30] == g]
                centre = members.mean(0)
                total += anchor * (((members - centre) ** 2).sum() + ((centre - p[30 + g]) ** 2).sum()) / 2
        return 0.3 * total

    def ours(p):
        return dominance_energy(p, jnp.asarray(group), jnp.asarray(is_anchor), anchor, 0.3, n_classes=4,
                                use_anchors=anchor > 0, free_anchors=free)

    expected, expected_grad = jax.value_and_grad(plain)(x)
    value, grad = jax.jit(jax.value_and_grad(ours))(x)
    assert float(value) == pytest.approx(float(expected), rel=1e-5)
    np.testing.assert_allclose(np.asarray(grad), np.asarray(expected_grad), rtol=1e-4, atol=1e-5)


def test_free_anchors_with_dominance_stay_stable_and_join_their_class():
    # 300 neurons: pulled by each of its class's neurons, a free anchor blew up within 30 steps
    vectors = np.random.default_rng(4).normal(size=(300, 10))
    particles = make_particles(synthetic_features(vectors), AnchorsConfig(mode="free"))
    base = ForcesConfig()
    forces = dataclasses.replace(base, dominance=dataclasses.replace(base.dominance, strength=0.3))
    out = simulate(build_energy(particles, forces), particles, SimConfig(), jax.random.key(0))
    assert np.isfinite(out.positions).all() and np.isfinite(out.energy).all()
    x, group = out.final, particles.group
    centres = np.stack([x[:300][group[:300] == g].mean(0) for g in range(10)])
    to_centres = np.linalg.norm(x[300:, None] - centres[None], axis=2)  # [anchor, class]
    assert (to_centres.argmin(1) == np.arange(10)).all()  # each anchor nearest its own class


def test_pair_energy_matches_a_plain_double_loop_tiled_or_not():
    rng = np.random.default_rng(6)
    x = jnp.asarray(rng.normal(size=(37, 3)), jnp.float32)
    v = jnp.asarray(rng.normal(size=(37, 5)), jnp.float32)

    def soft(d2, rows, cols):  # cols: everyone's data, particles on the last axis
        return jnp.sqrt(d2 + 0.1) * jnp.sqrt(squared_distances(rows[0], cols[0]) + 0.1)

    def repel(d2, rows, cols):
        return jax.lax.rsqrt(d2 + 0.01)

    terms = (PairTerm(soft, (v,), 0.7), PairTerm(repel, (), 0.3))

    def plain(p):  # the same energy the obvious way, differentiated by plain autodiff
        total = 0.0
        for i in range(37):
            for j in range(i + 1, 37):
                d2, r2 = ((p[i] - p[j]) ** 2).sum(), ((v[i] - v[j]) ** 2).sum()
                total += 0.7 * jnp.sqrt(d2 + 0.1) * jnp.sqrt(r2 + 0.1) + 0.3 * jax.lax.rsqrt(d2 + 0.01)
        return total

    expected, expected_grad = jax.value_and_grad(plain)(x)
    for tile in (64, 8):  # one block; five tiles, the last one padded
        value, grad = jax.value_and_grad(lambda p: pair_energy(terms, p, tile=tile, one_block=0))(x)
        assert float(value) == pytest.approx(float(expected), rel=1e-4)
        np.testing.assert_allclose(np.asarray(grad), np.asarray(expected_grad), rtol=1e-3, atol=1e-4)
    assert float(terms[0](x) + terms[1](x)) == pytest.approx(float(expected), rel=1e-4)


# ---------------------------------------------------------------------------------------------
# Simulation


def euclid_only(weighting="uniform") -> ForcesConfig:
    zero = ForcesConfig()
    return dataclasses.replace(
        zero, euclid=dataclasses.replace(zero.euclid, weighting=weighting),
        repulsion=dataclasses.replace(zero.repulsion, strength=0), centering=dataclasses.replace(zero.centering, strength=0))


@pytest.mark.parametrize("weighting, init", [("uniform", "random"), ("inverse", "random"),
                                             ("inverse_square", "pca")])  # 1/d^2 can fold from a random start
def test_euclid_alone_recovers_vectors_that_are_exactly_embeddable_in_3d(weighting, init):
    rng = np.random.default_rng(7)
    points = rng.normal(size=(40, 3))
    basis = np.linalg.qr(rng.normal(size=(10, 3)))[0]  # orthonormal columns: distances preserved
    vectors = points @ basis.T
    particles = make_particles(synthetic_features(vectors), AnchorsConfig(mode="none"))
    terms = build_energy(particles, euclid_only(weighting))
    out = simulate(terms, particles, SimConfig(steps=800, init=init, settle=0), jax.random.key(1))
    figures, _ = layout_metrics(vectors, out.final, vectors.argmax(1))
    assert figures["normalized_stress"] < 0.01
    assert figures["trustworthiness"] > 0.99


def test_dominance_alone_puts_same_class_neurons_closer():
    rng = np.random.default_rng(8)
    vectors = rng.normal(size=(60, 5))
    particles = make_particles(synthetic_features(vectors), AnchorsConfig(mode="fixed", radius=2.0))
    zero = ForcesConfig()
    cfg = dataclasses.replace(zero, euclid=dataclasses.replace(zero.euclid, strength=0),
                              dominance=dataclasses.replace(zero.dominance, strength=1.0))
    out = simulate(build_energy(particles, cfg), particles, SimConfig(steps=300), jax.random.key(2)).final[:60]
    groups = particles.group[:60]
    d = np.linalg.norm(out[:, None] - out[None], axis=2)
    same = groups[:, None] == groups[None, :]
    off = ~np.eye(60, dtype=bool)
    assert d[same & off].mean() < 0.5 * d[~same].mean()
    # and each class sits near its anchor
    for g in range(5):
        centre = out[groups == g].mean(0)
        assert np.linalg.norm(centre - particles.home[60 + g]) < 0.5


def test_same_key_same_trajectory_other_key_other_trajectory(terms, particles):
    cfg = SimConfig(steps=120, record_every=7, chunk=30)
    a = simulate(terms, particles, cfg, jax.random.key(3))
    b = simulate(terms, particles, cfg, jax.random.key(3))
    c = simulate(terms, particles, dataclasses.replace(cfg, init="random"), jax.random.key(4))
    np.testing.assert_array_equal(a.positions, b.positions)
    np.testing.assert_array_equal(a.energy, b.energy)
    assert not np.allclose(a.final, c.final)
    assert a.positions.dtype == np.float32 and a.positions.shape[1:] == (particles.n_particles, 3)
    assert a.terms == tuple(terms) and a.energy.shape == (len(a.step), len(terms))
    assert a.step[0] == 0 and (np.diff(a.step[:-1]) == 7).all() and a.step[-1] <= 120


def test_simulation_settles_early_and_energy_falls(terms, particles):
    out = simulate(terms, particles, SimConfig(steps=5000, settle=1e-4), jax.random.key(0))
    assert out.settled_step is not None and out.settled_step < 5000
    assert out.step[-1] == out.settled_step
    assert out.energy[-1].sum() < out.energy[0].sum()


def test_friction_near_1_is_not_taken_for_settling(terms, particles):
    """With velocity_decay 0.999 every step is tiny because of friction, not balanced forces: before the
    threshold was scaled, the run "settled" after one step."""
    frozen = simulate(terms, particles, SimConfig(steps=300, settle=1e-4, velocity_decay=0.999), jax.random.key(0))
    assert frozen.settled_step is None and frozen.step[-1] == 300  # all its steps
    assert friction_scale(0.4) == friction_scale(0.0) == 1.0  # the default's layouts are unchanged
    assert friction_scale(0.999) == pytest.approx((0.001 / 0.999) / 1.5)


def test_a_run_that_settles_inside_a_chunk_stays_where_it_settled(terms, particles):
    # the steps after the settling one, in the same compiled chunk, must leave the state as it was
    runs = [simulate(terms, particles, SimConfig(steps=5000, settle=1e-4, record_every=5, chunk=chunk),
                     jax.random.key(0)) for chunk in (5, 400)]
    assert runs[0].settled_step is not None and runs[0].settled_step % 400 != 0
    assert runs[0].settled_step == runs[1].settled_step
    np.testing.assert_array_equal(runs[0].step, runs[1].step)
    np.testing.assert_array_equal(runs[0].positions, runs[1].positions)
    np.testing.assert_array_equal(runs[0].energy, runs[1].energy)


def test_each_frame_records_every_terms_energy_at_its_positions(terms, particles):
    out = simulate(terms, particles, SimConfig(steps=40, record_every=4, chunk=20, settle=0), jax.random.key(5))
    for k in (0, 3, len(out.step) - 1):  # first, middle and final frames
        expected = [float(fn(jnp.asarray(out.positions[k]))) for fn in terms.values()]
        np.testing.assert_allclose(out.energy[k], expected, rtol=1e-4, atol=1e-6)


def test_fixed_anchors_do_not_move():
    f = synthetic_features(np.random.default_rng(9).normal(size=(20, 4)))
    particles = make_particles(f, AnchorsConfig(mode="fixed"))
    out = simulate(build_energy(particles, all_terms_config()), particles, SimConfig(steps=50), jax.random.key(0))
    np.testing.assert_array_equal(out.positions[:, 20:], np.broadcast_to(particles.home[20:], (len(out.step), 4, 3)))


def test_a_non_finite_term_stops_the_run_naming_term_and_step(particles):
    terms = {"centering": lambda x: (x**2).sum(), "broken": lambda x: jnp.log(x[:, 0]).sum()}
    with pytest.raises(SimulationError, match="non-finite at step 0 in the 'broken' term"):
        simulate(terms, particles, SimConfig(steps=20), jax.random.key(0))
    exploding = {"centering": lambda x: -1e30 * (x**2).sum()}  # runs away after a few steps
    with pytest.raises(SimulationError, match=r"non-finite at step \d+"):
        simulate(exploding, particles, SimConfig(steps=200, velocity_decay=0.0), jax.random.key(0))


# ---------------------------------------------------------------------------------------------
# Metrics


def test_metrics_of_a_perfect_embedding():
    rng = np.random.default_rng(10)
    points = rng.normal(size=(50, 3))
    vectors = np.concatenate([points * 3.0, np.zeros((50, 7))], 1)  # same geometry, another scale
    figures, per_neuron = layout_metrics(vectors, points, np.arange(50) % 5)
    assert figures["normalized_stress"] == pytest.approx(0, abs=1e-6)
    assert figures["trustworthiness"] == pytest.approx(1.0)
    assert figures["knn_recall"] == pytest.approx(1.0)
    assert figures["spearman"] == pytest.approx(1.0)
    np.testing.assert_allclose(per_neuron, 0, atol=1e-6)


def test_metrics_of_a_scrambled_layout_are_poor():
    rng = np.random.default_rng(11)
    vectors = rng.normal(size=(200, 10))
    figures, per_neuron = layout_metrics(vectors, rng.normal(size=(200, 3)), vectors.argmax(1))
    assert figures["normalized_stress"] > 0.2 and abs(figures["spearman"]) < 0.1
    assert figures["knn_recall"] < 0.15 and 0.4 < figures["trustworthiness"] < 0.6
    assert (per_neuron > 0.2).all()


def test_trustworthiness_by_hand():
    # Points on a line at 0, 1, 3, 7, 15 (no distance ties); the layout swaps points 0 and 4.
    high_pts = np.array([0.0, 1, 3, 7, 15])[:, None]
    low_pts = high_pts[[4, 1, 2, 3, 0]]
    q = np.arange(5)
    high, low, mask = distances(high_pts, q), distances(low_pts, q), off_diagonal(q, 5)
    # k = 1; each point's nearest in the layout and that neighbour's rank in high-d:
    # 0 -> 3 (rank 3, penalty 2), 1 -> 4 (rank 4, penalty 3), 2 -> 1 (rank 1), 3 -> 2 (rank 1),
    # 4 -> 1 (rank 3, penalty 2). T = 1 - 2 * 7 / (5 * 1 * (2 * 5 - 3 - 1)) = 16 / 30.
    assert trustworthiness(high, low, mask, 1) == pytest.approx(16 / 30)
    assert trustworthiness(high, high, mask, 1) == pytest.approx(1.0)


def test_silhouette_and_neighbourhood_hit_by_hand():
    pts = np.array([[0.0, 0, 0], [1, 0, 0], [10, 0, 0], [11, 0, 0]])
    labels = np.array([0, 0, 1, 1])
    q = np.arange(4)
    low, mask = distances(pts, q), off_diagonal(q, 4)
    # point 0: a = 1, b = (10 + 11) / 2 = 10.5 -> 9.5 / 10.5; point 1: a = 1, b = 9.5 -> 8.5 / 9.5
    expected = np.mean([9.5 / 10.5, 8.5 / 9.5, 8.5 / 9.5, 9.5 / 10.5])
    assert silhouette(low, mask, labels, q) == pytest.approx(expected)
    figures, _ = layout_metrics(pts + 0.0, pts, labels, k=1)
    assert figures["neighbourhood_hit"] == 1.0


def test_sampled_metrics_estimate_the_exact_ones():
    rng = np.random.default_rng(12)
    vectors = rng.normal(size=(600, 10))
    positions = vectors[:, :3] + 0.3 * rng.normal(size=(600, 3))
    exact, _ = layout_metrics(vectors, positions, vectors.argmax(1), sample=1000)
    sampled, per_neuron = layout_metrics(vectors, positions, vectors.argmax(1), sample=200)
    assert exact["exact"] and not sampled["exact"]
    for name in ("normalized_stress", "spearman", "knn_recall", "trustworthiness", "neighbourhood_hit"):
        assert sampled[name] == pytest.approx(exact[name], abs=0.03), name
    assert np.isfinite(per_neuron).sum() == 200


def test_training_timeline_warm_starts_each_snapshot_from_the_last():
    from layout.core.config import RunConfig
    from layout.engine.timeline import training_trajectory

    rng = np.random.default_rng(13)
    n_snap = 4
    w0 = rng.normal(size=(n_snap, 784, 8)) * 0.05
    w1 = np.cumsum(rng.normal(size=(n_snap, 8, 3)), axis=0)  # output weights drift over "training"
    net = hand_network([w0[-1], w1[-1]], [np.zeros(8), np.zeros(3)], activation="sigmoid")
    snaps = Snapshots(step=np.arange(n_snap) * 10, epoch=np.arange(n_snap) / 2.0,
                      test_accuracy=np.linspace(0.1, 0.9, n_snap), weights=(w0, w1),
                      biases=(np.zeros((n_snap, 8)), np.zeros((n_snap, 3))))
    net = dataclasses.replace(net, snapshots=snaps)
    test = Split(rng.integers(0, 256, size=(6, 28, 28), dtype=np.uint8), np.arange(6) % 3)
    cfg = RunConfig()
    cfg = dataclasses.replace(cfg, layout=dataclasses.replace(
        cfg.layout, anchors=AnchorsConfig(mode="free"),
        sim=dataclasses.replace(cfg.layout.sim, steps=100, snapshot_steps=20, record_every=5, chunk=20)))
    trajectory, labels, features, particles = training_trajectory(net, test, cfg)
    assert len(labels) == len(trajectory.step) == trajectory.positions.shape[0]
    assert labels[0].startswith("epoch 0.00   test accuracy 0.100") and labels[-1].startswith("epoch 1.50")
    assert (np.diff(trajectory.step) >= 0).all()
    # each snapshot starts where the previous one ended: no jump in any particle's position
    starts = [i for i in range(1, len(labels)) if labels[i] != labels[i - 1]]
    assert len(starts) == n_snap - 1
    for i in starts:
        np.testing.assert_allclose(trajectory.positions[i], trajectory.positions[i - 1], atol=1e-6)
    np.testing.assert_allclose(features.output_vectors, w1[-1], rtol=1e-5)  # the last snapshot's features
    assert particles.n_particles == 8 + 3


def test_spearman_matches_scipy_with_and_without_ties():
    from scipy.stats import spearmanr

    from layout.engine.metrics import spearman

    rng = np.random.default_rng(14)
    a, b = rng.normal(size=300), rng.normal(size=300)
    b = a + b
    assert spearman(a, b) == pytest.approx(spearmanr(a, b).statistic, abs=1e-12)
    ties_a, ties_b = np.round(a, 0), np.round(b, 0)  # many ties
    assert spearman(ties_a, ties_b) == pytest.approx(spearmanr(ties_a, ties_b).statistic, abs=1e-12)


def test_metrics_of_too_few_neurons_are_none_not_nan():
    figures, per_neuron = layout_metrics(np.eye(2), np.zeros((2, 3)), np.array([0, 1]))
    assert figures["n_neurons"] == 2 and figures["normalized_stress"] is None and figures["silhouette"] is None
    assert np.isnan(per_neuron).all()
    one_class, _ = layout_metrics(np.random.default_rng(0).normal(size=(20, 3)),
                                  np.random.default_rng(1).normal(size=(20, 3)), np.zeros(20, int))
    assert one_class["silhouette"] is None and one_class["normalized_stress"] is not None
