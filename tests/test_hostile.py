"""Hostile configs and overrides get one short line: alias bombs, duplicate keys, YAML 1.1 numbers, a
whole section set at once, and integers beyond what the code can hold."""

from __future__ import annotations

import gzip
import json
import re
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from layout.core.config import DataConfig
from layout.core.config_file import load_config, valid_paths
from layout.core.errors import ConfigError, DataError, UserError
from models.data.datasets import load_dataset
from models.data.idx import decompress, parse_idx
from tests.conftest import make_idx_dataset, messages
from tests.data.make_reference import NETWORK as REFERENCE_NETWORK
from tests.test_fuzz import FUZZ

REPO = Path(__file__).resolve().parents[1]


def error_of(tmp_path: Path, text: str, overrides: tuple[str, ...] = ()) -> str:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    message = str(info.value)
    assert "\n" not in message and len(message) < 400, message
    return message


def alias_bomb(levels: int) -> str:
    """The issue's 413-byte file: each alias repeats the one before nine times."""
    lines = ["a0: &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels + 1)]
    return "\n".join(lines) + f"\nmodel:\n  hidden: *a{levels}\n"


@pytest.mark.parametrize("levels", [8, 9])
def test_an_alias_bomb_is_one_short_line(tmp_path, levels):
    message = error_of(tmp_path, alias_bomb(levels))
    assert "anchors and aliases (&name, *name) are not allowed in a config" in message
    assert "at line 1, column" in message


def test_a_key_given_twice_is_refused_with_both_lines(tmp_path):
    message = error_of(tmp_path, "train:\n  epochs: 3\nmodel:\n  hidden: [10]\ntrain:\n  epochs: 5\n")
    assert message == (f"config file '{tmp_path / 'c.yaml'}' is not valid YAML at line 5, column 1: key 'train' "
                       "appears twice (lines 1 and 5): keep one")
    assert "appears twice (lines 2 and 3)" in error_of(tmp_path, "train:\n  epochs: 3\n  epochs: 4\n")


@pytest.mark.parametrize("text, column", [("{{}}", 2), ("{[1]: 2}", 2), ("? {}\n: 1\n", 3)])
def test_a_list_or_mapping_as_a_key_is_one_short_line(tmp_path, text, column):
    assert error_of(tmp_path, text) == (f"config file '{tmp_path / 'c.yaml'}' is not valid YAML at line 1, "
                                        f"column {column}: found unhashable key")


@pytest.mark.parametrize("text, expected", [
    ("train:\n  epochs: 1:30\n", "train.epochs = '1:30' has the wrong type: expected an integer"),  # not 90
    ("train:\n  learning_rate: 1:30\n", "train.learning_rate = '1:30' has the wrong type: expected a number"),
    ("train:\n  epochs: 017\n", "train.epochs = '017' has the wrong type: expected an integer"),  # not octal 15
    ("train:\n  epochs: 0x1F\n", "train.epochs = '0x1F' has the wrong type: expected an integer"),
])
def test_yaml_1_1_numbers_are_not_numbers(tmp_path, text, expected):
    assert expected in error_of(tmp_path, text)


def test_yaml_1_2_numbers_still_are(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  learning_rate: 1e-3\n  epochs: 1_000\n  l1: .5\n")
    cfg = load_config(path)
    assert (cfg.train.learning_rate, cfg.train.epochs, cfg.train.l1) == (1e-3, 1000, 0.5)


def test_a_whole_section_cannot_be_set_at_once(tmp_path):
    message = error_of(tmp_path, "train:\n  learning_rate: 0.01\n", ("train={epochs: 3}",))
    assert message == "--set 'train={epochs: 3}': 'train' is a section: set one key at a time, e.g. " \
                      "--set train.optimizer=..."
    assert "'layout.forces' is a section" in error_of(tmp_path, "", ("layout.forces=1",))
    assert "'model' is a section" in error_of(tmp_path, "", ("model=[100]",))


def test_the_model_section_is_replaced_whole_by_a_mapping(tmp_path):
    """A sweep's grid of networks: the CNN's point has no hidden left over from the base's MLP."""
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  hidden: [30]\n  activation: sigmoid\n")
    cfg = load_config(path, ("model={activation: relu, layers: [flatten, {dense: {units: 7}}]}",))
    assert cfg.model.activation == "relu" and [layer.plain() for layer in cfg.model.layers][1] == {"dense": {"units": 7}}


def test_a_huge_value_is_quoted_as_a_short_excerpt(tmp_path):
    message = error_of(tmp_path, "", (f"model.hidden=[{', '.join(['-1'] * 5_000)}]",))
    assert message.startswith("model.hidden = [-1, -1, -1") and " ... is out of range: must be >= 1 and <= 1e+09" \
        in message
    assert error_of(tmp_path, "", (f"model.hidden=[{', '.join(['1'] * 100_000)}]",)).endswith(
        "more than 10,000 values: a config is a few dozen")


@pytest.mark.parametrize("override, expected", [
    ("train.seed=2147483648", "train.seed = 2147483648 is out of range: must be >= 0 and <= 2.14748e+09"),
    (f"layout.sim.seed={2**63}", "layout.sim.seed = 9223372036854775808 is out of range"),
    ("layout.sim.steps=1e10", "layout.sim.steps = 10000000000.0 has the wrong type: expected an integer"),
    ("layout.sim.steps=10000000000", "layout.sim.steps = 10000000000 is out of range: must be >= 1 and <= 1e+07"),
    ("layout.sim.chunk=1000000000", "layout.sim.chunk = 1000000000 is out of range: must be >= 1 and <= 100000"),
    ("structure.permutations=100000000", "structure.permutations = 100000000 is out of range"),
    ("train.epochs=" + "9" * 30, "train.epochs = " + "9" * 30 + " is out of range: must be >= 0 and <= 100000"),
])
def test_integers_beyond_what_the_code_can_hold_are_refused(tmp_path, override, expected):
    assert expected in error_of(tmp_path, "", (override,))


def test_the_command_refuses_an_alias_bomb_at_once_in_one_line(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(alias_bomb(9))
    result = subprocess.run([sys.executable, "-m", "layout.run", str(path), "--no-window"], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "anchors and aliases" in result.stderr and "Traceback" not in result.stderr


KEYS = [p for p in valid_paths() if "." in p]


@FUZZ
@given(st.sampled_from(KEYS + [k.rpartition(".")[0] for k in KEYS]),
       st.one_of(st.integers(-2**70, 2**70), st.text(max_size=40), st.floats(), st.lists(st.integers(-2**40, 2**40),
                                                                                         max_size=3)))
def test_any_override_gives_a_config_or_one_short_line(tmp_path_factory, key, value):
    path = tmp_path_factory.mktemp("fuzz") / "c.yaml"
    path.write_text("")
    try:
        load_config(path, (f"{key}={value}",))
    except ConfigError as e:
        assert "\n" not in str(e) and len(str(e)) < 400


# ---------------------------------------------------------------------------------------------
# Gzip bombs and absurd IDX headers


def idx_header(type_byte: int, dims: tuple[int, ...]) -> bytes:
    return bytes([0, 0, type_byte, len(dims)]) + struct.pack(f">{len(dims)}I", *dims)


def test_a_header_whose_size_overflows_int64_is_truncated_not_accepted():
    raw = idx_header(0x08, (2**32 - 1,) * 3) + b"\0" * 100
    with pytest.raises(DataError, match=r"x is truncated: its header promises 79228162458924105385300197375 bytes"):
        parse_idx(raw, "x")


def test_a_header_with_255_dimensions_is_one_line():
    with pytest.raises(DataError, match="x has a bad IDX header: it declares 255 dimensions"):
        parse_idx(bytes([0, 0, 0x08, 255]) + b"\0" * 2000, "x")


def test_a_gzip_bomb_is_refused_before_it_is_inflated():
    bomb = gzip.compress(idx_header(0x08, (6_000_000, 28, 28)) + bytes(50_000_000))  # 4.7 GB declared, 49 KB
    assert len(bomb) < 100_000
    with pytest.raises(DataError, match=r"declares 6000000 x 28 x 28 values \(4.7 GB decompressed\), more than the "
                                        r"1.0 GB available here"):
        decompress(bomb, "bomb.gz", available=10**9)
    with pytest.raises(DataError, match="bomb.gz is truncated: its header promises 4704000000 bytes"):
        parse_idx(decompress(bomb, "bomb.gz", available=10**10), "bomb.gz")  # inflates only what is there


def test_more_data_than_the_header_declares_is_refused_without_inflating_it():
    raw = gzip.compress(idx_header(0x08, (2,)) + bytes(3) + bytes(10_000_000))
    with pytest.raises(DataError, match=r"holds more data than its header \(dimensions 2\) accounts for"):
        decompress(raw, "x.gz", available=10**9)


def test_a_dataset_whose_files_disagree_is_refused_from_their_headers(tmp_path, isolated_cache):
    folder = make_idx_dataset(tmp_path / "d", n=16)
    bomb = gzip.compress(idx_header(0x08, (6_000_000, 28, 28)) + bytes(50_000_000))
    (folder / "train-images-idx3-ubyte.gz").write_bytes(bomb)
    with pytest.raises(DataError, match=r"has 6000000 images but .* has 16 labels: the two files do not belong"):
        load_dataset(DataConfig(dir=str(folder)), environ={}, system_root=tmp_path)
    assert not (isolated_cache / "decoded").exists() or all(p.stat().st_size < 10**6
                                                           for p in (isolated_cache / "decoded").iterdir())


# ---------------------------------------------------------------------------------------------
# Network and trajectory files: every meta field type-checked, every array checked after casting


def network_file_with(tmp_path: Path, meta_changes: dict | None = None, arrays_changes: dict | None = None,
                      name: str = "given.npz") -> Path:
    """The committed reference network, with some meta fields and arrays replaced (None: removed)."""
    with np.load(REFERENCE_NETWORK) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays.pop("meta")))
    for changes, target in ((meta_changes, meta), (arrays_changes, arrays)):
        for key, value in (changes or {}).items():
            if value is None:
                target.pop(key, None)
            else:
                target[key] = value
    path = tmp_path / name
    np.savez(path, meta=np.array(json.dumps(meta)), **arrays)
    return path


@pytest.mark.parametrize("meta, expected", [
    ({"test_accuracy": "high"}, "its meta's 'test_accuracy' is 'high', not a fraction between 0 and 1"),
    ({"test_accuracy": 1.5}, "its meta's 'test_accuracy' is 1.5, not a fraction between 0 and 1"),
    ({"class_names": []}, "its 10 outputs, classes [0, 1, 2, 3, 4, 5, 6, 7, 8, 9] and class names [] do not match"),
    ({"class_names": list(range(10))}, "its meta's 'class_names' is [0, 1, 2, 3, 4, 5, 6, 7, 8, 9], not a list of "
                                       "class names (text)"),
    ({"classes": [0] * 10}, "classes [0, 0, 0, 0, 0, 0, 0, 0, 0, 0] and class names"),
    ({"sizes": [784, True, 10]}, "its meta's 'sizes' is [784, True, 10], not a list of at least three layer widths"),
    ({"epochs": 2.5}, "its meta's 'epochs' is 2.5, not a whole number of epochs"),
    ({"dataset": None}, "its meta lacks 'dataset'"),
])
def test_every_meta_field_of_a_network_file_is_checked(tmp_path, meta, expected):
    from models.network.store import load_network

    path = network_file_with(tmp_path, meta)
    with pytest.raises(UserError) as info:
        load_network(path)
    assert str(info.value).startswith(f"{path} is not a network file written by neuron-layout: ")
    assert expected in str(info.value)


def test_weights_that_float32_cannot_hold_or_that_are_not_numbers_are_refused(tmp_path):
    from models.network.store import load_network

    with np.load(REFERENCE_NETWORK) as z:
        w0 = z["w0"].astype(np.float64)
    w0[3, 4] = 1e300  # finite in float64, infinite once cast to float32, as everything is computed
    path = network_file_with(tmp_path, arrays_changes={"w0": w0})
    with pytest.raises(UserError, match=re.escape(f"{path} is damaged: 'w0' holds NaN or infinite values, or values "
                                                  "beyond float32's range")):
        load_network(path)
    path = network_file_with(tmp_path, arrays_changes={"b1": np.array(["abc"] * 10)})
    with pytest.raises(UserError, match=re.escape("'b1' holds <U3 values, not real numbers")):
        load_network(path)


def test_a_network_without_snapshots_is_refused_for_the_training_timeline_in_one_line(tmp_path, shared_data):
    with np.load(REFERENCE_NETWORK) as z:
        empty = {k: z[k][:0] for k in z.files if k.startswith("snapshot_")}
    path = network_file_with(tmp_path, arrays_changes=empty)
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "layout.run", "configs/euclid.yaml", "--no-window", "--export",
                             "none", "--network", str(path), "--out", str(out), "--data-dir", str(shared_data),
                             "--set", "render.timeline=training"], cwd=REPO, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 2
    assert messages(result.stderr)[-1] == (
        f"error: {path} holds no weight snapshots, which render.timeline = training lays out one by one: set "
        "render.timeline=simulation, or retrain it with train.snapshot_every set")
    assert "Traceback" not in result.stderr and not out.exists() and result.stdout == ""


JSON_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(), st.text(max_size=8),
                        st.lists(st.one_of(st.integers(-3, 12), st.text(max_size=3), st.booleans()), max_size=12),
                        st.dictionaries(st.text(max_size=4), st.integers(), max_size=2))


