"""Atlas sheets: every hidden neuron of a layer as what it looks at, in one picture.

- atlas_layerN.png: each neuron's receptive field at exact pixels (each weight a 2x2 square of pixels),
  grouped by the class it drives hardest (a block per class, named after its output unit, neurons
  ordered by output-vector norm), each with its id and small bars of its output weights.
- atlas_top_layerN.png: each neuron's field beside the test images that activate it most and least.

Pure numpy and Pillow: the sheets are pictures of arrays, not renders.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from layout.core.files import atomic_path
from render import style

ZOOM = 2  # screen pixels per weight
COLUMNS = 10  # neurons per row in a class block
BAR_HEIGHT = 16  # pixels of the output-weight bars under each field
LABEL = 12  # pixels of the id line
GAP = 6
HEADER = 22  # pixels of a class block's title
TOP_SHEET_MAX = 500  # neurons on one atlas_top sheet (the largest output-vector norms)
ATLAS_MAX = 5000  # neurons on one layer's atlas sheet (a wider layer's largest output-vector norms): 65 MB of png


@dataclass(frozen=True)
class Sheet:
    """A drawn sheet: the image [H, W, 3] and, per neuron id, where its field's top left pixel is (x, y)
    and which class block holds it."""

    image: np.ndarray
    placed: dict[int, tuple[int, int]]
    blocks: dict[int, tuple[int, int]]  # class -> (top, bottom) rows of its block


def zoomed(tile: np.ndarray, zoom: int = ZOOM) -> np.ndarray:
    return np.repeat(np.repeat(tile, zoom, 0), zoom, 1)


def font() -> ImageFont.ImageFont:
    return ImageFont.load_default()


def output_bars(vector: np.ndarray, width: int, height: int) -> np.ndarray:
    """[height, width, 3]: one bar per class, up for positive weights and down for negative, scaled to the
    neuron's largest |weight|, each in its class's colour."""
    image = np.full((height, width, 3), 255, np.uint8)
    image[height // 2] = 200  # the zero line
    top = float(np.abs(vector).max()) or 1.0
    slot = width / len(vector)
    for c, w in enumerate(vector):
        length = int(round(abs(w) / top * (height // 2 - 1)))
        x0, x1 = int(c * slot) + 1, max(int((c + 1) * slot) - 1, int(c * slot) + 2)
        rows = slice(height // 2 - length, height // 2) if w > 0 else slice(height // 2 + 1, height // 2 + 1 + length)
        image[rows, x0:x1] = style.class_rgb(np.array([c]))[0]
    return image


def class_atlas(tiles: np.ndarray, dominant: np.ndarray, norms: np.ndarray, vectors: np.ndarray, ids: np.ndarray,
                class_names: tuple[str, ...], title: str) -> Sheet:
    """The atlas of one layer from its neurons' glyph tiles [n, h, w, 3] (render.glyphs.field_images)."""
    h, w = tiles.shape[1] * ZOOM, tiles.shape[2] * ZOOM
    cell_w, cell_h = w + GAP, h + BAR_HEIGHT + LABEL + GAP
    width = GAP + COLUMNS * cell_w
    classes = [c for c in range(len(class_names)) if (dominant == c).any()]
    rows = {c: -(-int((dominant == c).sum()) // COLUMNS) for c in classes}
    height = HEADER + sum(HEADER + r * cell_h for r in rows.values()) + GAP
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((GAP, 4), title, fill="black", font=font())
    placed, blocks, y = {}, {}, HEADER
    for c in classes:
        members = np.flatnonzero(dominant == c)
        members = members[np.argsort(-norms[members], kind="stable")]
        top = y
        draw.text((GAP, y + 5), f"output {class_names[c]}: {len(members)} neurons drive it hardest",
                  fill=tuple(int(v) for v in style.class_rgb(np.array([c]))[0]), font=font())
        y += HEADER
        for k, i in enumerate(members):
            x0, y0 = GAP + (k % COLUMNS) * cell_w, y + (k // COLUMNS) * cell_h
            sheet.paste(Image.fromarray(zoomed(tiles[i])), (x0, y0))
            sheet.paste(Image.fromarray(output_bars(vectors[i], w, BAR_HEIGHT)), (x0, y0 + h))
            draw.text((x0, y0 + h + BAR_HEIGHT), f"#{int(ids[i])}", fill="black", font=font())
            placed[int(ids[i])] = (x0, y0)
        y += rows[c] * cell_h
        blocks[c] = (top, y)
    return Sheet(np.asarray(sheet), placed, blocks)


def examples_atlas(tiles: np.ndarray, images: np.ndarray, top: np.ndarray, bottom: np.ndarray, norms: np.ndarray,
                   ids: np.ndarray, title: str) -> Sheet:
    """A row per neuron (the TOP_SHEET_MAX largest norms, largest first): its field, then the test images
    that activate it most, then those that activate it least (`images` [n_test, H, W(, 3)] uint8)."""
    order = np.argsort(-norms, kind="stable")[:TOP_SHEET_MAX]
    h = tiles.shape[1] * ZOOM
    k = top.shape[1]
    rows, cols = images.shape[1:3]
    row_h = max(h + LABEL, rows) + GAP
    x_top = GAP + tiles.shape[2] * ZOOM + 3 * GAP
    x_bottom = x_top + k * (cols + 2) + 4 * GAP
    width, height = x_bottom + k * (cols + 2) + GAP, HEADER + len(order) * row_h + GAP
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((GAP, 4), f"{title}: most activating test images (left), least (right)", fill="black", font=font())
    placed = {}
    for r, i in enumerate(order):
        y0 = HEADER + r * row_h
        sheet.paste(Image.fromarray(zoomed(tiles[i])), (GAP, y0))
        for j in range(k):
            for x, index in ((x_top, top[i, j]), (x_bottom, bottom[i, j])):
                sheet.paste(Image.fromarray(style.picture_rgb(images[index])), (x + j * (cols + 2), y0))
        draw.text((GAP, y0 + h), f"#{int(ids[i])}", fill="black", font=font())
        placed[int(ids[i])] = (GAP, y0)
    return Sheet(np.asarray(sheet), placed, {})


def thumbnail_strip(tiles: np.ndarray, vectors: np.ndarray, class_names: tuple[str, ...], k: int) -> Sheet:
    """render.thumbnails: a row per class, its name then the k neurons that drive it hardest (largest
    output weight to it), as their fields; for a strip beside the scene."""
    rows, cols = tiles.shape[1:3]
    label = 28  # pixels for the class name
    width = label + k * (cols + 2)
    height = len(class_names) * (rows + 4) + 4
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    placed = {}
    for c, name in enumerate(class_names):
        y = 4 + c * (rows + 4)
        draw.text((2, y + rows // 2 - 6), str(name)[:4], fill=tuple(int(v) for v in style.class_rgb(np.array([c]))[0]),
                  font=font())
        for j, i in enumerate(np.argsort(-vectors[:, c], kind="stable")[:k]):
            sheet.paste(Image.fromarray(tiles[i]), (label + j * (cols + 2), y))
            placed.setdefault(int(i), (label + j * (cols + 2), y))
    return Sheet(np.asarray(sheet), placed, {})


def write_sheet(path: Path, sheet: Sheet) -> Path:
    with atomic_path(path) as tmp:
        Image.fromarray(sheet.image).save(tmp, format="PNG")
    return path
