"""Is the structure real? The statistics against their nulls on planted and random networks, Mantel
tests, ablation of a hand-built network, stability, and the report of a real run."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from layout.core.config import DataConfig
from layout.insight.structure import (
    LayerInputs,
    LayerStructure,
    NullTest,
    class_statistics,
    layer_structure,
    mantel,
    nearest,
    pairwise_distances,
    permutations,
)
from layout.insight.verdicts import headline, verdict

REPO = Path(__file__).resolve().parents[1]
C = 10


def planted_vectors(n: int, seed: int, spread: float = 0.3) -> np.ndarray:
    """Output vectors clustered by class: neuron i drives class i % C hard, plus noise."""
    rng = np.random.default_rng(seed)
    return (np.eye(C)[np.arange(n) % C] + spread * rng.normal(size=(n, C))).astype(np.float32)


def inputs(vectors: np.ndarray, seed: int = 0, **overrides) -> LayerInputs:
    rng = np.random.default_rng(seed)
    n = len(vectors)
    values = dict(layer=0, sizes=(784, n, C), activation="sigmoid", vectors=vectors, dominant=vectors.argmax(1),
                  activation_dominant=rng.integers(0, C, n), positions=rng.normal(size=(n, 3)).astype(np.float32),
                  receptive_fields=rng.normal(size=(n, 784)).astype(np.float32),
                  activations=rng.random((500, n)).astype(np.float32), relayouts={}, shuffled_label_vectors=None)
    return LayerInputs(**{**values, **overrides})


def by_null(result, labels="dominant", space="output") -> dict[tuple[str, str], NullTest]:
    return {(t.statistic, t.null): t for t in result.tests if t.labels == labels and t.space == space}


def test_statistics_match_their_definitions_on_a_small_case():
    rng = np.random.default_rng(1)
    points = rng.normal(size=(30, 4)).astype(np.float32)
    labels = rng.integers(0, 3, 30)
    d = pairwise_distances(points)
    silhouette, hit, ratio = np.asarray(class_statistics(d, nearest(d, 5), labels, 3))
    full = np.linalg.norm(points[:, None] - points[None], axis=2)
    scores = []  # the silhouette by its definition, one neuron at a time
    for i in range(30):
        own = (labels == labels[i]) & (np.arange(30) != i)
        a = full[i, own].mean()
        b = min(full[i, labels == c].mean() for c in set(labels) - {labels[i]})
        scores.append((b - a) / max(a, b))
    assert silhouette == pytest.approx(np.mean(scores), abs=1e-5)
    same = labels[:, None] == labels[None]
    off = ~np.eye(30, dtype=bool)
    assert ratio == pytest.approx(full[same & off].mean() / full[~same].mean(), rel=1e-5)
    order = np.argsort(np.where(off, full, np.inf), 1)[:, :5]
    assert hit == pytest.approx((labels[order] == labels[:, None]).mean())


pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def test_a_planted_network_is_real_structure_against_every_null():
    result = layer_structure(inputs(planted_vectors(100, 0)), 200, 10, seed=0)
    tests = by_null(result)
    for statistic in ("silhouette", "neighbourhood_hit", "distance_ratio"):
        for null in ("shuffled_columns", "untrained"):
            assert tests[statistic, null].p < 0.01, (statistic, null, tests[statistic, null].summary())
            assert tests[statistic, null].z > 3
    assert verdict(result.find("silhouette", "output")) == "real structure"


def test_an_iid_random_network_is_consistent_with_chance():
    vectors = np.random.default_rng(3).normal(size=(100, C)).astype(np.float32)
    result = layer_structure(inputs(vectors), 200, 10, seed=0)
    tests = by_null(result)
    for statistic in ("silhouette", "neighbourhood_hit", "distance_ratio"):
        assert tests[statistic, "shuffled_columns"].p > 0.05, tests[statistic, "shuffled_columns"].summary()
    # the trap: vectors grouped by their own argmax look clustered against a plain label shuffle
    from layout.insight.structure import label_nulls, observed_statistics

    observed = observed_statistics(vectors, vectors.argmax(1), C, 10)
    shuffled = label_nulls(vectors, vectors.argmax(1), C, permutations(np.random.default_rng(0), 200, 100), 10)
    assert (shuffled[:, 0] < observed[0]).mean() > 0.99  # "significant" by the invalid null, rightly not used


def test_activation_labels_from_another_source_are_tested_by_label_permutation():
    vectors = planted_vectors(100, 1)
    planted = layer_structure(inputs(vectors, activation_dominant=vectors.argmax(1)), 200, 10, seed=0)
    unrelated = layer_structure(inputs(vectors), 200, 10, seed=0)
    assert by_null(planted, "activation_dominant")["silhouette", "label_permutation"].p < 0.01
    assert by_null(unrelated, "activation_dominant")["silhouette", "label_permutation"].p > 0.05
    agreement = {t.statistic: t for t in planted.tests}["agreement"]
    assert agreement.observed == 1.0 and agreement.p < 0.01
    assert planted.confusion.trace() == 100


def test_a_verdict_needs_null_samples_enough_to_decide():
    def beaten(null: str, n: int) -> NullTest:  # every null sample below the observed silhouette
        return NullTest("silhouette", "layout", "dominant", null, 0.5, np.linspace(-0.1, 0.1, n))

    assert beaten("relayout_untrained", 99).p == 0.01 and verdict([beaten("relayout_untrained", 99)]) == "real structure"
    assert beaten("relayout_untrained", 19).p == 0.05 and verdict([beaten("relayout_untrained", 19)]) == "weak evidence"
    few = beaten("shuffled_labels", 3)  # p = 0.25 at best: it cannot decide, so it does not
    assert verdict([beaten("untrained", 999), few]) == "real structure" and verdict([few]) == "undetermined"
    line = headline(LayerStructure(0, 40, (beaten("relayout_untrained", 19), few), None), "layout")
    assert line.endswith("weak evidence (every one of its 19 samples is beaten, the most they can show: raise "
                         "structure.layout_nulls for a firmer verdict)")
    line = headline(LayerStructure(0, 40, (beaten("relayout_untrained", 3), beaten("relayout_shuffled_columns", 3)),
                                   None), "layout")
    assert line == ("dominance clustering in 3D: not tested (too few null samples to reach p <= 0.05 "
                    "(relayout_untrained 3, relayout_shuffled_columns 3): raise structure.layout_nulls to at least 19)")
    only_output = NullTest("silhouette", "output", "dominant", "untrained", 0.5, np.linspace(-0.1, 0.1, 99))
    line = headline(LayerStructure(0, 40, (only_output,), None), "layout")  # the training timeline: no null layouts
    assert line == ("dominance clustering in 3D: not tested (no null layouts were made: they are laid out for "
                    "render.timeline = simulation, with structure.layout_nulls of at least 19)")
    assert headline(LayerStructure(0, 40, (few,), None), "layout").endswith(
        "(shuffled_labels 3): raise structure.shuffled_label_runs to at least 19)")
    chance = NullTest("silhouette", "layout", "dominant", "untrained", 0.0, np.linspace(-0.1, 0.1, 99))
    assert verdict([beaten("relayout_untrained", 99), chance]) == "consistent with chance"  # the weakest decides


def test_mantel_finds_a_planted_correlation_and_not_an_absent_one():
    rng = np.random.default_rng(0)
    points = rng.normal(size=(80, 5))
    a = np.linalg.norm(points[:, None] - points[None], axis=2)
    noisy = points + 0.5 * rng.normal(size=points.shape)
    b_related = np.linalg.norm(noisy[:, None] - noisy[None], axis=2)
    other = rng.normal(size=(80, 5))
    b_absent = np.linalg.norm(other[:, None] - other[None], axis=2)
    orders = permutations(np.random.default_rng(1), 500, 80)
    r, null = mantel(a, b_related, orders)
    assert r > 0.5 and (1 + (null >= r).sum()) / 501 < 0.01
    r, null = mantel(a, b_absent, orders)
    assert (1 + (null >= r).sum()) / 501 > 0.05
    upper = np.triu_indices(80, 1)
    assert mantel(a, b_related, orders[:1])[0] == pytest.approx(np.corrcoef(a[upper], b_related[upper])[0, 1], abs=1e-4)


def hand_built_network():
    """784-4-3: hidden neuron c (c < 3) alone carries class c (on for images of class c, via a pixel);
    neuron 3 does nothing."""
    from models.network.network import History, Network, Snapshots

    w0 = np.zeros((784, 4), np.float32)
    w0[np.arange(3), np.arange(3)] = 20.0  # pixel c switches neuron c on
    b0 = np.full(4, -10.0, np.float32)
    w1 = np.zeros((4, 3), np.float32)
    w1[np.arange(3), np.arange(3)] = 5.0
    empty = np.zeros(0)
    return Network(sizes=(784, 4, 3), activation="sigmoid", weights=(w0, w1), biases=(b0, np.zeros(3, np.float32)),
                   dataset="hand-built", classes=(0, 1, 2), class_names=("0", "1", "2"),
                   history=History(empty, empty, empty, empty),
                   snapshots=Snapshots(empty, empty, empty, (), ()), test_accuracy=1.0, train_accuracy=1.0,
                   train_seconds=0.0, epochs=0)


def test_ablating_the_neuron_that_alone_carries_a_class_drops_that_class():
    from layout.insight.ablation import ablate
    from models.data.datasets import Split

    net = hand_built_network()
    labels = np.repeat(np.arange(3), 50)
    images = np.zeros((150, 28, 28), np.uint8)
    images.reshape(150, -1)[np.arange(150), labels] = 255
    result = ablate(net, Split(images, labels), dominant=np.array([0, 1, 2, 0]), layer_of=np.zeros(4, int),
                    n_random=50, seed=0)
    np.testing.assert_allclose(result.baseline, 1.0)
    assert result.class_drop[1, 1] > 0.9  # neuron 1 alone carries class 1
    assert result.class_drop[1, 0] == 0 and result.class_drop[1, 2] == 0
    assert result.drop[3] == 0  # the idle neuron costs nothing
    assert result.drop[1] == pytest.approx(1 / 3, abs=0.01)
    group_1 = [g for g in result.groups if g["class"] == 1][0]
    assert group_1["size"] == 1 and group_1["drop"] > 0.9
    # a random single neuron (of 4) hits neuron 1 about a quarter of the time
    assert 0.1 < group_1["null_mean"] < 0.45 and 0.1 < group_1["p"] < 0.45


def test_stability_of_a_deterministic_layout_and_the_relayout_null():
    from layout.core.config import LayoutConfig
    from layout.engine.features import NeuronFeatures
    from layout.engine.particles import make_particles
    from layout.insight.stability import relayout, stability

    vectors = planted_vectors(40, 2)
    n = len(vectors)
    features = NeuronFeatures(output_vectors=vectors, dominant=vectors.argmax(1), activation_dominant=vectors.argmax(1),
                              class_activation=vectors, receptive_fields=np.zeros((n, 28, 28), np.float32),
                              layer=np.zeros(n, int), index=np.arange(n), class_names=tuple(map(str, range(C))),
                              influence="weights")
    cfg = LayoutConfig()
    disparity, spread, aligned = stability(make_particles(features, cfg.anchors), cfg, 3)
    assert aligned.shape == (3, n + C, 3) and len(disparity) == 2 and spread.shape == (n + C,)
    assert ((disparity >= 0) & (disparity <= 1)).all() and np.isfinite(spread).all() and (spread > 0).any()
    positions, labels = relayout(features, np.stack([vectors, vectors[::-1]]), cfg, seed=0)
    assert positions.shape == (2, n, 3) and (labels[1] == vectors[::-1].argmax(1)).all()


def test_a_reproduced_arrangement_is_told_from_a_relabelled_one():
    from scipy.spatial.transform import Rotation

    from layout.insight.stability import arrangement_test, matched_disparity

    rng = np.random.default_rng(0)
    a = rng.normal(size=(10, 3))
    turned = 2.5 * a @ Rotation.random(random_state=1).as_matrix() + 1.0  # same arrangement, moved and scaled
    d, p = arrangement_test(a, turned + 0.05 * rng.normal(size=a.shape), rng, 999)
    assert d < 0.01 and p == 0.001
    d, p = arrangement_test(a, rng.normal(size=(10, 3)), rng, 999)
    assert d > 0.3 and p > 0.05
    # the same network with its neurons in another order, laid out turned: matching undoes both
    features = inputs_features(planted_vectors(40, 0))
    order = rng.permutation(40)
    shuffled = dataclasses.replace(features, output_vectors=features.output_vectors[order], layer=features.layer[order])
    positions = rng.normal(size=(40, 3))
    assert matched_disparity(features, positions, shuffled, turned_positions := positions[order] @ Rotation.random(
        random_state=2).as_matrix()) < 1e-6
    assert matched_disparity(features, positions, shuffled, rng.permutation(turned_positions)) > 0.3


def inputs_features(vectors: np.ndarray):
    from layout.engine.features import NeuronFeatures

    n, c = vectors.shape
    return NeuronFeatures(output_vectors=vectors, dominant=vectors.argmax(1), activation_dominant=vectors.argmax(1),
                          class_activation=np.zeros((n, c), np.float32), receptive_fields=np.zeros((n, 1, 1)),
                          layer=np.zeros(n, int), index=np.arange(n), class_names=tuple(map(str, range(c))),
                          influence="weights")


@pytest.fixture(scope="module")
def euclid_run(tmp_path_factory, shared_data):
    out = tmp_path_factory.mktemp("euclid")
    result = subprocess.run([sys.executable, "-m", "layout.run", "configs/euclid.yaml", "--no-window", "--export",
                             "none", "--out", str(out), "--data-dir", str(shared_data),
                             "--set", "structure.retrain_runs=1"], cwd=REPO, capture_output=True,
                            text=True, timeout=600, env={**os.environ})
    assert result.returncode == 0, result.stderr
    return out, result.stdout


def test_the_euclid_run_reports_its_nulls_p_values_and_verdict(euclid_run):
    out, stdout = euclid_run
    summary = json.loads((out / "structure.json").read_text())
    (layer,) = summary["layers"]
    nulls = {t["null"] for t in layer["tests"]}
    assert {"shuffled_columns", "untrained", "relayout_shuffled_columns", "relayout_untrained",
            "label_permutation", "neuron_permutation"} <= nulls
    assert all(0 < t["p"] <= 1 for t in layer["tests"] if t["p"] is not None)
    report = (out / "report.md").read_text()
    assert "untrained" in report and "| silhouette | output | dominant | shuffled_columns |" in report
    assert summary["verdicts"][0].startswith("layer 1, dominance clustering in 3D: silhouette ")
    assert summary["verdicts"][0] in stdout  # the closing summary shows the verdict
    assert (out / "structure_layer1.png").stat().st_size > 10_000
    header = (out / "neurons.csv").read_text().splitlines()[0].split(",")
    assert header[-3:] == ["ablation_drop", "ablation_own_class_drop", "spread"]
    retrained = summary["retrained"]  # structure.retrain_runs=1: one more network, train seed 1
    assert retrained["train_seeds"] == [1] and 0 < retrained["class_p"][0] <= 1
    assert 0 <= retrained["class_disparity"][0] <= 1 and 0 <= retrained["neuron_disparity"][0] <= 1
    assert summary["verdicts"][-1].startswith("class arrangement in 3D across 1 retraining (train seed 1)")
    assert summary["verdicts"][-1] in stdout and "## Stability across retraining" in report


def test_structure_results_are_reused_until_something_they_depend_on_changes(tmp_path, shared_data, capsys):
    from layout.run import main

    config = tmp_path / "small.yaml"
    config.write_text("data: {limit: 1000}\nmodel: {hidden: [12]}\ntrain: {epochs: 3}\n"
                      "structure: {permutations: 99, layout_nulls: 19, stability_seeds: 2, ablation_groups: 10}\n")

    def run(name: str, *extra: str) -> tuple[Path, str]:
        out = tmp_path / name
        assert main([str(config), "--no-window", "--export", "none", "--out", str(out), "--data-dir", str(shared_data),
                     *extra]) == 0
        return out, capsys.readouterr().out

    first, said = run("first")
    assert "structure tests (" in said and "reused from cache" not in said.split("structure tests")[1].splitlines()[0]
    again, said = run("again", "--set", "render.edges=1")  # a render setting: nothing to test again
    assert "structure tests (reused from cache, " in said
    for name in ("structure.json", "report.md", "structure_layer1.png", "neurons.csv"):
        assert (again / name).read_bytes() == (first / name).read_bytes(), name
    _, said = run("more", "--set", "structure.permutations=199")  # a structure setting: tested again
    assert "structure tests (reused" not in said
    assert json.loads((tmp_path / "more" / "structure.json").read_text())["layers"][0]["tests"][0]["n_null"] == 199
    _, said = run("retest", "--retrain")
    assert "structure tests (reused" not in said


def test_selectivity_and_effective_classes_follow_their_formulas_on_a_hand_made_case():
    from layout.insight.selectivity import effective_classes, selectivity_index

    means = np.array([[1.0, 0, 0], [1, 1, 1], [2, 1, 0]])
    np.testing.assert_allclose(selectivity_index(means), [1.0, 0.0, (2 - 0.5) / (2 + 0.5)])
    p = np.array([2, 1, 0]) / 3
    np.testing.assert_allclose(effective_classes(means), [1.0, 3.0, np.exp(-(p[:2] * np.log(p[:2])).sum())])
    tanh_like = np.array([[1.0, -0.5, 0.0], [-1.0, -1.0, -1.0]])  # class means below 0, as tanh gives
    np.testing.assert_allclose(selectivity_index(tanh_like)[0], (1 + 0.25) / (1 - 0.25))  # above 1
    assert np.isnan(selectivity_index(tanh_like)[1]) and np.isnan(effective_classes(tanh_like)).all()


def test_a_one_class_layer_is_more_selective_than_untrained_networks():
    from layout.insight.selectivity import layer_tests, untrained_class_means

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (300, 28, 28)).astype(np.uint8)
    labels = np.arange(300) % 3
    null = untrained_class_means((784, 8, 3), "sigmoid", images, labels, 19, rng)
    assert len(null) == 1 and null[0].shape == (19, 8, 3)
    one_class = np.eye(3)[np.arange(8) % 3] * 0.9 + 0.01  # each neuron fires for one class only
    selectivity, effective = layer_tests(one_class, null[0])
    assert selectivity.p == effective.p == pytest.approx(1 / 20)  # beyond all 19 untrained networks
    assert selectivity.observed > 0.9 > selectivity.null_values.max()
    assert effective.observed < 1.2 < effective.null_values.min()


def test_the_euclid_run_writes_each_neurons_selectivity_and_compares_it_with_untrained(euclid_run, shared_data):
    from layout.insight.selectivity import effective_classes, selectivity_index
    from models.data.datasets import load_dataset
    from models.network.store import load_network

    out, _ = euclid_run
    rows = list(csv.DictReader((out / "neurons.csv").open()))
    network = load_network(out / "network.npz")
    test = load_dataset(DataConfig(dir=str(shared_data))).test
    hidden = 1 / (1 + np.exp(-(test.images.reshape(-1, 784) / 255.0 @ network.weights[0] + network.biases[0])))
    means = np.stack([hidden[test.labels == c].mean(0) for c in range(10)], 1)  # numpy, apart from the tool
    np.testing.assert_allclose([float(r["selectivity"]) for r in rows], selectivity_index(means), rtol=1e-4)
    np.testing.assert_allclose([float(r["effective_classes"]) for r in rows], effective_classes(means), rtol=1e-4)
    (layer,) = json.loads((out / "structure.json").read_text())["layers"]
    tests = {t["statistic"]: t for t in layer["tests"] if t["space"] == "activations"}
    assert tests["selectivity"]["n_null"] == 99 and tests["selectivity"]["p"] == pytest.approx(0.01)
    assert tests["selectivity"]["observed"] > tests["selectivity"]["null_mean"]
    assert layer["selectivity"]["selectivity"]["observed"][1] > layer["selectivity"]["selectivity"]["untrained"][2]
    assert "| selectivity | 0." in (out / "report.md").read_text()


def test_a_network_too_small_to_test_is_told_so_without_the_nulls_relayouts(tmp_path, shared_data, capsys):
    """Seed 001's 784-1-2 network: no layer has the neurons a test needs, so no null network is laid out
    again, retrained or run for stability (minutes for nothing); the ablation still runs."""
    from layout.core.config_file import load_config
    from layout.insight.structure import MIN_NEURONS
    from layout.insight.suite import count_parts, options_for
    from layout.run import main

    cfg = load_config(REPO / "configs" / "binary01.yaml")
    assert cfg.structure.layout_nulls and cfg.structure.stability_seeds >= 2  # what a testable layer would get
    assert options_for(cfg, [MIN_NEURONS], MIN_NEURONS + 2) == cfg.structure
    assert count_parts(cfg, [1], 3) == 2  # the layer's line and the ablation
    out = tmp_path / "run"
    assert main(["configs/binary01.yaml", "--no-window", "--export", "none", "--out", str(out), "--data-dir",
                 str(shared_data), "--set", "train.epochs=1"]) == 0
    assert "layer 1: 1 neurons, too few to test" in capsys.readouterr().out
    structure = json.loads((out / "structure.json").read_text())
    assert structure["layers"][0]["tests"] == [] and structure["stability"] is None
    assert structure["ablation"]["groups"]