def odd_array(original: np.ndarray, kind: int) -> np.ndarray:
    """Arrays a hand-made file might hold instead: text, float64 beyond float32, NaN, other shapes."""
    if kind == 0:
        return np.full(original.shape, "x")
    if kind == 1:
        return np.full(original.shape, 1e300)
    if kind == 2:
        return np.full(original.shape, np.nan, np.float32)
    if kind == 3:
        return original.reshape(-1)
    if kind == 4:
        return original[:0]
    if kind == 5:
        return original.astype(bool)
    return original.astype(np.complex64)


@FUZZ
@given(st.dictionaries(st.sampled_from(["sizes", "activation", "dataset", "classes", "class_names", "test_accuracy",
                                        "train_accuracy", "train_seconds", "epochs", "key"]), JSON_VALUES, max_size=3),
       st.dictionaries(st.sampled_from(["w0", "b0", "w1", "b1", "snapshot_w0", "snapshot_step", "history_epoch",
                                        "history_test_loss"]), st.integers(0, 7), max_size=2))
def test_the_network_reader_gives_a_usable_network_or_one_line(tmp_path_factory, meta, arrays):
    from models.network.store import load_network

    with np.load(REFERENCE_NETWORK) as z:
        replaced = {name: (None if kind == 7 else odd_array(z[name], kind)) for name, kind in arrays.items()}
    path = network_file_with(tmp_path_factory.mktemp("fuzz"), meta, replaced)
    try:
        network = load_network(path)
    except UserError as e:
        assert "\n" not in str(e) and len(str(e)) < 600, str(e)
    else:
        assert all(w.dtype == np.float32 and np.isfinite(w).all() for w in network.weights + network.biases)
        assert 0 <= network.test_accuracy <= 1 and len(network.class_names) == network.sizes[-1]


