"""Faults a user meets: each ends in one clear line and a non-zero exit, and nothing is left half-written."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from layout.core import ctrl_c
from layout.core.config import AnchorsConfig, DataConfig, ForcesConfig, ModelConfig, SimConfig, TrainConfig
from layout.engine.energies import build_energy
from layout.engine.features import neuron_features
from layout.engine.particles import make_particles
from layout.engine.simulate import simulate
from models.data.datasets import load_dataset
from models.network.train import TrainingError, train
from tests.conftest import messages

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
    kept = tmp_path / "run.incomplete"  # the stages that finished keep their outputs, apart from the folder
    assert f"this run's finished files are in {kept}; {out} was not created" in err
    assert not out.exists() and not (kept / "layout.mp4").exists() and part_files(kept) == []
    assert (kept / "trajectory.npz").exists()


@pytest.mark.parametrize("sent, code, said", [(signal.SIGINT, 130, "interrupted:"), (signal.SIGTERM, 143, "terminated:")])
def test_ctrl_c_or_sigterm_during_export_keeps_finished_files_and_no_partial_one(tmp_path, shared_data, sent, code,
                                                                                  said):
    out, work, kept = tmp_path / "run", tmp_path / ".run.running", tmp_path / "run.incomplete"
    process = run_layout("--export", "mp4", "--out", str(out), "--data-dir", str(shared_data),
                         "--set", "render.settle_seconds=60", "--set", "render.width=320",
                         "--set", "render.height=240")
    deadline = time.time() + 240
    while time.time() < deadline and not (work.exists() and any(n.startswith(".layout.mp4") for n in part_files(work))):
        time.sleep(0.1)
    assert part_files(work), "the export never started"
    time.sleep(1.5)  # well into rendering: the signal must not be lost inside a VTK callback
    process.send_signal(sent)
    _, err = process.communicate(timeout=120)
    assert process.returncode == code
    assert err.strip().splitlines()[-1].startswith(said) and "Traceback" not in err
    assert f"this run's finished files are in {kept}" in err.strip().splitlines()[-1]
    assert part_files(kept) == [] and not (kept / "layout.mp4").exists() and not out.exists() and not work.exists()
    for name in ("config.yaml", "network.npz", "trajectory.npz", "neurons.csv", "metrics.json"):
        assert (kept / name).stat().st_size > 0, name


def test_debug_shows_the_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochs: -1\n")
    result = subprocess.run([sys.executable, "-m", "layout.run", str(bad), "--debug"], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "Traceback" in result.stderr and "ConfigError" in result.stderr


def test_a_write_failure_is_one_line_and_leaves_no_partial_file(tmp_path, monkeypatch, capsys, isolated_cache,
                                                                shared_data):
    """An OSError while writing an output (as on a full disk) ends the command with one line."""

    from layout.run import main

    def full_disk(file, **arrays):
        file.write(b"partial")
        raise OSError(28, "No space left on device", str(tmp_path / "out" / "network.npz"))

    monkeypatch.setattr(np, "savez", full_disk)
    code = main([str(REPO / "configs" / "binary01.yaml"), "--out", str(tmp_path / "out"), "--no-window",
                 "--export", "none", "--set", "train.epochs=1", "--data-dir",
                 str(shared_data)])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1  # the first write is the network's cache entry: the fix names the cache setting
    assert re.fullmatch(re.escape(f"error: cannot write {isolated_cache / 'networks'}/") + r"\w+\.npz: No space "
                        "left on device; free some space or set NEURON_LAYOUT_CACHE to a folder with room", err[0])
    written = [p for p in list(tmp_path.rglob("*")) + list(isolated_cache.rglob("*")) if p.is_file()]
    assert not [p for p in written if p.name.endswith(".part") or p.name.endswith(".npz")]  # nothing partial


def test_damaged_or_pickled_cache_files_are_ignored_and_replaced(tmp_path, isolated_cache, shared_data):
    import json

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


def interrupt_when(process: subprocess.Popen, ready, what: str, settle: float = 1.0) -> str:
    """Send Ctrl-C (SIGINT) once `ready()` is true and `settle` seconds have passed; return stderr."""
    deadline = time.time() + 240
    while time.time() < deadline and process.poll() is None and not ready():
        time.sleep(0.05)
    assert process.poll() is None and ready(), f"{what} never started"
    time.sleep(settle)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    return err


def press_ctrl_c_and_swallow_it(calls: list):
    """A progress callback that presses Ctrl-C the first time and catches the KeyboardInterrupt, as
    JAX's garbage-collector callback or a VTK callback does with one that lands inside it."""
    def callback(*_):
        calls.append(len(calls) + 1)
        if len(calls) == 1:
            try:
                signal.raise_signal(signal.SIGINT)
            except KeyboardInterrupt:
                pass
    return callback


