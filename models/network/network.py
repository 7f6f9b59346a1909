"""The Network every later stage reads: its layer sizes, weights and biases as numpy arrays, where it
was trained, its training curves and weight snapshots. Trained by models.network.train or read from
a network.npz by models.network.store."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from layout.core.config import DataConfig
from layout.core.errors import ConfigError
from layout.core.layers import INPUT_SHAPE, Conv, Dense, Layer, hidden_kinds


@dataclass(frozen=True)
class Inputs:
    """How images become the network's inputs: pixels (uint8, 0..255) / 255 * gain + offset, each image
    of `shape` (C, H, W) flattened in (C, H, W) order. gain and offset hold one figure for every channel,
    or one per channel (PyTorch's per-channel Normalize). The default, MNIST's 1 x 28 x 28 in 0..1, is
    what this tool trains on; data.scale / data.mean / data.std and the data's images give another
    (inputs_of)."""

    gain: tuple[float, ...] = (1.0,)
    offset: tuple[float, ...] = (0.0,)
    shape: tuple[int, int, int] = INPUT_SHAPE

    def scaling(self) -> str:
        """How pixels are scaled, in words: 'pixels / 255 x 3.246 - 0.4242' (one per channel if they differ)."""
        return ", ".join(f"pixels / 255 x {g:.4g} {'-' if o < 0 else '+'} {abs(o):.4g}"
                         for g, o in zip(self.gain, self.offset))

    @property
    def n_pixels(self) -> int:
        return self.shape[0] * self.shape[1] * self.shape[2]

    def as_images(self, x: np.ndarray) -> np.ndarray:
        """Values over the inputs [N, C * H * W], in (C, H, W) order (a neuron's input weights, say), as
        images: [N, H, W] for one channel, [N, H, W, C] (channels last, as pictures are) for more."""
        images = np.asarray(x).reshape(len(x), *self.shape)
        return images[:, 0] if self.shape[0] == 1 else images.transpose(0, 2, 3, 1)

    def of_pixels(self, pixels):
        """Network inputs (float32) for uint8 pixels, a numpy or JAX array of any shape."""
        return self.of_unit(pixels.astype(np.float32) / 255.0)

    def of_unit(self, images):
        """Network inputs for images scaled to 0..1 (those that feature visualisation ascends)."""
        if set(self.gain) == {1.0} and set(self.offset) == {0.0}:
            return images
        if len(self.gain) == 1:
            return images * np.float32(self.gain[0]) + np.float32(self.offset[0])
        by_channel = images.reshape(*images.shape[:-1], len(self.gain), -1)  # [..., C, H * W]
        gain, offset = (np.asarray(v, np.float32)[:, None] for v in (self.gain, self.offset))
        return (by_channel * gain + offset).reshape(images.shape)


def inputs_of(data: DataConfig, input_shape: tuple[int, int, int] = INPUT_SHAPE) -> Inputs:
    """(pixels * (1/255 for unit, 1 for none) - mean) / std, as gain and offset on 0..1 images of
    input_shape (C, H, W); data.mean and data.std hold one figure, or one per channel."""
    unit = 1.0 if data.scale == "unit" else 255.0
    channels = input_shape[0]
    for name, values in (("mean", data.mean), ("std", data.std)):
        if len(values) not in (1, channels):
            raise ConfigError(f"data.{name} = {list(values)} gives {len(values)} figures, but the images have "
                              f"{channels} channel{'s' * (channels > 1)}: give one figure, or one per channel")
    n = max(len(data.mean), len(data.std))
    mean, std = (values * (n // len(values)) for values in (data.mean, data.std))
    offsets = tuple(0.0 - m / s for m, s in zip(mean, std))  # 0.0 - : never -0.0
    return Inputs(gain=tuple(unit / s for s in std), offset=offsets, shape=tuple(map(int, input_shape)))


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

