"""`python -m layout.run CONFIG` (also `neuron-layout CONFIG`): the whole pipeline, stage by stage.

Stages so far: config -> dataset -> network (trained, or reused from the cache) -> outputs in
runs/<config name>/. The layout and render stages join here as they are built; no math lives here.
"""

from __future__ import annotations

import argparse

from layout.cli import config_from_args, output_dir, run_command, training_stage, training_summary


def pipeline(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    result = training_stage(cfg, output_dir(args, cfg), retrain=args.retrain)
    print(training_summary(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_command(pipeline, argv, prog="neuron-layout",
                       description="Train a network, lay out its hidden neurons in 3D, and show them.")


if __name__ == "__main__":
    raise SystemExit(main())
