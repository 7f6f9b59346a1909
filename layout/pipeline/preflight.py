"""Checks before any work: what the config asks that only the data can answer, and whether this machine
can hold the run at all.

The memory estimate adds up the arrays each stage keeps (float32 unless noted), from the network's
layer sizes and the data's counts, and compares the largest stage with the memory available. It is
meant to refuse what cannot work (a hidden layer of 10^8 neurons, a 10,000-neuron layout with 99 null
layouts side by side) in one line before minutes of work, not to predict a run's footprint to the
megabyte: the process itself (Python, JAX, VTK) needs about 0.6 GB more, and XLA's temporaries come
on top.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from layout.core.config import RunConfig
from layout.core.errors import ConfigError, UserError
from layout.core.layers import INPUT_SHAPE, check_shapes, patch_values
from layout.core.memory import available_memory, gigabytes
from layout.engine.features import ACTIVATION_FLOATS, EVAL_BATCH
from layout.engine.metrics import BATCH_VALUES
from layout.engine.sampled import pairs_mode
from layout.insight.suite import STRUCTURE_NEURONS
from models.data.datasets import Dataset
from models.network.cnn import count_params as count_layer_params
from models.network.train import EVAL_CHUNK, check_batches

FLOAT = 4  # bytes
REST_ROW = 1024  # the native kernel pads its rest-length rows to a multiple of this (layout/engine/pairs.py)
# sampled pairs (layout/engine/sampled.py): bytes per particle and neighbour: the neighbours, their weights
# and both-ends lists (4 + 4 + 16), the native kernel's compressed rows (40), the pair data (5) and the
# search's distances and labels (12 + 12 x 1/k)
SAMPLED_BYTES = 96
OPTIMIZER_COPIES = 5  # weights, gradients, Adam's two moments and the update, while training


def check_snapshots(cfg: RunConfig, n_snapshots: int, path: str, lays_out: bool) -> None:
    """The training timeline lays out a network's weight snapshots: a network file given without any
    cannot be shown that way."""
    if lays_out and cfg.render.timeline == "training" and n_snapshots == 0:
        raise ConfigError(f"{path} holds no weight snapshots, which render.timeline = training lays out one by one: "
                          "set render.timeline=simulation, or retrain it with train.snapshot_every set")


def check_fits_data(cfg: RunConfig, dataset: Dataset) -> None:
    """What the config asks that only the data (or another section) can check, before any training."""
    if cfg.render.color_by in ("spread", "ablation") and not cfg.structure.enabled:
        raise ConfigError(f"render.color_by = {cfg.render.color_by} needs the structure tests: set "
                          "structure.enabled=true")
    if cfg.render.color_by == "spread" and cfg.structure.stability_seeds < 2:
        raise ConfigError("render.color_by = spread needs structure.stability_seeds >= 2")
    if cfg.render.halo and (not cfg.structure.enabled or cfg.structure.stability_seeds < 2):
        raise ConfigError("render.halo = true needs the stability layouts: set structure.enabled=true and "
                          "structure.stability_seeds >= 2")
    n_test = len(dataset.test.labels)
    if cfg.render.color_by == "image" and cfg.render.image_index >= n_test:
        raise ConfigError(f"render.image_index = {cfg.render.image_index} is out of range: the test set has "
                          f"{n_test} images (0-{n_test - 1})")
    if isinstance(cfg.render.probe, int) and cfg.render.probe >= n_test:
        raise ConfigError(f"render.probe = {cfg.render.probe} is out of range: the test set has {n_test} images "
                          f"(0-{n_test - 1})")


def check_trainable(cfg: RunConfig, dataset: Dataset) -> None:
    """Data that leaves no test image, or no full training batch, is refused before training."""
    check_batches(len(dataset.train.labels), len(dataset.test.labels), cfg.train)


@dataclass(frozen=True)
class Need:
    """The memory one stage needs, in bytes, what holds it, and how to need less."""

    stage: str
    bytes: int
    holds: str
    fix: str
    optional: bool = False  # the stage can be turned off


def memory_needs(cfg: RunConfig, sizes: tuple[int, ...], n_train: int, n_test: int,
                 given_snapshots: int | None = None, lays_out: bool = True) -> list[Need]:
    """The memory each stage of a run needs, for a network of layer widths `sizes` (inputs, hidden...,
    outputs) and the data's counts: trained here, or given (a network file with `given_snapshots`);
    the stages after training only when the run `lays_out` the network (not `python -m layout.train`)."""
    hidden = sizes[1:-1]
    n, widest = sum(hidden), max(hidden)
    n_params = sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))
    trains = given_snapshots is None
    snapshots = 1 + n_snapshots(cfg, n_train) if trains else given_snapshots
    particles = n + (0 if cfg.layout.anchors.mode == "none" else sizes[-1])
    rest = particles * -(-particles // REST_ROW) * REST_ROW * FLOAT  # one system's spring rest lengths
    sim = cfg.layout.sim
    if pairs_mode(sim.pairs, particles) == "sampled":  # the neighbours, the vectors twice over in 3 copies
        pairs, holding = SAMPLED_BYTES * particles * sim.neighbours + 6 * particles * sizes[-1] * FLOAT, (
            f"the {sim.neighbours} nearest neighbours of {particles:,} particles")
    else:
        pairs, holding = rest, f"the spring lengths of {particles:,} particles, all pairs"
    frames = sim.steps // sim.record_every + 2 + sim.chunk // sim.record_every  # kept, and one chunk's
    trajectory = 2 * frames * particles * 3 * FLOAT  # the frames, and the scene's copy of them
    fewer = "use fewer hidden neurons (model.hidden)"
    needs = [
        Need("training", FLOAT * (n_params * (OPTIMIZER_COPIES + snapshots) + 2 * n_test * n),
             f"{n_params:,} weights, their optimizer state and {snapshots} snapshots",
             f"{fewer}, or keep fewer snapshots (raise train.snapshot_every)") if trains else
        Need("network", FLOAT * n_params * (snapshots + 1), f"{n_params:,} weights", fewer),
    ]
    if not lays_out:
        return needs
    needs += [
        Need("neuron features", FLOAT * (4 * min(n_test * n, ACTIVATION_FLOATS) + 3 * sizes[0] * n),
             f"the activations of {n:,} neurons on a batch of test images, and their fields", fewer),
        Need("layout", pairs + trajectory + 8 * 6 * min(min(n, cfg.layout.metrics_sample) * n, BATCH_VALUES),
             f"{holding}, and {frames:,} frames",
             f"{fewer}, or keep fewer frames (fewer layout.sim.steps, more layout.sim.record_every)"),
    ]
    if cfg.structure.enabled:
        sc = cfg.structure
        # with sampled pairs no 3D null layouts, and the stability layouts one after another (suite.options_for)
        side_by_side = 0 if pairs_mode(sim.pairs, particles) == "sampled" else max(sc.layout_nulls, sc.stability_seeds)
        tested = min(widest, STRUCTURE_NEURONS)  # a wider layer's tests run on a sample of its neurons
        samples = sc.permutations * tested * (1 + 2 * sizes[-1]) * FLOAT  # permutations, two sets of null vectors
        needs.append(Need("structure tests", side_by_side * rest + (8 + 8 * 2) * tested * tested + samples
                          + FLOAT * (n_test * tested + 2 * min(n_test * n, ACTIVATION_FLOATS)),
                          (f"{side_by_side} layouts side by side, " if side_by_side else "")
                          + f"{tested:,} x {tested:,} distance matrices and "
                          f"{sc.permutations:,} null samples",
                          "lower structure.layout_nulls, structure.stability_seeds and structure.permutations, or set "
                          "structure.enabled=false", optional=True))
    return needs


def n_snapshots(cfg: RunConfig, n_train: int) -> int:
    """The weight snapshots training keeps after the initialisation."""
    per_epoch = max(n_train // max(cfg.train.batch_size, 1), 1) if cfg.train.snapshot_unit == "step" else 1
    return cfg.train.epochs * per_epoch // cfg.train.snapshot_every


def check_laid_out(cfg: RunConfig, kinds: tuple[str, ...], network: str) -> None:
    """layout.layers names layers the network has: conv channels only in a CNN, dense neurons only where
    a dense hidden layer exists. kinds: 'conv' or 'dense' per hidden layer; network: what it is, in words."""
    which = cfg.layout.layers
    if which == "conv" and "conv" not in kinds:
        raise ConfigError(f"layout.layers = conv lays out a CNN's conv channels, but {network} has no conv layer: "
                          "use layout.layers: dense")
    if which == "dense" and "dense" not in kinds:
        raise ConfigError(f"layout.layers = dense, but {network} has no dense hidden layer: use layout.layers: conv "
                          "(its channels) or all")


def check_layers(cfg: RunConfig, n_classes: int, n_train: int, n_test: int, available: int | None = None,
                 input_shape: tuple[int, int, int] = INPUT_SHAPE) -> None:
    """A network of model.layers: possible for the data's images of input_shape (C, H, W), and trainable
    here (its weights, optimizer state and snapshots, and the activations and convolution patches of the
    most images a pass takes at once: a training batch or an evaluation chunk with patches, EVAL_BATCH
    images without them for the features)."""
    available = available_memory() if available is None else available
    units = sum(math.prod(shape) for shape in check_shapes(cfg.model.layers, input_shape=input_shape))
    n_params = count_layer_params(cfg.model.layers, n_classes, input_shape)
    at_once = max(min(cfg.train.batch_size, n_train), min(EVAL_CHUNK, n_test))
    training = at_once * (units + patch_values(cfg.model.layers, input_shape))
    need = FLOAT * (n_params * (OPTIMIZER_COPIES + 1 + n_snapshots(cfg, n_train))
                    + 2 * max(training, min(EVAL_BATCH, n_test) * units))
    if need > available:
        raise UserError(f"this CNN needs about {gigabytes(need)} of memory for its training ({n_params:,} weights, "
                        f"their optimizer state and snapshots, and {units:,} activations for each image of a pass "
                        f"with its convolutions' patches), more than the {gigabytes(available)} available here: use "
                        "fewer channels or units, or a smaller train.batch_size")


def check_memory(cfg: RunConfig, sizes: tuple[int, ...], n_train: int, n_test: int,
                 given_snapshots: int | None = None, lays_out: bool = True, available: int | None = None) -> None:
    """Refuse, in one line, a run that needs more memory than this machine has, naming the largest stage
    that must run (else the largest optional one) and how to need less."""
    available = available_memory() if available is None else available
    over = [need for need in memory_needs(cfg, sizes, n_train, n_test, given_snapshots, lays_out)
            if need.bytes > available]
    if over:
        worst = max(over, key=lambda need: (not need.optional, need.bytes))
        raise UserError(f"a {'-'.join(map(str, sizes))} network needs about {gigabytes(worst.bytes)} of memory for "
                        f"its {worst.stage} ({worst.holds}), more than the {gigabytes(available)} available here: "
                        f"{worst.fix}")
