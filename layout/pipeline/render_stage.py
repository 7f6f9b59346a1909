"""From a laid-out network to pictures: the scene's numpy data (shared by the exports and the window),
the neuron colourings render.color_by asks for, the window's neuron details, and the offscreen exports
(layout.mp4, layout.gif, snapshot.png)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from layout.core.config import RunConfig
from layout.core.progress import progress_bar
from layout.engine.features import NeuronFeatures, hidden_activations
from layout.insight.selectivity import INDICES, indices
from layout.pipeline.layout_stage import LayoutResult
from layout.pipeline.structure_stage import StructureResult
from layout.pipeline.train_stage import TrainResult
from render.glyphs import FieldImages, field_images
from render.movie import export, export_settings, movie_frames
from render.scene import ColorScale, SceneData, activation_colorings, activation_scale, make_scene_data
from render.window import NeuronDetails


def colorings_for(cfg: RunConfig, trained: TrainResult, laid: LayoutResult,
                  structure: StructureResult | None = None) -> tuple[tuple, ColorScale | None]:
    """The neuron colourings `render.color_by` asks for and their colour bar (none: by dominant class;
    spread and ablation need the structure stage)."""
    names = laid.features.class_names
    if cfg.render.color_by == "class_mean":
        return colored(laid.features.class_activation, tuple(f"mean activation, {c}" for c in names), "mean activation")
    if cfg.render.color_by == "image":
        test, i = trained.dataset.test, cfg.render.image_index
        values = np.concatenate(hidden_activations(trained.network, test.images[i:i + 1]), axis=1).T
        return colored(values, (f"activation for test image {i} ({names[test.labels[i]]})",), "activation")
    if cfg.render.color_by == "spread" and structure is not None and structure.stability is not None:
        return colored(structure.stability.spread[:, None], ("positional spread over the stability seeds",),
                       "spread (layout radii)")
    if cfg.render.color_by == "ablation" and structure is not None:
        return colored(structure.ablation.drop[:, None], ("test-accuracy drop when silenced",), "accuracy drop")
    if cfg.render.color_by in INDICES:
        values = np.nan_to_num(indices(laid.features.class_activation)[cfg.render.color_by])  # undefined: pale
        return colored(values[:, None], (INDEX_WORDS[cfg.render.color_by],), INDEX_WORDS[cfg.render.color_by])
    return (), None


INDEX_WORDS = {"selectivity": "class selectivity", "effective_classes": "effective number of classes"}


def size_values(cfg: RunConfig, f: NeuronFeatures) -> np.ndarray | None:
    """What render.size_by sizes the neurons by, when it is not the output-vector norm (None)."""
    if cfg.render.size_by in INDICES:
        return np.nan_to_num(indices(f.class_activation)[cfg.render.size_by])
    return None


def colored(values: np.ndarray, captions: tuple[str, ...], quantity: str) -> tuple[tuple, ColorScale]:
    return activation_colorings(values, captions), activation_scale(values, quantity)


def scene_for(cfg: RunConfig, trained: TrainResult, laid: LayoutResult,
              structure: StructureResult | None = None) -> SceneData:
    """The render module's SceneData for a laid-out network (numpy only from here on)."""
    t = laid.trajectory
    colorings, scale = colorings_for(cfg, trained, laid, structure)
    labels = laid.labels or tuple(f"step {s}   energy {e:.4g}" for s, e in zip(t.step, t.energy.sum(1)))
    return make_scene_data(t.positions, labels, laid.particles.group, laid.particles.is_anchor,
                           laid.features.output_vectors, laid.features.class_names, cfg.name,
                           cfg.render.edges, cfg.render.size_by, colorings,
                           spread=structure.stability.spread if cfg.render.halo and structure and structure.stability
                           else None, scale=scale, fields=fields_for(cfg, laid.features),
                           size_values=size_values(cfg, laid.features))


def fields_for(cfg: RunConfig, f: NeuronFeatures) -> FieldImages | None:
    """The glyph images of render.glyph: field (None for spheres)."""
    if cfg.render.glyph != "field":
        return None
    return field_images(f.receptive_fields, f.dominant, f.layer, np.linalg.norm(f.output_vectors, axis=1),
                        cfg.render.field_scale, cfg.render.field_top)


def render_stage(data: SceneData, cfg: RunConfig, out: Path, formats: tuple[str, ...]
                 ) -> tuple[tuple[Path, ...], tuple[str, ...]]:
    """Export the movie and/or snapshot of a scene (from scene_for) offscreen: (the files, notes on how
    the exports' settings differ from the config's)."""
    render, notes = export_settings(cfg.render, formats)
    with progress_bar(movie_frames(data, formats, render), "export", "frame") as bar:
        return export(data, out, formats, render, on_frame=bar.advance_to), notes


def details_for(laid: LayoutResult) -> NeuronDetails:
    """What the window shows about a clicked neuron (layers numbered from 1, as in every output)."""
    f = laid.features
    return NeuronDetails(receptive_fields=f.receptive_fields, output_vectors=f.output_vectors,
                         class_activation=f.class_activation, layer=f.layer + 1, index=f.index, dominant=f.dominant,
                         activation_dominant=f.activation_dominant)
