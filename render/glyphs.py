"""Neuron glyphs (`render.glyph: field`): each hidden neuron drawn as what it looks at, its receptive
field, on a small square in 3D that faces the camera.

All glyphs are one actor: a mesh of quads (four corners per neuron) textured from one atlas image that
holds every neuron's field as a tile, at exact pixels (nearest sampling, no smoothing), framed by a
one-pixel border in its dominant class's colour. Before each render the corners are set from the
neurons' centres and the camera's right and up vectors, so every image faces the camera while depth
and occlusion stay the renderer's. Above `top` neurons only the `top` with the largest output-vector
norm get an image; the rest are dots.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pyvista as pv

from render import style

BORDER = 1  # pixels of the class-coloured frame around each field
GLYPH_SCALE = 1.6  # a glyph's half width, in the sphere radii of render.size_by


@dataclass(frozen=True)
class FieldImages:
    """The glyphs' pictures: `members` [M] (neuron indices drawn as images, the rest as dots) and
    `tiles` [M, h + 2, w + 2, 3] uint8 (each field as style.field_rgb draws it, framed in its class colour)."""

    members: np.ndarray
    tiles: np.ndarray


def field_images(fields: np.ndarray, group: np.ndarray, layer: np.ndarray, norms: np.ndarray, scale: str,
                 top: int, signed: bool = True, members: np.ndarray | None = None) -> FieldImages:
    """The tiles of the `top` neurons with the largest output-vector norm (all when there are fewer), or
    of `members` (ascending indices) when given.

    fields [N, h, w] or, for colour inputs, [N, h, w, 3]: input weights, or effective ones for deeper
    layers (`signed`), or images in 0..1 (feature visualisations); each drawn by style.field_rgb with
    the limit its own largest |value| (`scale` "neuron"), or its layer's ("layer")."""
    n = len(fields)
    if members is None:
        members = np.arange(n) if n <= top else np.sort(np.argsort(-np.asarray(norms), kind="stable")[:top])
    peak = np.abs(fields).reshape(n, -1).max(1) if n else np.zeros(0)
    if scale == "layer":
        layer_peak = np.zeros(int(layer.max()) + 1 if n else 0)
        np.maximum.at(layer_peak, layer, peak)
        peak = layer_peak[layer]
    chosen = fields[members]
    rgb = style.field_rgb(chosen, peak[members], signed)
    tiles = np.empty((len(members), chosen.shape[1] + 2 * BORDER, chosen.shape[2] + 2 * BORDER, 3), np.uint8)
    tiles[:] = style.class_rgb(group[members])[:, None, None, :]
    tiles[:, BORDER:-BORDER, BORDER:-BORDER] = rgb
    return FieldImages(members, tiles)


def grid(tiles: np.ndarray, fill: int = 255) -> tuple[np.ndarray, int]:
    """(the tiles [M, h, w(, 3)] in a near-square grid, row by row, the rest `fill`; its number of columns)."""
    m, h, w = tiles.shape[:3]
    cols = max(1, math.ceil(math.sqrt(m)))
    rows = max(1, math.ceil(m / cols))
    padded = np.full((rows * cols, *tiles.shape[1:]), fill, np.uint8)
    padded[:m] = tiles
    image = padded.reshape(rows, cols, h, w, *tiles.shape[3:]).swapaxes(1, 2)
    return image.reshape(rows * h, cols * w, *tiles.shape[3:]), cols


def atlas(tiles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(image [H, W, 3], uv [M, 4, 2]): the tiles in a near-square grid, and each tile's texture
    coordinates at its corners (bottom left, bottom right, top right, top left; v upwards, as VTK's)."""
    m, h, w, _ = tiles.shape
    image, cols = grid(tiles)
    r, c = np.divmod(np.arange(m), cols)
    height, width = image.shape[:2]
    u0, u1 = c * w / width, (c + 1) * w / width
    v_top, v_bottom = 1 - r * h / height, 1 - (r + 1) * h / height  # image row 0 is the texture's top
    uv = np.stack([np.stack([u0, v_bottom], 1), np.stack([u1, v_bottom], 1), np.stack([u1, v_top], 1),
                   np.stack([u0, v_top], 1)], 1)
    return image, uv.astype(np.float32)


@dataclass
class Glyphs:
    """The glyph actor's mesh, which neurons it shows, their half widths, and their texture (with the
    tiles it was made from, to fade them by a colouring)."""

    mesh: pv.PolyData
    members: np.ndarray
    half: np.ndarray  # [M]
    texture: pv.Texture
    tiles: np.ndarray
    shown: np.ndarray | None = None  # the share each glyph is faded to now (None: as drawn)
    base_half: np.ndarray | None = None  # the half widths as built (the window enlarges one glyph)

    def __post_init__(self) -> None:
        if self.base_half is None:
            self.base_half = self.half.copy()


def add_glyphs(plotter: pv.Plotter, images: FieldImages, centres: np.ndarray, radius: np.ndarray) -> Glyphs:
    """One textured, unlit quad per member neuron, facing the camera (see place_glyphs)."""
    m = len(images.members)
    image, uv = atlas(images.tiles)
    faces = np.column_stack([np.full(m, 4), np.arange(4 * m).reshape(m, 4)]).ravel()
    mesh = pv.PolyData(np.zeros((4 * m, 3), np.float32), faces=faces)
    mesh.active_texture_coordinates = uv.reshape(-1, 2)
    texture = pv.Texture(image)  # (PyVista puts row 0 at the texture's top, v = 1)
    texture.interpolate = False
    texture.mipmap = False
    texture.repeat = False
    glyphs = Glyphs(mesh, images.members, (GLYPH_SCALE * np.asarray(radius)[images.members]).astype(np.float32),
                    texture, images.tiles)
    place_glyphs(glyphs, centres, plotter.camera)
    plotter.add_mesh(mesh, texture=texture, lighting=False, show_scalar_bar=False)
    return glyphs


def shade_glyphs(glyphs: Glyphs, share: np.ndarray) -> None:
    """Fade each glyph towards white by its neuron's share of a colouring (e.g. its activation on a probed
    image over the largest): 1 keeps the field as it is, 0 leaves a pale ghost of it. The texture is
    rebuilt only when the shares change."""
    share = np.asarray(share, np.float32)[glyphs.members]
    if glyphs.shown is not None and np.array_equal(glyphs.shown, share):
        return
    keep = (GHOST + (1 - GHOST) * share)[:, None, None, None]
    faded = np.round(255 - keep * (255 - glyphs.tiles.astype(np.float32))).astype(np.uint8)
    glyphs.texture.SetInputData(pv.Texture(atlas(faded)[0]).to_image())
    glyphs.shown = share


GHOST = 0.15  # how much of its field a glyph with share 0 still shows


def place_glyphs(glyphs: Glyphs, centres: np.ndarray, camera) -> None:
    """Set every quad's corners around its neuron's centre (all neurons' centres [N, 3]), in the
    camera's screen plane."""
    forward = np.asarray(camera.focal_point, float) - np.asarray(camera.position, float)
    forward /= np.linalg.norm(forward) or 1.0
    up = np.asarray(camera.up, float)
    right = np.cross(forward, up)
    right /= np.linalg.norm(right) or 1.0
    up = np.cross(right, forward)
    c = np.asarray(centres, np.float32)[glyphs.members][:, None, :]
    h = glyphs.half[:, None, None]
    corners = np.array([-right - up, right - up, right + up, -right + up], np.float32)[None]
    glyphs.mesh.points = (c + h * corners).reshape(-1, 3)
