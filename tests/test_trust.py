"""No cache or saved file may yield another run's result: every cache key covers what its result depends
on, every entry records the key it was stored under, a trajectory records the settings that made it,
and config.yaml records the network that was laid out."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from layout.core.config_file import load_config
from layout.pipeline.layout_stage import layout_key
from layout.pipeline.structure_stage import structure_key
from tests.conftest import messages
from tests.data import make_reference as reference

REPO = Path(__file__).resolve().parents[1]
NETWORK = str(reference.NETWORK)  # a committed 784-30-10 sigmoid network
QUICK = ("layout.sim.steps=60", "structure.permutations=99", "structure.layout_nulls=19", "structure.stability_seeds=0",
         "structure.ablation_groups=19")
sets = reference.settings  # the --set pairs of overrides


def command(config: str, out: Path, cache: Path, shared_data: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "layout.run", f"configs/{config}", "--no-window", "--export", "none",
                           "--out", str(out), "--data-dir", str(shared_data), *args], cwd=REPO, capture_output=True,
                          text=True, timeout=600, env={**os.environ, "NEURON_LAYOUT_CACHE": str(cache)})


# ---------------------------------------------------------------------------------------------
# Every key covers what its result depends on


def test_the_layout_key_changes_with_every_input_of_the_simulation():
    cfg = load_config(REPO / "configs" / "euclid.yaml")
    base = layout_key("inputs", cfg)
    layout = cfg.layout
    changed = [
        layout_key("other inputs", cfg),  # other particles: another network, other data under jacobian influence
        layout_key("inputs", dataclasses.replace(cfg, render=dataclasses.replace(cfg.render, timeline="training"))),
        layout_key("inputs", dataclasses.replace(cfg, layout=dataclasses.replace(layout, sim=dataclasses.replace(
            layout.sim, seed=1)))),
        layout_key("inputs", dataclasses.replace(cfg, layout=dataclasses.replace(layout, forces=dataclasses.replace(
            layout.forces, dominance=dataclasses.replace(layout.forces.dominance, strength=0.5))))),
        layout_key("inputs", dataclasses.replace(cfg, layout=dataclasses.replace(layout, anchors=dataclasses.replace(
            layout.anchors, mode="fixed")))),
    ]
    assert base not in changed and len(set(changed)) == len(changed)
    assert layout_key("inputs", dataclasses.replace(cfg, name="other", render=dataclasses.replace(
        cfg.render, width=640))) == base  # the name and the picture do not change the layout


def test_the_structure_key_changes_with_everything_the_tests_depend_on(monkeypatch):
    from layout.pipeline import structure_stage

    cfg = load_config(REPO / "configs" / "euclid.yaml")
    positions = np.zeros((5, 3), np.float32)
    base = structure_key(cfg, "net", "data", "layout", positions)
    moved = positions.copy()
    moved[0, 0] = 1e-6
    changed = [
        structure_key(cfg, "other net", "data", "layout", positions),
        structure_key(cfg, "net", "other data", "layout", positions),  # e.g. data.limit: another test set
        structure_key(cfg, "net", "data", "other layout", positions),
        structure_key(cfg, "net", "data", "layout", moved),
        structure_key(dataclasses.replace(cfg, structure=dataclasses.replace(cfg.structure, seed=1)), "net", "data",
                      "layout", positions),
        structure_key(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seed=1)), "net", "data", "layout",
                      positions),  # the retrained networks' seeds follow train.seed
        structure_key(dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, hidden=(7,))), "net", "data",
                      "layout", positions),
    ]
    monkeypatch.setattr(structure_stage, "STRUCTURE_NEURONS", 500)  # how many of a wide layer's neurons are tested
    changed.append(structure_key(cfg, "net", "data", "layout", positions))
    assert base not in changed and len(set(changed)) == len(changed)


def test_another_test_set_is_tested_again_not_served_from_the_cache(tmp_path, shared_data):
    """The issue's reproduction: --network N --set data.limit=500, then the same without the limit."""
    cache = tmp_path / "cache"
    limited = command("euclid.yaml", tmp_path / "a", cache, shared_data, "--network", NETWORK,
                      *sets(*QUICK, "data.limit=500"))
    assert limited.returncode == 0, limited.stderr
    full = command("euclid.yaml", tmp_path / "b", cache, shared_data, "--network", NETWORK, *sets(*QUICK))
    assert full.returncode == 0, full.stderr
    assert "reused from cache" not in full.stdout.split("structure tests")[1].splitlines()[0]
    a, b = (json.loads((tmp_path / d / "structure.json").read_text()) for d in "ab")

    def mantel(summary):
        return next(t["observed"] for t in summary["layers"][0]["tests"] if t["statistic"] == "mantel_coactivation")

    assert mantel(a) != mantel(b)  # co-activations over 500 and over 10,000 test images
    again = command("euclid.yaml", tmp_path / "c", cache, shared_data, "--network", NETWORK, *sets(*QUICK))
    assert "structure tests (reused from cache" in again.stdout  # the same inputs: the cache serves them
    assert json.loads((tmp_path / "c" / "structure.json").read_text()) == b


