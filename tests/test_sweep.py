"""`python -m layout.sweep`: a grid of real runs on real MNIST, its table and contact sheet; the
figures it adds, on hand-made cases; bad sweep files refused before any training."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from layout.core.run_folder import is_output_name
from layout.core.sweep_file import point_label, read_sweep
from layout.insight.sweep_figures import dead_fraction, dedication, network_sparsity, weight_sparsity
from layout.insight.sweep_report import seed_summary
from layout.run import sweep_main as main
from tests.conftest import messages

REPO = Path(__file__).resolve().parents[1]

BASE = """
data: {limit: 1000}
model: {hidden: [12], activation: relu}
train: {epochs: 8, learning_rate: 0.01, batch_size: 100}
layout: {anchors: {mode: free}, sim: {steps: 60, chunk: 60}}
render: {width: 320, height: 240}
structure: {permutations: 99, layout_nulls: 3, stability_seeds: 0, ablation_groups: 10}
"""


def write_sweep(folder: Path, grid: str, base: str = BASE, extra: str = "") -> Path:
    (folder / "base.yaml").write_text(base)
    sweep = folder / "tiny_sweep.yaml"
    sweep.write_text(f"base: base.yaml\n{extra}grid:\n{grid}")
    return sweep


def test_hand_made_figures():
    constant = np.ones((50, 1))
    varying = np.arange(50.0)[:, None]
    assert dead_fraction(np.hstack([constant, varying, varying * 0])) == pytest.approx(2 / 3)
    w = np.array([[1.0, 0.005], [-0.5, 0.0]])
    assert weight_sparsity(w) == 0.5  # 0.005 and 0 are below 1% of the largest magnitude, 1
    assert network_sparsity([w, np.array([[2.0, 1.0, 0.01]])]) == pytest.approx((2 + 1) / 7)
    assert dedication(np.eye(4)) == 1.0
    assert dedication(np.ones((3, 4))) == 0.25
    assert dedication(np.array([[3.0, -1.0], [0.0, 0.0]])) == 0.75  # a neuron with no output weights is left out


def test_seed_summary_averages_over_seeds_only():
    rows = [{"train.l1": l1, "train.seed": s, "layer": 1, "test_accuracy": acc, "silhouette_3d": 0.1 * s,
             "verdict_output": "real structure" if s else "consistent with chance", "verdict_3d": "weak evidence",
             **{c: 0.5 for c in ("dead_fraction", "weight_sparsity_in", "dedication", "silhouette_output",
                                 "activation_hit_output", "agreement", "mantel_receptive_field",
                                 "mantel_coactivation")}}
            for l1, acc in ((0, 0.9), (0.01, 0.7)) for s in (0, 1, 2)]
    lines = seed_summary(("train.l1", "train.seed"), rows).splitlines()
    assert len(lines) == 2 + 2  # header, rule, one line per l1
    cells = [c.strip() for c in lines[3].split("|")[1:-1]]
    assert cells[:3] == ["0.01", "1", "3"]
    assert cells[3] == "0.700 +/- 0.000"
    assert cells[8] == "0.100 +/- 0.100"  # silhouette_3d of seeds 0, 1, 2: 0, 0.1, 0.2
    assert cells[-2:] == ["2/3", "0/3"]


def test_a_sweep_runs_every_point_and_writes_its_table_and_contact_sheet(tmp_path, shared_data, capsys):
    sweep = write_sweep(tmp_path, "  train.l1: [0, 0.003]\n  train.seed: [0, 1]\n")
    out = tmp_path / "out"
    assert main([str(sweep), "--out", str(out), "--data-dir", str(shared_data)]) == 0
    stdout = capsys.readouterr().out
    assert stdout.count("point ") == 4 and "point 4/4 (l1=0.003 seed=1)" in stdout
    rows = list(csv.DictReader((out / "sweep.csv").open()))
    assert [(r["point"], r["train.l1"], r["train.seed"], r["layer"]) for r in rows] == [
        ("1", "0", "0", "1"), ("2", "0", "1", "1"), ("3", "0.003", "0", "1"), ("4", "0.003", "1", "1")]
    for i, row in enumerate(rows, start=1):  # each point is a full run, with its own outputs, numbered from 1
        metrics = json.loads((out / "points" / f"{i:02d}" / "metrics.json").read_text())
        assert float(row["test_accuracy"]) == pytest.approx(metrics["test_accuracy"], abs=1e-4)
        structure = json.loads((out / "points" / f"{i:02d}" / "structure.json").read_text())
        silhouettes = [t for t in structure["layers"][0]["tests"]
                       if (t["statistic"], t["space"], t["labels"]) == ("silhouette", "layout", "dominant")]
        assert float(row["silhouette_3d_p"]) == pytest.approx(max(t["p"] for t in silhouettes), abs=1e-4)
        assert 0 < float(row["agreement_p"]) <= 1 and 0 <= float(row["dead_fraction"]) <= 1
    # strong L1 drives weights to zero, which is what the sparsity column must show
    sparsity = {(r["train.l1"], r["train.seed"]): float(r["weight_sparsity"]) for r in rows}
    for seed in ("0", "1"):
        assert sparsity[("0.003", seed)] > sparsity[("0", seed)] + 0.2
    md = (out / "sweep.md").read_text()
    assert "## Over train.seed" in md and "| 0.003 | 1 | 2 |" in md
    from PIL import Image

    sheet = np.asarray(Image.open(out / "contact_sheet.png").convert("L"), float)
    assert sheet.shape[1] > 4 * 320 * 0.8 and sheet.std() > 10  # four tiles side by side, not blank


def test_a_failing_point_is_reported_and_the_sweep_goes_on(tmp_path, shared_data, capsys):
    sweep = write_sweep(tmp_path, "  train.l2: [0, 1000]\n", extra="set: {train.optimizer: sgd, train.learning_rate: 0.1}\n")
    out = tmp_path / "out"
    assert main([str(sweep), "--out", str(out), "--data-dir", str(shared_data)]) == 1
    captured = capsys.readouterr()
    assert "point 1/2 (l2=0): test accuracy" in captured.out
    assert "point 2/2 (l2=1000): failed: the training loss became nan" in captured.out
    assert messages(captured.err) == ["error: 1 of 2 points failed (listed in sweep.md); the others are in the table"]
    rows = list(csv.DictReader((out / "sweep.csv").open()))
    assert [(r["point"], r["train.l2"], r["layer"], bool(r["error"])) for r in rows] == [("1", "0", "1", False),
                                                                                            ("2", "1000", "", True)]
    assert float(rows[0]["test_accuracy"]) > 0.5 and "lower train.learning_rate" in rows[1]["error"]
    assert "## Failed points" in (out / "sweep.md").read_text() and (out / "contact_sheet.png").is_file()


def test_a_point_failing_in_any_way_is_a_failed_point(tmp_path, shared_data, capsys, monkeypatch):
    """Not only the user's errors: a point that crashes (here XLA running out of memory, injected) is
    listed as failed with its type and message, and the other points are in the table."""
    from layout.pipeline import sweep as sweep_module

    real = sweep_module.run_point

    def crashing_second(cfg, out, retrain):
        if out.name == "02":
            raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 4.2 GiB")
        return real(cfg, out, retrain)

    monkeypatch.setattr(sweep_module, "run_point", crashing_second)
    sweep = write_sweep(tmp_path, "  train.seed: [0, 1]\n")
    out = tmp_path / "out"
    assert main([str(sweep), "--out", str(out), "--data-dir", str(shared_data)]) == 1
    captured = capsys.readouterr()
    assert ("point 2/2 (seed=1): failed: RuntimeError: RESOURCE_EXHAUSTED: Out of memory while trying to allocate "
            "4.2 GiB (--debug shows its traceback)") in captured.out
    rows = list(csv.DictReader((out / "sweep.csv").open()))
    assert [(r["point"], bool(r["error"])) for r in rows] == [("1", False), ("2", True)]
    assert (out / "points" / "01" / "snapshot.png").is_file() and (out / "contact_sheet.png").is_file()
    assert all(is_output_name(p.name) for p in out.iterdir())


def test_an_interrupted_sweep_keeps_the_finished_points_table_and_sheet_apart(tmp_path, shared_data):
    sweep = write_sweep(tmp_path, "  train.seed: [0, 1, 2]\n")
    out, work = tmp_path / "out", tmp_path / ".out.running"
    process = subprocess.Popen([sys.executable, "-m", "layout.sweep", str(sweep), "--out", str(out), "--data-dir",
                                str(shared_data)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None and not (work / "points" / "02").exists():
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    kept = tmp_path / "out.incomplete"
    assert messages(stderr)[-1] == (f"interrupted: nothing half-written was left; this run's finished files are in "
                                    f"{kept}; {out} was not created")
    assert "point 1/3 (seed=0): test accuracy" in stdout and not out.exists()
    assert "**Interrupted: 1 of 3 points ran.**" in (kept / "sweep.md").read_text()
    assert [r["point"] for r in csv.DictReader((kept / "sweep.csv").open())] == ["1"]
    assert (kept / "contact_sheet.png").is_file() and (kept / "points" / "01" / "metrics.json").is_file()


@pytest.mark.parametrize("grid, extra, message", [
    ("  train.l1: 0.001\n", "", "grid.train.l1 must be a non-empty list"),
    ("  train.lr: [0.1]\n", "", "unknown key 'train.lr'"),
    ("  train.l1: [0, -1]\n", "", "sweep point 1 (l1=-1): train.l1 = -1 is out of range"),
    ("  train.l1: [0]\n", "set: {structure.enabled: false}\n", "leave structure.enabled true"),
])
def test_bad_sweep_files_are_refused_before_any_run(tmp_path, capsys, grid, extra, message):
    sweep = write_sweep(tmp_path, grid, extra=extra)
    out = tmp_path / "out"
    assert main([str(sweep), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_a_missing_base_config_is_named(tmp_path):
    sweep = tmp_path / "s.yaml"
    sweep.write_text("base: nowhere.yaml\ngrid: {train.l1: [0]}\n")
    with pytest.raises(Exception, match="base config .*nowhere.yaml' not found"):
        read_sweep(sweep)


def test_point_labels_tell_keys_with_the_same_last_part_apart():
    assert point_label({"train.seed": 1, "layout.sim.seed": 0}) == "train.seed=1 sim.seed=0"
    assert point_label({"train.l1": 0.001, "model.hidden": [64, 32]}) == "l1=0.001 hidden=[64,32]"
