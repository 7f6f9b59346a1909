"""The pipeline's stages, each taking what the one before produced and writing its own output files.

  training_stage: config -> dataset -> network (trained or cached) -> config.yaml, network.npz
  layout_stage:   network -> features -> particles -> simulation (or one per training snapshot,
                  warm-started: render.timeline = training) -> metrics -> trajectory.npz, neurons.csv
  scene_for:      layout -> the scene's numpy data (shared by the exports and the window)
  render_stage:   scene -> layout.mp4 / layout.gif / snapshot.png (offscreen)

(The structure stage, between layout and scene, is layout/structure_stage.py.)

Each returns a frozen result with the figures that go into metrics.json; nothing here prints.
"""

from __future__ import annotations

import csv
import io
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from layout.cli import progress_bar
from layout.config import RunConfig, config_to_yaml
from layout.files import cache_dir, read_npz, require_arrays, write_atomic, write_text

if TYPE_CHECKING:  # these import jax: a command loads them only once its config is valid
    from layout.features import NeuronFeatures
    from layout.forces import Particles
    from layout.simulate import Trajectory
    from models.data import Dataset
    from models.train import Network
    from render.scene import SceneData
    from layout.structure_stage import StructureResult
    from render.window import NeuronDetails

NEURON_COLUMNS = ("id", "layer", "index", "dominant", "activation_dominant", "x", "y", "z", "distortion")


@dataclass(frozen=True)
class TrainResult:
    dataset: Dataset
    network: Network
    figures: dict  # the training figures of metrics.json
    written: tuple[Path, ...]

    @property
    def reused(self) -> bool:
        return self.figures["reused"]


@dataclass(frozen=True)
class LayoutResult:
    features: NeuronFeatures
    particles: Particles
    trajectory: Trajectory
    figures: dict  # metrics.json's "layout" section
    written: tuple[Path, ...]
    distortion: np.ndarray  # [N] per-neuron distortion (NaN where undefined)
    labels: tuple[str, ...] | None = None  # a title per frame, when not the simulation's step and energy


def training_stage(cfg: RunConfig, out: Path, *, retrain: bool = False, network_file: str | None = None) -> TrainResult:
    """Load the data, then train or reuse the network (or read the one given as `network_file`);
    write config.yaml (before training starts) and network.npz."""
    import sys

    from models.data import load_dataset
    from models.store import check_fits, load_network, obtain_network, save_network
    from models.train import enable_compilation_cache

    enable_compilation_cache(cache_dir() / "jax")
    dataset = load_dataset(cfg.data, progressbar=sys.stderr.isatty())
    check_fits_data(cfg, dataset)
    given = load_network(network_file) if network_file else None
    if given is not None:
        check_fits(given, dataset, network_file)
    config_file = write_text(out / "config.yaml", config_to_yaml(cfg))
    if given is not None:
        network, key, reused = given, "given-" + file_digest(Path(network_file))[:14], True
    else:
        with progress_bar(cfg.train.epochs, "training", "epoch") as bar:
            network, key, reused = obtain_network(cfg, dataset, retrain=retrain, on_epoch=lambda s: bar.advance_to(
                s.epoch, loss=f"{s.train_loss:.3f}", test_acc=f"{s.test_accuracy:.4f}"))
    figures = {
        "dataset": dataset.name,
        "sizes": list(network.sizes),
        "activation": network.activation,
        "classes": list(network.classes),
        "n_train": int(len(dataset.train.labels)),
        "n_test": int(len(dataset.test.labels)),
        "n_params": network.n_params,
        "epochs": network.epochs,
        "test_accuracy": network.test_accuracy,
        "train_accuracy": network.train_accuracy,
        "train_seconds": network.train_seconds,
        "network_key": key,
        "reused": reused,
        "network_file": str(network_file) if network_file else None,
    }
    written = (config_file, save_network(out / "network.npz", network, key))
    return TrainResult(dataset, network, figures, written)


