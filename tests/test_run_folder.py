"""One run per output folder: a run's outputs appear together when it succeeds, a failed run leaves the
earlier run untouched and its own files apart, and two runs never write into one folder."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from layout.core.errors import UserError
from layout.core.run_folder import run_folder
from tests.conftest import messages

REPO = Path(__file__).resolve().parents[1]


def contents(folder: Path) -> dict[str, bytes]:
    """Every file under the folder, by its relative path, with its bytes."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def first_run(final: Path) -> dict[str, bytes]:
    with run_folder(final, "first") as folder:
        (folder.staging / "config.yaml").write_text("hidden: [20]\n")
        (folder.staging / "layout.mp4").write_bytes(b"the first movie")
        (folder.staging / "structure_layer2.png").write_bytes(b"png")
        (folder.staging / "points" / "01").mkdir(parents=True)
        (folder.staging / "points" / "01" / "metrics.json").write_text("{}")
    return contents(final)


def test_a_complete_run_replaces_the_earlier_outputs_it_does_not_write_and_keeps_the_users_files(tmp_path):
    final = tmp_path / "run"
    first_run(final)
    (final / "my notes.txt").write_text("mine")
    with run_folder(final, "second --set x=1") as folder:
        (folder.staging / "config.yaml").write_text("hidden: [30]\n")
        assert (final / "config.yaml").read_text() == "hidden: [20]\n"  # nothing moves in before the end
    assert sorted(os.listdir(final)) == ["config.yaml", "manifest.json", "my notes.txt"]
    manifest = json.loads((final / "manifest.json").read_text())
    assert manifest["command"] == "second --set x=1" and manifest["cwd"] == os.getcwd()
    assert manifest["files"] == {"config.yaml": {"bytes": 13, "sha256": hashlib.sha256(b"hidden: [30]\n").hexdigest()}}
    assert manifest["started"] <= manifest["finished"]
    assert sorted(os.listdir(tmp_path)) == ["run"]  # no lock, no work folder, no replaced files left


def test_a_failed_run_leaves_the_earlier_run_untouched_and_its_finished_files_apart(tmp_path):
    final = tmp_path / "run"
    earlier = first_run(final)
    with pytest.raises(UserError) as info:
        with run_folder(final, "second") as folder:
            (folder.staging / "config.yaml").write_text("hidden: [30]\n")
            raise UserError("the training loss became nan")
    assert contents(final) == earlier
    kept = tmp_path / "run.incomplete"
    assert contents(kept) == {"config.yaml": b"hidden: [30]\n"}
    assert info.value.__notes__ == [f"this run's finished files are in {kept}; {final} is as it was"]
    assert sorted(os.listdir(tmp_path)) == ["run", "run.incomplete"]


def test_a_run_that_fails_before_writing_anything_leaves_nothing_behind(tmp_path):
    final = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt) as info:
        with run_folder(final, "x"):
            raise KeyboardInterrupt
    assert os.listdir(tmp_path) == [] and not hasattr(info.value, "__notes__")


def test_a_second_run_into_a_folder_in_use_is_refused_naming_the_first(tmp_path):
    final = tmp_path / "run"
    with run_folder(final, "neuron-layout configs/euclid.yaml"):
        with pytest.raises(UserError) as info:
            with run_folder(final, "neuron-layout configs/dominance.yaml"):
                pass
    assert str(info.value) == (f"{final} is in use by another run (pid {os.getpid()}: neuron-layout configs/euclid.yaml): "
                               "wait for it to finish, or choose another --out")
    with run_folder(final, "third"):  # free again once the first is done
        pass
    assert json.loads((final / "manifest.json").read_text())["command"] == "third"


def test_the_work_of_a_killed_run_is_cleared_by_the_next(tmp_path):
    final = tmp_path / "run"
    earlier = first_run(final)
    killed = subprocess.run([sys.executable, "-c", (
        "import os, signal, sys\n"
        "from layout.core.run_folder import run_folder\n"
        "with run_folder(sys.argv[1], 'killed') as f:\n"
        "    (f.staging / 'config.yaml').write_text('half')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"), str(final)], cwd=REPO)
    assert killed.returncode == -signal.SIGKILL
    assert (tmp_path / ".run.running" / "config.yaml").exists() and contents(final) == earlier
    with run_folder(final, "next") as folder:
        assert list(folder.staging.iterdir()) == []
        (folder.staging / "config.yaml").write_text("next")
    assert sorted(os.listdir(tmp_path)) == ["run"] and (final / "config.yaml").read_text() == "next"


