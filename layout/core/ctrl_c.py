"""Ctrl-C (and SIGTERM, as `kill` or a scheduler sends it) that is never lost.

Python raises KeyboardInterrupt wherever the interpreter happens to be when SIGINT arrives. Inside a
garbage-collector callback (JAX registers one) or a VTK callback the exception is printed as "ignored"
and dropped, and the run would go on. So every press is also noted, and the long loops (training
epochs, simulation chunks, movie frames) call `check()`, which raises for a press that was dropped.
While a command is watched, Python does not print the dropped one (with its traceback) either.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from typing import Iterator

_pressed = threading.Event()
_terminated = threading.Event()
SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Terminated(KeyboardInterrupt):
    """SIGTERM: handled as Ctrl-C is (nothing half-written is left), with its own exit code."""


def interruption() -> KeyboardInterrupt:
    return Terminated() if _terminated.is_set() else KeyboardInterrupt()


def check() -> None:
    """Raise KeyboardInterrupt (Terminated for SIGTERM) if a signal came since the watch began."""
    if _pressed.is_set():
        raise interruption()


def _note(signum, frame) -> None:
    if signum == signal.SIGTERM:
        _terminated.set()
    _pressed.set()


def _note_and_raise(signum, frame) -> None:
    _note(signum, frame)
    raise interruption()


@contextlib.contextmanager
def _handling(handler) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield
        return
    previous = {s: signal.signal(s, handler) for s in SIGNALS}
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)


@contextlib.contextmanager
def watched() -> Iterator[None]:
    """A whole command: Ctrl-C raises at once, as usual, and is noted for `check()` too; where Python
    has to drop it (see above), it prints nothing."""
    _pressed.clear()
    _terminated.clear()
    previous = sys.unraisablehook

    def quiet(unraisable) -> None:
        if not isinstance(unraisable.exc_value, KeyboardInterrupt):
            previous(unraisable)

    sys.unraisablehook = quiet
    try:
        with _handling(_note_and_raise):
            yield
    finally:
        sys.unraisablehook = previous
        _pressed.clear()
        _terminated.clear()


def deferred() -> Iterator[None]:
    """Code that runs inside callbacks which swallow exceptions (VTK rendering): Ctrl-C is only
    noted, and raised by the next `check()`."""
    return _handling(_note)
