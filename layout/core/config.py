"""Configuration: the frozen, validated dataclasses a run is described by (read from YAML files and
--set overrides by layout/core/config_file.py).

Defaults live in the dataclasses below; a config file only names what differs. Every field carries its
rules (range, choices) in its metadata, so the validator, the error messages and the README all read
the same source.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from layout.core.layers import parse_layers

DATASETS = ("mnist", "fashion-mnist", "mnist-sample", "idx", "npz", "folder")
SCALES = ("unit", "none")
ACTIVATIONS = ("sigmoid", "tanh", "relu")
OPTIMIZERS = ("adam", "sgd")
SNAPSHOT_UNITS = ("epoch", "step")
ANCHOR_MODES = ("fixed", "free", "none")
ANCHOR_SHAPES = ("sphere", "ring")
WEIGHTINGS = ("uniform", "inverse", "inverse_square")
LAYER_SHAPES = ("plane", "shell")
INITS = ("pca", "random")
PAIR_MODES = ("auto", "exact", "sampled")
INFLUENCES = ("weights", "jacobian")
LAYOUT_LAYERS = ("dense", "conv", "all")
WHOLE_SECTION = "model"  # the one section an override may replace whole: a network, MLP or CNN
SIZE_BY = ("norm", "none", "selectivity", "effective_classes")
COLOR_BY = ("dominant", "class_mean", "image", "spread", "ablation", "selectivity", "effective_classes")
TIMELINES = ("simulation", "training")
GLYPHS = ("field", "sphere")
FIELD_SCALES = ("neuron", "layer")
EXPORTS = ("mp4", "gif", "png", "html", "none")
MAX_SEED = 2**31 - 1  # seeds become 32-bit JAX keys
MAX_COUNT = 10**9  # a bound on counts that no run reaches, so that none overflows the code's integers


def option(default: Any, doc: str, **rules: Any) -> Any:
    """A dataclass field with its default, a one-line description and its validation rules.

    Rules: gt, ge, lt, le (numbers, applied to every item of a tuple), choices, min_len, unique.
    """
    return field(default=default, metadata={"doc": doc, **rules})


@dataclass(frozen=True)
class DataConfig:
    dataset: str = option("mnist", "which dataset to train on: mnist, fashion-mnist, the bundled mnist-sample, or "
                                   "your own: idx (data.dir), npz (data.file) or folder (data.dir)", choices=DATASETS)
    dir: str | None = option(None, "folder holding the IDX files (searched before anything else; for data.dataset "
                                   "idx, the folder of your own IDX files; for folder, the folder of class "
                                   "subfolders)")
    file: str | None = option(None, "for data.dataset npz: your .npz file of x_train, y_train, x_test, y_test (and "
                                    "class_names)")
    classes: tuple[int, ...] | None = option(
        None, "keep only these labels, remapped to 0..k-1 (e.g. [0, 1])", ge=0, le=99, min_len=2, unique=True
    )
    limit: int | None = option(None, "keep the first n examples of each split (after `classes`)", ge=1, le=MAX_COUNT)
    mirrors: tuple[str, ...] | None = option(None, "base URLs to download from instead of the standard mirrors")
    test_fraction: float = option(0.2, "for data.dataset folder: the share of each class's images kept for the test "
                                       "split", gt=0, lt=1)
    split_seed: int = option(0, "for data.dataset folder: the seed of the train/test split", ge=0, le=MAX_SEED)
    scale: str = option("unit", "the pixels as the network sees them: unit divides them by 255 (0..1), none keeps "
                                "0..255; then (pixels - mean) / std", choices=SCALES)
    mean: tuple[float, ...] = option((0.0,), "subtracted from the scaled pixels: one figure, or one per colour "
                                             "channel (PyTorch's usual for MNIST: 0.1307)", min_len=1)
    std: tuple[float, ...] = option((1.0,), "what the scaled pixels minus the mean are divided by: one figure, or "
                                            "one per channel (PyTorch's usual for MNIST: 0.3081)", gt=0, min_len=1)


@dataclass(frozen=True)
class ModelConfig:
    hidden: tuple[int, ...] = option((100,), "hidden layer sizes, input to output", ge=1, le=MAX_COUNT, min_len=1)
    activation: str = option("sigmoid", "hidden activation", choices=ACTIVATIONS)
    layers: tuple | None = option(None, "the network as a list of conv, pool, flatten and dense layers (the "
                                        "output layer implied); replaces hidden", parse=parse_layers)
    file: str | None = option(None, "a network file to lay out instead of training one (network.npz, ONNX, "
                                    "Keras, safetensors, npz), as --network FILE, which overrides it")


@dataclass(frozen=True)
class TrainConfig:
    optimizer: str = option("adam", "optax optimizer", choices=OPTIMIZERS)
    learning_rate: float = option(1e-3, "optimizer step size", gt=0, le=10)
    momentum: float = option(0.9, "momentum for sgd (0 turns it off)", ge=0, lt=1)
    batch_size: int = option(128, "examples per step", ge=1, le=2**20)
    epochs: int = option(10, "passes over the training set (0 keeps the random initialisation)", ge=0, le=100_000)
    l1: float = option(0.0, "L1 penalty on all weights: l1 * sum |w|", ge=0)
    l2: float = option(0.0, "L2 penalty on all weights: l2 * sum w^2", ge=0)
    seed: int = option(0, "seed for initialisation and batch order", ge=0, le=MAX_SEED)
    snapshot_every: int = option(1, "keep a weight snapshot every this many epochs or steps", ge=1, le=MAX_COUNT)
    snapshot_unit: str = option("epoch", "unit of snapshot_every", choices=SNAPSHOT_UNITS)


@dataclass(frozen=True)
class AnchorsConfig:
    mode: str = option("fixed", "output units as particles: fixed in place, free (moved like neurons), or none",
                       choices=ANCHOR_MODES)
    shape: str = option("sphere", "where fixed anchors sit: evenly on a sphere or a ring", choices=ANCHOR_SHAPES)
    radius: float = option(1.5, "radius of the fixed anchors' sphere or ring, in layout units", gt=0)
    scale: float = option(1.0, "free anchors' output vector: one-hot times this times the mean neuron "
                               "output-vector norm", gt=0)


@dataclass(frozen=True)
class EuclidConfig:
    strength: float = option(1.0, "springs with rest length proportional to the output-vector distance", ge=0)
    weighting: str = option("uniform", "pair weight: uniform, 1/d or 1/d^2 of the output-vector distance d",
                            choices=WEIGHTINGS)


@dataclass(frozen=True)
class DominanceConfig:
    strength: float = option(0.0, "pull between neurons that drive the same output class hardest", ge=0)
    anchor: float = option(1.0, "pull of each neuron toward its class anchor, as a multiple of strength", ge=0)


@dataclass(frozen=True)
class RepulsionConfig:
    strength: float = option(0.02, "softened many-body repulsion between all particles", ge=0)
    softening: float = option(0.05, "distance below which repulsion stops growing, in layout units", gt=0)


@dataclass(frozen=True)
class CenteringConfig:
    strength: float = option(0.01, "pull of every particle toward the origin", ge=0)


@dataclass(frozen=True)
class LayerPlaneConfig:
    strength: float = option(0.0, "pull of each hidden layer toward its own plane (z) or shell (radius)", ge=0)
    shape: str = option("plane", "plane: layers stacked along z; shell: layers on nested spheres",
                        choices=LAYER_SHAPES)
    spacing: float = option(1.0, "distance between consecutive layers' planes or shells", gt=0)


@dataclass(frozen=True)
class ForcesConfig:
    euclid: EuclidConfig = field(default_factory=EuclidConfig)
    dominance: DominanceConfig = field(default_factory=DominanceConfig)
    repulsion: RepulsionConfig = field(default_factory=RepulsionConfig)
    centering: CenteringConfig = field(default_factory=CenteringConfig)
    layer_plane: LayerPlaneConfig = field(default_factory=LayerPlaneConfig)


@dataclass(frozen=True)
class SimConfig:
    steps: int = option(500, "most steps to run; alpha cools from 1 to alpha_min over them", ge=1, le=10_000_000)
    record_every: int = option(5, "keep every k-th step as an animation frame", ge=1, le=10_000_000)
    chunk: int = option(100, "steps per compiled call; the progress bar advances per chunk", ge=1, le=100_000)
    init: str = option("pca", "starting positions: PCA of the output vectors, or random", choices=INITS)
    alpha_min: float = option(0.001, "alpha (the step scale) at the last step", gt=0, lt=1)
    velocity_decay: float = option(0.4, "friction: fraction of the velocity lost each step", ge=0, lt=1)
    settle: float = option(1e-4, "stop early once no particle moves more than this per step, as a "
                                 "fraction of the layout's size (0: never)", ge=0)
    seed: int = option(0, "seed for the starting positions (and the sampled pairs)", ge=0, le=MAX_SEED)
    pairs: str = option("auto", "all-pairs terms (euclid, repulsion): every pair each step, or the nearest "
                                "neighbours plus fresh random partners (auto: sampled above 20,000 particles)",
                        choices=PAIR_MODES)
    neighbours: int = option(16, "sampled pairs: nearest neighbours by output vector, summed every step",
                             ge=1, le=256)
    partners: int = option(32, "sampled pairs: fresh random partners per particle and step", ge=1, le=1024)
    devices: int = option(1, "sampled pairs: the particles spread over this many of JAX's devices (more than "
                             "one runs the JAX definition, not the native kernel)", ge=1, le=4096)
    snapshot_steps: int = option(60, "training timeline: steps per weight snapshot, each warm-started from "
                                     "the previous layout", ge=1, le=10_000_000)
    snapshot_alpha: float = option(0.3, "training timeline: alpha at the start of each snapshot's steps",
                                   gt=0, le=1)


@dataclass(frozen=True)
class LayoutConfig:
    influence: str = option("weights", "output vectors of layers below the last: product of the downstream "
                                       "weights, or mean Jacobian of the logits over the test set",
                            choices=INFLUENCES)
    layers: str = option("dense", "which hidden layers are laid out: every dense layer (an MLP's every layer), a "
                                  "CNN's conv channels (one particle each), or all", choices=LAYOUT_LAYERS)
    anchors: AnchorsConfig = field(default_factory=AnchorsConfig)
    forces: ForcesConfig = field(default_factory=ForcesConfig)
    sim: SimConfig = field(default_factory=SimConfig)
    metrics_sample: int = option(2000, "metrics are exact up to this many neurons, sampled above", ge=20)


@dataclass(frozen=True)
class RenderConfig:
    width: int = option(1280, "image width in pixels", ge=64, le=7680)
    height: int = option(720, "image height in pixels", ge=64, le=4320)
    fps: int = option(30, "frames per second of the movie and the window's playback", ge=1, le=120)
    settle_seconds: float = option(4.0, "how long the movie shows the layout settling", ge=0)
    orbit_seconds: float = option(6.0, "how long the movie orbits the final layout once (0: no orbit)", ge=0)
    edges: int = option(0, "lines from each neuron to the k outputs it drives most (0: none)", ge=0, le=10)
    size_by: str = option("norm", "neuron size: by output-vector norm, all the same, by class selectivity, or by "
                                  "the effective number of classes", choices=SIZE_BY)
    timeline: str = option("simulation", "what the animation shows: the simulation settling, or the layout "
                                         "across the training snapshots", choices=TIMELINES)
    color_by: str = option("dominant", "neuron colour: the class it drives hardest, its mean activation per "
                                       "class (cycling through the classes), its activation for one test image, "
                                       "its positional spread over the stability seeds, the test-accuracy "
                                       "drop when it is ablated, its class selectivity, or its effective number "
                                       "of classes",
                           choices=COLOR_BY)
    image_index: int = option(0, "the test image whose activations color_by: image shows", ge=0)
    halo: bool = option(False, "draw each neuron's positional spread over the stability layouts as a "
                               "translucent halo around it (needs structure.stability_seeds >= 2)")
    probe: int | str | None = option(None, "feed one test image (its index) through the network and colour the "
                                           "neurons by their activation on it, or per_class: one test image of "
                                           "each class in turn", ge=0, le=MAX_COUNT, choices=("per_class",))
    top_images: int = option(9, "test images per neuron kept as those that activate it most and least "
                                "(top_images.npz, the atlas, the details panel)", ge=1, le=1000)
    thumbnails: int = option(0, "a strip beside the scene with, for each class, the k neurons that drive it "
                                "hardest, as their fields (0: none)", ge=0, le=20)
    glyph: str = option("field", "how a hidden neuron is drawn: as its receptive field (its input weights, or "
                                 "effective input weights for deeper layers) on a square facing the camera, "
                                 "or as a sphere", choices=GLYPHS)
    field_scale: str = option("neuron", "the fields' colour limits: each neuron's own largest |weight|, or its "
                                        "layer's", choices=FIELD_SCALES)
    field_top: int = option(2000, "draw at most this many neurons (the largest output-vector norms) as fields, "
                                  "the rest as dots", ge=0, le=MAX_COUNT)


@dataclass(frozen=True)
class StructureConfig:
    enabled: bool = option(True, "test the structure against nulls and write report.md and structure.json")
    permutations: int = option(1000, "null samples per permutation test (shuffles and random initialisations)",
                               ge=19, le=1_000_000)
    layout_nulls: int = option(99, "null networks laid out again by the same simulation, for the 3D tests "
                                   "(p >= 1 / (n + 1): 99 can show p = 0.01)", ge=0, le=100_000)
    k: int = option(10, "neighbours for the neighbourhood hit", ge=1, le=MAX_COUNT)
    stability_seeds: int = option(5, "layouts from random starts (seeds 0..n-1) aligned by Procrustes "
                                     "(0 or 1: no stability)", ge=0, le=10_000)
    ablation_groups: int = option(100, "random neuron groups per dominance group, the ablation's null", ge=0,
                                 le=1_000_000)
    shuffled_label_runs: int = option(0, "networks trained on shuffled labels, the costly third null "
                                         "(0: off)", ge=0, le=1_000)
    selectivity_nulls: int = option(99, "untrained networks whose class selectivity is the null for the "
                                        "layer's (0: off)", ge=0, le=100_000)
    retrain_runs: int = option(0, "networks trained again with train seeds seed+1.. and laid out the same way, "
                                  "to test whether the class arrangement is reproducible (0: off)", ge=0, le=1_000)
    seed: int = option(0, "seed of every null sample", ge=0, le=MAX_SEED)


@dataclass(frozen=True)
class RunConfig:
    name: str = option("run", "name of the run; outputs go to runs/<name>/ (default: the file name)",
                       folder_name=True)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    layout: LayoutConfig = field(default_factory=LayoutConfig)
    render: RenderConfig = field(default_factory=RenderConfig)
    structure: StructureConfig = field(default_factory=StructureConfig)