def test_a_symlinked_or_dotted_output_folder_works_in_place(tmp_path, monkeypatch):
    real = tmp_path / "real"
    first_run(real)
    (tmp_path / "link").symlink_to(real)
    with run_folder(tmp_path / "link", "through the link") as folder:
        (folder.staging / "config.yaml").write_text("linked")
    assert (real / "config.yaml").read_text() == "linked" and (tmp_path / "link").is_symlink()
    monkeypatch.chdir(real)
    with run_folder(Path("."), "dot") as folder:
        (folder.staging / "metrics.json").write_text("{}")
    assert sorted(os.listdir(real)) == ["manifest.json", "metrics.json"]


# ---------------------------------------------------------------------------------------------
# The commands


def layout_run(out: Path, shared_data: Path, *sets: str, **kwargs) -> subprocess.Popen:
    argv = [sys.executable, "-m", "layout.run", "configs/binary01.yaml", "--no-window", "--export", "none", "--out",
            str(out), "--data-dir", str(shared_data), "--set", "layout.sim.steps=40"]
    for s in sets:
        argv += ["--set", s]
    return subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def test_a_failed_run_into_a_finished_runs_folder_changes_nothing_there(tmp_path, shared_data):
    """The issue's reproduction: a 20-neuron run, then a 30-neuron one that fails during training."""
    out = tmp_path / "run"
    first = layout_run(out, shared_data, "model.hidden=[20]", "train.epochs=1")
    assert first.wait(timeout=300) == 0, first.stderr.read()
    earlier = contents(out)
    assert len((out / "neurons.csv").read_text().splitlines()) == 1 + 20
    failed = layout_run(out, shared_data, "model.hidden=[30]", "train.epochs=3", "train.optimizer=sgd",
                        "train.learning_rate=10", "train.l2=1000")
    _, err = failed.communicate(timeout=300)
    assert failed.returncode == 2
    kept = tmp_path / "run.incomplete"
    assert messages(err)[-1].startswith("error: the training loss became nan")
    assert messages(err)[-1].endswith(f"; this run's finished files are in {kept}; {out} is as it was")
    assert contents(out) == earlier
    assert sorted(contents(kept)) == ["config.yaml"] and "- 30" in (kept / "config.yaml").read_text()


def test_a_second_command_into_the_same_folder_is_refused_while_the_first_runs(tmp_path, shared_data):
    out = tmp_path / "run"
    # 300 neurons for the most steps allowed: minutes of layout on any machine, so the interrupt lands in it
    first = layout_run(out, shared_data, "train.epochs=1", "model.hidden=[300]", "layout.sim.steps=10000000",
                       "layout.sim.settle=0", "layout.sim.record_every=1000000")
    try:
        deadline = time.time() + 240
        while time.time() < deadline and not (tmp_path / ".run.running" / "network.npz").exists():
            time.sleep(0.1)
        second = layout_run(out, shared_data, "train.epochs=1")
        _, err = second.communicate(timeout=120)
        assert second.returncode == 2
        assert messages(err) == [f"error: {out} is in use by another run (pid {first.pid}: neuron-layout "
                                 f"configs/binary01.yaml --no-window --export none --out {out} --data-dir "
                                 f"{shared_data} --set layout.sim.steps=40 --set train.epochs=1 --set "
                                 "'model.hidden=[300]' --set layout.sim.steps=10000000 --set layout.sim.settle=0 "
                                 "--set layout.sim.record_every=1000000): wait for it to finish, or choose another "
                                 "--out"]
    finally:
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=120)
    assert not out.exists()  # the first was interrupted: its files are apart, in run.incomplete
    assert sorted(os.listdir(tmp_path / "run.incomplete")) == ["config.yaml", "network.npz"]