# ---------------------------------------------------------------------------------------------
# Entries record their key


def test_cache_entries_copied_over_another_key_are_refused_with_a_note(tmp_path, shared_data):
    cache = tmp_path / "cache"
    first = command("euclid.yaml", tmp_path / "a", cache, shared_data, "--network", NETWORK, *sets(*QUICK))
    other = command("euclid.yaml", tmp_path / "b", cache, shared_data, "--network", NETWORK,
                    *sets(*QUICK, "layout.sim.seed=1"))
    assert first.returncode == 0 and other.returncode == 0, first.stderr + other.stderr
    key = {d: json.loads((tmp_path / d / "metrics.json").read_text())["layout"]["layout_key"] for d in "ab"}
    shutil.copy(cache / "layouts" / f"{key['a']}.npz", cache / "layouts" / f"{key['b']}.npz")
    structure = sorted((cache / "structure").iterdir())
    assert len(structure) == 2
    for entry in structure:  # each structure entry now holds the other's results
        entry.rename(entry.with_suffix(".tmp"))
    structure[0].with_suffix(".tmp").rename(structure[1])
    structure[1].with_suffix(".tmp").rename(structure[0])
    again = command("euclid.yaml", tmp_path / "c", cache, shared_data, "--network", NETWORK,
                    *sets(*QUICK, "layout.sim.seed=1"))
    assert again.returncode == 0, again.stderr
    notes = [line for line in messages(again.stderr) if line.startswith("note:")]
    assert any("the cached layout could not be used" in n and "layout.sim.seed = 0 there, 1 here" in n for n in notes)
    assert any("the cached structure results were stored for other inputs: tested again" in n for n in notes)
    with np.load(tmp_path / "b" / "trajectory.npz") as b, np.load(tmp_path / "c" / "trajectory.npz") as c:
        np.testing.assert_array_equal(b["positions"], c["positions"])  # laid out again, not the other seed's
    assert (json.loads((tmp_path / "c" / "structure.json").read_text())
            == json.loads((tmp_path / "b" / "structure.json").read_text()))


# ---------------------------------------------------------------------------------------------
# A trajectory is shown and tested only under the settings that made it


@pytest.fixture(scope="module")
def dominance_run(tmp_path_factory, shared_data):
    out = tmp_path_factory.mktemp("dominance")
    result = command("dominance.yaml", out, out.parent / "dominance-cache", shared_data, "--network", NETWORK,
                     *sets("layout.sim.steps=60", "structure.enabled=false"))
    assert result.returncode == 0, result.stderr
    return out


def test_a_trajectory_laid_out_with_other_forces_is_refused_naming_the_difference(tmp_path, dominance_run,
                                                                                   shared_data):
    result = command("euclid.yaml", tmp_path / "out", tmp_path / "cache", shared_data, "--network", NETWORK,
                     "--trajectory", str(dominance_run / "trajectory.npz"), *sets("layout.sim.steps=60"))
    assert result.returncode == 2
    [line] = [m for m in messages(result.stderr) if not m.startswith("note:")]
    assert line.startswith(f"error: {dominance_run / 'trajectory.npz'} was laid out with other settings (")
    assert "layout.anchors.mode = 'fixed' there, 'free' here" in line
    assert "layout.forces.dominance.strength = 1.0 there, 0.0 here" in line
    assert line.endswith("run it with the config.yaml written beside it, or leave out --trajectory")
    assert not (tmp_path / "out").exists()  # refused before any work: no verdict against mismatched nulls


