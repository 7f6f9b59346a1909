"""`python -m layout.run CONFIG` (also `neuron-layout CONFIG`): the whole pipeline, stage by stage.

Stages so far: config -> dataset -> network (trained, or reused from the cache) -> outputs in
runs/<config name>/. The layout and render stages join here as they are built; no math lives here.
This module (with the entry points that call it) is the only place that prints.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable

from layout.cli import config_from_args, make_parser, output_dir, training_stage, training_summary
from layout.errors import UserError


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
    """The training stage: `python -m models.train`."""
    cfg = config_from_args(args)
    result = training_stage(cfg, output_dir(args, cfg), retrain=args.retrain)
    print(training_summary(result))
    return 0


# The layout and render stages extend the pipeline as they land; today it ends after training.
pipeline = train_only


def main(argv: list[str] | None = None) -> int:
    return run_command(pipeline, argv, prog="neuron-layout",
                       description="Train a network, lay out its hidden neurons in 3D, and show them.")


if __name__ == "__main__":
    raise SystemExit(main())
