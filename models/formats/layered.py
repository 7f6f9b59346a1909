"""A network read from another framework's file, as this tool runs it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from layout.core.layers import Dense, Layer, widths


@dataclass(frozen=True)
class Layered:
    """Hidden layers (as model.layers lists them; the output layer implied), the weights of every layer
    with weights (conv [out, in, k, k], dense [in, out]) and their biases, the output layer's last, and
    the one activation of the hidden layers."""

    layers: tuple[Layer, ...]
    weights: tuple[np.ndarray, ...]
    biases: tuple[np.ndarray, ...]
    activation: str

    @property
    def is_mlp(self) -> bool:
        return all(isinstance(layer, Dense) for layer in self.layers)

    def sizes(self, n_inputs: int) -> tuple[int, ...]:
        """Network.sizes: the inputs, each hidden layer's width (a conv layer's channels), the outputs."""
        return (n_inputs, *widths(self.layers), self.biases[-1].shape[0])
