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
    """[G, C] per-class accuracy with layer `layer`'s activations `hidden` [n_images, n] multiplied by
    each of masks [G, n] (0 silences a neuron), running the layers above."""
    batch = max(1, MASK_BATCH_FLOATS // (hidden.shape[0] * max(network.sizes[layer + 1:-1])))
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


def ablate(network: Network, activations: list[np.ndarray], labels: np.ndarray, dominant: np.ndarray,
           layer_of: np.ndarray, n_random: int, seed: int) -> Ablation:
    """Every single-neuron ablation and every dominance-group ablation with its random-group null.
    activations[l]: layer l's activations on the test images [n_images, n_l]; dominant, layer_of [N]."""
    rng = np.random.default_rng(seed)
    n_classes = network.sizes[-1]
    baseline = masked_accuracy(network, 0, activations[0], labels, np.ones((1, activations[0].shape[1])))[0]
    weight = np.bincount(labels, minlength=n_classes) / len(labels)
    class_drops, groups = [], []
    for layer, hidden in enumerate(activations):
        n = hidden.shape[1]
        class_drops.append(baseline - masked_accuracy(network, layer, hidden, labels, 1 - np.eye(n)))
        dom = dominant[layer_of == layer]
        for c in np.unique(dom):
            members = dom == c
            size = int(members.sum())
            random_masks = np.ones((n_random, n))
            chosen = rng.permuted(np.broadcast_to(np.arange(n), (n_random, n)), axis=1)[:, :size]
            np.put_along_axis(random_masks, chosen, 0, axis=1)
            accuracy = masked_accuracy(network, layer, hidden, labels, np.vstack([1 - members, random_masks]))
            drop = baseline[c] - accuracy[:, c]
            null = drop[1:]
            groups.append({"layer": layer, "class": int(c), "size": size, "drop": float(drop[0]),
                           "null_mean": float(null.mean()) if n_random else None,
                           "null_sd": float(null.std(ddof=1)) if n_random > 1 else None,
                           "p": float((1 + (null >= drop[0]).sum()) / (1 + n_random)) if n_random else None})
    class_drop = np.concatenate(class_drops)
    return Ablation(baseline, class_drop @ weight, class_drop, tuple(groups))
