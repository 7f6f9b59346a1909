"""A fully connected network as a pure function of its parameters.

Parameters are a list of layers, each {"w": [n_in, n_out], "b": [n_out]}: row j of a layer's "w" is
everything neuron j of the layer below sends upward, so row j of the last layer's "w" is hidden
neuron j's output-weight vector.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

ACTIVATIONS = {"sigmoid": jax.nn.sigmoid, "tanh": jnp.tanh, "relu": jax.nn.relu}

Params = list  # [{"w": jnp.ndarray [n_in, n_out], "b": jnp.ndarray [n_out]}, ...]


def layer_sizes(n_inputs: int, hidden: tuple[int, ...], n_classes: int) -> tuple[int, ...]:
    """(784, *hidden, 10) for MNIST."""
    return (n_inputs, *hidden, n_classes)


@partial(jax.jit, static_argnums=(1, 2))
def init_params(key: jax.Array, sizes: tuple[int, ...], activation: str) -> Params:
    """Uniform Glorot weights (He for relu) and zero biases, drawn from `key`."""
    keys = jax.random.split(key, len(sizes) - 1)
    return [{"w": init_weight(k, n_in, n_out, activation), "b": jnp.zeros(n_out, jnp.float32)}
            for k, n_in, n_out in zip(keys, sizes[:-1], sizes[1:])]


def init_weight(key: jax.Array, n_in: int, n_out: int, activation: str) -> jnp.ndarray:
    """One layer's initial weights [n_in, n_out]: uniform Glorot, or He for relu."""
    limit = init_limit(n_in, n_out, activation)
    return jax.random.uniform(key, (n_in, n_out), jnp.float32, -limit, limit)


def init_limit(n_in: int, n_out: int, activation: str) -> float:
    """Initial weights are uniform in +/- this: Glorot sqrt(6 / (n_in + n_out)), He sqrt(6 / n_in) for relu."""
    fan = n_in / 2 if activation == "relu" else (n_in + n_out) / 2
    return (3.0 / fan) ** 0.5


def apply(params: Params, x: jnp.ndarray, activation: str) -> tuple[jnp.ndarray, tuple[jnp.ndarray, ...]]:
    """Forward pass on images [batch, H * W] scaled to 0..1: (logits [batch, n_classes], hidden activations)."""
    act = ACTIVATIONS[activation]
    hidden = []
    h = x
    for layer in params[:-1]:
        h = act(h @ layer["w"] + layer["b"])
        hidden.append(h)
    logits = h @ params[-1]["w"] + params[-1]["b"]
    return logits, tuple(hidden)


def weight_penalty(params: Params, l1: float, l2: float) -> jnp.ndarray:
    """l1 * sum |w| + l2 * sum w^2 over every weight matrix (biases are not penalised)."""
    total = jnp.zeros((), jnp.float32)
    for layer in params:
        if l1:
            total = total + l1 * jnp.abs(layer["w"]).sum()
        if l2:
            total = total + l2 * jnp.square(layer["w"]).sum()
    return total