def test_a_trajectory_files_meta_is_checked_field_by_field(tmp_path):
    from layout.engine.trajectory_file import read_trajectory

    base = {"terms": ["euclid"], "labels": None, "settled_step": None}
    for meta, expected in (({"terms": [1, 2]}, "its meta's 'terms' is [1, 2], not a list of term names"),
                           ({"labels": "frame"}, "its meta's 'labels' is 'frame', not a list of frame titles"),
                           ({"settled_step": -3}, "its meta's 'settled_step' is -3, not a step number")):
        path = tmp_path / "t.npz"
        np.savez(path, meta=np.array(json.dumps({**base, **meta})), positions=np.zeros((2, 4, 3), np.float32),
                 energy=np.zeros((2, 1), np.float32), step=np.arange(2), group=np.zeros(4, np.int32))
        with pytest.raises(UserError) as info:
            read_trajectory(path)
        assert str(info.value) == f"{path} is not a trajectory file written by neuron-layout: {expected}"


@FUZZ
@given(st.dictionaries(st.sampled_from(["terms", "labels", "settled_step", "made_by"]), JSON_VALUES, max_size=3),
       st.dictionaries(st.sampled_from(["positions", "energy", "step", "group"]), st.integers(0, 7), max_size=2))
def test_the_trajectory_reader_gives_frames_or_one_line(tmp_path_factory, meta, arrays):
    from layout.core.config import LayoutConfig
    from layout.engine.trajectory_file import check_settings, read_trajectory

    base = {"positions": np.zeros((2, 4, 3), np.float32), "energy": np.zeros((2, 1), np.float32),
            "step": np.arange(2), "group": np.zeros(4, np.int32)}
    for name, kind in arrays.items():
        base[name] = odd_array(base[name], kind) if kind != 7 else None
    full = {"terms": ["euclid"], "labels": None, "settled_step": None, "made_by": {"layout": {}, "timeline": "x"}}
    path = tmp_path_factory.mktemp("fuzz") / "t.npz"
    np.savez(path, meta=np.array(json.dumps({**full, **meta})), **{k: v for k, v in base.items() if v is not None})
    try:
        loaded, theirs = read_trajectory(path)
        check_settings(path, theirs, LayoutConfig(), "simulation")
    except UserError as e:
        assert "\n" not in str(e) and len(str(e)) < 600, str(e)
