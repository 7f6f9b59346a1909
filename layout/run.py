"""The commands: `python -m layout.run CONFIG` (also `neuron-layout CONFIG`), `python -m layout.sweep
SWEEP` and `python -m layout.train CONFIG`. They parse arguments, run the stages in order and print; no
math lives here, and this is the only module that prints.

The whole pipeline: config -> dataset -> network (trained, or reused from the cache) -> neuron features
-> force simulation -> metrics -> structure tests -> movie and snapshot (offscreen) and/or the window,
with outputs in runs/<config name>/.

The stages are imported inside the commands, once the arguments and the config are valid: they bring
JAX, optax, scipy, matplotlib, PyVista and VTK, and a new process that imports them takes 2.1-2.3 s
instead of 0.2 s on this 2-core machine (/usr/bin/time, three runs each), which `--help` and a config
error (0.17 s each, whole command) do not need.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Callable

from layout.core import ctrl_c
from layout.core.config import EXPORTS, RunConfig
from layout.core.config_file import read_config, with_data_dir
from layout.core.display import display_problem
from layout.core.errors import UserError
from layout.core.files import cache_dir, write_json
from layout.core.run_folder import notes, physical, run_folder
from layout.core.sweep_file import point_configs, read_sweep


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
                        help="files to write: mp4, gif (the movie), png (snapshot), html (an interactive page), none; "
                             "default: png with a window, mp4 and png without one")
    parser.add_argument("--network", metavar="FILE",
                        help="lay out this network instead of training: a network.npz written by an earlier run, "
                             "or an MLP's weights as safetensors or npz")
    parser.add_argument("--expect-accuracy", type=float, metavar="X",
                        help="with --network: stop unless the network's test accuracy here is X to within 0.001 "
                             "(the figure your framework gave)")
    parser.add_argument("--trajectory", metavar="FILE",
                        help="show this trajectory.npz (written by an earlier run of the same network) "
                             "instead of simulating")
    return parser


def run_command(command: Callable[[argparse.Namespace], int], argv: list[str] | None, *, prog: str,
                description: str, view_options: bool = False) -> int:
    """Parse arguments and run `command`; a UserError or Ctrl-C becomes one line on stderr and an exit code."""
    parser = make_parser(prog, description)
    argv = sys.argv[1:] if argv is None else list(argv)
    args = (add_view_options(parser) if view_options else parser).parse_args(argv)
    args.command = shlex.join([prog, *argv])  # recorded in manifest.json
    try:
        with ctrl_c.watched():
            return command(args)
    except UserError as e:
        if args.debug:
            raise
        print(f"error: {e}{notes(e)}", file=sys.stderr)
        return 2
    except OSError as e:  # a full disk or a vanished folder while writing: partial files are already removed
        if args.debug:
            raise
        print(f"error: {write_failure(e)}{notes(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # partial files were removed as the interrupt unwound the stages
        terminated = isinstance(e, ctrl_c.Terminated)
        print(f"{'terminated' if terminated else 'interrupted'}: nothing half-written was left{notes(e)}",
              file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        # Leave at once: XLA may still be running a computation dispatched before the interrupt, and
        # finalizing the interpreter underneath it crashes with a segmentation fault.
        os._exit(143 if terminated else 130)


def write_failure(e: OSError) -> str:
    """What failed to be written, and where else to write: the cache has its own setting."""
    where = f" {e.filename}" if e.filename else ""
    in_cache = bool(e.filename) and cache_dir().resolve() in Path(e.filename).resolve().parents
    fix = "set NEURON_LAYOUT_CACHE to a folder with room" if in_cache else "choose another --out"
    return f"cannot write{where}: {e.strerror or e}; free some space or {fix}"


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """The config the arguments name, with --set and --data-dir applied; its notes are printed."""
    loaded = read_config(args.config, args.set)
    note(*loaded.notes)
    return with_data_dir(loaded.config, args.data_dir)


def note(*lines: str) -> None:
    for line in lines:
        print(f"note: {line}", file=sys.stderr)


def output_dir(out: str | None, name: str) -> Path:
    """The output folder, checked for writing before any work starts: the run works beside it and moves
    its outputs in when complete (layout/core/run_folder.py), so it is created only then."""
    folder = Path(out) if out else Path("runs") / name
    real = physical(folder)
    if real == real.parent:
        raise UserError(f"the output folder {folder} is the file system's root: choose a folder with --out")
    existing = real.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        for place in (existing, real) if real.exists() else (existing,):
            if not place.is_dir():
                raise NotADirectoryError(20, "Not a directory")
            tempfile.TemporaryDirectory(dir=place).cleanup()  # can we create entries there?
    except OSError as e:
        raise UserError(f"cannot write to the output folder {folder} ({e.strerror}): choose another with --out") from None
    return folder


def say_written(folder, written: tuple[Path, ...]) -> None:
    """The outputs, by the names they have now that the run is complete."""
    print("wrote " + ", ".join(str(folder.shown(p)) for p in (*written, folder.staging / "manifest.json")))


def say_why_not_native() -> None:
    """One note if the layout had to run its pair terms in JAX because the native kernel failed."""
    from layout.engine.native import unavailable_reason  # loaded by the stages already

    if why := unavailable_reason():
        note(why)


# ---------------------------------------------------------------------------------------------
# The commands


def train_only(args: argparse.Namespace) -> int:
    """The training stage alone: `python -m layout.train`."""
    cfg = config_from_args(args)
    out = output_dir(args.out, cfg.name)
    from layout.pipeline.train_stage import data_stage, training_stage, training_summary  # see the docstring

    dataset = data_stage(cfg)
    note(*dataset.notes)
    with run_folder(out, args.command) as folder:
        trained = training_stage(cfg, dataset, folder.staging, retrain=args.retrain, lays_out=False)
        note(*trained.notes)
        written = trained.written + (write_json(folder.staging / "metrics.json", trained.figures),)
    print(training_summary(trained))
    say_written(folder, written)
    return 0


def check_expected(args: argparse.Namespace, network_file: str | None) -> None:
    """--expect-accuracy: a fraction, and only with the network file (--network or model.file) whose
    accuracy it checks."""
    if args.expect_accuracy is None:
        return
    if network_file is None:
        raise UserError("--expect-accuracy checks a --network file's test accuracy: give --network FILE too (or "
                        "model.file in the config)")
    if not 0 <= args.expect_accuracy <= 1:
        raise UserError(f"--expect-accuracy {args.expect_accuracy:g} is not a fraction between 0 and 1 (0.9123, "
                        "not 91.23)")


def pipeline(args: argparse.Namespace) -> int:
    """Train (or reuse) the network, lay its neurons out, measure the layout, then show or export it."""
    cfg = config_from_args(args)
    out = output_dir(args.out, cfg.name)
    problem = None if args.no_window else display_problem()
    window = not args.no_window and problem is None
    if problem:
        print(f"{problem}: exporting instead of opening a window (use --no-window to silence this)")
    formats = tuple(f for f in (args.export or (("png",) if window else ("mp4", "png"))) if f != "none")
    check_expected(args, args.network or cfg.model.file)
    # the stages, once the config is valid (see the module docstring)
    from layout.engine.trajectory_file import check_settings, read_trajectory
    from layout.pipeline.layout_stage import layout_stage, layout_summary
    from layout.pipeline.outputs import run_figures
    from layout.pipeline.render_stage import (
        atlas_stage,
        details_for,
        glyph_note,
        page_inputs,
        render_stage,
        scene_for,
        window_probe,
    )
    from layout.pipeline.structure_stage import structure_stage
    from layout.pipeline.train_stage import data_stage, training_stage, training_summary
    from render.window import show_window

    if args.trajectory:  # a damaged file, or one laid out with other settings, is reported before any training
        check_settings(args.trajectory, read_trajectory(args.trajectory)[1], cfg.layout, cfg.render.timeline)
    dataset = data_stage(cfg)
    note(*dataset.notes)
    with run_folder(out, args.command) as folder:
        work = folder.staging
        trained = training_stage(cfg, dataset, work, retrain=args.retrain, network_file=args.network,
                                 expect_accuracy=args.expect_accuracy)
        note(*trained.notes)
        print(training_summary(trained))
        cfg = trained.config  # as used: with --network, the file's model
        laid = layout_stage(cfg, trained, work, relayout=args.retrain, trajectory_file=args.trajectory)
        note(*laid.notes)
        print(layout_summary(laid))
        say_why_not_native()
        structure = structure_stage(cfg, trained, laid, work, retest=args.retrain) if cfg.structure.enabled else None
        if structure is not None:
            note(*structure.notes)
            how = "reused from cache, " if structure.reused else ""
            print(f"structure tests ({how}{structure.seconds:.1f} s, details in report.md):\n  "
                  + "\n  ".join(structure.verdicts))
        metrics = write_json(work / "metrics.json", run_figures(trained.figures, laid.figures,
                                                               structure.figures if structure else None))
        note(*filter(None, [glyph_note(cfg, laid.features)]))
        atlases = atlas_stage(cfg, trained, laid, work)
        scene = scene_for(cfg, trained, laid, structure)  # built once for the exports and the window
        page = page_inputs(cfg, trained, laid, structure) if "html" in formats else None
        exported, export_notes = render_stage(scene, cfg, work, formats, page) if formats else ((), ())
        note(*export_notes)
        written = (trained.written + laid.written + (structure.written if structure else ()) + (metrics,) + atlases
                   + exported)
    say_written(folder, written)
    if window:
        details = details_for(laid, trained.dataset.test.images, trained.network)
        show_window(scene, cfg.render, details, probe=window_probe(cfg, trained, laid.features.hidden_layers))
    return 0


def sweep_pipeline(args: argparse.Namespace) -> int:
    """`python -m layout.sweep`: every point's config checked first, then one line per finished point."""
    sweep = read_sweep(args.config)
    configs = point_configs(sweep, tuple(args.set), args.data_dir)
    out = output_dir(args.out, sweep.name)
    from layout.pipeline.sweep import point_summary, run_points, write_sweep  # see the module docstring

    results = []
    with run_folder(out, args.command) as folder:
        try:
            for result in run_points(sweep, configs, folder.staging, args.retrain, args.debug):
                results.append(result)
                print(point_summary(result, len(configs)), flush=True)
        except KeyboardInterrupt:  # the finished points' table and contact sheet, kept apart with them
            if results:
                write_sweep(folder.staging, sweep, results, len(configs))
            raise
        say_why_not_native()
        written = write_sweep(folder.staging, sweep, results, len(configs))
    say_written(folder, written)
    failed = [r for r in results if r.error]
    if failed:
        print(f"error: {len(failed)} of {len(results)} points failed (listed in sweep.md); the others are in the "
              "table", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_command(pipeline, argv, prog="neuron-layout", view_options=True,
                       description="Train a network, lay out its hidden neurons in 3D, and show them.")


def sweep_main(argv: list[str] | None = None) -> int:
    return run_command(sweep_pipeline, argv, prog="python -m layout.sweep",
                       description="Run the pipeline over a grid of configs; compare accuracy, sparsity and structure.")


def train_main(argv: list[str] | None = None) -> int:
    return run_command(train_only, argv, prog="python -m layout.train",
                       description="Train (or reuse) the network a config describes.")


if __name__ == "__main__":
    raise SystemExit(main())