def test_the_same_trajectory_under_its_own_config_is_shown_and_tested(tmp_path, dominance_run, shared_data):
    config = dominance_run / "config.yaml"
    result = subprocess.run([sys.executable, "-m", "layout.run", str(config), "--no-window", "--export", "none",
                             "--out", str(tmp_path / "out"), "--network", NETWORK, "--trajectory",
                             str(dominance_run / "trajectory.npz"), *sets(*QUICK[1:], "structure.enabled=true")],
                            cwd=REPO,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["layout"]["reused"] is True
    assert "dominance clustering in 3D" in result.stdout


def test_a_trajectory_without_its_settings_is_refused(tmp_path, dominance_run, shared_data):
    with np.load(dominance_run / "trajectory.npz") as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays["meta"]))
    del meta["made_by"]  # as an earlier version wrote it
    arrays["meta"] = np.array(json.dumps(meta))
    old = tmp_path / "old.npz"
    np.savez(old, **arrays)
    result = command("dominance.yaml", tmp_path / "out", tmp_path / "cache", shared_data, "--network", NETWORK,
                     "--trajectory", str(old), *sets("layout.sim.steps=60", "structure.enabled=false"))
    assert result.returncode == 2
    assert messages(result.stderr) == [
        f"error: {old} was written by an earlier version of neuron-layout, which did not record the layout settings "
        "that made it: lay the network out again (leave out --trajectory)"]
    assert not (tmp_path / "out").exists()  # refused before any work


# ---------------------------------------------------------------------------------------------
# config.yaml records what was laid out


def test_config_yaml_records_the_network_that_was_laid_out(tmp_path, shared_data):
    out = tmp_path / "out"
    result = command("euclid.yaml", out, tmp_path / "cache", shared_data, "--network", NETWORK,
                     *sets("model.activation=relu", "layout.sim.steps=30", "structure.enabled=false"))
    assert result.returncode == 0, result.stderr
    assert f"note: {NETWORK} holds a 784-30-10 sigmoid network: it replaces the config's model (hidden [100], " \
           "relu), and config.yaml records the file's" in messages(result.stderr)
    written = (out / "config.yaml").read_text()
    assert written.startswith(f"# The network was read from {NETWORK} (SHA-256 ")
    replay = load_config(out / "config.yaml")
    assert replay.model.hidden == (30,) and replay.model.activation == "sigmoid"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["sizes"] == [784, 30, 10] and metrics["activation"] == "sigmoid"
    assert metrics["network_file"] == NETWORK
    same = command("euclid.yaml", tmp_path / "same", tmp_path / "cache", shared_data, "--network", NETWORK,
                   *sets("model.hidden=[30]", "layout.sim.steps=30", "structure.enabled=false"))
    assert not [m for m in messages(same.stderr) if "replaces the config's model" in m]  # nothing replaced


# ---------------------------------------------------------------------------------------------
# Network files that are not network files


@pytest.mark.parametrize("content, reason", [
    (b"\x08\x07\x12\x07pytorch",
     "it is not an .npz archive (a zip of .npy arrays): it starts with b'\\x08\\x07\\x12\\x07pyto'"),
    (b"\x93NUMPY\x01\x00v\x00", "it is a single .npy array, not an .npz archive of named arrays"),
    (b"\x80\x04\x95\x10\x00", "it holds pickled Python objects, which are never loaded (they can run code)"),
    (b"", "it is empty"),
])
def test_a_file_that_is_not_an_npz_says_what_it_is(tmp_path, content, reason):
    from layout.core.errors import UserError
    from models.network.store import load_network

    path = tmp_path / "model.onnx"
    path.write_bytes(content)
    with pytest.raises(UserError) as info:
        load_network(path)
    assert str(info.value) == f"{path} is not a network file written by neuron-layout: {reason}"


def test_a_fifo_is_refused_without_waiting_for_it(tmp_path):
    import os

    from layout.core.errors import UserError
    from models.network.store import load_network

    fifo = tmp_path / "pipe.npz"
    os.mkfifo(fifo)
    with pytest.raises(UserError, match="pipe.npz is not a regular file: name a .npz file"):
        load_network(fifo)  # opening it would block until a writer came
