"""From a laid-out network to pictures: the scene's numpy data (shared by the exports and the window),
the neuron colourings render.color_by asks for, the window's neuron details, and the offscreen exports
(layout.mp4, layout.gif, snapshot.png) and the page (layout.html)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from layout.core.config import RunConfig
from layout.core.progress import progress_bar
from layout.engine.features import NeuronFeatures, hidden_activations, probe
from layout.insight.selectivity import INDICES, indices
from layout.pipeline.layout_stage import LayoutResult
from layout.pipeline.structure_stage import StructureResult
from layout.pipeline.train_stage import TrainResult
from models.network.network import Network
from render.atlas import (
    ATLAS_MAX,
    class_atlas,
    examples_atlas,
    thumbnail_strip,
    write_sheet,
    zoomed,
)
from render.glyphs import FieldImages, field_images
from render.html.page import RunSummary, write_page
from render.movie import export, export_settings, movie_frames
from render.scene import (
    ColorScale,
    SceneData,
    activation_colorings,
    activation_scale,
    make_scene_data,
    probe_caption,
)
from render.window import NeuronDetails, ProbeData


def colorings_for(cfg: RunConfig, trained: TrainResult, laid: LayoutResult,
                  structure: StructureResult | None = None) -> tuple[tuple, ColorScale | None, tuple]:
    """The neuron colourings render.probe or render.color_by ask for, their colour bar, and the probed
    test images (none: by dominant class; spread and ablation need the structure stage)."""
    names = laid.features.class_names
    if cfg.render.probe is not None:
        return probe_colorings(cfg, trained, names, laid.features.hidden_layers)
    return (*measured_colorings(cfg, trained, laid, structure), ())


def measured_colorings(cfg: RunConfig, trained: TrainResult, laid: LayoutResult,
                       structure: StructureResult | None) -> tuple[tuple, ColorScale | None]:
    """The colourings of render.color_by (see colorings_for)."""
    names = laid.features.class_names
    if cfg.render.color_by == "class_mean":
        return colored(laid.features.class_activation, tuple(f"mean activation, {c}" for c in names), "mean activation")
    if cfg.render.color_by == "image":
        test, i = trained.dataset.test, cfg.render.image_index
        values = np.concatenate(hidden_activations(trained.network, test.images[i:i + 1], laid.features.hidden_layers),
                                axis=1).T
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


def probed_images(cfg: RunConfig, labels: np.ndarray, n_classes: int) -> list[int]:
    """The test images render.probe names: one, or the first of each class."""
    if cfg.render.probe == "per_class":
        return [int(np.flatnonzero(labels == c)[0]) for c in range(n_classes) if (labels == c).any()]
    return [int(cfg.render.probe)]


def probe_colorings(cfg: RunConfig, trained: TrainResult, names: tuple[str, ...], layers: tuple[int, ...]
                    ) -> tuple[tuple, ColorScale, tuple]:
    """The neurons coloured by their activation on each probed image, its caption the image's label, the
    network's prediction and its class probabilities."""
    test = trained.dataset.test
    chosen = probed_images(cfg, test.labels, len(names))
    activations, probabilities = probe(trained.network, test.images[chosen], layers)
    captions = tuple(probe_caption(i, names[test.labels[i]], p, names) for i, p in zip(chosen, probabilities))
    return (*colored(activations.T, captions, "activation on the probed image"), tuple(test.images[chosen]))


def window_probe(cfg: RunConfig, trained: TrainResult, layers: tuple[int, ...]) -> ProbeData | None:
    """With render.probe, every test image's activations and class probabilities, so that the window can
    step through them (None without a probe, or when they would take more than PROBE_FLOATS)."""
    test = trained.dataset.test
    if cfg.render.probe is None or len(test.labels) * (sum(trained.network.sizes[1:]) + 1) > PROBE_FLOATS:
        return None
    activations, probabilities = probe(trained.network, test.images, layers)
    start = probed_images(cfg, test.labels, trained.network.sizes[-1])[0]
    return ProbeData(test.images, test.labels, activations, probabilities, start)


