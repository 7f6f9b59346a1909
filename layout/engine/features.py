"""What each hidden neuron does, as numbers: the inputs to the layout and to the neuron details.

Neurons are numbered layer by layer over the hidden layers that are laid out (`layout.layers`: an
MLP's every hidden layer; a CNN's dense layers, its conv layers, or all): the first such layer's
neurons, then the next layer's, and so on. A conv layer's neurons are its channels, each with its
activation averaged over the image. The output units (one per class) are not neurons here;
layout/engine/particles.py adds them as anchors.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np

from layout.engine.featvis import feature_images
from models.data.datasets import Split, flat_pixels
from models.network.cnn import apply_above, apply_layers, per_neuron
from models.network.network import Network

EVAL_BATCH = 1000
INFLUENCE_IMAGES = 1000  # a conv channel's Jacobian influence is averaged over this many test images


@dataclass(frozen=True)
class NeuronFeatures:
    """Per-neuron features for all N hidden neurons of a network with C output classes.

    output_vectors [N, C]: how the neuron drives each output. For the last hidden layer its outgoing
        weights; for earlier layers its effective influence on the logits (see `influence`).
    dominant [N]: argmax of the output vector, the class the neuron drives hardest.
    activation_dominant [N]: the class whose test images activate the neuron most on average.
    class_activation [N, C]: mean activation per class over the test set.
    receptive_fields [N, H, W], or [N, H, W, C] for colour images (the images' size): for an MLP, input
        weights (first layer) or effective input weights, the product of the weight matrices below the
        neuron (deeper layers); for a CNN, every neuron's
        feature visualisation (layout/engine/featvis.py): the image, 0..1, that excites it most.
    layer [N], index [N]: laid-out layer (0 = the first laid out) and position within it.
    class_names [C]: names of the output classes.
    influence: how the output vectors were computed ("weights", "jacobian", or for a CNN whose conv
        channels are laid out with dense influence by weights "jacobian (conv), weights (dense)").
    hidden_layers [L]: each laid-out layer's position among the network's hidden layers (0 = first);
    layer_kinds [L]: "conv" or "dense" for each; field_kind: what receptive_fields hold ("weights" or
    "feature visualisation").
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
    hidden_layers: tuple[int, ...] = ()
    layer_kinds: tuple[str, ...] = ()
    field_kind: str = "weights"

    def layer_name(self, layer: int) -> str:
        """'layer 2' for an MLP; 'layer 3 (dense)', 'layer 1 (conv)' for a CNN, numbered among the
        network's hidden layers."""
        if not self.hidden_layers or self.field_kind == "weights":
            return f"layer {layer + 1}"
        return f"layer {self.hidden_layers[layer] + 1} ({self.layer_kinds[layer]})"

    @property
    def layer_numbers(self) -> np.ndarray:
        """[N] each neuron's layer as the outputs number it, from 1: its place among the network's hidden
        layers (for an MLP, the laid-out layer + 1)."""
        return np.asarray(self.hidden_layers or range(self.n_layers), int)[self.layer] + 1

    @property
    def signed_fields(self) -> bool:
        """Whether receptive_fields are weights (any sign), rather than images in 0..1."""
        return self.field_kind == "weights"

    @property
    def n_neurons(self) -> int:
        return len(self.layer)

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def n_layers(self) -> int:
        return int(self.layer.max()) + 1

    @property
    def layer_sizes(self) -> list[int]:
        """How many neurons each laid-out layer has."""
        return np.bincount(self.layer, minlength=self.n_layers).tolist()


def chosen_layers(network: Network, which: str = "dense") -> tuple[int, ...]:
    """The hidden layers `layout.layers` lays out, by position among the network's hidden layers."""
    return tuple(h for h, kind in enumerate(network.hidden_kinds) if which in ("all", kind))


@functools.partial(jax.jit, static_argnums=(2, 3, 4))
def _forward(params, x, layers, activation, inputs):
    """(logits, every hidden layer's activations per neuron) for uint8 images [n, H * W]."""
    logits, hidden = apply_layers(params, inputs.of_pixels(x), layers, activation, input_shape=inputs.shape)
    return logits, tuple(per_neuron(h) for h in hidden)


def batches_of(params: list[dict], network: Network, images: np.ndarray
               ) -> Iterator[tuple[int, np.ndarray, tuple[np.ndarray, ...]]]:
    """(the batch's first image, logits [b, C], every hidden layer's activations [b, n_l]) for each batch
    of EVAL_BATCH of the uint8 images [n, H, W(, C)], of the network's layers, activation and input
    scaling with the weights `params` (its own or others): a wide layer is never held for all images.
    Fewer images a batch where the hidden layers hold more than ACTIVATION_FLOATS for EVAL_BATCH."""
    rows = batch_rows(network)
    for i in range(0, len(images), rows):
        logits, hidden = _forward(params, flat_pixels(images[i:i + rows]), network.layer_list,
                                  network.activation, network.inputs)
        yield i, np.asarray(logits), tuple(np.asarray(h) for h in hidden)


ACTIVATION_FLOATS = 2**25  # a batch's hidden activations at most (128 MB): 335 images of a 100,000-neuron layer


def batch_rows(network: Network) -> int:
    """Images a batch of batches_of: EVAL_BATCH, or fewer for wide layers."""
    return max(1, min(EVAL_BATCH, ACTIVATION_FLOATS // sum(network.sizes[1:-1])))


def forward_batches(params: list[dict], network: Network, images: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """(logits [n, C], every hidden layer's activations [n, n_l]) for all the images (batches_of, joined)."""
    batches = list(batches_of(params, network, images))
    logits = np.concatenate([b[1] for b in batches])
    return logits, [np.concatenate([b[2][h] for b in batches]) for h in range(len(batches[0][2]))]


def hidden_activations(network: Network, images: np.ndarray, layers: tuple[int, ...] | None = None,
                       columns: list[np.ndarray] | None = None) -> list[np.ndarray]:
    """The activations [n_images, n_l] of hidden layers `layers` (default: those laid out by default,
    chosen_layers) for uint8 images [n, H, W]; a conv channel's averaged over the image; of layer l only
    the neurons columns[l] when given (a wide layer's sample, without holding all of its activations)."""
    layers = chosen_layers(network) if layers is None else layers
    kept = [[] for _ in layers]
    for _, _, hidden in batches_of(network.params(), network, images):
        for l, h in enumerate(layers):
            kept[l].append(hidden[h] if columns is None else hidden[h][:, columns[l]])
    return [np.concatenate(k) for k in kept]


def probe(network: Network, images: np.ndarray, layers: tuple[int, ...] | None = None
          ) -> tuple[np.ndarray, np.ndarray]:
    """(activations [n, N] of every laid-out neuron, in order; class probabilities [n, C]) for uint8
    images [n, H, W]."""
    layers = chosen_layers(network) if layers is None else layers
    logits, hidden = forward_batches(network.params(), network, images)
    logits = logits.astype(np.float64) - logits.max(1, keepdims=True)
    p = np.exp(logits)
    return np.concatenate([hidden[h] for h in layers], axis=1), p / p.sum(1, keepdims=True)


def top_examples(network: Network, images: np.ndarray, k: int, layers: tuple[int, ...] | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(top, bottom) [N, k] int32: for every laid-out neuron, the indices of the k images that activate
    it most (most first) and least (least first), ties to the lower index; the k best so far merged
    with each batch of images' activations (jitted), so no [n_images, N] matrix is held."""
    layers = chosen_layers(network) if layers is None else layers
    k = min(k, len(images))
    best: dict[int, tuple] = {}  # per block of TOP_NEURONS neurons: (top values, their images, the same for -values)
    for start, _, hidden in batches_of(network.params(), network, images):
        batch = hidden[layers[0]] if len(layers) == 1 else np.concatenate([hidden[h] for h in layers], axis=1)
        for first in range(0, batch.shape[1], TOP_NEURONS):
            best[first] = _merge(best.get(first), batch[:, first:first + TOP_NEURONS].T, start, k)
    if not best:
        return np.zeros((0, k), np.int32), np.zeros((0, k), np.int32)
    return tuple(np.concatenate([np.asarray(b[i]) for b in best.values()]).astype(np.int32) for i in (1, 3))


TOP_NEURONS = 4096  # neurons merged at a time: [4,096, 1,000 + k] values and indices, 33 MB each


@functools.partial(jax.jit, static_argnums=3)
def _merge(best: tuple | None, batch: jax.Array, start: int, k: int) -> tuple:
    """The k highest and k lowest of each row of the best so far (earlier, so lower, image indices
    first: lax.top_k keeps the first of equal values) and of this batch's [N, b] (images start..)."""
    index = jnp.broadcast_to(start + jnp.arange(batch.shape[1], dtype=jnp.int32), batch.shape)
    out = []
    for values, where in ((batch, 0), (-batch, 2)):
        if best is not None:
            values = jnp.concatenate([best[where], values], axis=1)
            indices = jnp.concatenate([best[where + 1], index], axis=1)
        else:
            indices = index
        top, at = jax.lax.top_k(values, min(k, values.shape[1]))
        out += [top, jnp.take_along_axis(indices, at, axis=1)]
    return tuple(out)


def downstream_products(weights: tuple[np.ndarray, ...]) -> list[np.ndarray]:
    """For each hidden layer l, W_{l+1} @ ... @ W_last: [n_l, C], the linear path to the logits."""
    hidden = len(weights) - 1
    out = [weights[-1]]
    for l in range(hidden - 2, -1, -1):
        out.insert(0, weights[l + 1] @ out[0])
    return out


def upstream_products(weights: tuple[np.ndarray, ...]) -> list[np.ndarray]:
    """For each hidden layer l, W_0 @ ... @ W_l: [H * W, n_l], the linear path from the pixels."""
    out = [weights[0]]
    for w in weights[1:-1]:
        out.append(out[-1] @ w)
    return out


def mean_jacobian(params: list[dict], network: Network, images: np.ndarray, hidden: int) -> np.ndarray:
    """[n_h, C]: the mean over `images` of d logits / d (a neuron of hidden layer `hidden`). For a conv
    channel, the derivative with respect to its spatially summed activation: the logits' change when
    the sum grows by one, spread evenly over the channel's positions."""
    architecture = network.layer_list, network.activation, network.inputs
    total = sum(np.asarray(_jacobian_sum(params, flat_pixels(images[i:i + EVAL_BATCH]), *architecture, hidden),
                           np.float64) for i in range(0, len(images), EVAL_BATCH))
    return (total / len(images)).T.astype(np.float32)


@functools.partial(jax.jit, static_argnums=(2, 3, 4, 5))
def _jacobian_sum(params, x, layers, activation, inputs, hidden):
    """[C, n_h]: the sum over the batch of d logits / d (each neuron of layer `hidden`), as one shift
    shared by the batch (so one Jacobian of the summed logits, forward or reverse, whichever is shorter)."""
    _, maps = apply_layers(params, inputs.of_pixels(x), layers, activation, input_shape=inputs.shape)
    a = maps[hidden]

    def summed_logits(t):
        shift = t[None, :, None, None] / (a.shape[2] * a.shape[3]) if a.ndim == 4 else t[None, :]
        return apply_above(params, a + shift, layers, activation, hidden).sum(0)

    n, n_classes = a.shape[1], params[-1]["b"].shape[0]
    return (jax.jacfwd if n < n_classes else jax.jacrev)(summed_logits)(jnp.zeros(n, jnp.float32))


def influence_images(images: np.ndarray, kind: str) -> np.ndarray:
    """The test images a layer's Jacobian influence is averaged over: all of them for a dense layer,
    INFLUENCE_IMAGES evenly spaced ones for a conv layer (each costs a pass through the layers above)."""
    if kind == "conv" and len(images) > INFLUENCE_IMAGES:
        return images[np.linspace(0, len(images) - 1, INFLUENCE_IMAGES).astype(int)]
    return images


def output_vectors(params: list[dict], network: Network, images: np.ndarray, layers: tuple[int, ...],
                   influence: str) -> list[np.ndarray]:
    """Each laid-out layer's output vectors [n_l, C] for the network's kinds and layer list, with the
    parameters `params` (the network's, or an untrained network's): a dense layer's by the product of
    the weights above it (influence "weights") or the mean Jacobian; a conv channel's always by the
    mean Jacobian (a product of weights has no meaning for a convolution)."""
    kinds = network.hidden_kinds
    dense = [h for h in layers if kinds[h] == "dense"]
    products = {}
    if influence == "weights" and dense:  # the dense layers are the top ones: their weights' products
        first = min(dense)
        products = dict(zip(range(first, len(kinds)),
                            downstream_products(tuple(np.asarray(p["w"]) for p in params[first:]))))
    return [products[h] if h in products else
            mean_jacobian(params, network, influence_images(images, kinds[h]), h)
            for h in layers]


def influence_name(network: Network, layers: tuple[int, ...], influence: str) -> str:
    kinds = {network.hidden_kinds[h] for h in layers}
    if influence == "weights" and "conv" in kinds:
        return "jacobian" if kinds == {"conv"} else "jacobian (conv), weights (dense)"
    return influence


def class_sums(activations: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """[n_classes, n_neurons] float64: the activations [n, n_neurons] summed per class of labels [n],
    EVAL_BATCH rows at a time in float32 (a one-hot matrix product), the batches added in float64."""
    sums = np.zeros((n_classes, activations.shape[1]))
    for i in range(0, len(labels), EVAL_BATCH):
        one_hot = np.eye(n_classes, dtype=np.float32)[labels[i:i + EVAL_BATCH]]
        sums += one_hot.T @ np.asarray(activations[i:i + EVAL_BATCH], np.float32)
    return sums


def means_of(sums: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """[n_neurons, n_classes] class means from class_sums (0 for a class with no images)."""
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    return (sums / np.maximum(counts, 1)[:, None]).T.astype(np.float32)


def class_means(activations: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Mean activation per class: [n_neurons, n_classes] (0 for a class with no images)."""
    return means_of(class_sums(activations, labels, n_classes), labels, n_classes)


def layer_class_means(network: Network, test: Split, layers: tuple[int, ...]) -> tuple[list[np.ndarray],
                                                                                       list[np.ndarray]]:
    """(class means [n_l, C], standard deviations over the images [n_l]) of each of hidden layers
    `layers`, one batch of test images at a time: a 100,000-neuron layer's 10,000 x 100,000
    activations (4 GB) are never held."""
    n_classes = network.sizes[-1]
    sums = [0.0] * len(layers)
    squares = [0.0] * len(layers)
    for start, logits, hidden in batches_of(network.params(), network, test.images):
        labels = test.labels[start:start + len(logits)]
        for l, h in enumerate(layers):
            sums[l] = sums[l] + class_sums(hidden[h], labels, n_classes)
            squares[l] = squares[l] + np.einsum("ij,ij->j", hidden[h], hidden[h])  # no [b, n] float64 copy
    n = len(test.labels)
    means = [means_of(s, test.labels, n_classes) for s in sums]
    sds = [np.sqrt(np.maximum(q / n - (s.sum(0) / n) ** 2, 0)).astype(np.float32) for s, q in zip(sums, squares)]
    return means, sds


def neuron_features(network: Network, test: Split, influence: str = "weights", layers: str = "dense",
                    visualise: bool = True) -> NeuronFeatures:
    """Features of every neuron of the hidden layers `layers` (layout.layers) lays out, measured on the
    test split `test`. A CNN's fields are feature visualisations (zero without `visualise`: the training
    timeline's snapshots need only the output vectors)."""
    hidden = chosen_layers(network, layers)
    means, sds = layer_class_means(network, test, hidden)
    vectors = output_vectors(network.params(), network, test.images, hidden, influence)
    class_activation = np.concatenate(means)
    if not network.has_conv:
        upstream = upstream_products(network.weights)
        fields = network.inputs.as_images(np.concatenate([upstream[h].T for h in hidden]))
    elif visualise:
        fields = np.concatenate(feature_images(network, hidden, sds))
    else:
        fields = network.inputs.as_images(np.zeros((len(class_activation), network.inputs.n_pixels), np.float32))
    sizes = [len(m) for m in means]
    output = np.concatenate(vectors).astype(np.float32)
    return NeuronFeatures(
        output_vectors=output,
        dominant=output.argmax(1),
        activation_dominant=class_activation.argmax(1),
        class_activation=class_activation,
        receptive_fields=fields.astype(np.float32),
        layer=np.repeat(np.arange(len(sizes)), sizes),
        index=np.concatenate([np.arange(n) for n in sizes]),
        class_names=network.class_names,
        influence=influence_name(network, hidden, influence),
        hidden_layers=hidden,
        layer_kinds=tuple(network.hidden_kinds[h] for h in hidden),
        field_kind="feature visualisation" if network.has_conv else "weights",
    )
