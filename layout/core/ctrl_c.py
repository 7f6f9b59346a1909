"""Ctrl-C that is never lost.

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


def check() -> None:
    """Raise KeyboardInterrupt if Ctrl-C was pressed since the watch began."""
    if _pressed.is_set():
        raise KeyboardInterrupt


def _note_and_raise(signum, frame) -> None:
    _pressed.set()
    raise KeyboardInterrupt


def _note(signum, frame) -> None:
    _pressed.set()


@contextlib.contextmanager
def _handling(handler) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield
        return
    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def watched() -> Iterator[None]:
    """A whole command: Ctrl-C raises at once, as usual, and is noted for `check()` too; where Python
    has to drop it (see above), it prints nothing."""
    _pressed.clear()
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


def deferred() -> Iterator[None]:
    """Code that runs inside callbacks which swallow exceptions (VTK rendering): Ctrl-C is only
    noted, and raised by the next `check()`."""
    return _handling(_note)
