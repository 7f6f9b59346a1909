"""Progress of a long stage, the one way library code reports while it works.

On a terminal, a tqdm bar on stderr. Anywhere else (a log file, CI, a pipe), plain lines on stderr: at
most one every LOG_SECONDS while the stage runs, and one when it ends, so that a log shows where a long
run is without a bar's hundreds of redraws. A stage that never advances (its result came from the
cache) shows nothing.
"""

from __future__ import annotations

import sys
import time
from typing import Callable, TextIO

from tqdm import tqdm

LOG_SECONDS = 5.0  # the most often a progress line is written when stderr is not a terminal


class progress_bar:
    """`with progress_bar(total, desc, unit) as bar: bar.advance_to(n, key=value)`, e.g.
    progress_bar(30, "training", "epoch"); `stream` (stderr) and `clock` are for tests."""

    def __init__(self, total: int, desc: str, unit: str, *, stream: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic, interval: float = LOG_SECONDS):
        self.total, self.desc, self.unit = total, desc, unit
        self.stream = sys.stderr if stream is None else stream
        self.clock, self.interval = clock, interval
        self.n, self.postfix, self.started, self.bar = 0, {}, False, None
        self.start = self.last_line = clock()

    def __enter__(self) -> "progress_bar":
        return self

    def advance_to(self, n: int, **postfix) -> None:
        self.postfix = postfix or self.postfix
        if not self.started and self.stream.isatty():
            self.bar = tqdm(total=self.total, desc=self.desc, unit=self.unit, file=self.stream)
        self.started = True
        if self.bar is not None:
            if postfix:
                self.bar.set_postfix(**postfix)
            self.bar.update(n - self.bar.n)
        elif self.clock() - self.last_line >= self.interval and n < self.total:
            self.line(f"{self.desc}: {self.counts(n)}")
        self.n = n

    def counts(self, n: int) -> str:
        """'12/30 epochs, 4.1 s (loss 0.231, test_acc 0.9212)'."""
        extra = ", ".join(f"{k} {v}" for k, v in self.postfix.items())
        return (f"{n}/{self.total} {plural(self.unit, self.total)}, {self.clock() - self.start:.1f} s"
                + (f" ({extra})" if extra else ""))

    def line(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()
        self.last_line = self.clock()

    def __exit__(self, kind, *_) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.started and kind is None:  # a stage that fails says so in the command's one error line
            self.line(f"{self.desc}: done, {self.counts(self.n)}")


def plural(unit: str, count: int) -> str:
    return unit if count == 1 else unit + "s"
