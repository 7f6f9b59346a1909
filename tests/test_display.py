"""A window opens only where a display server answers; elsewhere the command says why and exports."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from layout.core.display import display_problem

REPO = Path(__file__).resolve().parents[1]
UNUSED = 987  # an X display number nothing listens on


def test_no_display_named_is_said_so():
    assert display_problem({}) == "no display found"


def test_a_display_whose_server_is_gone_is_named():
    assert display_problem({"DISPLAY": f":{UNUSED}"}) == f"no X server answers at DISPLAY=:{UNUSED}"
    assert display_problem({"DISPLAY": "garbage"}) == "no X server answers at DISPLAY=garbage"
    assert display_problem({"WAYLAND_DISPLAY": "wayland-9", "XDG_RUNTIME_DIR": "/nonexistent"}) == (
        "no Wayland compositor answers at WAYLAND_DISPLAY=wayland-9")


def test_a_display_whose_server_listens_answers(tmp_path):
    number = UNUSED + 1
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:  # where an X server listens on Linux
        server.bind(f"\0/tmp/.X11-unix/X{number}")
        server.listen(1)
        assert display_problem({"DISPLAY": f":{number}.0"}) is None
        wayland = tmp_path / "wayland-0"
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as compositor:
            compositor.bind(str(wayland))
            compositor.listen(1)
            assert display_problem({"WAYLAND_DISPLAY": "wayland-0", "XDG_RUNTIME_DIR": str(tmp_path)}) is None
    assert display_problem({"DISPLAY": f":{number}"}) == f"no X server answers at DISPLAY=:{number}"


@pytest.mark.parametrize("display, said", [(f":{UNUSED}", f"no X server answers at DISPLAY=:{UNUSED}"),
                                            (None, "no display found")])
def test_the_command_exports_when_no_display_answers(tmp_path, shared_data, display, said):
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    if display:
        env["DISPLAY"] = display
    result = subprocess.run([sys.executable, "-m", "layout.run", "configs/binary01.yaml", "--out", str(out),
                             "--data-dir", str(shared_data), "--export", "png", "--set", "train.epochs=1",
                             "--set", "layout.sim.steps=40", "--set", "structure.enabled=false"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == (f"{said}: exporting instead of opening a window (use --no-window to "
                                             "silence this)")
    assert (out / "snapshot.png").stat().st_size > 1000 and "Traceback" not in result.stderr
