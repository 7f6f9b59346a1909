"""Ablation: silence hidden neurons (activation set to 0) and measure what the network loses.

Per neuron: the drop in test accuracy, overall and per class. Per dominance group (the neurons of one
layer that drive one class hardest): the drop in that class's accuracy, against random groups of the
same size from the same layer (a permutation p-value). The layers below the ablated one are run once;
every ablation runs only the layers above it, vmapped over the neuron masks.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from layout.engine.features import EVAL_BATCH, hidden_activations, influence_images
from models.data.datasets import Split, flat_pixels
from models.network.cnn import apply_above, apply_layers
from models.network.mlp import ACTIVATIONS
from models.network.network import Network

MASK_BATCH_FLOATS = 2**24  # masks evaluated together: batch x test images x layer width at most


@dataclass(frozen=True)
class Ablation:
    """drop [N]: test-accuracy drop when neuron i alone is silenced; class_drop [N, C]: per class.
    groups: one dict per (layer, class) dominance group: layer, class, size, drop (that class's accuracy
    drop), null_mean, null_sd, p (random groups of the same size dropping it as much)."""

    baseline: np.ndarray  # [C] per-class test accuracy of the intact network
    drop: np.ndarray
    class_drop: np.ndarray
    groups: tuple[dict, ...]


def per_class_accuracy(logits: jax.Array, labels: jax.Array, n_classes: int) -> jax.Array:
    hits = jax.nn.one_hot(labels, n_classes) * (logits.argmax(-1) == labels)[:, None]
    return hits.sum(0) / jnp.maximum(jax.nn.one_hot(labels, n_classes).sum(0), 1)


def masked_accuracy(network: Network, layer: int, hidden: np.ndarray, labels: np.ndarray,
                    masks: np.ndarray) -> np.ndarray:
    """[G, C] per-class accuracy with dense hidden layer `layer`'s activations `hidden` [n_images, n]
    multiplied by each of masks [G, n] (0 silences a neuron), running the (dense) layers above."""
    batch = max(1, MASK_BATCH_FLOATS // (hidden.shape[0] * max(network.sizes[layer + 1:-1] or (1,))))
    return np.asarray(_masked_accuracy(network.weights[layer + 1:], network.biases[layer + 1:], jnp.asarray(hidden),
                                       jnp.asarray(labels), jnp.asarray(masks, jnp.float32), network.activation,
                                       network.sizes[-1], min(batch, len(masks))))


@partial(jax.jit, static_argnames=("activation", "n_classes", "batch"))
def _masked_accuracy(weights, biases, hidden, labels, masks, activation, n_classes, batch):
    act = ACTIVATIONS[activation]

    def one(mask):
        h = hidden * mask[None, :]
        for w, b in zip(weights[:-1], biases[:-1]):
            h = act(h @ w + b)
        return per_class_accuracy(h @ weights[-1] + biases[-1], labels, n_classes)

    return jax.lax.map(one, masks, batch_size=batch)


def masked_channel_accuracy(network: Network, layer: int, maps: np.ndarray, labels: np.ndarray,
                            masks: np.ndarray) -> np.ndarray:
    """[G, C] per-class accuracy with conv layer `layer`'s activation maps [n_images, channels, H, W]
    multiplied by each of masks [G, channels], running the layers above."""
    batch = max(1, MASK_BATCH_FLOATS // maps.size)
    return np.asarray(_masked_channels(network.params(), jnp.asarray(maps), jnp.asarray(labels),
                                       jnp.asarray(masks, jnp.float32), network.layer_list, network.activation, layer,
                                       network.sizes[-1], min(batch, len(masks))))


@partial(jax.jit, static_argnames=("layers", "activation", "layer", "n_classes", "batch"))
def _masked_channels(params, maps, labels, masks, layers, activation, layer, n_classes, batch):
    def one(mask):
        return per_class_accuracy(apply_above(params, maps * mask[None, :, None, None], layers, activation, layer),
                                  labels, n_classes)

    return jax.lax.map(one, masks, batch_size=batch)


def conv_maps(network: Network, layer: int, images: np.ndarray) -> np.ndarray:
    """Conv layer `layer`'s activation maps [n, channels, H, W] for uint8 images [n, H, W]."""
    params = network.params()
    architecture = network.layer_list, network.activation, network.inputs
    return np.concatenate([np.asarray(_maps(params, flat_pixels(images[i:i + EVAL_BATCH]), *architecture, layer))
                           for i in range(0, len(images), EVAL_BATCH)])


