"""Faults a user meets: each ends in one clear line and a non-zero exit, and nothing is left half-written."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from layout.config import DataConfig, ModelConfig, TrainConfig
from models.data import load_dataset
from models.train import TrainingError, train

REPO = Path(__file__).resolve().parents[1]


def run_layout(*args: str, env: dict | None = None, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "layout.run", "configs/euclid.yaml", "--no-window", *args],
                            cwd=REPO, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def part_files(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.endswith(".part")]


def test_a_diverging_training_run_stops_with_a_clear_error(shared_data):
    data = load_dataset(DataConfig(dir=str(shared_data), limit=512))
    with pytest.raises(TrainingError, match="the training loss became nan in epoch 2: lower train.learning_rate"):
        train(ModelConfig(hidden=(64,), activation="relu"),
              TrainConfig(epochs=3, learning_rate=10.0, optimizer="sgd", l2=1000.0), data)


def test_an_unwritable_output_folder_fails_before_any_work(tmp_path, shared_data):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    process = run_layout("--out", str(blocker / "run"), "--data-dir", str(shared_data))
    out, err = process.communicate(timeout=120)
    assert process.returncode == 2
    assert err.strip().splitlines() == [f"error: cannot write to the output folder {blocker / 'run'} (Not a "
                                        "directory): choose another with --out"]
    assert out == ""  # failed before training: nothing was reported as done


def test_a_broken_encoder_suggests_gif_or_png_and_leaves_no_partial_movie(tmp_path, shared_data):
    out = tmp_path / "run"
    process = run_layout("--export", "mp4", "--out", str(out), "--data-dir", str(shared_data),
                         "--set", "render.settle_seconds=1", "--set", "render.orbit_seconds=0",
                         env={"IMAGEIO_FFMPEG_EXE": "/bin/false"})
    _, err = process.communicate(timeout=300)
    assert process.returncode == 2
    assert err.strip().splitlines()[-1].startswith("error: writing layout.mp4 failed")
    assert "--export gif or png" in err and "Traceback" not in err
    assert not (out / "layout.mp4").exists() and part_files(out) == []
    assert (out / "trajectory.npz").exists()  # the stages that finished keep their outputs


def test_ctrl_c_during_export_exits_130_keeps_finished_files_and_no_partial_one(tmp_path, shared_data):
    out = tmp_path / "run"
    process = run_layout("--export", "mp4", "--out", str(out), "--data-dir", str(shared_data),
                         "--set", "render.settle_seconds=60", "--set", "render.width=320",
                         "--set", "render.height=240")
    deadline = time.time() + 240
    while time.time() < deadline and not (out.exists() and any(n.startswith(".layout.mp4") for n in part_files(out))):
        time.sleep(0.1)
    assert part_files(out), "the export never started"
    time.sleep(1.5)  # well into rendering: the signal must not be lost inside a VTK callback
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130
    assert err.strip().splitlines()[-1].startswith("interrupted:")
    assert part_files(out) == [] and not (out / "layout.mp4").exists()
    for name in ("config.yaml", "network.npz", "trajectory.npz", "neurons.csv", "metrics.json"):
        assert (out / name).stat().st_size > 0, name


def test_debug_shows_the_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochs: -1\n")
    result = subprocess.run([sys.executable, "-m", "layout.run", str(bad), "--debug"], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "Traceback" in result.stderr and "ConfigError" in result.stderr


def test_a_write_failure_is_one_line_and_leaves_no_partial_file(tmp_path, monkeypatch, capsys, isolated_cache):
    """An OSError while writing an output (as on a full disk) ends the command with one line."""
    import numpy as np

    from layout.run import main

    def full_disk(file, **arrays):
        file.write(b"partial")
        raise OSError(28, "No space left on device", str(tmp_path / "out" / "network.npz"))

    monkeypatch.setattr(np, "savez", full_disk)
    code = main([str(REPO / "configs" / "binary01.yaml"), "--out", str(tmp_path / "out"), "--no-window",
                 "--export", "none", "--set", "train.epochs=1", "--data-dir",
                 os.environ.get("NEURON_LAYOUT_DATA", str(REPO.parent / "shared" / "data"))])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: cannot write {tmp_path / 'out' / 'network.npz'}: No space left on device; "
                   "free some space or choose another --out"]
    written = [p for p in list(tmp_path.rglob("*")) + list(isolated_cache.rglob("*")) if p.is_file()]
    assert not [p for p in written if p.name.endswith(".part") or p.name.endswith(".npz")]  # nothing partial


def test_damaged_or_pickled_cache_files_are_ignored_and_replaced(tmp_path, isolated_cache, shared_data):
    import json

    import numpy as np

    from layout.run import main

    argv = [str(REPO / "configs" / "binary01.yaml"), "--no-window", "--export", "none", "--data-dir", str(shared_data),
            "--set", "train.epochs=1", "--set", "layout.sim.steps=30"]
    assert main(argv + ["--out", str(tmp_path / "a")]) == 0
    (network,) = (isolated_cache / "networks").iterdir()
    (layout,) = (isolated_cache / "layouts").iterdir()
    network.write_bytes(b"PK\x03\x04 not really a zip")  # damaged
    np.savez(layout, positions=np.array([object()], dtype=object))  # needs pickle: refused, not loaded
    assert main(argv + ["--out", str(tmp_path / "b")]) == 0
    metrics = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert metrics["reused"] is False and metrics["layout"]["reused"] is False
    assert main(argv + ["--out", str(tmp_path / "c")]) == 0  # and the replacements are good caches
    metrics = json.loads((tmp_path / "c" / "metrics.json").read_text())
    assert metrics["reused"] is True and metrics["layout"]["reused"] is True
