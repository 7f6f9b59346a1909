"""A network described by `model.layers` (layout/core/layers.py) as a pure function of its parameters:
convolutions, pooling, flatten and dense layers, then the output layer (one unit per class).

Parameters are a list over the layers that have weights, in order, the output layer last, each
{"w", "b"}: conv weights [out_channels, in_channels, kh, kw] and biases [out_channels] (PyTorch's
order), dense weights [n_in, n_out] and biases [n_out] (as the MLP's). Images are [batch, 1, 28, 28];
flatten keeps (C, H, W) order, as PyTorch flattens. The activation follows every conv and dense layer
but the output layer. Initialisation: uniform Glorot (He for relu) over the fans of each layer, with
a conv's fans counting its kernel's pixels, and zero biases.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from layout.core.layers import INPUT_SHAPE, Conv, Dense, Flatten, Layer, Pool, check_shapes
from models.network.mlp import ACTIVATIONS, Params


def weight_shapes(layers: tuple[Layer, ...], n_classes: int) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """(weight shape, bias shape) of every layer with weights, the output layer last."""
    shapes, before = [], INPUT_SHAPE
    for layer, after in zip(layers, check_shapes(layers)):
        if isinstance(layer, Conv):
            shapes.append(((layer.channels, before[0], layer.kernel, layer.kernel), (layer.channels,)))
        elif isinstance(layer, Dense):
            n_in = before[0] if len(before) == 1 else before[0] * before[1] * before[2]
            shapes.append(((n_in, layer.units), (layer.units,)))
        before = after
    shapes.append(((before[0], n_classes), (n_classes,)))
    return shapes


def count_params(layers: tuple[Layer, ...], n_classes: int) -> int:
    """Weights plus biases, by formula: conv out * in * k * k + out, dense n_in * n_out + n_out."""
    return sum(math.prod(w) + b[0] for w, b in weight_shapes(layers, n_classes))


def init_limit(shape: tuple[int, ...], activation: str) -> float:
    """Uniform in +/- this: Glorot sqrt(6 / (fan_in + fan_out)), He sqrt(6 / fan_in) for relu."""
    if len(shape) == 4:
        out, n_in, kh, kw = shape
        fan_in, fan_out = n_in * kh * kw, out * kh * kw
    else:
        fan_in, fan_out = shape
    fan = fan_in / 2 if activation == "relu" else (fan_in + fan_out) / 2
    return (3.0 / fan) ** 0.5


def init_layers(key: jax.Array, layers: tuple[Layer, ...], activation: str, n_classes: int) -> Params:
    shapes = weight_shapes(layers, n_classes)
    keys = jax.random.split(key, len(shapes))
    return [{"w": jax.random.uniform(k, w, jnp.float32, -init_limit(w, activation), init_limit(w, activation)),
             "b": jnp.zeros(b, jnp.float32)} for k, (w, b) in zip(keys, shapes)]


def hidden_positions(layers: tuple[Layer, ...]) -> list[int]:
    """The positions in `layers` of the hidden layers (those with weights: conv and dense), in order."""
    return [i for i, layer in enumerate(layers) if isinstance(layer, (Conv, Dense))]


def apply_layers(params: Params, x: jnp.ndarray, layers: tuple[Layer, ...], activation: str
                 ) -> tuple[jnp.ndarray, tuple[jnp.ndarray, ...]]:
    """Forward pass on images [batch, 784] scaled to 0..1: (logits, the activations after every conv
    ([batch, C, H, W]) and dense ([batch, units]) hidden layer)."""
    return run_layers(params, x.reshape(x.shape[0], *INPUT_SHAPE), layers, activation)


def apply_above(params: Params, h: jnp.ndarray, layers: tuple[Layer, ...], activation: str,
                hidden: int) -> jnp.ndarray:
    """The logits from hidden layer `hidden`'s activations `h` (as apply_layers returns them): the
    layers above it run on h."""
    position = hidden_positions(layers)[hidden]
    return run_layers(params[hidden + 1:], h, layers[position + 1:], activation)[0]


def per_neuron(h: jnp.ndarray) -> jnp.ndarray:
    """A hidden layer's activations one value per neuron: a conv layer's [n, C, H, W] averaged over the
    positions of each channel, a dense layer's [n, units] as they are."""
    return h.mean((2, 3)) if h.ndim == 4 else h


def pool(h: jnp.ndarray, layer: Pool) -> jnp.ndarray:
    """Non-overlapping pooling of [n, C, H, W] by layer.size (rows and columns that do not fill a window
    are dropped, as PyTorch's default does), as a reshape and a max or mean: the same values as
    lax.reduce_window with stride = size, and far faster to differentiate on a CPU."""
    k = layer.size
    n, c, height, width = h.shape
    blocks = h[:, :, :height // k * k, :width // k * k].reshape(n, c, height // k, k, width // k, k)
    return blocks.max((3, 5)) if layer.kind == "max" else blocks.mean((3, 5))


def run_layers(params: Params, h: jnp.ndarray, layers: tuple[Layer, ...], activation: str
               ) -> tuple[jnp.ndarray, tuple[jnp.ndarray, ...]]:
    """`layers`, then the output layer, on h: params are the weighted layers' among them, the output
    layer's last. activation: a name, or the function itself."""
    act = ACTIVATIONS[activation] if isinstance(activation, str) else activation
    hidden, weights = [], iter(params)
    for layer in layers:
        if isinstance(layer, Conv):
            p = next(weights)
            h = jax.lax.conv_general_dilated(h, p["w"], (layer.stride, layer.stride),
                                             [(layer.padding, layer.padding)] * 2,
                                             dimension_numbers=("NCHW", "OIHW", "NCHW"))
            h = act(h + p["b"][None, :, None, None])
            hidden.append(h)
        elif isinstance(layer, Pool):
            h = pool(h, layer)
        elif isinstance(layer, Flatten) or (isinstance(layer, Dense) and h.ndim == 4):
            h = h.reshape(h.shape[0], -1)
        if isinstance(layer, Dense):
            p = next(weights)
            h = act(h @ p["w"] + p["b"])
            hidden.append(h)
    out = next(weights)
    return h.reshape(h.shape[0], -1) @ out["w"] + out["b"], tuple(hidden)
