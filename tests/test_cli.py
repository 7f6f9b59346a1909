"""The commands as a user runs them: real processes, exit codes, one-line errors without tracebacks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = Path(sys.executable).parent / "neuron-layout"


def run(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), cwd=cwd, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("command", [
    [sys.executable, "-m", "layout.train"],
    [sys.executable, "-m", "layout.run"],
    [str(SCRIPT)],
])
@pytest.mark.parametrize("extra, expected", [
    (["missing.yaml"], "error: config file 'missing.yaml' not found: check the path"),
    (["configs/euclid.yaml", "--set", "train.learnig_rate=0.1"],
     "error: unknown key 'train.learnig_rate': did you mean 'train.learning_rate'?"),
    (["configs/euclid.yaml", "--set", "train.epochs=-2"],
     "error: train.epochs = -2 is out of range: must be >= 0 and <= 100000"),
    (["configs/euclid.yaml", "--data-dir", "/no/such/folder"],
     "error: data.dir '/no/such/folder' is not a folder: fix --data-dir or data.dir in the config"),
])
def test_bad_input_gives_one_line_and_exit_code_2(command, extra, expected, tmp_path):
    result = run(*command, *extra, "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [expected]
    assert "Traceback" not in result.stderr + result.stdout
    assert not (tmp_path / "out").exists()


def test_console_script_is_installed_and_shows_help():
    result = run(str(SCRIPT), "--help")
    assert result.returncode == 0
    for option in ("--out", "--data-dir", "--set", "--retrain"):
        assert option in result.stdout


@pytest.mark.parametrize("extra, expected", [
    (["configs/euclid.yaml", "--export", "mp5"], "error: argument --export: invalid choice: 'mp5'"),
    (["configs/euclid.yaml", "--colour"], "error: unrecognized arguments: --colour"),
    ([], "error: the following arguments are required: config"),
])
def test_usage_mistakes_are_one_line_too(extra, expected):
    result = run(str(SCRIPT), *extra)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(expected) and "see neuron-layout --help" in lines[0]