def test_a_ctrl_c_dropped_inside_a_gc_callback_prints_no_traceback_and_is_still_noted(capsys, monkeypatch):
    class DroppedThere:  # SIGINT arriving while Python runs a callback whose exceptions it drops
        def __del__(self):
            ctrl_c._note_and_raise(signal.SIGINT, None)

    monkeypatch.setattr(sys, "unraisablehook", sys.__unraisablehook__)  # Python's own, as in the command
    with ctrl_c.watched():
        DroppedThere()
        with pytest.raises(KeyboardInterrupt):
            ctrl_c.check()
    assert capsys.readouterr().err == ""


def test_a_swallowed_ctrl_c_still_stops_training_after_that_epoch(shared_data):
    data = load_dataset(DataConfig(dir=str(shared_data), limit=256))
    epochs = []
    with ctrl_c.watched(), pytest.raises(KeyboardInterrupt):
        train(ModelConfig(hidden=(8,)), TrainConfig(epochs=4, batch_size=64), data,
              on_epoch=press_ctrl_c_and_swallow_it(epochs))
    assert epochs == [1]


def test_a_swallowed_ctrl_c_still_stops_the_simulation_after_that_chunk(shared_data):
    data = load_dataset(DataConfig(dir=str(shared_data), limit=256))
    network = train(ModelConfig(hidden=(8,)), TrainConfig(epochs=1, batch_size=64), data)
    particles = make_particles(neuron_features(network, data.test), AnchorsConfig())
    chunks = []
    with ctrl_c.watched(), pytest.raises(KeyboardInterrupt):
        simulate(build_energy(particles, ForcesConfig()), particles, SimConfig(steps=400, chunk=100, settle=0),
                 jax.random.key(0), on_chunk=press_ctrl_c_and_swallow_it(chunks))
    assert chunks == [1]


def leftovers(*folders: Path) -> list[str]:
    """Partial files anywhere under the folders."""
    return [str(p) for f in folders if f.exists() for p in f.rglob("*") if p.name.endswith(".part")]


def test_ctrl_c_during_training_exits_130_and_caches_no_network(tmp_path, shared_data):
    out, cache = tmp_path / "run", tmp_path / "cache"
    work, kept = tmp_path / ".run.running", tmp_path / "run.incomplete"
    process = run_layout("--out", str(out), "--data-dir", str(shared_data), "--set", "train.epochs=2000",
                         env={"NEURON_LAYOUT_CACHE": str(cache)})
    err = interrupt_when(process, lambda: (work / "config.yaml").exists(), "training")  # written as training starts
    assert process.returncode == 130, err
    assert err.strip().splitlines()[-1].startswith("interrupted:") and "Traceback" not in err
    assert sorted(p.name for p in kept.iterdir()) == ["config.yaml"]  # completed, and nothing else
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "run.incomplete"]  # no lock, no work folder
    assert not (cache / "networks").exists() or not list((cache / "networks").iterdir())
    assert leftovers(kept, cache) == []


def test_ctrl_c_during_the_simulation_keeps_the_network_and_writes_no_layout(tmp_path, shared_data):
    out, cache = tmp_path / "run", tmp_path / "cache"
    work, kept = tmp_path / ".run.running", tmp_path / "run.incomplete"
    process = run_layout("--out", str(out), "--data-dir", str(shared_data), "--set", "train.epochs=1",
                         "--set", "layout.sim.steps=2000000", "--set", "layout.sim.settle=0",
                         "--set", "layout.sim.record_every=100000",
                         env={"NEURON_LAYOUT_CACHE": str(cache)})
    err = interrupt_when(process, lambda: (work / "network.npz").exists(), "the simulation", settle=2.0)
    assert process.returncode == 130, err
    assert err.strip().splitlines()[-1].startswith("interrupted:") and "Traceback" not in err
    assert sorted(p.name for p in kept.iterdir()) == ["config.yaml", "network.npz"] and not out.exists()
    assert len(list((cache / "networks").glob("*.npz"))) == 1  # the finished training is kept for next time
    assert not (cache / "layouts").exists() or not list((cache / "layouts").iterdir())
    assert leftovers(kept, cache) == []


