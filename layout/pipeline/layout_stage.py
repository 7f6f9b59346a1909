"""The layout stage: network -> neuron features -> particles -> simulation (or one per training snapshot,
warm-started, with render.timeline: training) -> faithfulness metrics -> trajectory.npz and neurons.csv.
A layout is reused from the cache when the network and the layout settings are unchanged."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import jax
import numpy as np

from layout.core.config import RunConfig
from layout.core.files import cache_dir
from layout.core.plain import fingerprint
from layout.core.progress import progress_bar
from layout.engine.energies import build_energy
from layout.engine.features import NeuronFeatures, neuron_features, top_examples
from layout.engine.metrics import layout_metrics
from layout.engine.particles import Particles, make_particles
from layout.engine.sampled import pairs_mode
from layout.engine.simulate import Trajectory, simulate
from layout.engine.timeline import training_trajectory
from layout.engine.trajectory_file import LaidOut, cached_trajectory, inputs_digest, load_trajectory, save_trajectory
from layout.pipeline.outputs import write_neurons_csv, write_top_images
from layout.pipeline.train_stage import TrainResult


@dataclass(frozen=True)
class LayoutResult:
    features: NeuronFeatures
    particles: Particles
    trajectory: Trajectory
    figures: dict  # metrics.json's "layout" section
    written: tuple[Path, ...]
    distortion: np.ndarray  # [N] per-neuron distortion (NaN where undefined)
    labels: tuple[str, ...] | None = None  # a title per frame, when not the simulation's step and energy
    notes: tuple[str, ...] = ()  # for the user: a cache entry that was refused
    top: np.ndarray | None = None  # [N, k] the test images that activate each neuron most, most first
    bottom: np.ndarray | None = None  # [N, k] and least, least first


def layout_key(inputs: str, cfg: RunConfig) -> str:
    """What decides a layout: the simulation's inputs (inputs_digest: the particles, and the weight
    snapshots for the training timeline), the layout settings and the timeline. Version 3: keyed by the
    inputs (version 2: a free anchor and its class's centre attract as two bodies)."""
    return fingerprint({"version": 3, "inputs": inputs, "layout": cfg.layout, "timeline": cfg.render.timeline})[:20]


def layout_stage(cfg: RunConfig, trained: TrainResult, out: Path, *, relayout: bool = False,
                 trajectory_file: str | None = None) -> LayoutResult:
    """Lay the network's hidden neurons out in 3D; write trajectory.npz and neurons.csv.

    A layout is reused from <cache>/layouts/ when the network and the layout settings are unchanged,
    so that changing only render settings never runs the simulation again; `trajectory_file` (a
    trajectory.npz written for this network) is used instead of simulating."""
    start = time.perf_counter()
    features = neuron_features(trained.network, trained.dataset.test, cfg.layout.influence, cfg.layout.layers)
    particles = make_particles(features, cfg.layout.anchors)
    timeline = cfg.render.timeline
    snapshots = trained.network.snapshots.weights if timeline == "training" else ()
    inputs = inputs_digest(particles, snapshots)
    key = layout_key(inputs, cfg)
    made_by = LaidOut(inputs, cfg.layout, timeline, key)
    cached, note = cache_dir() / "layouts" / f"{key}.npz", None
    if trajectory_file:
        loaded = load_trajectory(Path(trajectory_file), particles, made_by)
    else:
        loaded, note = (None, None) if relayout else cached_trajectory(cached, particles, made_by)
    if loaded is not None:
        trajectory, labels = loaded
    elif cfg.render.timeline == "training":
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
        save_trajectory(cached, trajectory, particles, features, made_by, labels)
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
        pairs=pairs_mode(cfg.layout.sim.pairs, particles.n_particles),
    )
    top, bottom = top_examples(trained.network, trained.dataset.test.images, cfg.render.top_images,
                               features.hidden_layers)
    written = (
        save_trajectory(out / "trajectory.npz", trajectory, particles, features, made_by, labels),
        write_neurons_csv(out / "neurons.csv", features, trajectory.final[:n], distortion, trained.network.classes),
        write_top_images(out / "top_images.npz", top, bottom),
    )
    return LayoutResult(features, particles, trajectory, figures, written, distortion, labels, (note,) if note else (),
                        top, bottom)


def layout_summary(result: LayoutResult) -> str:
    f = result.figures

    def num(name: str) -> str:
        return "n/a" if f[name] is None else f"{f[name]:.3f}"

    settled = "settled" if f["settled"] else "did not settle"
    settled += ", reused from cache" if f["reused"] else ""
    settled += ", sampled pairs" if f.get("pairs") == "sampled" else ""
    sampled = "" if f["exact"] else f" (estimated from a sample of {f['n_queries']} neurons)"
    how = "" if result.features.influence == "weights" else f" (output vectors: {result.features.influence} influence)"
    return (f"layout of {f['n_neurons']} neurons{how} with {', '.join(f['terms'])}: {f['steps']} steps, {settled}, "
            f"{f['seconds']:.1f} s\n"
            f"faithfulness{sampled}: stress {num('normalized_stress')}, spearman {num('spearman')}, "
            f"knn recall@{f['k']} {num('knn_recall')}, trustworthiness {num('trustworthiness')}\n"
            f"class structure by dominant class: neighbourhood hit {num('neighbourhood_hit')}, "
            f"silhouette {num('silhouette')}")
