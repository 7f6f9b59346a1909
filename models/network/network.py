"""The Network every later stage reads: its layer sizes, weights and biases as numpy arrays, where it
was trained, its training curves and weight snapshots. Trained by models.network.train or read from
a network.npz by models.network.store."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from layout.core.config import DataConfig
from layout.core.layers import INPUT_SHAPE, Conv, Dense, Layer, hidden_kinds


@dataclass(frozen=True)
class Inputs:
    """How images become the network's inputs: pixels (uint8, 0..255) / 255 * gain + offset, each image
    of `shape` (C, H, W) flattened. The default, MNIST's 1 x 28 x 28 in 0..1, is what this tool trains on;
    data.scale / data.mean / data.std and the data's image size give another (inputs_of)."""

    gain: float = 1.0
    offset: float = 0.0
    shape: tuple[int, int, int] = INPUT_SHAPE

    @property
    def n_pixels(self) -> int:
        return self.shape[0] * self.shape[1] * self.shape[2]

    def of_pixels(self, pixels):
        """Network inputs (float32) for uint8 pixels, a numpy or JAX array of any shape."""
        return self.of_unit(pixels.astype(np.float32) / 255.0)

    def of_unit(self, images):
        """Network inputs for images scaled to 0..1 (those that feature visualisation ascends)."""
        if (self.gain, self.offset) == (1.0, 0.0):
            return images
        return images * np.float32(self.gain) + np.float32(self.offset)


def inputs_of(data: DataConfig, image_shape: tuple[int, int] = INPUT_SHAPE[1:]) -> Inputs:
    """(pixels * (1/255 for unit, 1 for none) - mean) / std, as gain and offset on 0..1 images of
    image_shape (H, W)."""
    unit = 1.0 if data.scale == "unit" else 255.0
    return Inputs(gain=unit / data.std, offset=0.0 - data.mean / data.std,  # 0.0 -: never -0.0
                  shape=(1, *map(int, image_shape)))


@dataclass(frozen=True)
class History:
    """Per-epoch curves, each [n_epochs]."""

    epoch: np.ndarray
    train_loss: np.ndarray
    test_loss: np.ndarray
    test_accuracy: np.ndarray


@dataclass(frozen=True)
class Snapshots:
    """Weights during training for the training animation; S snapshots, the first the initialisation.

    step [S] (optimizer steps taken), epoch [S] (step / steps per epoch), test_accuracy [S],
    weights[l] [S, n_in, n_out], biases[l] [S, n_out].
    """

    step: np.ndarray
    epoch: np.ndarray
    test_accuracy: np.ndarray
    weights: tuple[np.ndarray, ...]
    biases: tuple[np.ndarray, ...]


@dataclass(frozen=True)
class Network:
    """A trained MLP. weights[l] [sizes[l], sizes[l+1]], biases[l] [sizes[l+1]] (numpy float32).

    weights[-1][j] is hidden neuron j's output-weight vector. classes[k] is the original label of
    output k and class_names[k] its name.
    """

    sizes: tuple[int, ...]
    activation: str
    weights: tuple[np.ndarray, ...]
    biases: tuple[np.ndarray, ...]
    dataset: str
    classes: tuple[int, ...]
    class_names: tuple[str, ...]
    history: History
    snapshots: Snapshots
    test_accuracy: float
    train_accuracy: float
    train_seconds: float
    epochs: int
    layers: tuple | None = None  # model.layers for a CNN (layout/core/layers.py); None: the MLP of `sizes`
    inputs: Inputs = Inputs()  # how its input images were scaled when it was trained

    @property
    def layer_list(self) -> tuple[Layer, ...]:
        """The hidden layers as model.layers describes them (an MLP's as dense layers)."""
        return self.layers if self.layers is not None else tuple(Dense(n) for n in self.sizes[1:-1])

    @property
    def hidden_kinds(self) -> tuple[str, ...]:
        """'conv' or 'dense' for each hidden layer (each layer with weights but the output layer)."""
        return hidden_kinds(self.layer_list)

    @property
    def has_conv(self) -> bool:
        return any(isinstance(layer, Conv) for layer in self.layer_list)

    def params(self) -> list[dict]:
        """The weights as models.network.cnn's parameter list: [{"w", "b"}, ...], the output layer last."""
        return [{"w": w, "b": b} for w, b in zip(self.weights, self.biases)]

    @property
    def n_params(self) -> int:
        return sum(w.size + b.size for w, b in zip(self.weights, self.biases))