@pytest.fixture(scope="module")
def earlier_run(tmp_path_factory, shared_data):
    """A finished binary01 run whose network.npz and trajectory.npz the next tests feed back in."""
    from layout.run import main

    out = tmp_path_factory.mktemp("earlier")
    assert main([str(REPO / "configs" / "binary01.yaml"), "--no-window", "--export", "none", "--out", str(out),
                 "--data-dir", str(shared_data), "--set", "train.epochs=2", "--set", "layout.sim.steps=40"]) == 0
    return out


def run_with(*args: str, config: str = "binary01.yaml", shared_data: Path) -> tuple[int, list[str], list[str]]:
    result = subprocess.run([sys.executable, "-m", "layout.run", f"configs/{config}", "--no-window", "--export",
                             "none", "--data-dir", str(shared_data), *args], cwd=REPO, capture_output=True,
                            text=True, timeout=240)
    return result.returncode, result.stdout.splitlines(), messages(result.stderr)


def test_a_saved_network_and_trajectory_are_shown_again_without_training(tmp_path, earlier_run, shared_data):
    import json

    code, out, err = run_with("--out", str(tmp_path / "again"), "--network", str(earlier_run / "network.npz"),
                              "--trajectory", str(earlier_run / "trajectory.npz"), "--set", "layout.sim.steps=40",
                              shared_data=shared_data)
    assert code == 0, err
    assert f"(read from {earlier_run / 'network.npz'})" in out[0]
    metrics = json.loads((tmp_path / "again" / "metrics.json").read_text())
    before = json.loads((earlier_run / "metrics.json").read_text())
    assert metrics["test_accuracy"] == before["test_accuracy"] and metrics["layout"]["reused"] is True
    with np.load(tmp_path / "again" / "trajectory.npz") as a, np.load(earlier_run / "trajectory.npz") as b:
        np.testing.assert_array_equal(a["positions"], b["positions"])


def pickled(path: Path) -> Path:

    np.savez(path, meta=np.array([{"sizes": [784, 1, 2]}], dtype=object))
    return path


def truncated(source: Path, path: Path) -> Path:
    path.write_bytes(source.read_bytes()[:2000])
    return path


def reshaped(source: Path, path: Path, name: str) -> Path:

    with np.load(source) as z:
        arrays = {k: z[k] for k in z.files}
    arrays[name] = arrays[name][..., :-1]  # one column short
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("case, message", [
    ("missing", "does not exist: check the path"),
    ("truncated", "is not a network file written by neuron-layout: not an intact .npz archive"),
    ("pickled", "holds pickled Python objects, which are never loaded"),
    ("trajectory", "is a trajectory file, not a network file: give it with --trajectory"),
    ("reshaped", "does not fit: 'w0' has shape 784x0, expected 784x1"),
])
def test_a_bad_network_file_is_one_line_before_any_work(tmp_path, earlier_run, shared_data, case, message):
    source = earlier_run / "network.npz"
    path = {"missing": lambda: tmp_path / "nothing.npz",
            "truncated": lambda: truncated(source, tmp_path / "t.npz"),
            "pickled": lambda: pickled(tmp_path / "p.npz"),
            "trajectory": lambda: earlier_run / "trajectory.npz",
            "reshaped": lambda: reshaped(source, tmp_path / "r.npz", "w0")}[case]()
    code, out, err = run_with("--out", str(tmp_path / "out"), "--network", str(path), shared_data=shared_data)
    assert code == 2 and out == [] and len(err) == 1, err
    assert message in err[0] and err[0].startswith(f"error: {path} ")
    assert not (tmp_path / "out").exists()  # nothing was trained or written


