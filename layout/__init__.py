"""neuron-layout: lay out a trained network's hidden neurons in 3D by what they do.

The house, one package per stage, imports one way (downward in this list; pyproject.toml's
import-linter contracts check it):

  layout.run, layout.sweep, layout.train   the commands: parse, run the stages, print
  layout.pipeline                          the stages wired together, each writing its outputs
  layout.insight, render                   is the structure real; numpy in, pixels out
  layout.engine                            features, particles, energies, simulation, metrics
  models                                   datasets and networks
  layout.core                              config, errors, files, Ctrl-C, progress
"""

import os
import sys


def _prefer_wide_vectors() -> None:
    """XLA's CPU code generator prefers 256-bit vectors; on CPUs with AVX-512 the layout's all-pairs
    loops run about 1.2-1.4x faster with 512-bit ones (benchmarks/layout.py). Applied only before jax
    starts and only when the user has not set XLA_FLAGS."""
    if "jax" in sys.modules or "XLA_FLAGS" in os.environ:
        return
    try:
        with open("/proc/cpuinfo") as f:
            wide = " avx512f" in f.read()
    except OSError:
        return
    if wide:
        os.environ["XLA_FLAGS"] = "--xla_cpu_prefer_vector_width=512"


_prefer_wide_vectors()
