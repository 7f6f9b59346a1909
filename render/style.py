"""Colours, sizes and text of the scene: one place for every visual encoding.

Classes use Paul Tol's "muted" qualitative scheme (designed to stay distinguishable with the common
colour-vision deficiencies) plus a mid grey for the tenth class.
"""

from __future__ import annotations

import numpy as np

CLASS_COLORS = ("#CC6677", "#332288", "#DDCC77", "#117733", "#88CCEE",
                "#882255", "#44AA99", "#999933", "#AA4499", "#777777")
BACKGROUND = "white"
TEXT_COLOR = "black"
EDGE_COLORS = {"positive": "#117733", "negative": "#CC6677"}
NEURON_RADIUS = 0.22  # of the median distance between a neuron and its nearest neighbour
ANCHOR_RADIUS = 2.2  # times the neuron radius


def hex_to_rgb(color: str) -> np.ndarray:
    return np.array([int(color[i:i + 2], 16) for i in (1, 3, 5)], dtype=np.uint8)


def class_rgb(groups: np.ndarray) -> np.ndarray:
    """[n, 3] uint8 colours, one per class index (cycling past ten)."""
    table = np.stack([hex_to_rgb(c) for c in CLASS_COLORS])
    return table[np.asarray(groups) % len(CLASS_COLORS)]


def particle_radii(norms: np.ndarray, size_by: str, spacing: float, n_anchors: int) -> np.ndarray:
    """Radius per particle, neurons first: proportional to the square root of the output-vector norm
    (so that the area on screen follows the norm), between 0.4 and 1.6 times the base radius (or all
    the base radius); anchors ANCHOR_RADIUS times the base. The base is NEURON_RADIUS x `spacing`."""
    base = NEURON_RADIUS * spacing
    norms = np.asarray(norms, np.float64)
    if size_by == "none" or len(norms) == 0 or norms.max() <= 0:
        neurons = np.full(len(norms), base)
    else:
        neurons = base * (0.4 + 1.2 * np.sqrt(norms / norms.max()))
    return np.concatenate([neurons, np.full(n_anchors, ANCHOR_RADIUS * base)]).astype(np.float32)


ACTIVATION_LOW, ACTIVATION_HIGH = "#EEEEEE", "#B2182B"  # silent neurons pale, strongly firing dark red


def activation_rgb(values: np.ndarray) -> np.ndarray:
    """[n, 3] uint8 from activations scaled to their maximum: pale grey at 0 to dark red at the maximum."""
    values = np.asarray(values, np.float64)
    share = np.clip(values / (values.max() if values.max() > 0 else 1.0), 0, 1)[:, None]
    low, high = hex_to_rgb(ACTIVATION_LOW).astype(float), hex_to_rgb(ACTIVATION_HIGH).astype(float)
    return np.round(low + share * (high - low)).astype(np.uint8)


# ColorBrewer's RdBu (11 classes), from strongly negative (dark blue) through white at 0 to strongly
# positive (dark red): diverging, and safe for the common colour-vision deficiencies.
DIVERGING = ("#053061", "#2166AC", "#4393C3", "#92C5DE", "#D1E5F0", "#F7F7F7", "#FDDBC7", "#F4A582", "#D6604D",
             "#B2182B", "#67001F")


def diverging_table(steps: int = 511) -> np.ndarray:
    """[steps, 3] uint8: the diverging map sampled evenly from -1 to +1 (the middle entry is 0, white)."""
    share = np.linspace(0, len(DIVERGING) - 1, steps)
    stops = np.stack([hex_to_rgb(c) for c in DIVERGING]).astype(np.float64)
    low = np.minimum(np.floor(share).astype(int), len(DIVERGING) - 2)
    t = (share - low)[:, None]
    return np.round(stops[low] * (1 - t) + stops[low + 1] * t).astype(np.uint8)


DIVERGING_TABLE = diverging_table()


def diverging_rgb(values: np.ndarray, limit: np.ndarray | float) -> np.ndarray:
    """[..., 3] uint8: values / limit from -1 (dark blue) through 0 (white) to +1 (dark red), clipped, in
    511 steps; `limit` broadcasts against `values` (one per neuron, say)."""
    limit = np.where(np.asarray(limit, np.float32) > 0, limit, 1.0).astype(np.float32)
    half = (len(DIVERGING_TABLE) - 1) // 2
    index = np.rint(np.clip(np.asarray(values, np.float32) / limit, -1, 1) * half).astype(np.intp) + half
    return DIVERGING_TABLE[index]


def field_rgb(fields: np.ndarray, limit: np.ndarray, signed: bool = True) -> np.ndarray:
    """[M, h, w, 3] uint8 pictures of M fields, each scaled by its `limit` [M]. Fields [M, h, w] (one input
    channel) in the diverging map, from -limit to +limit. Colour fields [M, h, w, 3], each channel on its
    own: signed ones (input weights) from 0 at -limit through mid grey at 0 to 255 at +limit, so a pixel is
    reddish where the red channel's weight is the most positive; unsigned ones (images in 0..1, such as
    feature visualisations) as pictures, from black at 0 to full at the limit."""
    limit = np.asarray(limit, np.float32).reshape(-1, *(1,) * (fields.ndim - 1))
    if fields.ndim == 3:
        return diverging_rgb(fields, limit)
    share = np.asarray(fields, np.float32) / np.where(limit > 0, limit, 1.0)
    share = 0.5 + 0.5 * np.clip(share, -1, 1) if signed else np.clip(share, 0, 1)
    return np.rint(share * 255).astype(np.uint8)


def picture_rgb(image: np.ndarray) -> np.ndarray:
    """[h, w, 3] uint8: a greyscale image [h, w] as dark ink on white (digits as drawn by hand), a colour
    image [h, w, 3] as it is."""
    image = np.asarray(image, np.uint8)
    return image if image.ndim == 3 else np.repeat((255 - image)[:, :, None], 3, 2)


def frame_title(name: str, label: str) -> str:
    return f"{name}   {label}"
