"""layout.html: one self-contained page of the layout that opens offline in any browser (`--export html`).

The page is template.html with three.js (vendor/three.min.js, pinned and bundled with its licence), the
page's own page.js and page.css, and the run's data inlined. The data is one JSON document in a
non-executing `<script type="application/json">` element that page.js reads with JSON.parse; every `<`, `>`
and `&` in it is written as a JSON escape, so no string from a config, a dataset or a file (run name, class
names, layer names) can end the element or be read as markup, and page.js shows strings with textContent
only. Arrays travel as base64 of little-endian typed arrays; positions as uint16 quantised over the
layout's bounding box (at most MAX_POSITION_BYTES of them: fewer frames, which the page interpolates,
when there are many neurons); the fields and the top-activating test images as PNG atlases at exact pixels.
"""

from __future__ import annotations

import base64
import html
import json
import re
from dataclasses import dataclass
from pathlib import Path

import imageio.v3 as iio
import numpy as np

from layout.core.files import atomic_path
from render import style
from render.glyphs import GHOST, grid
from render.panel import NeuronDetails
from render.scene import SceneData, activation_colorings

HERE = Path(__file__).parent
MAX_POSITION_BYTES = 12_000_000  # stored frames x particles x 6 bytes; above it fewer frames are kept


@dataclass(frozen=True)
class RunSummary:
    """What the page's "Is the structure real?" panel shows: the structure tests' verdicts (none when they
    were off) and the faithfulness figures as (name, value) pairs (value None where undefined)."""

    verdicts: tuple[str, ...] = ()
    figures: tuple[tuple[str, float | None], ...] = ()
    layer_names: tuple[tuple[int, str], ...] = ()  # (layer number, its name) as the outputs number them


def packed(array: np.ndarray, dtype: str) -> dict:
    """A typed array for page.js's unpack(): dtype, shape and the little-endian bytes as base64."""
    a = np.ascontiguousarray(np.asarray(array).astype(np.dtype(dtype).newbyteorder("<")))
    return {"dtype": dtype, "shape": list(a.shape), "data": base64.b64encode(a.tobytes()).decode("ascii")}


def png(image: np.ndarray) -> str:
    """A PNG (greyscale [h, w] or RGB [h, w, 3] uint8) as base64."""
    return base64.b64encode(iio.imwrite("<bytes>", np.ascontiguousarray(image), extension=".png")).decode("ascii")


