"""The front door, tried as a new user would: what a run refuses before any work (names that leave
runs/, networks this machine cannot hold, data without a full batch), what it says (an empty config,
progress in a log), and one numbering of layers in every output."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from layout.core.config import RunConfig
from layout.core.config_file import load_config, read_config
from layout.core.errors import ConfigError, UserError
from layout.core.progress import progress_bar
from layout.pipeline.layout_stage import LayoutResult
from layout.pipeline.preflight import check_memory, memory_needs
from layout.pipeline.render_stage import details_for
from layout.run import main
from render.panel import describe
from tests.conftest import PROGRESS_LINE, messages
from tests.test_layout import synthetic_features

REPO = Path(__file__).resolve().parents[1]


def command(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "layout.run", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


# ---------------------------------------------------------------------------------------------
# The run's name is one folder inside runs/


@pytest.mark.parametrize("name", ["../../somewhere", "..", ".", "a/b", "/tmp/x", "two words", ""])
def test_a_name_that_is_not_a_plain_folder_name_is_refused(tmp_path, name):
    with pytest.raises(ConfigError, match="is not a plain folder name: use letters, digits"):
        load_config(REPO / "configs" / "euclid.yaml", [f"name={json.dumps(name)}"])


@pytest.mark.parametrize("name", ["euclid", "my-run_2", "v1.2"])
def test_plain_names_are_taken(name):
    assert load_config(REPO / "configs" / "euclid.yaml", [f"name={name}"]).name == name


def test_the_command_writes_nothing_outside_runs_for_a_hostile_name(tmp_path):
    (tmp_path / "work").mkdir()
    config = tmp_path / "work" / "c.yaml"
    config.write_text("name: ../../somewhere\n")
    result = subprocess.run([sys.executable, "-m", "layout.run", str(config), "--no-window"], cwd=tmp_path / "work",
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "error: name = '../../somewhere' is not a plain folder name: use letters, digits, '-', '_' and '.' (not '.' "
        "or '..'), e.g. my-run"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["work"] and list((tmp_path / "work").iterdir()) == [config]


# ---------------------------------------------------------------------------------------------
# What this machine cannot hold is refused before any work


GB = 10**9


def test_memory_needs_add_up_each_stages_arrays():
    cfg = load_config(REPO / "configs" / "euclid.yaml", ["structure.layout_nulls=99", "structure.stability_seeds=5"])
    needs = {n.stage: n for n in memory_needs(cfg, (784, 100, 10), 5000, 10000)}
    params = 784 * 100 + 100 + 100 * 10 + 10
    assert needs["training"].bytes == 4 * (params * (5 + 31) + 2 * 10000 * 100)  # 30 epochs: 31 snapshots
    assert needs["neuron features"].bytes == 4 * (4 * 10000 * 100 + 3 * 784 * 100)  # a batch's copies, the fields
    frames = 500 // 5 + 2 + 100 // 5  # the frames kept, and one chunk's
    assert needs["layout"].bytes == 110 * 1024 * 4 + 2 * frames * 110 * 12 + 8 * 6 * 100 * 100  # rows padded to 1,024
    assert needs["structure tests"].bytes == (99 * 110 * 1024 * 4 + 24 * 100 * 100 + 1000 * 100 * 21 * 4
                                              + 4 * (10000 * 100 + 2 * 10000 * 100))
    given = {n.stage: n for n in memory_needs(cfg, (784, 100, 10), 5000, 10000, given_snapshots=3)}
    assert "training" not in given and given["network"].bytes == 4 * params * 4
    no_tests = load_config(REPO / "configs" / "euclid.yaml", ["structure.enabled=false"])
    assert "structure tests" not in {n.stage for n in memory_needs(no_tests, (784, 100, 10), 5000, 10000)}


@pytest.mark.parametrize("sets, available, stage, fix", [
    (["model.hidden=[100000000]"], 20 * GB, "training", "use fewer hidden neurons (model.hidden)"),
    (["model.hidden=[5000]", "train.snapshot_unit=step"], 10 * GB, "training", "raise train.snapshot_every"),
    (["model.hidden=[20000]", "train.epochs=0", "layout.sim.pairs=exact"], 20 * GB, "structure tests",
     "lower structure.layout_nulls"),
    (["model.hidden=[30000]", "structure.enabled=false", "train.epochs=0", "layout.sim.pairs=exact"], 2 * GB,
     "layout", "use fewer hidden neurons"),
])
def test_a_run_this_machine_cannot_hold_names_the_stage_the_figure_and_the_fix(sets, available, stage, fix):
    cfg = load_config(REPO / "configs" / "euclid.yaml", sets)
    sizes = (784, *cfg.model.hidden, 10)
    with pytest.raises(UserError) as info:
        check_memory(cfg, sizes, 5000, 10000, available=available)
    message = str(info.value)
    assert f"for its {stage} (" in message and "B of memory" in message and fix in message
    assert f"more than the {available / GB:.1f} GB available here" in message and "\n" not in message


def test_sampled_pairs_let_a_100000_neuron_network_fit_where_all_pairs_would_not():
    cfg = load_config(REPO / "configs" / "euclid.yaml", ["model.hidden=[100000]", "structure.enabled=false",
                                                         "train.epochs=1"])
    layout = {n.stage: n for n in memory_needs(cfg, (784, 100000, 10), 5000, 10000)}["layout"]
    assert layout.bytes < 1.5 * GB and "16 nearest neighbours of 100,010 particles" in layout.holds
    check_memory(cfg, (784, 100000, 10), 5000, 10000, available=16 * GB)
    exact = load_config(REPO / "configs" / "euclid.yaml", ["model.hidden=[100000]", "structure.enabled=false",
                                                           "train.epochs=1", "layout.sim.pairs=exact"])
    with pytest.raises(UserError, match=r"about 4\d\.\d GB of memory for its layout \(the spring lengths"):
        check_memory(exact, (784, 100000, 10), 5000, 10000, available=16 * GB)
    tested = load_config(REPO / "configs" / "euclid.yaml", ["model.hidden=[100000]", "train.epochs=1"])
    structure = {n.stage: n for n in memory_needs(tested, (784, 100000, 10), 5000, 10000)}["structure tests"]
    assert structure.bytes < 2 * GB and structure.holds.startswith("2,000 x 2,000 distance matrices")


def test_training_alone_needs_only_the_training_memory():
    cfg = load_config(REPO / "configs" / "euclid.yaml", ["model.hidden=[10000]"])
    with pytest.raises(UserError, match="for its structure tests"):
        check_memory(cfg, (784, 10000, 10), 5000, 10000, available=20 * GB)  # 99 relayouts of 10,010 particles
    check_memory(cfg, (784, 10000, 10), 5000, 10000, lays_out=False, available=20 * GB)  # python -m layout.train
    assert [n.stage for n in memory_needs(cfg, (784, 10000, 10), 5000, 10000, lays_out=False)] == ["training"]


def test_the_euclid_config_fits_a_small_machine():
    cfg = load_config(REPO / "configs" / "euclid.yaml")
    check_memory(cfg, (784, 100, 10), 5000, 10000, available=GB)  # a 1 GB machine holds seed 001's network


def test_a_hundred_million_hidden_neurons_are_refused_in_one_line_before_any_work(tmp_path, shared_data):
    out = tmp_path / "out"
    result = command("configs/euclid.yaml", "--no-window", "--out", str(out), "--data-dir", str(shared_data),
                     "--set", "model.hidden=[100000000]", timeout=120)
    assert result.returncode == 2 and result.stdout == ""
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: a 784-100000000-10 network needs about ") and "for its training" in line
    assert "available here: use fewer hidden neurons (model.hidden)" in line
    assert not out.exists()  # refused before config.yaml or anything else was written


# ---------------------------------------------------------------------------------------------
# Data that leaves no full batch


def test_a_limit_that_leaves_no_full_batch_is_refused_before_training(tmp_path, shared_data, capsys):
    out = tmp_path / "out"
    assert main(["configs/euclid.yaml", "--no-window", "--out", str(out), "--data-dir", str(shared_data),
                 "--set", "data.limit=1"]) == 2
    assert messages(capsys.readouterr().err) == [
        "error: 1 training example (after data.classes and data.limit) are fewer than one batch of "
        "train.batch_size = 128, and an epoch trains on full batches only: raise data.limit to at least 128 or "
        "lower train.batch_size"]
    assert not out.exists()


def test_a_limit_of_one_full_batch_trains_on_it(tmp_path, shared_data, capsys):
    out = tmp_path / "out"
    assert main(["configs/binary01.yaml", "--no-window", "--export", "none", "--out", str(out), "--data-dir",
                 str(shared_data), "--set", "data.limit=128", "--set", "train.epochs=2", "--set",
                 "structure.enabled=false", "--set", "layout.sim.steps=5"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_train"] == 128 and metrics["epochs"] == 2


# ---------------------------------------------------------------------------------------------
# What the command says


def test_an_empty_config_runs_on_the_defaults_with_one_note(tmp_path, shared_data, capsys):
    config = tmp_path / "empty.yaml"
    config.write_text("# nothing set here\n")
    loaded = read_config(config)
    assert loaded.config == RunConfig(name="empty")
    assert loaded.notes == (f"{config} sets nothing: every value takes its default (the README lists them)",)
    assert read_config(REPO / "configs" / "euclid.yaml").notes == ()
    assert main([str(config), "--no-window", "--export", "none", "--out", str(tmp_path / "out"), "--data-dir",
                 str(shared_data), "--set", "train.epochs=0", "--set", "layout.sim.steps=5", "--set",
                 "structure.enabled=false"]) == 0
    assert messages(capsys.readouterr().err) == [f"note: {loaded.notes[0]}"]


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_off_a_terminal_progress_is_a_line_every_few_seconds_and_one_at_the_end():
    stream, clock = io.StringIO(), Clock()
    with progress_bar(100, "layout", "step", stream=stream, clock=clock, interval=5.0) as bar:
        for step in range(1, 101):
            clock.now += 0.3  # 30 s in all
            bar.advance_to(step, energy="1.0")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 5 + 1  # one line every 5 s (at 5.1, 10.2, ... 25.5 s), then the last one
    assert lines[0] == "layout: 17/100 steps, 5.1 s (energy 1.0)"
    assert lines[-1] == "layout: done, 100/100 steps, 30.0 s (energy 1.0)"
    assert all(PROGRESS_LINE.match(line) for line in lines)


def test_a_stage_that_never_advances_or_fails_writes_no_progress_line():
    stream = io.StringIO()
    with progress_bar(30, "training", "epoch", stream=stream):
        pass  # the network came from the cache
    with pytest.raises(RuntimeError), progress_bar(30, "training", "epoch", stream=stream) as bar:
        bar.advance_to(1)
        raise RuntimeError("the command says what failed, in one line")
    assert stream.getvalue() == ""


def test_a_logged_run_shows_each_stage(tmp_path, shared_data):
    result = command("configs/euclid.yaml", "--no-window", "--export", "png", "--out", str(tmp_path / "out"),
                     "--data-dir", str(shared_data), "--set", "model.hidden=[12]", "--set", "train.epochs=3",
                     "--set", "layout.sim.steps=40", "--set", "structure.layout_nulls=19", "--set",
                     "structure.permutations=19", "--set", "structure.stability_seeds=2", "--set",
                     "structure.ablation_groups=19")
    assert result.returncode == 0, result.stderr
    stages = [line.split(":")[0] for line in result.stderr.splitlines() if PROGRESS_LINE.match(line)]
    # each stage in order (a slow one writes a line every 5 s, then its last; a png has no movie to count)
    assert list(dict.fromkeys(stages)) == ["training", "layout", "structure tests"]
    assert all(stages.count(stage) == 1 for stage in ("training", "layout")) or "done" in result.stderr
    assert "training: done, 3/3 epochs" in result.stderr


# ---------------------------------------------------------------------------------------------
# One numbering of layers everywhere: the first hidden layer is layer 1


def test_every_output_numbers_the_first_hidden_layer_1(tmp_path, shared_data):
    out = tmp_path / "deep"
    result = command("configs/deep.yaml", "--no-window", "--export", "none", "--out", str(out), "--data-dir",
                     str(shared_data), "--set", "model.hidden=[10,8]", "--set", "train.epochs=2", "--set",
                     "data.limit=1000", "--set", "layout.sim.steps=40", "--set", "structure.layout_nulls=19",
                     "--set", "structure.permutations=19", "--set", "structure.stability_seeds=0", "--set",
                     "structure.ablation_groups=19")
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader((out / "neurons.csv").open()))
    assert [int(r["layer"]) for r in rows] == [1] * 10 + [2] * 8
    summary = json.loads((out / "structure.json").read_text())
    assert [layer["layer"] for layer in summary["layers"]] == [1, 2]
    assert {g["layer"] for g in summary["ablation"]["groups"]} == {1, 2}
    assert [v.split(",")[0] for v in summary["verdicts"]] == ["layer 1", "layer 1", "layer 2", "layer 2"]
    report = (out / "report.md").read_text()
    assert "## Layer 1 (10 neurons)" in report and "## Layer 2 (8 neurons)" in report and "## Layer 0" not in report
    assert sorted(p.name for p in out.glob("structure_layer*.png")) == ["structure_layer1.png", "structure_layer2.png"]
    assert "layer 1, dominance clustering" in result.stdout and "layer 0" not in result.stdout


def test_the_windows_details_panel_numbers_layers_from_1_too():
    features = synthetic_features(np.eye(3)[[0, 1, 2, 0, 1]], layer=[0, 0, 0, 1, 1])
    laid = LayoutResult(features, particles=None, trajectory=None, figures={}, written=(), distortion=np.zeros(5))
    details = details_for(laid)
    assert details.layer.tolist() == [1, 1, 1, 2, 2] and details.index.tolist() == [0, 1, 2, 3, 4]
    assert describe(details, features.class_names, 3).startswith("neuron 3: layer 2, index 3\n")
