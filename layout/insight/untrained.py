"""A CNN's untrained nulls: the same layer list at its random initialisation (Glorot or He uniform over
each layer's fans, zero biases, as training starts), its neurons measured exactly as the trained
network's are.

- Conv channels' output vectors: their Jacobian influence on the logits, averaged over the same
  INFLUENCE_IMAGES test images as the trained network's (layout/engine/features.py). Each null network
  costs a pass through the layers above per image, so a conv layer gets at most CONV_NULLS of them
  (p can still reach 0.01); a dense layer's null is the MLP's (layout/insight/structure.untrained).
- Class means of every laid-out layer's activations (the selectivity null), on every test image.

Null network i is drawn from its own generator, seeded by (seed, i), so that the vector test and the
null layouts share their networks, and a smaller count takes the first of a larger one.
"""

from __future__ import annotations

import numpy as np

from layout.engine.features import class_means, forward_batches, influence_images, mean_jacobian
from models.network.cnn import init_limit, weight_shapes
from models.network.network import Network

CONV_NULLS = 99


def random_params(network: Network, rng: np.random.Generator) -> list[dict]:
    """Initial parameters of the network's layer list drawn from `rng`: uniform in +/- init_limit, zero biases."""
    params = []
    for w, b in weight_shapes(network.layer_list, network.sizes[-1], network.inputs.shape):
        limit = init_limit(w, network.activation)
        params.append({"w": rng.uniform(-limit, limit, w).astype(np.float32), "b": np.zeros(b, np.float32)})
    return params


def null_params(network: Network, seed: int, i: int) -> list[dict]:
    return random_params(network, np.random.default_rng([seed, 5, i]))


def conv_influence_nulls(network: Network, hidden: int, images: np.ndarray, count: int, seed: int) -> np.ndarray:
    """[min(count, CONV_NULLS), n_h, C]: conv layer `hidden`'s Jacobian influence in untrained networks."""
    sample = influence_images(images, "conv")
    return np.stack([mean_jacobian(null_params(network, seed, i), network, sample, hidden)
                     for i in range(min(count, CONV_NULLS))])


def untrained_layer_class_means(network: Network, hidden_layers: tuple[int, ...], images: np.ndarray,
                                labels: np.ndarray, count: int, seed: int) -> list[np.ndarray]:
    """For each of `hidden_layers`, [count, n_l, C]: the class means of `count` untrained networks."""
    out: list[list[np.ndarray]] = [[] for _ in hidden_layers]
    for i in range(count):
        _, hidden = forward_batches(null_params(network, seed, i), network, images)
        for column, h in zip(out, hidden_layers):
            column.append(class_means(hidden[h], labels, network.sizes[-1]))
    return [np.stack(column) for column in out]