PROBE_FLOATS = 50_000_000  # 200 MB: 5,000 hidden neurons over the 10,000 test images


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
    colorings, scale, probed = colorings_for(cfg, trained, laid, structure)
    labels = laid.labels or tuple(f"step {s}   energy {e:.4g}" for s, e in zip(t.step, t.energy.sum(1)))
    return make_scene_data(t.positions, labels, laid.particles.group, laid.particles.is_anchor,
                           laid.features.output_vectors, laid.features.class_names, cfg.name,
                           cfg.render.edges, cfg.render.size_by, colorings,
                           spread=structure.stability.spread if cfg.render.halo and structure and structure.stability
                           else None, scale=scale, fields=fields_for(cfg, laid.features),
                           size_values=size_values(cfg, laid.features), probed=probed,
                           thumbnails=thumbnails_for(cfg, laid.features))


def thumbnails_for(cfg: RunConfig, f: NeuronFeatures) -> np.ndarray | None:
    """render.thumbnails' strip: for each class the k neurons that drive it hardest."""
    if not cfg.render.thumbnails or not has_images(f):
        return None
    k = cfg.render.thumbnails
    members = np.unique(np.argsort(-f.output_vectors, axis=0, kind="stable")[:k])  # each class's k strongest
    tiles, _ = every_tile(cfg, f, members)
    scale = max(1, (cfg.render.height - 60 - 4 * f.n_classes) // (f.n_classes * tiles.shape[1]))  # as large as fits
    return thumbnail_strip(zoomed(tiles.transpose(1, 2, 0, 3), scale).transpose(2, 0, 1, 3),
                           f.output_vectors[members], f.class_names, k).image


def has_images(f: NeuronFeatures) -> bool:
    """Whether the neurons' receptive fields are images (2D inputs, greyscale or colour), as MNIST's 28x28
    pixels are."""
    return f.receptive_fields.ndim in (3, 4)


def every_tile(cfg: RunConfig, f: NeuronFeatures, members: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(the field tiles of every neuron, or of `members`, as the glyphs draw them; the output-vector
    norms of the same neurons) for the sheets."""
    members = np.arange(f.n_neurons) if members is None else members
    norms = np.linalg.norm(f.output_vectors, axis=1)
    tiles = field_images(f.receptive_fields, f.dominant, f.layer, norms, cfg.render.field_scale, len(members),
                         f.signed_fields, members).tiles
    return tiles, norms[members]


def atlas_members(f: NeuronFeatures, layer: int) -> np.ndarray:
    """The neurons (ascending) of one layer that its atlas shows: all, or above ATLAS_MAX the ATLAS_MAX
    with the largest output-vector norms."""
    m = np.flatnonzero(f.layer == layer)
    if len(m) <= ATLAS_MAX:
        return m
    return np.sort(m[np.argsort(-np.linalg.norm(f.output_vectors[m], axis=1), kind="stable")[:ATLAS_MAX]])


def fields_for(cfg: RunConfig, f: NeuronFeatures) -> FieldImages | None:
    """The glyph images of render.glyph: field (None for spheres, and where the inputs are no images)."""
    if cfg.render.glyph != "field" or glyph_note(cfg, f):
        return None
    return field_images(f.receptive_fields, f.dominant, f.layer, np.linalg.norm(f.output_vectors, axis=1),
                        cfg.render.field_scale, cfg.render.field_top, f.signed_fields)


def glyph_note(cfg: RunConfig, f: NeuronFeatures) -> str | None:
    """Why render.glyph: field falls back to spheres: the network's inputs are not images."""
    if cfg.render.glyph == "field" and not has_images(f):
        return (f"render.glyph = field draws each neuron's input weights as an image, but this network's "
                f"{int(np.prod(f.receptive_fields.shape[1:]))} inputs are not an image: drawing spheres")
    return None


def atlas_stage(cfg: RunConfig, trained: TrainResult, laid: LayoutResult, out: Path) -> tuple[Path, ...]:
    """atlas_layerN.png and atlas_top_layerN.png for every laid-out layer, N its number among the hidden
    layers as neurons.csv has it (ids as in neurons.csv)."""
    f = laid.features
    if not has_images(f):  # inputs that are no images have no pictures to show
        return ()
    written = []
    for l, size in enumerate(f.layer_sizes):
        m = atlas_members(f, l)
        tiles, norms = every_tile(cfg, f, m)
        number = int(f.layer_numbers[m[0]])
        shown = "" if f.field_kind == "weights" else f", {f.field_kind}s"
        if len(m) < size:
            shown += f"; the {len(m)} with the largest output vectors shown"
        title = f"{cfg.name}, {f.layer_name(l)}: {size} neurons{shown}"
        written.append(write_sheet(out / f"atlas_layer{number}.png", class_atlas(
            tiles, f.dominant[m], norms, f.output_vectors[m], m, f.class_names, title)))
        written.append(write_sheet(out / f"atlas_top_layer{number}.png", examples_atlas(
            tiles, trained.dataset.test.images, laid.top[m], laid.bottom[m], norms, m, title)))
    return tuple(written)


def render_stage(data: SceneData, cfg: RunConfig, out: Path, formats: tuple[str, ...],
                 page: tuple[NeuronDetails, RunSummary] | None = None) -> tuple[tuple[Path, ...], tuple[str, ...]]:
    """Export the movie and/or snapshot of a scene (from scene_for) offscreen, and the page (with `page`
    from page_inputs): (the files, notes on how the exports' settings differ from the config's)."""
    render, notes = export_settings(cfg.render, formats)
    written = ()
    if set(formats) - {"html"}:
        with progress_bar(movie_frames(data, formats, render), "export", "frame") as bar:
            written = export(data, out, formats, render, on_frame=bar.advance_to)
    if "html" in formats and page is not None:
        written += (write_page(out / "layout.html", data, *page),)
    return written, notes


def page_inputs(cfg: RunConfig, trained: TrainResult, laid: LayoutResult,
                structure: StructureResult | None) -> tuple[NeuronDetails, RunSummary]:
    """What layout.html shows beside the scene: the details of every neuron (with its top test images), the
    structure verdicts and the layout's faithfulness figures."""
    f, figures = laid.features, laid.figures
    shown = ("normalized_stress", "spearman", "knn_recall", "trustworthiness", "neighbourhood_hit", "silhouette")
    summary = RunSummary(verdicts=structure.verdicts if structure else (),
                         figures=tuple((name, figures.get(name)) for name in shown if name in figures),
                         layer_names=tuple(sorted({(int(f.layer_numbers[np.flatnonzero(f.layer == l)[0]]),
                                                    f.layer_name(l)) for l in range(f.n_layers)})))
    return details_for(laid, trained.dataset.test.images, trained.network), summary


def first_filters(f: NeuronFeatures, network: Network | None) -> np.ndarray | None:
    """[N, kh, kw]: each laid-out channel of a CNN's first conv layer its kernel (of the one input channel;
    [N, kh, kw, 3] for colour inputs), NaN for every other neuron; None when no such channel is laid out."""
    first = np.flatnonzero(f.layer_numbers == 1)
    if network is None or not network.has_conv or network.hidden_kinds[0] != "conv" or not len(first):
        return None
    kernels = network.weights[0]  # [channels, input channels, kh, kw]
    kernels = kernels[:, 0] if kernels.shape[1] == 1 else kernels.transpose(0, 2, 3, 1)
    filters = np.full((f.n_neurons, *kernels.shape[1:]), np.nan, np.float32)
    filters[first] = kernels[f.index[first]]
    return filters


def details_for(laid: LayoutResult, test_images: np.ndarray | None = None,
                network: Network | None = None) -> NeuronDetails:
    """What the window shows about a clicked neuron (layers numbered from 1, as in every output), with
    its top and bottom test images when `test_images` are given, and a CNN's first-layer kernels when
    its `network` is."""
    f = laid.features
    selective = indices(f.class_activation)
    return NeuronDetails(receptive_fields=f.receptive_fields, output_vectors=f.output_vectors,
                         class_activation=f.class_activation, layer=f.layer_numbers, index=f.index, dominant=f.dominant,
                         activation_dominant=f.activation_dominant, selectivity=selective["selectivity"],
                         effective_classes=selective["effective_classes"],
                         top=laid.top if test_images is not None else None,
                         bottom=laid.bottom if test_images is not None else None, images=test_images,
                         filters=first_filters(f, network), signed=f.signed_fields)
