"""Config files and --set overrides: defaults, typing, and errors that say what to fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from layout.core.config import RunConfig
from layout.core.config_file import config_to_yaml, load_config
from layout.core.errors import ConfigError
from layout.run import main as run_main

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str, name: str = "exp.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def error_of(tmp_path: Path, text: str, overrides: tuple[str, ...] = ()) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), overrides)
    return str(info.value)


def test_empty_file_gives_the_defaults_named_after_the_file(tmp_path):
    cfg = load_config(write(tmp_path, "", name="my-run.yaml"))
    assert cfg == RunConfig(name="my-run")
    assert cfg.model.hidden == (100,) and cfg.train.optimizer == "adam"


def test_shipped_euclid_config_is_seed_001s_network():
    cfg = load_config(REPO / "configs" / "euclid.yaml")
    assert cfg.name == "euclid"
    assert cfg.model.hidden == (100,) and cfg.model.activation == "sigmoid"
    assert cfg.data.dataset == "mnist" and cfg.data.classes is None


def test_binary01_config_is_one_hidden_neuron_on_zeros_and_ones():
    cfg = load_config(REPO / "configs" / "binary01.yaml")
    assert cfg.model.hidden == (1,) and cfg.data.classes == (0, 1)


@pytest.mark.parametrize("text, expected", [
    ("train:\n  learnig_rate: 0.1\n", "unknown key 'train.learnig_rate': did you mean 'train.learning_rate'?"),
    ("train:\n  hidden: [10]\n", "unknown key 'train.hidden': did you mean 'model.hidden'?"),
    ("trian:\n  epochs: 1\n", "unknown key 'trian': did you mean 'train'?"),
    ("model:\n  activaton: relu\n", "did you mean 'model.activation'?"),
])
def test_unknown_key_names_its_path_and_the_closest_valid_key(tmp_path, text, expected):
    assert expected in error_of(tmp_path, text)


@pytest.mark.parametrize("text, expected", [
    ("train:\n  epochs: ten\n", "train.epochs = 'ten' has the wrong type: expected an integer"),
    ("train:\n  epochs: 2.5\n", "train.epochs = 2.5 has the wrong type: expected an integer"),
    ("train:\n  learning_rate: fast\n", "train.learning_rate = 'fast' has the wrong type: expected a number"),
    ("model:\n  hidden: [10, big]\n", "model.hidden = [10, 'big'] has the wrong type: expected a list of integers"),
    ("train:\n  learning_rate: -0.1\n", "train.learning_rate = -0.1 is out of range: must be > 0 and <= 10"),
    ("train:\n  momentum: 1.0\n", "train.momentum = 1.0 is out of range: must be >= 0 and < 1"),
    ("model:\n  hidden: [64, 0]\n", "model.hidden = [64, 0] is out of range: must be >= 1"),
    ("data:\n  classes: [0, 120]\n", "data.classes = [0, 120] is out of range: must be >= 0 and <= 99"),
    ("data:\n  classes: [3]\n", "data.classes = [3] is too short: give at least 2 values"),
    ("data:\n  classes: [1, 1]\n", "data.classes = [1, 1] repeats a value"),
    ("model:\n  activation: sigmod\n", "model.activation = 'sigmod' is not valid: choose one of sigmoid, tanh, "
                                      "relu (did you mean 'sigmoid'?)"),
    ("data:\n  dataset: cifar\n", "data.dataset = 'cifar' is not valid: choose one of mnist, fashion-mnist"),
    ("train: 5\n", "train must be a mapping of keys to values"),
    ("- a\n- b\n", "must be a mapping of sections"),
])
def test_bad_values_name_path_value_and_valid_range(tmp_path, text, expected):
    assert expected in error_of(tmp_path, text)


def test_yaml_syntax_error_names_the_line(tmp_path):
    assert "is not valid YAML at line 3" in error_of(tmp_path, "data:\n  dataset: mnist\n epochs: 3\n")


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_scientific_notation_is_read_as_a_number(tmp_path):
    # PyYAML reads 1e-3 (no dot) as a string; a float field still takes it.
    assert load_config(write(tmp_path, "train:\n  learning_rate: 1e-3\n")).train.learning_rate == 1e-3


def test_overrides_are_typed_by_the_field(tmp_path):
    cfg = load_config(write(tmp_path, "train:\n  epochs: 30\n"), [
        "train.epochs=3", "data.classes=[0, 1]", "model.hidden=[64, 32]", "train.learning_rate=0.01",
        "model.activation=relu", "data.limit=100",
    ])
    assert cfg.train.epochs == 3
    assert cfg.data.classes == (0, 1)
    assert cfg.model.hidden == (64, 32)
    assert cfg.train.learning_rate == 0.01
    assert cfg.model.activation == "relu"
    assert cfg.data.limit == 100
    assert load_config(write(tmp_path, ""), ["model.hidden=10"]).model.hidden == (10,)


@pytest.mark.parametrize("override, expected", [
    ("train.epochs", "is not of the form section.key=value"),
    ("train.epochs=abc", "train.epochs = 'abc' has the wrong type"),
    ("train.epocs=3", "did you mean 'train.epochs'?"),
    ("name.x=3", "'name' is a value, not a section"),
])
def test_bad_overrides_are_reported(tmp_path, override, expected):
    assert expected in error_of(tmp_path, "", (override,))


def test_resolved_config_reads_back_unchanged(tmp_path):
    cfg = load_config(REPO / "configs" / "binary01.yaml", ["train.l1=0.001", "data.limit=50"])
    again = load_config(write(tmp_path, config_to_yaml(cfg), name="other.yaml"))
    assert again == cfg


def test_command_reports_a_bad_config_in_one_line_and_exits_nonzero(tmp_path, capsys):
    path = write(tmp_path, "train:\n  learning_rate: -1\n")
    assert run_main([str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == ["error: train.learning_rate = -1 is out of range: must be > 0 and <= 10"]
    assert not (tmp_path / "out").exists()


def test_readme_documents_every_config_key():
    from layout.core.config_file import valid_paths

    readme = (REPO / "README.md").read_text()
    sections = {p.rpartition(".")[0] for p in valid_paths()}
    missing = [p for p in valid_paths() if "." in p and p not in sections and f"`{p}`" not in readme]
    assert missing == []
