"""`python -m layout.run CONFIG` (also `neuron-layout CONFIG`): the whole pipeline, stage by stage.

Stages: config -> dataset -> network (trained, or reused from the cache) -> neuron features -> force
simulation -> metrics -> movie and snapshot (offscreen) and/or the interactive window, with outputs in
runs/<config name>/. No math lives here. This module (with the entry points that call it) is the only
place that prints.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable

from layout import ctrl_c
from layout.cli import add_view_options, config_from_args, make_parser, output_dir
from layout.errors import UserError
from layout.files import write_json


def run_command(command: Callable[[argparse.Namespace], int], argv: list[str] | None, *, prog: str,
                description: str, view_options: bool = False) -> int:
    """Parse arguments and run `command`; a UserError or Ctrl-C becomes one line on stderr and an exit code."""
    parser = make_parser(prog, description)
    args = (add_view_options(parser) if view_options else parser).parse_args(argv)
    try:
        with ctrl_c.watched():
            return command(args)
    except UserError as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a full disk or a vanished folder while writing: partial files are already removed
        if args.debug:
            raise
        print(f"error: {write_failure(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # partial files were removed as the interrupt unwound the stages
        print("interrupted: finished outputs are kept, nothing half-written was left", file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        # Leave at once: XLA may still be running a computation dispatched before the interrupt, and
        # finalizing the interpreter underneath it crashes with a segmentation fault.
        os._exit(130)


def write_failure(e: OSError) -> str:
    """What failed to be written, and where else to write: the cache has its own setting."""
    from pathlib import Path

    from layout.files import cache_dir

    where = f" {e.filename}" if e.filename else ""
    in_cache = bool(e.filename) and cache_dir().resolve() in Path(e.filename).resolve().parents
    fix = "set NEURON_LAYOUT_CACHE to a folder with room" if in_cache else "choose another --out"
    return f"cannot write{where}: {e.strerror or e}; free some space or {fix}"


def train_only(args: argparse.Namespace) -> int:
    """The training stage alone: `python -m models.train`."""
    from layout.stages import training_stage, training_summary

    cfg = config_from_args(args)
    out = output_dir(args, cfg)
    trained = training_stage(cfg, out, retrain=args.retrain)
    written = trained.written + (write_json(out / "metrics.json", trained.figures),)
    print(training_summary(trained))
    print("wrote " + ", ".join(map(str, written)))
    return 0


def pipeline(args: argparse.Namespace) -> int:
    """Train (or reuse) the network, lay its neurons out, measure the layout, then show or export it."""
    from layout.stages import layout_stage, layout_summary, render_stage, scene_for, training_stage, training_summary
    from layout.structure_stage import structure_stage

    cfg = config_from_args(args)
    out = output_dir(args, cfg)
    window = not args.no_window and display_available()
    if not args.no_window and not window:
        print("no display found: exporting instead of opening a window (use --no-window to silence this)")
    formats = tuple(f for f in (args.export or (("png",) if window else ("mp4", "png"))) if f != "none")
    if args.trajectory:  # a damaged file is reported before any training
        from layout.stages import read_trajectory

        read_trajectory(args.trajectory)
    trained = training_stage(cfg, out, retrain=args.retrain, network_file=args.network)
    print(training_summary(trained))
    laid = layout_stage(cfg, trained, out, relayout=args.retrain, trajectory_file=args.trajectory)
    print(layout_summary(laid))
    say_why_not_native()
    structure = structure_stage(cfg, trained, laid, out, retest=args.retrain) if cfg.structure.enabled else None
    if structure is not None:
        how = "reused from cache, " if structure.reused else ""
        print(f"structure tests ({how}{structure.seconds:.1f} s, details in report.md):\n  "
              + "\n  ".join(structure.verdicts))
    metrics = write_json(out / "metrics.json", run_figures(trained, laid, structure))
    scene = scene_for(cfg, trained, laid, structure)  # built once for the exports and the window
    exported = render_stage(scene, cfg, out, formats) if formats else ()
    written = trained.written + laid.written + (structure.written if structure else ()) + (metrics,) + exported
    print("wrote " + ", ".join(map(str, written)))
    if window:
        from layout.stages import details_for
        from render.window import show_window

        show_window(scene, cfg.render, details_for(laid))
    return 0


def sweep_pipeline(args: argparse.Namespace) -> int:
    """`python -m layout.sweep`: every point's config checked first, then one line per finished point."""
    from layout.config import RunConfig
    from layout.sweep import point_configs, point_summary, read_sweep, run_points, write_sweep

    sweep = read_sweep(args.config)
    configs = point_configs(sweep, tuple(args.set), args.data_dir)
    out = output_dir(argparse.Namespace(out=args.out), RunConfig(name=sweep.name))
    results = []
    for result in run_points(sweep, configs, out, args.retrain):
        results.append(result)
        print(point_summary(result, len(configs)), flush=True)
    say_why_not_native()
    print("wrote " + ", ".join(map(str, write_sweep(out, sweep, results))))
    failed = [r for r in results if r.error]
    if failed:
        print(f"error: {len(failed)} of {len(results)} points failed (listed in sweep.md); the others are in the "
              "table", file=sys.stderr)
        return 1
    return 0


def sweep_main(argv: list[str] | None = None) -> int:
    return run_command(sweep_pipeline, argv, prog="python -m layout.sweep",
                       description="Run the pipeline over a grid of configs; compare accuracy, sparsity and structure.")


def say_why_not_native() -> None:
    """One note if the layout had to run its pair terms in JAX because the native kernel failed."""
    from layout.native import unavailable_reason

    if why := unavailable_reason():
        print(f"note: {why}", file=sys.stderr)


def run_figures(trained, laid, structure) -> dict:
    """metrics.json of a run: the training figures, "layout" and (when tested) "structure"."""
    figures = {**trained.figures, "layout": laid.figures}
    if structure is not None:
        figures["structure"] = {"verdicts": list(structure.verdicts), "seconds": structure.seconds,
                                "reused": structure.reused}
    return figures


def display_available() -> bool:
    """Whether an interactive window can open here (an X or Wayland display)."""
    import os

    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def main(argv: list[str] | None = None) -> int:
    return run_command(pipeline, argv, prog="neuron-layout", view_options=True,
                       description="Train a network, lay out its hidden neurons in 3D, and show them.")


if __name__ == "__main__":
    raise SystemExit(main())
