"""Feature visualisation: for every neuron of a layer, the input image that excites it most.

Gradient ascent on the image (Olah et al. 2017, "Feature Visualization", Distill): each neuron gets an
image of its own, all the layers' images are optimised together in one jitted loop, and the objective
is the neuron's activation (a conv channel's averaged over its positions) in units of its standard
deviation over the test images (so that one set of penalties suits every layer), minus an L2 penalty
on the pixels and a total-variation penalty. Every step shifts the images by a random offset of up to
JITTER pixels (so that the result does not rely on one exact pixel grid), blurs the gradient a little
(BLUR), takes an Adam step and clips the pixels to 0..1, the range the network was trained on. The
images start as uniform noise, so that every neuron responds to its image somewhere, and a relu's
gradient leaks below zero during the ascent only (leaky_gradient_relu), so that a neuron silent for
its image still finds the way. For a small CNN trained on MNIST the images are mostly textures
(strokes at an angle, gratings, dots) rather than digits: that is what its channels respond to most.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from models.network.cnn import apply_layers, per_neuron
from models.network.network import Network

STEPS = 64
LEARNING_RATE = 0.1
L2 = 1.0  # penalty per unit of mean squared pixel (0..1)
TV = 2.0  # penalty per unit of mean absolute difference between neighbouring pixels (total variation)
BLUR = 0.5  # each step's gradient is blurred by a Gaussian of this many pixels (smoother images)
JITTER = 2
SCALE_FLOOR = 1e-3
LEAK = 0.1


def feature_images(network: Network, hidden_layers: tuple[int, ...], scales: list[np.ndarray] | None = None,
                   steps: int = STEPS, seed: int = 0) -> list[np.ndarray]:
    """For each hidden layer in `hidden_layers`, [n_l, H, W] (or [n_l, H, W, C] for colour) float32 images in
    0..1, one per neuron; every layer's images optimised together, in one compiled loop."""
    if not hidden_layers:
        return []
    params = network.params()
    widths = tuple(network.sizes[h + 1] for h in hidden_layers)
    scale = np.concatenate(scales) if scales is not None else np.ones(sum(widths))
    images = np.asarray(_ascend(params, jnp.asarray(np.maximum(scale, SCALE_FLOOR), jnp.float32), jax.random.key(seed),
                                network.layer_list, network.activation, network.inputs, tuple(hidden_layers), widths,
                                steps))
    return np.split(network.inputs.as_images(images), np.cumsum(widths)[:-1])


def leaky_gradient_relu(x: jax.Array) -> jax.Array:
    """relu in the forward pass, with a gradient of LEAK below zero: a neuron silent for its image can
    still find the way to its input (the other activations have gradients everywhere)."""
    return jax.nn.relu(x) + LEAK * (x - jax.lax.stop_gradient(x)) * (x < 0)


def blurred(g: jax.Array, shape: tuple[int, int, int]) -> jax.Array:
    """Gradients [n, C * H * W] as images of `shape`, each channel blurred by a separable Gaussian of BLUR
    pixels."""
    taps = np.exp(-0.5 * (np.arange(-3, 4) / BLUR) ** 2)
    kernel = jnp.asarray(taps / taps.sum(), jnp.float32)
    images = g.reshape(-1, 1, *shape[1:])
    for k in (kernel[:, None], kernel[None, :]):
        images = jax.lax.conv_general_dilated(images, k[None, None], (1, 1), "SAME")
    return images.reshape(g.shape)


def mean_activation(params, images: jax.Array, network: Network, hidden: int) -> jax.Array:
    """[n, n_h]: layer `hidden`'s activations (a conv channel's averaged over its positions) for images
    [n, C * H * W] in 0..1, scaled as the network's inputs were."""
    h = apply_layers(params, network.inputs.of_unit(images), network.layer_list, network.activation,
                     input_shape=network.inputs.shape)[1][hidden]
    return per_neuron(h)


@functools.partial(jax.jit, static_argnums=(3, 4, 5, 6, 7, 8))
def _ascend(params, scale, key, layers, activation, inputs, hidden_layers, widths, steps):
    optimizer = optax.adam(LEARNING_RATE)
    n = sum(widths)
    starts = np.cumsum((0,) + widths[:-1])

    shape = inputs.shape

    def objective(x, shift):
        shifted = jnp.roll(x.reshape(n, *shape), shift, axis=(2, 3)).reshape(n, -1)
        ascent = leaky_gradient_relu if activation == "relu" else activation
        hidden = apply_layers(params, inputs.of_unit(shifted), layers, ascent, fast_gradients=True,
                              input_shape=shape)[1]
        own = []
        for h, start, width in zip(hidden_layers, starts, widths):  # image start + j is neuron j's
            a = hidden[h][start:start + width]
            own.append(jnp.diagonal(per_neuron(a)))
        own = jnp.concatenate(own)
        images = x.reshape(n, *shape)
        variation = (jnp.abs(jnp.diff(images, axis=2)).mean((1, 2, 3))
                     + jnp.abs(jnp.diff(images, axis=3)).mean((1, 2, 3)))
        return -((own / scale).sum() - L2 * jnp.square(x).mean(1).sum() - TV * variation.sum())

    def step(carry, key):
        x, state = carry
        shift = jax.random.randint(key, (2,), -JITTER, JITTER + 1)
        grads = blurred(jax.grad(objective)(x, shift), shape)
        updates, state = optimizer.update(grads, state, x)
        return (jnp.clip(optax.apply_updates(x, updates), 0.0, 1.0), state), None

    start_key, steps_key = jax.random.split(key)
    x = jax.random.uniform(start_key, (n, inputs.n_pixels), jnp.float32, 0.0, 1.0)
    (x, _), _ = jax.lax.scan(step, (x, optimizer.init(x)), jax.random.split(steps_key, steps))
    return x
