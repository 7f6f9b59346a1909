"""A network described by `model.layers` (layout/core/layers.py) as a pure function of its parameters:
convolutions, pooling, flatten and dense layers, then the output layer (one unit per class).

Parameters are a list over the layers that have weights, in order, the output layer last, each
{"w", "b"}: conv weights [out_channels, in_channels, kh, kw] and biases [out_channels] (PyTorch's
order), dense weights [n_in, n_out] and biases [n_out] (as the MLP's). Images are [batch, C, H, W]
(MNIST's 1 x 28 x 28); flatten keeps (C, H, W) order, as PyTorch flattens. Conv activations come out
[batch, C, H, W]. The activation follows every conv and dense layer but the output layer. Initialisation: uniform Glorot
(He for relu) over the fans of each layer, with a conv's fans counting its kernel's pixels, and zero
biases.

Inside, the conv and pool layers run batch last ([C, H, W, batch]). Training and the feature
visualisation's gradient ascent compute a convolution as one matrix product of the weights with the
image patches (im2col) and pool by strided views: on XLA:CPU this trains LeNet about 8 times faster
than lax.conv_general_dilated, whose weight gradients are slow there (benchmarks/README.md).
Everything else (features, Jacobians, ablation) uses lax.conv_general_dilated and pools by blocks,
whose forward-mode and batched gradients cost far less than the patches'.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from layout.core.layers import INPUT_SHAPE, Conv, Dense, Flatten, Layer, Pool, check_shapes
from models.network.mlp import ACTIVATIONS, Params


def weight_shapes(layers: tuple[Layer, ...], n_classes: int, input_shape: tuple[int, int, int] = INPUT_SHAPE
                  ) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """(weight shape, bias shape) of every layer with weights, the output layer last, for images of
    input_shape (C, H, W)."""
    shapes, before = [], input_shape
    for layer, after in zip(layers, check_shapes(layers, input_shape=input_shape)):
        if isinstance(layer, Conv):
            shapes.append(((layer.channels, before[0], layer.kernel, layer.kernel), (layer.channels,)))
        elif isinstance(layer, Dense):
            n_in = before[0] if len(before) == 1 else before[0] * before[1] * before[2]
            shapes.append(((n_in, layer.units), (layer.units,)))
        before = after
    shapes.append(((before[0], n_classes), (n_classes,)))
    return shapes


def count_params(layers: tuple[Layer, ...], n_classes: int, input_shape: tuple[int, int, int] = INPUT_SHAPE) -> int:
    """Weights plus biases, by formula: conv out * in * k * k + out, dense n_in * n_out + n_out."""
    return sum(math.prod(w) + b[0] for w, b in weight_shapes(layers, n_classes, input_shape))


def init_limit(shape: tuple[int, ...], activation: str) -> float:
    """Uniform in +/- this: Glorot sqrt(6 / (fan_in + fan_out)), He sqrt(6 / fan_in) for relu."""
    if len(shape) == 4:
        out, n_in, kh, kw = shape
        fan_in, fan_out = n_in * kh * kw, out * kh * kw
    else:
        fan_in, fan_out = shape
    fan = fan_in / 2 if activation == "relu" else (fan_in + fan_out) / 2
    return (3.0 / fan) ** 0.5


def init_layers(key: jax.Array, layers: tuple[Layer, ...], activation: str, n_classes: int,
                input_shape: tuple[int, int, int] = INPUT_SHAPE) -> Params:
    shapes = weight_shapes(layers, n_classes, input_shape)
    keys = jax.random.split(key, len(shapes))
    return [{"w": jax.random.uniform(k, w, jnp.float32, -init_limit(w, activation), init_limit(w, activation)),
             "b": jnp.zeros(b, jnp.float32)} for k, (w, b) in zip(keys, shapes)]


def patches(h: jnp.ndarray, kernel: int, stride: int) -> jnp.ndarray:
    """[C, H, W, n] -> [C, kernel, kernel, H', W', n]: the input under every kernel offset, as two
    stacks of `kernel` shifted views (one stack of kernel**2 views is several times slower on XLA:CPU)."""
    _, height, width, _ = h.shape
    out_h, out_w = (height - kernel) // stride + 1, (width - kernel) // stride + 1
    rows = jnp.stack([h[:, :, j:j + stride * (out_w - 1) + 1:stride] for j in range(kernel)], 1)
    return jnp.stack([rows[:, :, i:i + stride * (out_h - 1) + 1:stride] for i in range(kernel)], 1)


@jax.custom_vjp
def weights_times(w: jnp.ndarray, cols: jnp.ndarray) -> jnp.ndarray:
    """w [out, k] @ cols [k, positions], with the weight gradient computed the fast way round."""
    return w @ cols


def _weights_times_forward(w, cols):
    return w @ cols, (w, cols)


def _weights_times_backward(residuals, g):
    """d w = g @ cols.T, computed as (cols @ g.T).T behind a barrier: XLA would rewrite it into the
    first form, which XLA:CPU runs about twice as slowly for a contraction this long."""
    w, cols = residuals
    return jax.lax.optimization_barrier(cols @ g.T).T, w.T @ g


weights_times.defvjp(_weights_times_forward, _weights_times_backward)


def conv_by_patches(h: jnp.ndarray, p: dict, layer: Conv) -> jnp.ndarray:
    """One convolution (cross-correlation, as PyTorch's Conv2d), batch last: [C, H, W, n] ->
    [out_channels, H', W', n], bias added; as a matrix product with the patches."""
    pad = layer.padding
    cols = patches(jnp.pad(h, ((0, 0), (pad, pad), (pad, pad), (0, 0))), layer.kernel, layer.stride)
    w = p["w"].reshape(p["w"].shape[0], -1)  # [out, (in, kh, kw)], the order of cols' first three axes
    out = weights_times(w, cols.reshape(w.shape[1], -1)).reshape(w.shape[0], *cols.shape[3:])
    return out + p["b"][:, None, None, None]


def conv_by_lax(h: jnp.ndarray, p: dict, layer: Conv) -> jnp.ndarray:
    """The same convolution by lax.conv_general_dilated."""
    out = jax.lax.conv_general_dilated(h, p["w"], (layer.stride, layer.stride), [(layer.padding, layer.padding)] * 2,
                                       dimension_numbers=("CHWN", "OIHW", "CHWN"))
    return out + p["b"][:, None, None, None]


def batch_first(h: jnp.ndarray) -> jnp.ndarray:
    """[C, H, W, n] -> [n, C, H, W]."""
    return h.transpose(3, 0, 1, 2)


def flatten(h: jnp.ndarray) -> jnp.ndarray:
    """[C, H, W, n] -> [n, C * H * W] in (C, H, W) order."""
    return h.reshape(-1, h.shape[-1]).T


def hidden_positions(layers: tuple[Layer, ...]) -> list[int]:
    """The positions in `layers` of the hidden layers (those with weights: conv and dense), in order."""
    return [i for i, layer in enumerate(layers) if isinstance(layer, (Conv, Dense))]


def apply_layers(params: Params, x: jnp.ndarray, layers: tuple[Layer, ...], activation: str,
                 fast_gradients: bool = False, input_shape: tuple[int, int, int] = INPUT_SHAPE
                 ) -> tuple[jnp.ndarray, tuple[jnp.ndarray, ...]]:
    """Forward pass on images [batch, C * H * W] (input_shape (C, H, W), flattened) as the network takes
    them: (logits, the activations after every conv ([batch, C, H, W]) and dense ([batch, units]) hidden
    layer). fast_gradients: see run_layers."""
    return run_layers(params, x.reshape(x.shape[0], *input_shape), layers, activation, fast_gradients)


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


def pool_by_blocks(h: jnp.ndarray, layer: Pool) -> jnp.ndarray:
    """Non-overlapping pooling of [C, H, W, n] by layer.size (rows and columns that do not fill a window
    are dropped, as PyTorch's default does), as a reshape into blocks and a max or mean: the same values
    as lax.reduce_window with stride = size, and far faster to differentiate on a CPU."""
    k = layer.size
    c, height, width, n = h.shape
    blocks = h[:, :height // k * k, :width // k * k].reshape(c, height // k, k, width // k, k, n)
    return blocks.max((2, 4)) if layer.kind == "max" else blocks.mean((2, 4))


def pool_by_views(h: jnp.ndarray, layer: Pool) -> jnp.ndarray:
    """The same pooling as the max or mean of the size**2 strided views: faster to train through for
    small windows, far slower for batched (vmapped) gradients, whose views each pad a whole layer."""
    k = layer.size
    _, height, width, _ = h.shape
    views = [h[:, i:height // k * k:k, j:width // k * k:k] for i in range(k) for j in range(k)]
    return functools.reduce(jnp.maximum, views) if layer.kind == "max" else sum(views) / k ** 2


def run_layers(params: Params, h: jnp.ndarray, layers: tuple[Layer, ...], activation: str,
                 fast_gradients: bool = False
               ) -> tuple[jnp.ndarray, tuple[jnp.ndarray, ...]]:
    """`layers`, then the output layer, on h: params are the weighted layers' among them, the output
    layer's last. activation: a name, or the function itself. h and the activations returned are batch
    first; conv and pool layers run batch last in between. fast_gradients: the formulation whose
    reverse-mode gradients of one batch are fastest (patches, strided views; training and the feature
    visualisation), which has no forward mode and is slow to batch (vmap) gradients over."""
    act = ACTIVATIONS[activation] if isinstance(activation, str) else activation
    conv, pool = (conv_by_patches, pool_by_views) if fast_gradients else (conv_by_lax, pool_by_blocks)
    hidden, weights = [], iter(params)
    h = h.transpose(1, 2, 3, 0) if h.ndim == 4 else h
    for layer in layers:
        if isinstance(layer, Conv):
            h = act(conv(h, next(weights), layer))
            hidden.append(batch_first(h))
        elif isinstance(layer, Pool):
            h = pool(h, layer)
        elif isinstance(layer, Flatten) or (isinstance(layer, Dense) and h.ndim == 4):
            h = flatten(h)
        if isinstance(layer, Dense):
            p = next(weights)
            h = act(h @ p["w"] + p["b"])
            hidden.append(h)
    out = next(weights)
    return (flatten(h) if h.ndim == 4 else h) @ out["w"] + out["b"], tuple(hidden)
