"""Large networks: sampled pair terms, the nearest-neighbour search, and memory that stays O(N)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.spatial.distance import cdist

from layout.core.config import AnchorsConfig, ForcesConfig, SimConfig
from layout.engine.energies import build_energy, euclid_term, repulsion_term
from layout.engine.metrics import layout_metrics
from layout.engine.neighbours import nearest_neighbours
from layout.engine.pairs import jax_pair_energy
from layout.engine.particles import make_particles
from layout.engine.sampled import (
    SAMPLED_ABOVE,
    make_sampling,
    neighbour_weights,
    pairs_mode,
    sampled_forward,
    sampled_term,
)
from layout.engine.simulate import simulate
from tests.test_layout import synthetic_features


def clusters(n: int, seed: int = 0, dims: int = 10) -> np.ndarray:
    """A planted structure: n vectors around 10 well-separated centres."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=3.0, size=(10, dims))
    return (centres[rng.integers(0, 10, n)] + rng.normal(size=(n, dims))).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Nearest neighbours


def test_nearest_neighbours_equal_brute_force_and_never_the_row_itself():
    v = clusters(2500)
    v[:40] = 0.0  # dead neurons: forty identical vectors
    found = nearest_neighbours(v, 16)
    d = cdist(v, v)
    np.fill_diagonal(d, np.inf)
    assert found.shape == (2500, 16)
    assert not (found == np.arange(2500)[:, None]).any()
    np.testing.assert_allclose(np.take_along_axis(d, found, 1), np.sort(d, 1)[:, :16], atol=1e-5)


