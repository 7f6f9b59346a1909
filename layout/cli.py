"""What the commands share: arguments, config loading and progress bars.

Nothing here prints; layout/run.py decides what the user sees (progress bars go to stderr, and only
when it is a terminal).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from layout.config import EXPORTS, RunConfig, load_config
from layout.errors import UserError


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line (argparse prints the whole usage first)."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def make_parser(prog: str, description: str) -> argparse.ArgumentParser:
    parser = OneLineParser(prog=prog, description=description)
    parser.add_argument("config", help="YAML config file, e.g. configs/euclid.yaml")
    parser.add_argument("--out", metavar="DIR", help="output folder (default: runs/<config name>)")
    parser.add_argument("--data-dir", metavar="DIR", help="folder holding the dataset's IDX files")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one config value, e.g. --set train.epochs=5 (repeatable)")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    parser.add_argument("--retrain", action="store_true",
                        help="train (and lay out) again even if a cached network (and layout) matches")
    return parser


def add_view_options(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of the full pipeline: window and exports."""
    parser.add_argument("--no-window", action="store_true", help="do not open the interactive 3D window")
    parser.add_argument("--export", nargs="+", choices=EXPORTS, metavar="FORMAT",
                        help="files to write: mp4, gif (the movie), png (snapshot), none; default: png with a "
                             "window, mp4 and png without one")
    parser.add_argument("--network", metavar="FILE",
                        help="lay out this network.npz (written by an earlier run) instead of training")
    parser.add_argument("--trajectory", metavar="FILE",
                        help="show this trajectory.npz (written by an earlier run of the same network) "
                             "instead of simulating")
    return parser


def config_from_args(args: argparse.Namespace) -> RunConfig:
    return with_data_dir(load_config(args.config, args.set), args.data_dir)


def with_data_dir(cfg: RunConfig, data_dir: str | None) -> RunConfig:
    """cfg with `--data-dir`, when given, as data.dir."""
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, dir=data_dir)) if data_dir else cfg


def output_dir(args: argparse.Namespace, cfg: RunConfig) -> Path:
    """The output folder, checked for writing before any work starts (it is created only when the
    first output is written, so a run that fails early leaves no empty folder)."""
    import tempfile

    out = Path(args.out) if args.out else Path("runs") / cfg.name
    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        if not existing.is_dir():
            raise NotADirectoryError(20, "Not a directory")
        tempfile.TemporaryDirectory(dir=existing).cleanup()  # can we create entries there?
    except OSError as e:
        raise UserError(f"cannot write to the output folder {out} ({e.strerror}): choose another with --out") from None
    return out


class progress_bar:
    """`with progress_bar(total, desc, unit) as bar: bar.advance_to(n, key=value)`; a tqdm bar on stderr,
    silent when stderr is not a terminal."""

    def __init__(self, total: int, desc: str, unit: str):
        from tqdm import tqdm

        self.bar = tqdm(total=total, desc=desc, unit=unit, disable=not sys.stderr.isatty())

    def __enter__(self) -> "progress_bar":
        return self

    def advance_to(self, n: int, **postfix) -> None:
        if postfix:
            self.bar.set_postfix(**postfix)
        self.bar.update(n - self.bar.n)

    def __exit__(self, *exc) -> None:
        self.bar.close()
