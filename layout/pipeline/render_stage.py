"""From a laid-out network to pictures: the scene's numpy data (shared by the exports and the window),
the neuron colourings render.color_by asks for, the window's neuron details, and the offscreen exports
(layout.mp4, layout.gif, snapshot.png)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from layout.core.config import RunConfig
from layout.core.progress import progress_bar
from layout.engine.features import hidden_activations
from layout.pipeline.layout_stage import LayoutResult
from layout.pipeline.structure_stage import StructureResult
from layout.pipeline.train_stage import TrainResult
from render.movie import export, movie_frames
from render.scene import SceneData, activation_colorings, make_scene_data
from render.window import NeuronDetails


def colorings_for(cfg: RunConfig, trained: TrainResult, laid: LayoutResult,
                  structure: StructureResult | None = None) -> tuple:
    """The neuron colourings `render.color_by` asks for (none: by dominant class; spread and ablation
    need the structure stage)."""
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
    t = laid.trajectory
    labels = laid.labels or tuple(f"step {s}   energy {e:.4g}" for s, e in zip(t.step, t.energy.sum(1)))
    return make_scene_data(t.positions, labels, laid.particles.group, laid.particles.is_anchor,
                           laid.features.output_vectors, laid.features.class_names, cfg.name,
                           cfg.render.edges, cfg.render.size_by, colorings_for(cfg, trained, laid, structure),
                           spread=structure.stability.spread if cfg.render.halo and structure and structure.stability
                           else None)


def render_stage(data: SceneData, cfg: RunConfig, out: Path, formats: tuple[str, ...]) -> tuple[Path, ...]:
    """Export the movie and/or snapshot of a scene (from scene_for) offscreen."""
    with progress_bar(movie_frames(data, formats, cfg.render), "export", "frame") as bar:
        return export(data, out, formats, cfg.render, on_frame=bar.advance_to)


def details_for(laid: LayoutResult) -> NeuronDetails:
    """What the window shows about a clicked neuron (layers numbered from 1, as in every output)."""
    f = laid.features
    return NeuronDetails(receptive_fields=f.receptive_fields, output_vectors=f.output_vectors,
                         class_activation=f.class_activation, layer=f.layer + 1, index=f.index, dominant=f.dominant,
                         activation_dominant=f.activation_dominant)
