"""Whether a window can open here: a display is named (DISPLAY, WAYLAND_DISPLAY) and its server answers.

A DISPLAY left over from an ssh session or a stopped Xvfb names a server that is gone; VTK would abort
the process trying to open a window there. So the commands connect to the display's socket first (a
millisecond) and export instead, saying why.
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from typing import Mapping

X_DISPLAY = re.compile(r"^(?P<host>[^:]*):(?P<number>\d+)(\.\d+)?$")
TIMEOUT = 1.0  # seconds, for a display on another host


def display_problem(environ: Mapping[str, str] = os.environ) -> str | None:
    """None if a display server answers; else why no window can open, for the user."""
    wayland, x = environ.get("WAYLAND_DISPLAY"), environ.get("DISPLAY")
    if wayland and answers(wayland_socket(wayland, environ)):
        return None
    if x:
        return None if x_answers(x) else f"no X server answers at DISPLAY={x}"
    if wayland:
        return f"no Wayland compositor answers at WAYLAND_DISPLAY={wayland}"
    return "no display found"


def wayland_socket(name: str, environ: Mapping[str, str]) -> str:
    return name if name.startswith("/") else str(Path(environ.get("XDG_RUNTIME_DIR", f"/run/user/{os.getuid()}")) / name)


def x_answers(display: str) -> bool:
    """Connect to an X display's socket: local ones by their file or abstract unix socket, others by TCP."""
    if display.startswith("/"):  # XQuartz: the display is a socket path
        return answers(display)
    match = X_DISPLAY.match(display)
    if not match:
        return False
    host, number = match["host"], int(match["number"])
    if host in ("", "unix"):
        path = f"/tmp/.X11-unix/X{number}"
        return answers(path) or answers("\0" + path)  # Linux servers listen on both
    try:
        with socket.create_connection((host, 6000 + number), timeout=TIMEOUT):
            return True
    except OSError:
        return False


def answers(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(TIMEOUT)
        try:
            s.connect(path)
            return True
        except OSError:
            return False