@partial(jax.jit, static_argnums=(2, 3, 4, 5))
def _maps(params, x, layers, activation, inputs, layer):
    return apply_layers(params, inputs.of_pixels(x), layers, activation, input_shape=inputs.shape)[1][layer]


def random_groups(rng: np.random.Generator, n: int, size: int, count: int) -> np.ndarray:
    """[count, n] masks each silencing `size` of the n neurons at random (0 = silenced)."""
    masks = np.ones((count, n))
    chosen = rng.permuted(np.broadcast_to(np.arange(n), (count, n)), axis=1)[:, :size]
    np.put_along_axis(masks, chosen, 0, axis=1)
    return masks


def ablate(network: Network, activations: list[np.ndarray], test: Split, dominant: np.ndarray,
           layer_of: np.ndarray, n_random: int, seed: int, hidden_layers: tuple[int, ...] | None = None) -> Ablation:
    """Every single-neuron ablation and every dominance-group ablation with its random-group null.
    activations[l]: laid-out layer l's activations on the test images [n_images, n_l]; dominant,
    layer_of [N]; hidden_layers[l]: layer l's place among the network's hidden layers (default: the
    same). A conv layer's channels are silenced over the whole image, on the INFLUENCE_IMAGES evenly
    spaced test images its influence is measured on (each mask runs the conv layers above again);
    the drops are against the intact network's accuracy on those images."""
    rng = np.random.default_rng(seed)
    n_classes = network.sizes[-1]
    hidden_layers = tuple(range(len(activations))) if hidden_layers is None else hidden_layers
    labels = test.labels
    baseline = masked_accuracy(network, len(network.sizes) - 3, activations_of_top(network, test),
                               labels, np.ones((1, network.sizes[-2])))[0]
    weight = np.bincount(labels, minlength=n_classes) / len(labels)
    class_drops, groups = [], []
    for layer, (hidden, h) in enumerate(zip(activations, hidden_layers)):
        n = hidden.shape[1]
        if network.hidden_kinds[h] == "conv":
            sample = influence_images(np.arange(len(labels)), "conv")
            maps, sample_labels = conv_maps(network, h, test.images[sample]), labels[sample]
            own_baseline = masked_channel_accuracy(network, h, maps, sample_labels, np.ones((1, n)))[0]

            def accuracy(masks, maps=maps, h=h, sample_labels=sample_labels):
                return masked_channel_accuracy(network, h, maps, sample_labels, masks)
        else:
            own_baseline = baseline

            def accuracy(masks, hidden=hidden, h=h):
                return masked_accuracy(network, h, hidden, labels, masks)
        class_drops.append(own_baseline - accuracy(1 - np.eye(n)))
        dom = dominant[layer_of == layer]
        for c in np.unique(dom):
            members = dom == c
            size = int(members.sum())
            drop = own_baseline[c] - accuracy(np.vstack([1 - members, random_groups(rng, n, size, n_random)]))[:, c]
            null = drop[1:]
            groups.append({"layer": layer, "class": int(c), "size": size, "drop": float(drop[0]),
                           "null_mean": float(null.mean()) if n_random else None,
                           "null_sd": float(null.std(ddof=1)) if n_random > 1 else None,
                           "p": float((1 + (null >= drop[0]).sum()) / (1 + n_random)) if n_random else None})
    class_drop = np.concatenate(class_drops)
    return Ablation(baseline, class_drop @ weight, class_drop, tuple(groups))


def activations_of_top(network: Network, test: Split) -> np.ndarray:
    """The last hidden layer's activations on the test images (the intact network's accuracy from them)."""
    return hidden_activations(network, test.images, (len(network.sizes) - 3,))[0]