def test_the_inverted_file_above_the_exhaustive_size_finds_most_true_neighbours():
    from layout.engine.neighbours import EXACT_MAX

    n = EXACT_MAX + 5000
    v = np.random.default_rng(1).standard_normal((n, 10)).astype(np.float32)  # the hardest case: no clusters
    found = nearest_neighbours(v, 16)
    rows = np.arange(0, n, n // 300)
    d = cdist(v[rows], v)
    d[np.arange(len(rows)), rows] = np.inf
    true = np.argsort(d, 1)[:, :16]
    recall = np.mean([len(np.intersect1d(a, b)) / 16 for a, b in zip(found[rows], true)])
    assert recall > 0.9, recall
    assert np.array_equal(found, nearest_neighbours(v, 16))  # the same vectors, the same neighbours


def test_a_pair_listed_from_both_ends_weighs_half_from_each():
    neighbours = np.array([[1, 2], [0, 2], [1, 0]])  # 0-1 both ways, 0-2 both ways, 1-2 both ways
    assert (neighbour_weights(neighbours) == 0.5).all()
    one_way = np.array([[1], [2], [1]])  # 0 -> 1 one way, 1 <-> 2 both ways
    np.testing.assert_array_equal(neighbour_weights(one_way), [[1.0], [0.5], [0.5]])


# ---------------------------------------------------------------------------------------------
# Sampled pair terms


@pytest.mark.parametrize("weighting", ["uniform", "inverse"])
def test_sampled_energies_and_gradients_are_unbiased(weighting):
    """Their mean over many keys is the exact all-pairs energy and gradient (within 5 standard errors
    of the mean: the test fails if neighbour pairs are counted twice or the partners' weight is off)."""
    n = 240
    rng = np.random.default_rng(0)
    v = clusters(n)
    include = np.ones(n, bool)
    include[-10:] = False  # anchors that do not take part in euclid
    terms = (euclid_term(v, include, weighting, 1.0), repulsion_term(n, 1.0, 0.05))
    x = jnp.asarray(rng.standard_normal((n, 3)).astype(np.float32))
    sampled = tuple(sampled_term(t, make_sampling(v, 8, 4, np.array([0, 3], np.uint32))) for t in terms)
    exact = np.array([float(jax_pair_energy((t,), x)) for t in terms])
    exact_grad = np.asarray(jax.grad(lambda x: sum(jax_pair_energy((t,), x) for t in terms))(x))

    draws = jax.jit(jax.vmap(lambda step: sampled_forward(sampled, x, step)))(jnp.arange(6000))
    values, grads = (np.asarray(a, np.float64) for a in draws)
    se = values.std(0) / np.sqrt(len(values))
    assert (np.abs(values.mean(0) - exact) < 5 * se + 1e-6 * np.abs(exact)).all(), (values.mean(0), exact, se)
    grad_se = grads.std(0) / np.sqrt(len(grads))
    z = np.abs(grads.mean(0) - exact_grad) / (grad_se + 1e-9)
    assert z.max() < 5.5, z.max()  # 720 coordinates: a true mean is beyond 5.5 standard errors ~1e-5 of the time
    assert values.std(0).min() > 0  # the partners really change from step to step


@pytest.mark.parametrize("weighting, with_euclid", [("uniform", True), ("inverse_square", True), ("uniform", False)])
def test_the_native_sampled_kernel_equals_the_jax_definition(weighting, with_euclid):
    """Same sampling, same steps: the same estimates and gradient from pair_forces.cc's SampledForces
    and from sampled_forward, to float rounding (also with anchors outside euclid, and repulsion alone)."""
    from layout.engine.native import load
    from layout.engine.sampled import sampled_step_function, with_sampling

    if load() is not None:
        pytest.skip(load())
    n = 2000
    v = clusters(n, seed=2)
    include = np.ones(n, bool)
    include[-10:] = False
    terms = {"repulsion": repulsion_term(n, 1.0, 0.05)}
    if with_euclid:
        terms["euclid"] = euclid_term(v, include, weighting, 1.0)
    x = jnp.asarray(np.random.default_rng(3).standard_normal((n, 3)).astype(np.float32))
    runs = [jax.jit(sampled_step_function(tuple(with_sampling(terms, v, 16, 8, np.array([0, 5], np.uint32),
                                                              native=native).values())))
            for native in (True, False)]
    for step in (0, 1, 17):
        (native_values, native_grad), (values, grad) = (run(x, True, step) for run in runs)
        np.testing.assert_allclose(native_values, values, rtol=2e-5)
        np.testing.assert_allclose(native_grad, grad, atol=2e-5 * float(np.abs(grad).max()))


def run_layout(vectors, pairs, seed=0, steps=400):
    particles = make_particles(synthetic_features(vectors), AnchorsConfig(mode="none"))
    cfg = SimConfig(steps=steps, settle=0, pairs=pairs, seed=seed)
    return simulate(build_energy(particles, ForcesConfig()), particles, cfg, jax.random.key(seed))


def test_a_sampled_layout_reaches_the_exact_layouts_quality_on_a_planted_case():
    v = clusters(1500)
    figures = {}
    for pairs in ("exact", "sampled"):
        figures[pairs], _ = layout_metrics(v, run_layout(v, pairs).final, v.argmax(1))
    assert figures["sampled"]["normalized_stress"] <= 1.02 * figures["exact"]["normalized_stress"], figures
    assert abs(figures["sampled"]["trustworthiness"] - figures["exact"]["trustworthiness"]) <= 0.01, figures
    assert figures["sampled"]["neighbourhood_hit"] >= figures["exact"]["neighbourhood_hit"] - 0.02, figures


def test_sampled_layouts_are_reproducible_and_depend_on_the_key():
    v = clusters(600)
    a, b, c = (run_layout(v, "sampled", seed, steps=60).final for seed in (0, 0, 1))
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-3


def test_auto_samples_above_the_measured_size_only():
    assert pairs_mode("auto", SAMPLED_ABOVE) == "exact"
    assert pairs_mode("auto", SAMPLED_ABOVE + 1) == "sampled"
    assert pairs_mode("exact", 10**6) == "exact" and pairs_mode("sampled", 10) == "sampled"


# ---------------------------------------------------------------------------------------------
# Memory


def test_a_50000_neuron_layout_never_holds_an_n_by_n_array():
    """In a fresh process: the particles, the energies (their rest statistics), the sampled simulation
    and the faithfulness metrics of 50,000 neurons; an N x N float32 array alone would be 10 GB."""
    script = textwrap.dedent("""
        import numpy as np, jax
        from tests.test_scale import clusters, run_layout
        from layout.engine.metrics import layout_metrics
        v = clusters(50000)
        final = run_layout(v, "auto", steps=20).final
        figures, _ = layout_metrics(v, final, v.argmax(1))
        assert np.isfinite(final).all() and figures["trustworthiness"] > 0.5, figures
    """)
    peak_gb = peak_memory_gb(script)
    assert peak_gb < 2.5, f"peak resident memory {peak_gb:.2f} GB"


def peak_memory_gb(script: str) -> float:
    """The peak resident memory (GB) of a fresh Python process running `script`, which must succeed."""
    script += textwrap.dedent("""
        from pathlib import Path
        status = Path("/proc/self/status").read_text()
        print(int(next(l for l in status.splitlines() if l.startswith("VmHWM:")).split()[1]) / 2**20)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    return float(out.stdout.split()[-1])


def test_trajectories_above_the_size_store_float16_frames_and_the_last_frame_exact(tmp_path):
    from layout.core.config import LayoutConfig
    from layout.engine.simulate import Trajectory
    from layout.engine.trajectory_file import HALF_ABOVE, LaidOut, inputs_digest, load_trajectory, save_trajectory

    sizes = {}
    for n in (HALF_ABOVE - 10, HALF_ABOVE + 10):  # 10 anchors: particles HALF_ABOVE and HALF_ABOVE + 20
        vectors = clusters(n, dims=10)
        features = synthetic_features(vectors)
        particles = make_particles(features, AnchorsConfig(mode="free"))
        positions = np.random.default_rng(0).standard_normal((3, particles.n_particles, 3)).astype(np.float32)
        trajectory = Trajectory(positions, np.zeros((3, 1), np.float32), np.arange(3), ("euclid",), None)
        made_by = LaidOut(inputs_digest(particles), LayoutConfig(), "simulation", "k")
        path = save_trajectory(tmp_path / f"{n}.npz", trajectory, particles, features, made_by)
        loaded, _ = load_trajectory(path, particles, made_by)
        assert loaded.positions.dtype == np.float32
        np.testing.assert_array_equal(loaded.final, positions[-1])  # exact, whatever the size
        np.testing.assert_allclose(loaded.positions, positions, rtol=1e-3, atol=1e-3)
        with np.load(path) as stored:
            sizes[n] = stored["positions"].dtype
    assert sizes == {HALF_ABOVE - 10: np.float32, HALF_ABOVE + 10: np.float16}


# ---------------------------------------------------------------------------------------------
# Several devices


def test_a_layout_sharded_over_four_devices_equals_the_one_device_layout():
    """In a process with 4 host devices (XLA_FLAGS), the JAX definition on both sides (the native
    kernel runs on one device only): the same step, and the same 60-step trajectory, to float rounding."""
    script = textwrap.dedent("""
        import dataclasses, numpy as np, jax, jax.numpy as jnp
        from layout.core.config import AnchorsConfig, ForcesConfig, SimConfig
        from layout.engine.energies import build_energy
        from layout.engine.particles import make_particles
        from layout.engine.sampled import sampled_step_function, with_sampling
        from layout.engine.simulate import simulate
        from tests.test_scale import clusters
        from tests.test_layout import synthetic_features
        assert len(jax.devices()) == 4
        v = clusters(1001)  # with 10 free anchors, 1,011 particles: blocks of 253, one padding row
        particles = make_particles(synthetic_features(v), AnchorsConfig(mode="free"))
        terms = build_energy(particles, ForcesConfig())
        x = jnp.asarray(np.random.default_rng(0).standard_normal((particles.n_particles, 3)).astype(np.float32))
        steps = [jax.jit(sampled_step_function(tuple(t for t in with_sampling(
            terms, particles.vectors, 16, 8, np.array([0, 1], np.uint32), devices=d).values()
            if hasattr(t, "sampling")))) for d in (1, 4)]
        (e1, g1), (e4, g4) = (step(x, True, 3) for step in steps)
        np.testing.assert_allclose(e1, e4, rtol=1e-5)
        np.testing.assert_allclose(g1, g4, atol=1e-5 * float(np.abs(g1).max()))
        cfg = SimConfig(steps=60, settle=0, pairs="sampled", partners=8)
        finals = [simulate(terms, particles, dataclasses.replace(cfg, devices=d), jax.random.key(0)).final
                  for d in (1, 4)]
        np.testing.assert_allclose(finals[0], finals[1], atol=1e-4)
        print("equal", float(np.abs(finals[0] - finals[1]).max()))
    """)
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "NEURON_LAYOUT_NATIVE": "0"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "equal" in out.stdout



def test_a_layout_over_two_processes_with_jax_distributed_equals_the_one_device_layout(tmp_path):
    """Two local processes (jax.distributed.initialize, CPU collectives by gloo), two host devices each:
    the particles sharded over the four devices of both give the one-device trajectory."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = textwrap.dedent(f"""
        import sys, numpy as np, jax
        devices = 1 if sys.argv[1] == "alone" else 4
        if devices == 4:
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
            jax.distributed.initialize(coordinator_address="127.0.0.1:{port}", num_processes=2,
                                       process_id=int(sys.argv[1]))
        from layout.core.config import AnchorsConfig, ForcesConfig, SimConfig
        from layout.engine.energies import build_energy
        from layout.engine.particles import make_particles
        from layout.engine.simulate import simulate
        from tests.test_scale import clusters
        from tests.test_layout import synthetic_features
        assert devices == 1 or (len(jax.devices()) == 4 and len(jax.local_devices()) == 2)
        particles = make_particles(synthetic_features(clusters(1001)), AnchorsConfig(mode="free"))
        cfg = SimConfig(steps=60, settle=0, pairs="sampled", partners=8, devices=devices)
        final = simulate(build_energy(particles, ForcesConfig()), particles, cfg, jax.random.key(0)).final
        np.save(sys.argv[2], final)
        if devices == 4:
            jax.distributed.shutdown()
    """)
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "NEURON_LAYOUT_NATIVE": "0"}
    workers = [subprocess.Popen([sys.executable, "-c", script, str(i), str(tmp_path / f"final{i}.npy")], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in (0, 1, "alone")]
    outputs = [w.communicate(timeout=600) for w in workers]
    assert all(w.returncode == 0 for w in workers), [err[-2000:] for _, err in outputs]
    one = np.load(tmp_path / "finalalone.npy")  # the JAX definition on one device, as the sharded run's
    for i in (0, 1):  # each process holds the whole result
        np.testing.assert_allclose(np.load(tmp_path / f"final{i}.npy"), one, atol=1e-4)


def test_more_devices_than_jax_sees_are_refused_naming_the_count():
    from layout.core.errors import UserError
    from layout.engine.sampled import with_sampling

    v = clusters(200)
    particles = make_particles(synthetic_features(v), AnchorsConfig(mode="none"))
    with pytest.raises(UserError, match=r"layout.sim.devices = 64, but JAX sees 1 device\(s\) here"):
        with_sampling(build_energy(particles, ForcesConfig()), v, 16, 8, np.array([0, 1], np.uint32), devices=64)


def test_a_wide_layers_structure_tests_run_on_a_sample_and_the_outputs_say_so(tmp_path, shared_data, capsys,
                                                                             monkeypatch):
    """A layer wider than STRUCTURE_NEURONS is tested on that many of its neurons drawn at random (made
    small here); a layout with sampled pairs gets no 3D null layouts, and says why; its stability
    layouts run one after another with sampled pairs."""
    import json

    from layout.insight import suite
    from layout.run import main

    monkeypatch.setattr(suite, "STRUCTURE_NEURONS", 40)
    out = tmp_path / "run"
    assert main(["configs/euclid.yaml", "--no-window", "--export", "none", "--out", str(out), "--data-dir",
                 str(shared_data), "--set", "model.hidden=[60]", "--set", "train.epochs=1", "--set",
                 "layout.sim.steps=100", "--set", "layout.sim.pairs=sampled", "--set", "structure.stability_seeds=2",
                 "--set", "structure.permutations=19", "--set", "structure.selectivity_nulls=19"]) == 0
    said = capsys.readouterr().out
    assert "layer 1 (tests on 40 of its 60 neurons, drawn at random), dominance clustering in 3D: not tested (not " \
           "made at this size: the 70 particles are laid out with sampled pairs" in said
    structure = json.loads((out / "structure.json").read_text())
    layer = structure["layers"][0]
    assert (layer["n_neurons"], layer["tested_neurons"]) == (60, 40)
    assert {t["null"] for t in layer["tests"]} >= {"shuffled_columns", "untrained", "label_permutation"}
    assert not any(t["null"].startswith("relayout") for t in layer["tests"])
    assert all(t["n_null"] == 19 for t in layer["tests"])
    assert structure["stability"]["seeds"] == 2 and np.isfinite(structure["stability"]["median_spread"])
    assert "## Layer 1 (60 neurons; tests on 40 of them, drawn at random)" in (out / "report.md").read_text()
    assert len(structure["ablation"]["groups"]) >= 2  # the whole layer is ablated, not the sample


def test_silencing_neurons_above_the_output_layer_equals_running_the_network_without_them():
    """The shortcut (intact logits less the silenced neurons' share) gives what a forward pass with the
    neurons' activations set to 0 gives, for index groups and for nested random groups summed segment by
    segment."""
    from layout.insight.ablation import nested_nulls, random_groups, silenced_accuracy
    from models.network.network import History, Network, Snapshots

    rng = np.random.default_rng(0)
    n, images, classes = 50, 400, 10
    w, b = rng.normal(size=(n, classes)).astype(np.float32), rng.normal(size=classes).astype(np.float32)
    hidden = rng.random((images, n)).astype(np.float32)
    labels = np.arange(images) % classes
    hidden[np.arange(images), labels] += 3  # neuron c helps class c a little: accuracies neither 0 nor 1
    empty = np.zeros(0)
    network = Network(sizes=(784, n, classes), activation="sigmoid",
                      weights=(rng.normal(size=(784, n)).astype(np.float32), w), biases=(np.zeros(n, np.float32), b),
                      dataset="random", classes=tuple(range(classes)), class_names=tuple(map(str, range(classes))),
                      history=History(empty, empty, empty, empty), snapshots=Snapshots(empty, empty, empty, (), ()),
                      test_accuracy=0.0, train_accuracy=0.0, train_seconds=0.0, epochs=0)
    def without(chosen):
        h = hidden.copy()
        h[:, chosen] = 0
        predicted = (h @ w + b).argmax(1)
        return [(predicted[labels == c] == c).mean() for c in range(classes)]

    silenced = np.vstack([random_groups(rng, n, 7, 5), np.arange(7)[None]])
    got = silenced_accuracy(network, 0, hidden, labels, silenced)
    for g, chosen in enumerate(silenced):
        np.testing.assert_allclose(got[g], without(chosen), atol=1e-6)
    nulls, where = nested_nulls(rng, n, np.array([9, 3, 20, 3]), 6)
    assert nulls.sizes == (3, 3, 9, 20) and list(where) == [2, 0, 3, 1]
    got = silenced_accuracy(network, 0, hidden, labels, nulls)  # [6 orderings, 4 sizes, classes]
    assert got.shape == (6, 4, classes)
    for r in range(6):
        for k, size in enumerate(nulls.sizes):
            np.testing.assert_allclose(got[r, k], without(nulls.order[r, :size]), atol=1e-6)


def test_each_classs_random_groups_are_uniform_groups_of_its_size():
    """The nested nulls: every class's r-th random group has the class's size, no neuron twice, and each
    neuron is in it as often as chance says (size / n)."""
    from layout.insight.ablation import nested_nulls

    sizes, n, count = np.array([5, 30, 12]), 40, 4000
    nulls, where = nested_nulls(np.random.default_rng(1), n, sizes, count)
    for size, k in zip(sizes, where):
        groups = nulls.groups()[k]
        assert groups.shape == (count, size)
        assert all(len(set(g)) == size for g in groups[:200])
        frequency = np.bincount(groups.ravel(), minlength=n) / count
        np.testing.assert_allclose(frequency, size / n, atol=4 * np.sqrt(size / n * (1 - size / n) / count) + 1e-9)



# ---------------------------------------------------------------------------------------------
# Features one batch of test images at a time


def random_network(widths: tuple[int, ...], seed: int = 0):
    """An untrained MLP 784-widths-10 (sigmoid), its weights drawn as training draws them (Glorot uniform)."""
    from models.network.mlp import init_limit
    from models.network.network import History, Network, Snapshots

    sizes = (784, *widths, 10)
    rng = np.random.default_rng(seed)
    weights = tuple(rng.uniform(-init_limit(a, b, "sigmoid"), init_limit(a, b, "sigmoid"), (a, b)).astype(np.float32)
                    for a, b in zip(sizes[:-1], sizes[1:]))
    empty = np.zeros(0)
    return Network(sizes=sizes, activation="sigmoid", weights=weights,
                   biases=tuple(np.zeros(b, np.float32) for b in sizes[1:]), dataset="random", classes=tuple(range(10)),
                   class_names=tuple(map(str, range(10))), history=History(empty, empty, empty, empty),
                   snapshots=Snapshots(empty, empty, empty, (), ()), test_accuracy=0.0, train_accuracy=0.0,
                   train_seconds=0.0, epochs=0)


def test_features_and_top_images_by_batches_equal_those_of_the_whole_activation_matrix(shared_data):
    """Class means, top and bottom images and ablations, computed a batch of test images at a time (three
    batches and a part), equal what the whole [n_images, N] matrix gives."""
    from layout.core.config import DataConfig
    from layout.engine.features import EVAL_BATCH, hidden_activations, neuron_features, top_examples
    from layout.insight.ablation import ablate, silenced_accuracy
    from models.data.datasets import Split, load_dataset

    test = load_dataset(DataConfig(dir=str(shared_data))).test
    test = Split(test.images[:3 * EVAL_BATCH + 300], test.labels[:3 * EVAL_BATCH + 300])
    network = random_network((40, 30))
    whole = hidden_activations(network, test.images)
    features = neuron_features(network, test)
    for l, a in enumerate(whole):
        want = np.stack([a[test.labels == c].mean(0) for c in range(10)], axis=1)
        np.testing.assert_allclose(features.class_activation[features.layer == l], want, rtol=1e-5, atol=1e-6)
    top, bottom = top_examples(network, test.images, 7)
    joined = np.concatenate(whole, axis=1)
    order = np.argsort(-joined, axis=0, kind="stable")  # ties to the lower index
    np.testing.assert_array_equal(top, order[:7].T)
    np.testing.assert_array_equal(bottom, np.argsort(joined, axis=0, kind="stable")[:7].T)
    ablation = ablate(network, test, features.dominant, features.layer, 5, seed=0)
    singles = np.concatenate([silenced_accuracy(network, h, a, test.labels, np.arange(a.shape[1])[:, None])
                              for h, a in enumerate(whole)])
    np.testing.assert_allclose(ablation.class_drop, ablation.baseline - singles, atol=1e-6)


def test_the_features_of_a_50000_neuron_layer_never_hold_its_activations_for_every_test_image(shared_data):
    """In a fresh process: a 784-50000-10 network's features and top images over the 10,000 test images
    (the activation matrix alone would be 2 GB) stay well below that."""
    script = textwrap.dedent(f"""
        from layout.core.config import DataConfig
        from layout.engine.features import neuron_features, top_examples
        from models.data.datasets import load_dataset
        from tests.test_scale import random_network
        test = load_dataset(DataConfig(dir={str(shared_data)!r})).test
        network = random_network((50000,))
        features = neuron_features(network, test)
        top, _ = top_examples(network, test.images, 9)
        assert features.class_activation.shape == (50000, 10) and top.shape == (50000, 9)
    """)
    peak_gb = peak_memory_gb(script)
    assert peak_gb < 1.5, f"peak resident memory {peak_gb:.2f} GB"