def test_a_network_from_other_data_or_a_trajectory_of_another_network_is_refused(tmp_path, earlier_run, shared_data):
    code, _, err = run_with("--out", str(tmp_path / "a"), "--network", str(earlier_run / "network.npz"),
                            config="euclid.yaml", shared_data=shared_data)
    assert code == 2 and len(err) == 1
    assert "was trained on mnist classes [0, 1], but the config selects mnist classes [0, 1, 2" in err[0]
    code, _, err = run_with("--out", str(tmp_path / "b"), "--trajectory", str(earlier_run / "trajectory.npz"),
                            "--set", "model.hidden=[3]", "--set", "train.epochs=1", "--set", "layout.sim.steps=40",
                            shared_data=shared_data)
    assert code == 2 and len(err) == 1
    assert err[0] == (f"error: {earlier_run / 'trajectory.npz'} was laid out for another network (3 particles, this "
                      "one has 5, or other output weights): use the trajectory.npz written with its network.npz; "
                      f"this run's finished files are in {tmp_path / 'b.incomplete'}; {tmp_path / 'b'} was not created")
    for case in ("truncated", "pickled"):
        path = truncated(earlier_run / "trajectory.npz", tmp_path / "t.npz") if case == "truncated" else pickled(
            tmp_path / "p.npz")
        code, out, err = run_with("--out", str(tmp_path / case), "--trajectory", str(path), shared_data=shared_data)
        assert code == 2 and out == [] and len(err) == 1 and "is not a trajectory file" in err[0], err


def test_an_image_index_beyond_the_test_set_fails_before_training(tmp_path, shared_data):
    code, out, err = run_with("--out", str(tmp_path / "out"), "--set", "render.color_by=image",
                              "--set", "render.image_index=5000", shared_data=shared_data)
    assert code == 2 and out == []
    assert err == ["error: render.image_index = 5000 is out of range: the test set has 2115 images (0-2114)"]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("settings, message", [
    (("render.halo=true", "structure.stability_seeds=0"), "render.halo = true needs the stability layouts"),
    (("render.color_by=spread", "structure.enabled=false"), "render.color_by = spread needs the structure tests"),
])
def test_halos_or_spread_colours_without_stability_layouts_fail_before_training(tmp_path, shared_data, settings,
                                                                                 message):
    code, out, err = run_with("--out", str(tmp_path / "out"), *(a for s in settings for a in ("--set", s)),
                              shared_data=shared_data)
    assert code == 2 and out == [] and len(err) == 1 and message in err[0], err
    assert not (tmp_path / "out").exists()


@pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")  # the limit is set between fork and exec
def test_a_full_disk_during_export_removes_the_partial_movie_and_keeps_the_earlier_one(tmp_path, shared_data):
    """A real write failure: the process may write at most 60 kB per file (RLIMIT_FSIZE), as on a
    nearly full disk; ffmpeg runs into it halfway through the movie."""
    import resource

    out = tmp_path / "run"
    movie = ("--export", "mp4", "--out", str(out), "--set", "render.width=320", "--set", "render.height=240",
             "--set", "render.orbit_seconds=0")
    code, _, err = run_with(*movie, "--set", "render.settle_seconds=1", shared_data=shared_data)
    assert code == 0, err
    earlier = (out / "layout.mp4").read_bytes()
    assert len(earlier) < 60_000

    def small_disk():
        resource.setrlimit(resource.RLIMIT_FSIZE, (60_000, 60_000))

    result = subprocess.run([sys.executable, "-m", "layout.run", "configs/binary01.yaml", "--no-window",
                             "--data-dir", str(shared_data), *movie, "--set", "render.settle_seconds=30"],
                            cwd=REPO, capture_output=True, text=True, timeout=300, preexec_fn=small_disk)
    assert result.returncode == 2
    kept = tmp_path / "run.incomplete"
    assert messages(result.stderr) == [  # a slow machine also prints the export's progress lines
        "error: writing layout.mp4 failed (ffmpeg stopped early: the movie is incomplete (60000 bytes)): free some "
        f"disk space, or export --export gif or png instead; this run's finished files are in {kept}; {out} is as it "
        "was"]
    assert (out / "layout.mp4").read_bytes() == earlier and part_files(out) == [] and part_files(kept) == []
    assert not (kept / "layout.mp4").exists() and (kept / "trajectory.npz").exists()
