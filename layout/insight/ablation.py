"""Ablation: silence hidden neurons (activation set to 0) and measure what the network loses.

Per neuron: the drop in test accuracy, overall and per class. Per dominance group (the neurons of one
layer that drive one class hardest): the drop in that class's accuracy, against random groups of the
same size from the same layer (a permutation p-value). The random groups are nested: the r-th group of
every class is the first (its size) of the layer's r-th random ordering, so each class's null is still
uniform random groups of its size, and above the output layer their shares are summed once, segment
by segment (the largest group's cost, not the whole layer's). The layers below the ablated one are run
once; every ablation runs only the layers above it, vmapped over the silenced neurons; above the output
layer, the intact logits less the silenced neurons' share. The dense layers' ablations run together,
one batch of test images at a time (a wide layer's activations are never held for all of them).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from layout.engine.features import EVAL_BATCH, batches_of, influence_images
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


def per_class_hits(logits: jax.Array, labels: jax.Array, n_classes: int) -> jax.Array:
    """[C] how many images of each class the logits [n, C] classify right."""
    return (jax.nn.one_hot(labels, n_classes) * (logits.argmax(-1) == labels)[:, None]).sum(0)


def per_class_accuracy(logits: jax.Array, labels: jax.Array, n_classes: int) -> jax.Array:
    return per_class_hits(logits, labels, n_classes) / jnp.maximum(jax.nn.one_hot(labels, n_classes).sum(0), 1)


@dataclass(frozen=True)
class Prefixes:
    """Nested groups: the first sizes[k] neurons of each row of order [R, max(sizes)], for every k;
    sizes ascending. Each row is a random ordering, so order[:, :s] is R uniform random groups of s."""

    order: np.ndarray
    sizes: tuple[int, ...]

    def groups(self) -> list[np.ndarray]:
        return [self.order[:, :s] for s in self.sizes]


def nested_nulls(rng: np.random.Generator, n: int, sizes: np.ndarray, count: int) -> tuple[Prefixes, np.ndarray]:
    """(count random orderings of n neurons as Prefixes of the ascending sizes, where each of `sizes` is
    among them: Prefixes.sizes[where[i]] == sizes[i])."""
    ascending = np.argsort(sizes, kind="stable")
    where = np.empty(len(sizes), int)
    where[ascending] = np.arange(len(sizes))
    order = random_groups(rng, n, int(max(sizes)), count)
    return Prefixes(order, tuple(int(s) for s in np.asarray(sizes)[ascending])), where


def silenced_hits(network: Network, layer: int, hidden: np.ndarray, labels: np.ndarray,
                  silenced: np.ndarray | Prefixes) -> np.ndarray:
    """[G, C] images of each class classified right with dense hidden layer `layer`'s activations `hidden`
    [n_images, n] with the neurons silenced[g] (indices [G, s]) set to 0, running the (dense) layers
    above. Below the output layer, the intact logits less the silenced neurons' share hidden[:, s] @ W[s]:
    a cost that grows with s, not with the layer's width (100,000 single-neuron ablations in seconds).
    Prefixes: [R, K, C], row r and size k's group; above the output layer the shares of each row's
    segments are summed once (prefix_hits)."""
    top = len(network.weights) - layer == 2  # only the output layer above
    if isinstance(silenced, Prefixes):
        if top:
            return prefix_hits(network, hidden, labels, silenced)
        return np.stack([silenced_hits(network, layer, hidden, labels, g) for g in silenced.groups()], axis=1)
    silenced = np.asarray(silenced, np.int32).reshape(len(silenced), -1)
    per_mask = hidden.shape[0] * (max(silenced.shape[1], network.sizes[-1]) if top else
                                  max(network.sizes[layer + 1:-1] or (1,)))
    batch = min(max(1, MASK_BATCH_FLOATS // per_mask), len(silenced))
    return np.asarray(_silenced_hits(network.weights[layer + 1:], network.biases[layer + 1:], jnp.asarray(hidden),
                                     jnp.asarray(labels), jnp.asarray(silenced), network.activation,
                                     network.sizes[-1], batch, top))


def silenced_accuracy(network: Network, layer: int, hidden: np.ndarray, labels: np.ndarray,
                      silenced: np.ndarray) -> np.ndarray:
    """[G, C] per-class accuracy of silenced_hits."""
    counts = np.bincount(labels, minlength=network.sizes[-1])
    return silenced_hits(network, layer, hidden, labels, silenced) / np.maximum(counts, 1)


@partial(jax.jit, static_argnames=("activation", "n_classes", "batch", "top"))
def _silenced_hits(weights, biases, hidden, labels, silenced, activation, n_classes, batch, top):
    act = ACTIVATIONS[activation]
    intact = hidden @ weights[-1] + biases[-1] if top else None
    rows = hidden.T if top else None  # [n, images]: a neuron's activations contiguous, gathered by rows

    def one(chosen):
        if top:
            share = jnp.einsum("si,sc->ic", rows[chosen], weights[-1][chosen])
            return per_class_hits(intact - share, labels, n_classes)
        h = hidden * jnp.ones(hidden.shape[1]).at[chosen].set(0)[None, :]
        for w, b in zip(weights[:-1], biases[:-1]):
            h = act(h @ w + b)
        return per_class_hits(h @ weights[-1] + biases[-1], labels, n_classes)

    return jax.lax.map(one, silenced, batch_size=batch)


def prefix_hits(network: Network, hidden: np.ndarray, labels: np.ndarray, prefixes: Prefixes) -> np.ndarray:
    """[R, K, C] silenced_hits of the last hidden layer's nested groups: each row's share grows by
    one segment of its ordering per size."""
    per_row = hidden.shape[0] * max(prefixes.sizes[-1], network.sizes[-1])
    batch = min(max(1, MASK_BATCH_FLOATS // per_row), len(prefixes.order))
    return np.asarray(_prefix_hits(network.weights[-1], network.biases[-1], jnp.asarray(hidden), jnp.asarray(labels),
                                   jnp.asarray(prefixes.order, jnp.int32), prefixes.sizes, network.sizes[-1], batch))


@partial(jax.jit, static_argnames=("sizes", "n_classes", "batch"))
def _prefix_hits(weight, bias, hidden, labels, order, sizes, n_classes, batch):
    intact, rows = hidden @ weight + bias, hidden.T

    def one(chosen):
        share, hits = jnp.zeros_like(intact), []
        for start, stop in zip((0, *sizes[:-1]), sizes):
            segment = chosen[start:stop]
            share = share + jnp.einsum("si,sc->ic", rows[segment], weight[segment])
            hits.append(per_class_hits(intact - share, labels, n_classes))
        return jnp.stack(hits)

    return jax.lax.map(one, order, batch_size=batch)


def dense_accuracies(network: Network, test: Split, silenced: dict[int, list[np.ndarray | Prefixes]]
                     ) -> tuple[np.ndarray, dict[int, list[np.ndarray]]]:
    """(the intact network's per-class accuracy [C], {h: [per-class accuracy [G, C] of each index
    array silenced[h][i] [G, s] of dense hidden layer h's neurons, [R, K, C] of Prefixes]}), in one pass
    over the test images
    a batch at a time: a wide layer's activations are never held for all of them."""
    n_classes = network.sizes[-1]
    intact = np.zeros(n_classes)
    hits = {h: [0.0] * len(sets) for h, sets in silenced.items()}
    for start, logits, hidden in batches_of(network.params(), network, test.images):
        labels = test.labels[start:start + len(logits)]
        intact += np.asarray(per_class_hits(jnp.asarray(logits), jnp.asarray(labels), n_classes))
        for h, sets in silenced.items():
            hits[h] = [total + silenced_hits(network, h, hidden[h], labels, s) for total, s in zip(hits[h], sets)]
    counts = np.maximum(np.bincount(test.labels, minlength=n_classes), 1)
    return intact / counts, {h: [total / counts for total in totals] for h, totals in hits.items()}


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
    """[count, size] indices of `size` of the n neurons chosen at random, `count` times."""
    return rng.permuted(np.broadcast_to(np.arange(n), (count, n)), axis=1)[:, :size]


def masks_of(silenced: np.ndarray, n: int) -> np.ndarray:
    """[G, n] masks (0 = silenced) of the index groups silenced [G, s]."""
    masks = np.ones((len(silenced), n), np.float32)
    np.put_along_axis(masks, silenced, 0, axis=1)
    return masks


def ablate(network: Network, test: Split, dominant: np.ndarray, layer_of: np.ndarray, n_random: int, seed: int,
           hidden_layers: tuple[int, ...] | None = None) -> Ablation:
    """Every single-neuron ablation and every dominance-group ablation with its random-group null.
    dominant, layer_of [N] (laid-out layer l's neurons are those with layer_of == l); hidden_layers[l]:
    layer l's place among the network's hidden layers (default: the same). The dense layers' ablations
    all run in one pass over the test images (dense_accuracies). A conv layer's channels are silenced
    over the whole image, on the INFLUENCE_IMAGES evenly spaced test images its influence is measured
    on (each mask runs the conv layers above again); the drops are against the intact network's
    accuracy on those images."""
    rng = np.random.default_rng(seed)
    n_classes = network.sizes[-1]
    sizes = np.bincount(layer_of)
    hidden_layers = tuple(range(len(sizes))) if hidden_layers is None else hidden_layers
    plans = []  # per laid-out layer: (its dominance classes, where their sizes are among the nulls' sizes,
    #             [single neurons, each class's group, then the nested random groups])
    for layer, n in enumerate(sizes):
        dom = dominant[layer_of == layer]
        classes = np.unique(dom)
        members = [np.flatnonzero(dom == c)[None] for c in classes]
        nulls, where = nested_nulls(rng, n, np.array([m.shape[1] for m in members]), n_random)
        plans.append((classes, where, [np.arange(n)[:, None], *members] + ([nulls] if n_random else [])))
    kinds = network.hidden_kinds
    baseline, dense = dense_accuracies(network, test, {h: plans[l][2] for l, h in enumerate(hidden_layers)
                                                       if kinds[h] == "dense"})
    weight = np.bincount(test.labels, minlength=n_classes) / len(test.labels)
    class_drops, groups = [], []
    for layer, h in enumerate(hidden_layers):
        classes, where, sets = plans[layer]
        own_baseline, accuracies = conv_accuracies(network, h, test, sets) if kinds[h] == "conv" else (baseline,
                                                                                                        dense[h])
        class_drops.append(own_baseline - accuracies[0])
        for i, c in enumerate(classes):
            drop = own_baseline[c] - accuracies[1 + i][0, c]
            null = own_baseline[c] - accuracies[-1][:, where[i], c] if n_random else None
            groups.append({"layer": layer, "class": int(c), "size": sets[1 + i].shape[1], "drop": float(drop),
                           "null_mean": float(null.mean()) if n_random else None,
                           "null_sd": float(null.std(ddof=1)) if n_random > 1 else None,
                           "p": float((1 + (null >= drop).sum()) / (1 + n_random)) if n_random else None})
    class_drop = np.concatenate(class_drops)
    return Ablation(baseline, class_drop @ weight, class_drop, tuple(groups))


def conv_accuracies(network: Network, h: int, test: Split, sets: list[np.ndarray | Prefixes]
                    ) -> tuple[np.ndarray, list[np.ndarray]]:
    """(the intact network's per-class accuracy [C], [per-class accuracy [G, C] of each index array
    [G, s] of conv layer h's channels silenced, [R, K, C] of Prefixes]) on the INFLUENCE_IMAGES evenly
    spaced test images."""
    sample = influence_images(np.arange(len(test.labels)), "conv")
    maps, labels = conv_maps(network, h, test.images[sample]), test.labels[sample]
    n = maps.shape[1]

    def accuracy(silenced):
        if isinstance(silenced, Prefixes):
            return np.stack([accuracy(g) for g in silenced.groups()], axis=1)
        return masked_channel_accuracy(network, h, maps, labels, masks_of(silenced, n))

    return masked_channel_accuracy(network, h, maps, labels, np.ones((1, n)))[0], [accuracy(s) for s in sets]
