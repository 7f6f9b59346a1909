"""What each hidden neuron does, as numbers: the inputs to the layout and to the neuron details.

Neurons are numbered layer by layer: the first hidden layer's neurons, then the next layer's, and so
on. The output units (one per class) are not neurons here; layout/engine/particles.py adds
them as anchors.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from models.data.datasets import Split
from models.network.mlp import ACTIVATIONS
from models.network.network import Network

EVAL_BATCH = 1000


@dataclass(frozen=True)
class NeuronFeatures:
    """Per-neuron features for all N hidden neurons of a network with C output classes.

    output_vectors [N, C]: how the neuron drives each output. For the last hidden layer its outgoing
        weights; for earlier layers its effective influence on the logits (see `influence`).
    dominant [N]: argmax of the output vector, the class the neuron drives hardest.
    activation_dominant [N]: the class whose test images activate the neuron most on average.
    class_activation [N, C]: mean activation per class over the test set.
    receptive_fields [N, 28, 28]: input weights (first layer) or effective input weights, the product
        of the weight matrices below the neuron (deeper layers).
    layer [N], index [N]: hidden layer (0 = first) and position within it.
    class_names [C]: names of the output classes.
    influence: how the deeper layers' output vectors were computed ("weights" or "jacobian").
    """

    output_vectors: np.ndarray
    dominant: np.ndarray
    activation_dominant: np.ndarray
    class_activation: np.ndarray
    receptive_fields: np.ndarray
    layer: np.ndarray
    index: np.ndarray
    class_names: tuple[str, ...]
    influence: str

    @property
    def n_neurons(self) -> int:
        return len(self.layer)

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def n_layers(self) -> int:
        return int(self.layer.max()) + 1


def downstream_products(weights: tuple[np.ndarray, ...]) -> list[np.ndarray]:
    """For each hidden layer l, W_{l+1} @ ... @ W_last: [n_l, C], the linear path to the logits."""
    hidden = len(weights) - 1
    out = [weights[-1]]
    for l in range(hidden - 2, -1, -1):
        out.insert(0, weights[l + 1] @ out[0])
    return out


def upstream_products(weights: tuple[np.ndarray, ...]) -> list[np.ndarray]:
    """For each hidden layer l, W_0 @ ... @ W_l: [784, n_l], the linear path from the pixels."""
    out = [weights[0]]
    for w in weights[1:-1]:
        out.append(out[-1] @ w)
    return out


def hidden_activations(network: Network, images: np.ndarray) -> list[np.ndarray]:
    """Every hidden layer's activations [n_images, n_l] for uint8 images [n, 28, 28]."""
    act = ACTIVATIONS[network.activation]
    batches = [_forward(network.weights, network.biases, images[i:i + EVAL_BATCH].reshape(-1, 784), act)
               for i in range(0, len(images), EVAL_BATCH)]
    return [np.concatenate([np.asarray(b[l]) for b in batches]) for l in range(len(network.weights) - 1)]


def probe(network: Network, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(activations [n, N] of every hidden neuron, all layers in order; class probabilities [n, C]) for
    uint8 images [n, 28, 28]."""
    hidden = hidden_activations(network, images)
    logits = hidden[-1].astype(np.float64) @ network.weights[-1] + network.biases[-1]
    logits -= logits.max(1, keepdims=True)
    p = np.exp(logits)
    return np.concatenate(hidden, axis=1), p / p.sum(1, keepdims=True)


def top_examples(network: Network, images: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(top, bottom) [N, k] int32: for every hidden neuron (all layers, in order), the indices of the k
    images that activate it most (most first) and least (least first), ties to the lower index; one
    jitted pass over `images` per batch of neurons' activations."""
    activations = np.concatenate(hidden_activations(network, images), axis=1)  # [n_images, N]
    k = min(k, len(images))
    tops, bottoms = [], []
    for start in range(0, activations.shape[1], TOP_NEURONS):
        columns = jnp.asarray(activations[:, start:start + TOP_NEURONS].T)
        top, bottom = _top_and_bottom(columns, k)
        tops.append(np.asarray(top))
        bottoms.append(np.asarray(bottom))
    return (np.concatenate(tops).astype(np.int32) if tops else np.zeros((0, k), np.int32),
            np.concatenate(bottoms).astype(np.int32) if bottoms else np.zeros((0, k), np.int32))


TOP_NEURONS = 1024  # neurons ranked at a time: 1,024 x 10,000 test images is 41 MB


@functools.partial(jax.jit, static_argnums=1)
def _top_and_bottom(columns: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    return jax.lax.top_k(columns, k)[1], jax.lax.top_k(-columns, k)[1]


def _layers(weights, biases, x, act):
    h = x.astype(jnp.float32) / 255.0
    out = []
    for w, b in zip(weights[:-1], biases[:-1]):
        h = act(h @ w + b)
        out.append(h)
    return out


_forward = jax.jit(lambda ws, bs, x, act: _layers(ws, bs, x, act), static_argnums=3)  # compiled once per shape


def mean_jacobians(network: Network, images: np.ndarray) -> list[np.ndarray]:
    """For each hidden layer l, the mean over `images` of d logits / d h_l: [n_l, C]."""
    act = ACTIVATIONS[network.activation]
    weights, biases = network.weights, network.biases

    def logits_from(layer, h):
        for w, b in zip(weights[layer + 1:-1], biases[layer + 1:-1]):
            h = act(h @ w + b)
        return h @ weights[-1] + biases[-1]

    hidden = hidden_activations(network, images)
    out = []
    for layer, h in enumerate(hidden):
        jac = jax.jit(jax.vmap(jax.jacrev(lambda v, layer=layer: logits_from(layer, v))))
        total = sum(np.asarray(jac(h[i:i + EVAL_BATCH])).sum(0) for i in range(0, len(h), EVAL_BATCH))
        out.append((total / len(h)).T)  # [C, n_l] -> [n_l, C]
    return out


def class_means(activations: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Mean activation per class: [n_neurons, n_classes] (0 for a class with no images)."""
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    sums = np.zeros((n_classes, activations.shape[1]))
    np.add.at(sums, labels, activations)
    return (sums / np.maximum(counts, 1)[:, None]).T.astype(np.float32)


def neuron_features(network: Network, test: Split, influence: str = "weights") -> NeuronFeatures:
    """Features of every hidden neuron of `network`, measured on the test split `test`."""
    n_classes = network.sizes[-1]
    if influence == "jacobian":
        vectors = mean_jacobians(network, test.images)
    else:
        vectors = downstream_products(network.weights)
    activations = hidden_activations(network, test.images)
    class_activation = np.concatenate([class_means(a, test.labels, n_classes) for a in activations])
    fields = np.concatenate([f.T for f in upstream_products(network.weights)]).reshape(-1, 28, 28)
    sizes = network.sizes[1:-1]
    output_vectors = np.concatenate(vectors).astype(np.float32)
    return NeuronFeatures(
        output_vectors=output_vectors,
        dominant=output_vectors.argmax(1),
        activation_dominant=class_activation.argmax(1),
        class_activation=class_activation,
        receptive_fields=fields.astype(np.float32),
        layer=np.repeat(np.arange(len(sizes)), sizes),
        index=np.concatenate([np.arange(n) for n in sizes]),
        class_names=network.class_names,
        influence=influence,
    )