def check_fits_data(cfg: RunConfig, dataset: Dataset) -> None:
    """What the config asks that only the data (or another section) can check, before any training."""
    from layout.errors import ConfigError

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


def file_digest(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def layout_stage(cfg: RunConfig, trained: TrainResult, out: Path, *, relayout: bool = False,
                 trajectory_file: str | None = None) -> LayoutResult:
    """Lay the network's hidden neurons out in 3D; write trajectory.npz and neurons.csv.

    A layout is reused from <cache>/layouts/ when the network and the layout settings are unchanged,
    so that changing only render settings never runs the simulation again; `trajectory_file` (a
    trajectory.npz written for this network) is used instead of simulating."""
    import jax

    from layout.config import fingerprint
    from layout.features import neuron_features
    from layout.forces import build_energy, make_particles
    from layout.metrics import layout_metrics
    from layout.simulate import simulate

    start = time.perf_counter()
    features = neuron_features(trained.network, trained.dataset.test, cfg.layout.influence)
    particles = make_particles(features, cfg.layout.anchors)
    # version 2: a free anchor and its class's centre attract as two bodies (forces.dominance_energy)
    key = fingerprint({"version": 2, "network": trained.figures["network_key"], "layout": cfg.layout,
                       "timeline": cfg.render.timeline})[:20]
    cached = cache_dir() / "layouts" / f"{key}.npz"
    if trajectory_file:
        loaded = load_trajectory(Path(trajectory_file), particles)
    else:
        loaded = None if relayout else cached_trajectory(cached, particles)
    if loaded is not None:
        trajectory, labels = loaded
    elif cfg.render.timeline == "training":
        from layout.timeline import training_trajectory

        with progress_bar(len(trained.network.snapshots.step), "layout", "snapshot") as bar:
            trajectory, labels, _, _ = training_trajectory(
                trained.network, trained.dataset.test, cfg, on_snapshot=lambda s, total: bar.advance_to(s))
    else:
        terms = build_energy(particles, cfg.layout.forces)
        with progress_bar(cfg.layout.sim.steps, "layout", "step") as bar:
            trajectory = simulate(terms, particles, cfg.layout.sim, jax.random.key(cfg.layout.sim.seed),
                                  on_chunk=lambda step, total: bar.advance_to(step))
        labels = None
    if loaded is None:
        save_trajectory(cached, trajectory, particles, features, labels)
    seconds = time.perf_counter() - start
    n = features.n_neurons
    figures, distortion = layout_metrics(features.output_vectors, trajectory.final[:n], features.dominant,
                                         cfg.layout.metrics_sample)
    figures.update(
        terms=list(trajectory.terms),
        final_energy=dict(zip(trajectory.terms, map(float, trajectory.energy[-1]))),
        steps=int(trajectory.step[-1]),
        settled=trajectory.settled_step is not None,
        frames=len(trajectory.step),
        seconds=seconds,
        layout_key=key,
        reused=loaded is not None,
    )
    written = (
        save_trajectory(out / "trajectory.npz", trajectory, particles, features, labels),
        write_neurons_csv(out / "neurons.csv", features, trajectory.final[:n], distortion, trained.network.classes),
    )
    return LayoutResult(features, particles, trajectory, figures, written, distortion, labels)


def save_trajectory(path: Path, trajectory: Trajectory, particles: Particles, features: NeuronFeatures,
                    labels: tuple[str, ...] | None = None) -> Path:
    """trajectory.npz: positions [T, P, 3], energy [T, n_terms], step [T], and per particle group,
    layer, is_anchor, movable; `meta` is a JSON string with the term names, counts and frame titles."""
    meta = {"terms": list(trajectory.terms), "settled_step": trajectory.settled_step,
            "n_neurons": features.n_neurons, "n_particles": particles.n_particles,
            "anchor_mode": particles.anchor_mode, "class_names": list(features.class_names),
            "labels": list(labels) if labels else None}
    arrays = {"positions": trajectory.positions, "energy": trajectory.energy, "step": trajectory.step,
              "group": particles.group, "layer": particles.layer, "is_anchor": particles.is_anchor,
              "movable": particles.movable, "meta": np.array(json.dumps(meta))}
    return write_atomic(path, lambda f: np.savez(f, **arrays))


def read_trajectory(path: Path) -> tuple[dict, dict]:
    """(arrays, meta) of a trajectory.npz, checked for everything that does not depend on the network."""
    from layout.errors import UserError

    what = "trajectory file"
    arrays, meta = read_npz(path, what)
    terms, labels = meta.get("terms"), meta.get("labels")
    if not isinstance(terms, list) or (labels is not None and not isinstance(labels, list)):
        raise UserError(f"{path} is not a {what} written by neuron-layout: its meta has no term names")
    n_frames = len(arrays.get("positions", ()))
    require_arrays(path, what, arrays, {"positions": (n_frames, None, 3), "energy": (n_frames, len(terms)),
                                        "step": (n_frames,), "group": (None,)})
    if n_frames == 0 or (labels is not None and len(labels) != n_frames):
        raise UserError(f"{path} is damaged: {n_frames} frames and {len(labels or ())} frame titles")
    return arrays, meta


def load_trajectory(path: Path, particles: Particles) -> tuple[Trajectory, tuple[str, ...] | None]:
    """(trajectory, frame titles) from a trajectory.npz written by save_trajectory for these particles.

    Anything else (damaged, pickled, or laid out for another network) is a UserError saying so."""
    from layout.errors import UserError
    from layout.simulate import Trajectory

    arrays, meta = read_trajectory(path)
    n, positions = particles.n_particles, arrays["positions"]
    if positions.shape[1] != n or not np.array_equal(arrays["group"], particles.group):
        raise UserError(f"{path} was laid out for another network ({positions.shape[1]} particles, this one has "
                        f"{n}, or other dominant classes): use the trajectory.npz written with its network.npz")
    trajectory = Trajectory(positions=positions.astype(np.float32), energy=arrays["energy"], step=arrays["step"],
                            terms=tuple(meta["terms"]), settled_step=meta.get("settled_step"))
    return trajectory, tuple(meta["labels"]) if meta.get("labels") else None


def cached_trajectory(path: Path, particles: Particles) -> tuple[Trajectory, tuple[str, ...] | None] | None:
    """load_trajectory, or None when the cache entry is missing or unusable (it is then replaced)."""
    from layout.errors import UserError

    try:
        return load_trajectory(path, particles)
    except UserError:
        return None


def write_neurons_csv(path: Path, features: NeuronFeatures, positions: np.ndarray, distortion: np.ndarray,
                      classes: tuple[int, ...], extra: dict[str, np.ndarray] | None = None) -> Path:
    """One row per hidden neuron; classes are written as their original labels; `extra` adds columns
    (the structure stage's ablation drops and stability spread)."""
    extra = extra or {}
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(NEURON_COLUMNS + tuple(extra))
    labels = np.asarray(classes)
    for i in range(features.n_neurons):
        values = (distortion[i], *(column[i] for column in extra.values()))
        writer.writerow([i, int(features.layer[i]), int(features.index[i]), int(labels[features.dominant[i]]),
                         int(labels[features.activation_dominant[i]]), *(f"{v:.6g}" for v in positions[i]),
                         *("" if np.isnan(v) else f"{v:.6g}" for v in values)])
    return write_text(path, text.getvalue())


def training_summary(result: TrainResult) -> str:
    net, fig = result.network, result.figures
    how = (f"read from {fig['network_file']}" if fig["network_file"] else
           "reused from cache" if result.reused else f"trained in {net.train_seconds:.1f} s")
    return (f"{net.dataset} {'-'.join(map(str, net.sizes))} {net.activation}, {net.epochs} epochs ({how})\n"
            f"test accuracy {net.test_accuracy:.4f} on {fig['n_test']} images, "
            f"train accuracy {net.train_accuracy:.4f}")


def layout_summary(result: LayoutResult) -> str:
    f = result.figures

    def num(name: str) -> str:
        return "n/a" if f[name] is None else f"{f[name]:.3f}"

    settled = "settled" if f["settled"] else "did not settle"
    settled += ", reused from cache" if f["reused"] else ""
    sampled = "" if f["exact"] else f" (estimated from a sample of {f['n_queries']} neurons)"
    return (f"layout of {f['n_neurons']} neurons with {', '.join(f['terms'])}: {f['steps']} steps, {settled}, "
            f"{f['seconds']:.1f} s\n"
            f"faithfulness{sampled}: stress {num('normalized_stress')}, spearman {num('spearman')}, "
            f"knn recall@{f['k']} {num('knn_recall')}, trustworthiness {num('trustworthiness')}\n"
            f"class structure by dominant class: neighbourhood hit {num('neighbourhood_hit')}, "
            f"silhouette {num('silhouette')}")


def colorings_for(cfg: RunConfig, trained: TrainResult, laid: LayoutResult,
                  structure: StructureResult | None = None) -> tuple:
    """The neuron colourings `render.color_by` asks for (none: by dominant class; spread and ablation
    need the structure stage)."""
    from layout.features import hidden_activations
    from render.scene import activation_colorings

    names = laid.features.class_names
    if cfg.render.color_by == "class_mean":
        return activation_colorings(laid.features.class_activation, tuple(f"mean activation, {c}" for c in names))
    if cfg.render.color_by == "image":
        test, i = trained.dataset.test, cfg.render.image_index
        values = np.concatenate(hidden_activations(trained.network, test.images[i:i + 1]), axis=1).T
        return activation_colorings(values, (f"activation for test image {i} ({names[test.labels[i]]})",))
    if cfg.render.color_by == "spread" and structure is not None and structure.stability is not None:
        return activation_colorings(structure.stability.spread[:, None], ("positional spread over the stability seeds",))
    if cfg.render.color_by == "ablation" and structure is not None:
        return activation_colorings(structure.ablation.drop[:, None], ("test-accuracy drop when silenced",))
    return ()


def scene_for(cfg: RunConfig, trained: TrainResult, laid: LayoutResult,
              structure: StructureResult | None = None) -> SceneData:
    """The render module's SceneData for a laid-out network (numpy only from here on)."""
    from render.scene import make_scene_data

    t = laid.trajectory
    labels = laid.labels or tuple(f"step {s}   energy {e:.4g}" for s, e in zip(t.step, t.energy.sum(1)))
    return make_scene_data(t.positions, labels, laid.particles.group, laid.particles.is_anchor,
                           laid.features.output_vectors, laid.features.class_names, cfg.name,
                           cfg.render.edges, cfg.render.size_by, colorings_for(cfg, trained, laid, structure),
                           spread=structure.stability.spread if cfg.render.halo and structure and structure.stability
                           else None)


def render_stage(data: SceneData, cfg: RunConfig, out: Path, formats: tuple[str, ...]) -> tuple[Path, ...]:
    """Export the movie and/or snapshot of a scene (from scene_for) offscreen."""
    from render.movie import export, movie_frames

    with progress_bar(movie_frames(data, formats, cfg.render), "export", "frame") as bar:
        return export(data, out, formats, cfg.render, on_frame=bar.advance_to)


def details_for(laid: LayoutResult) -> NeuronDetails:
    """What the window shows about a clicked neuron."""
    from render.window import NeuronDetails

    f = laid.features
    return NeuronDetails(receptive_fields=f.receptive_fields, output_vectors=f.output_vectors,
                         class_activation=f.class_activation, layer=f.layer, index=f.index, dominant=f.dominant,
                         activation_dominant=f.activation_dominant)