def stored_frames(n_frames: int, n_particles: int) -> np.ndarray:
    """The frames the page keeps: all of them, or evenly spread ones (the first and last among them) when
    all would take more than MAX_POSITION_BYTES."""
    keep = max(2, MAX_POSITION_BYTES // max(6 * n_particles, 1))
    if n_frames <= keep:
        return np.arange(n_frames)
    return np.unique(np.linspace(0, n_frames - 1, keep).round().astype(int))


def frames_json(scene: SceneData) -> dict:
    """The stored frames' positions as uint16 over the bounding box of every frame, and their titles."""
    chosen = stored_frames(scene.n_frames, scene.positions.shape[1])
    positions = scene.positions[chosen].astype(np.float64)
    low, high = positions.min((0, 1)), positions.max((0, 1))
    span = np.where(high > low, high - low, 1.0)
    q = np.rint((positions - low) / span * 65535).astype(np.uint16)
    return {"count": scene.n_frames, "stored": chosen.tolist(), "labels": [scene.labels[i] for i in chosen],
            "low": low.tolist(), "span": span.tolist(), "positions": packed(q, "uint16")}


def coloring_groups(scene: SceneData, details: NeuronDetails, names: tuple[str, ...]) -> list[dict]:
    """The page's colourings: by dominant class, by mean activation for each class (a class selector), by
    selectivity, and the config's own (the probed images, or what render.color_by chose) when it has one."""
    n = scene.n_neurons
    groups = [{"name": "dominant class", "captions": ["dominant class"], "rgb": packed(
        style.class_rgb(scene.group[:n])[None], "uint8"), "share": packed(np.ones((1, n)), "float32"), "scale": None}]
    groups.append(activation_group("mean activation per class", details.class_activation,
                                   tuple(f"mean activation, {c}" for c in names), "mean activation"))
    if details.selectivity is not None:
        values = np.nan_to_num(details.selectivity)[:, None]
        groups.append(activation_group("selectivity", values, ("class selectivity",), "class selectivity"))
    if scene.colorings:
        groups.append(config_group(scene))
    return groups


def activation_group(name: str, values: np.ndarray, captions: tuple[str, ...], quantity: str) -> dict:
    colorings = activation_colorings(values, captions)
    return {"name": name, "captions": list(captions), "rgb": packed(np.stack([c[1] for c in colorings]), "uint8"),
            "share": packed(np.stack([c[2] for c in colorings]), "float32"),
            "scale": {"quantity": quantity, "low": 0.0, "high": float(np.max(values)) or 1.0}}


def config_group(scene: SceneData) -> dict:
    """The scene's own colourings (render.probe or render.color_by), with their probed images."""
    group = {"name": "probed images" if scene.probed else "as configured",
             "captions": [c[0] for c in scene.colorings], "rgb": packed(np.stack([c[1] for c in scene.colorings]), "uint8"),
             "share": packed(np.stack([c[2] for c in scene.colorings]), "float32"),
             "scale": None if scene.scale is None else {"quantity": scene.scale.quantity, "low": scene.scale.low,
                                                        "high": scene.scale.high}}
    if scene.probed:
        group["images"] = image_atlas(np.stack(scene.probed))
    return group


def image_atlas(images: np.ndarray) -> dict:
    """Test images [M, H, W(, 3)] uint8 as one PNG atlas (greyscale as stored: page.js draws it as dark ink
    on white, as style.picture_rgb does)."""
    image, cols = grid(images, 0)
    return {"png": png(image), "cols": cols, "count": len(images), "height": int(images.shape[1]),
            "width": int(images.shape[2]), "channels": 1 if images.ndim == 3 else 3}


def fields_json(scene: SceneData, details: NeuronDetails) -> dict | None:
    """The fields of the neurons drawn as images in the scene (`members`: render.glyph and render.field_top, as
    in the window; the rest are dots), each as style.field_rgb draws it, scaled by its own largest |value| as
    in the details panel: one PNG atlas at exact pixels, tile k the field of members[k]. (All 10,000 fields of
    a wide layer would be 28 MB of noise-like pixels; the top 2,000 are 6 MB.)"""
    if scene.fields is None or details.receptive_fields.ndim not in (3, 4):
        return None
    fields = details.receptive_fields[scene.fields.members]
    limit = np.abs(fields).reshape(len(fields), -1).max(1)
    image, cols = grid(style.field_rgb(fields, np.where(limit > 0, limit, 1.0), details.signed))
    return {"png": png(image), "cols": cols, "height": int(fields.shape[1]), "width": int(fields.shape[2]),
            "members": packed(scene.fields.members, "int32")}


def examples_json(details: NeuronDetails) -> dict | None:
    """The test images that activate each neuron most (top) and least (bottom): the images used, once each,
    as an atlas, and per neuron their places in it."""
    if details.top is None or details.images is None:
        return None
    used, inverse = np.unique(np.concatenate([details.top, details.bottom], 1), return_inverse=True)
    inverse = inverse.reshape(len(details.top), -1)
    k = details.top.shape[1]
    return {**image_atlas(details.images[used]), "test_index": packed(used, "int32"),
            "top": packed(inverse[:, :k], "int32"), "bottom": packed(inverse[:, k:], "int32")}


def page_json(scene: SceneData, details: NeuronDetails, summary: RunSummary) -> dict:
    n = scene.n_neurons
    names = scene.class_names
    return {
        "name": scene.name, "class_names": list(names), "class_colors": list(style.CLASS_COLORS),
        "n_neurons": n, "is_anchor": packed(scene.is_anchor, "uint8"), "group": packed(scene.group, "int32"),
        "radius": packed(scene.radius, "float32"), "edges": packed(scene.edges, "int32"),
        "edge_sign": packed(scene.edge_sign, "int8"), "edge_colors": style.EDGE_COLORS,
        "frames": frames_json(scene), "colorings": coloring_groups(scene, details, names),
        "fields": fields_json(scene, details), "examples": examples_json(details), "ghost": GHOST,
        "activation_colors": [style.ACTIVATION_LOW, style.ACTIVATION_HIGH], "signed": details.signed,
        "neurons": {"layer": packed(details.layer, "int32"), "index": packed(details.index, "int32"),
                    "dominant": packed(details.dominant, "int32"),
                    "activation_dominant": packed(details.activation_dominant, "int32"),
                    "output_vectors": packed(details.output_vectors, "float32"),
                    "class_activation": packed(details.class_activation, "float32"),
                    "selectivity": None if details.selectivity is None else packed(details.selectivity, "float32"),
                    "effective_classes": None if details.effective_classes is None
                    else packed(details.effective_classes, "float32")},
        "layer_names": {str(k): v for k, v in summary.layer_names},
        "verdicts": list(summary.verdicts), "figures": [[k, v] for k, v in summary.figures],
    }


def script_json(data: dict) -> str:
    """JSON that cannot end its script element or open markup: <, > and & as JSON's \\u escapes."""
    text = json.dumps(data, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


def inline_code(name: str) -> str:
    """One of the page's files, checked to hold nothing that would end the element it is inlined into."""
    text = (HERE / name).read_text(encoding="utf-8")
    if "</script" in text.lower() or "</style" in text.lower():
        raise ValueError(f"render/html/{name} holds a closing tag and cannot be inlined")
    return text


def page_html(scene: SceneData, details: NeuronDetails, summary: RunSummary) -> str:
    template = (HERE / "template.html").read_text(encoding="utf-8")
    parts = {"{{title}}": html.escape(f"{scene.name}: neuron layout"), "{{style}}": inline_code("page.css"),
             "{{three}}": inline_code("vendor/three.min.js"), "{{data}}": script_json(page_json(scene, details, summary)),
             "{{page}}": inline_code("page.js")}
    pieces = re.split(r"(\{\{\w+\}\})", template)  # split once: no inlined part is searched for the next key
    return "".join(parts.get(piece, piece) for piece in pieces)


def write_page(path: Path, scene: SceneData, details: NeuronDetails, summary: RunSummary) -> Path:
    """Write layout.html (under a temporary name, then renamed)."""
    text = page_html(scene, details, summary)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path
