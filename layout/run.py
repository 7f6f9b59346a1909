"""`python -m layout.run CONFIG` (also `neuron-layout CONFIG`): the whole pipeline, stage by stage.

Stages so far: config -> dataset -> network (trained, or reused from the cache) -> neuron features ->
force simulation -> metrics, with outputs in runs/<config name>/. The render stage joins here when it
is built; no math lives here. This module (with the entry points that call it) is the only place that
prints.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable

from layout.cli import config_from_args, make_parser, output_dir
from layout.errors import UserError
from layout.files import write_json


def run_command(command: Callable[[argparse.Namespace], int], argv: list[str] | None, *, prog: str,
                description: str) -> int:
    """Parse arguments and run `command`; a UserError or Ctrl-C becomes one line on stderr and an exit code."""
    args = make_parser(prog, description).parse_args(argv)
    try:
        return command(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished outputs are kept, nothing half-written was left", file=sys.stderr)
        return 130


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
    """Train (or reuse) the network, then lay its neurons out and measure the layout."""
    from layout.stages import layout_stage, layout_summary, training_stage, training_summary

    cfg = config_from_args(args)
    out = output_dir(args, cfg)
    trained = training_stage(cfg, out, retrain=args.retrain)
    print(training_summary(trained))
    laid = layout_stage(cfg, trained, out)
    metrics = write_json(out / "metrics.json", {**trained.figures, "layout": laid.figures})
    print(layout_summary(laid))
    print("wrote " + ", ".join(map(str, trained.written + laid.written + (metrics,))))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_command(pipeline, argv, prog="neuron-layout",
                       description="Train a network, lay out its hidden neurons in 3D, and show them.")


if __name__ == "__main__":
    raise SystemExit(main())
