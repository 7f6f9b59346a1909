"""`model.layers`: a network as an ordered list of layers, read from a config and checked before any
training.

    layers:
      - conv: {channels: 6, kernel: 5, padding: 2}   # stride 1 and padding 0 unless given
      - pool: {kind: max, size: 2}
      - flatten
      - dense: {units: 120}

The output layer (a dense layer with one unit per class) is implied. Every layer's output shape is
worked out from the input's (MNIST's 1 x 28 x 28 when the config reads MNIST or Fashion-MNIST, else the
data's own, checked before training), so a list whose images shrink to nothing, a conv or pool after
flatten, or a dense layer on images that were never flattened is refused with the layer and its position.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Union

from layout.core.config_values import excerpt
from layout.core.errors import ConfigError

INPUT_SHAPE = (1, 28, 28)  # channels, height, width of an MNIST image
MAX_SIDE = 512  # pixels: the largest image side a dataset may have (models/data/datasets.py)
POOL_KINDS = ("max", "avg")
MAX_UNITS = 100_000


@dataclass(frozen=True)
class Conv:
    channels: int
    kernel: int
    stride: int = 1
    padding: int = 0

    def plain(self) -> dict:
        return {"conv": {"channels": self.channels, "kernel": self.kernel, "stride": self.stride,
                         "padding": self.padding}}

    def shape_after(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        c, h, w = shape
        return (self.channels, *((n + 2 * self.padding - self.kernel) // self.stride + 1 for n in (h, w)))


@dataclass(frozen=True)
class Pool:
    kind: str
    size: int

    def plain(self) -> dict:
        return {"pool": {"kind": self.kind, "size": self.size}}

    def shape_after(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        c, h, w = shape
        return (c, h // self.size, w // self.size)


@dataclass(frozen=True)
class Flatten:
    def plain(self) -> str:
        return "flatten"

    def shape_after(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return (math.prod(shape),)


@dataclass(frozen=True)
class Dense:
    units: int

    def plain(self) -> dict:
        return {"dense": {"units": self.units}}

    def shape_after(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return (self.units,)


Layer = Union[Conv, Pool, Flatten, Dense]
KINDS = {"conv": (Conv, {"channels": (1, MAX_UNITS), "kernel": (1, MAX_SIDE), "stride": (1, MAX_SIDE),
                          "padding": (0, MAX_SIDE)}, ("channels", "kernel")),
         "pool": (Pool, {"kind": POOL_KINDS, "size": (1, MAX_SIDE)}, ("kind", "size")),
         "dense": (Dense, {"units": (1, MAX_UNITS)}, ("units",))}
EXAMPLES = {"conv": "{conv: {channels: 6, kernel: 5, padding: 2}}", "pool": "{pool: {kind: max, size: 2}}",
            "dense": "{dense: {units: 120}}"}


def describe(layer: Layer) -> str:
    """'conv 6@5x5', 'max pool 2', 'flatten', 'dense 120'."""
    if isinstance(layer, Conv):
        return f"conv {layer.channels}@{layer.kernel}x{layer.kernel}"
    if isinstance(layer, Pool):
        return f"{layer.kind} pool {layer.size}"
    return "flatten" if isinstance(layer, Flatten) else f"dense {layer.units}"


def parse_layers(value: Any, path: str = "model.layers", input_shape: tuple[int, int, int] | None = None
                 ) -> tuple[Layer, ...]:
    """The layers a config lists, each checked, and the list checked as a whole (check_shapes) for images
    of input_shape; None: images of any size, the order of the layers only (check_order; the sizes are
    checked once the data's are known: for MNIST when the config is read, else before training)."""
    if not isinstance(value, (list, tuple)) or not value:
        raise ConfigError(f"{path} = {excerpt(value)} must be a non-empty list of layers, e.g. "
                          "[{conv: {channels: 6, kernel: 5}}, {pool: {kind: max, size: 2}}, flatten, {dense: "
                          "{units: 120}}]")
    layers = tuple(parse_layer(item, f"{path}, layer {i + 1}") for i, item in enumerate(value))
    if input_shape is None:
        check_order(layers, path)
    else:
        check_shapes(layers, path, input_shape)
    return layers


def parse_layer(item: Any, where: str) -> Layer:
    if item == "flatten":
        return Flatten()
    if not (isinstance(item, dict) and len(item) == 1):
        raise ConfigError(f"{where} = {excerpt(item)} is not a layer: write flatten, or one of {', '.join(KINDS)} "
                          "with its settings, e.g. {dense: {units: 120}}")
    (kind, settings), = item.items()
    if kind not in KINDS:
        raise ConfigError(f"{where} is a {excerpt(kind)} layer, which is not a kind this tool builds: use conv, "
                          "pool, flatten or dense")
    cls, rules, required = KINDS[kind]
    settings = {} if settings is None else settings
    if not isinstance(settings, dict):
        raise ConfigError(f"{where}: {kind}'s settings must be a mapping, e.g. {EXAMPLES[kind]}")
    for key in settings:
        if key not in rules:
            raise ConfigError(f"{where}: {kind} has no setting {excerpt(key)}: its settings are {', '.join(rules)}")
    for key in required:
        if key not in settings:
            raise ConfigError(f"{where}: {kind} needs {key}, e.g. {EXAMPLES[kind]}")
    for key, value in settings.items():
        rule = rules[key]
        if isinstance(rule[0], str):
            if value not in rule:
                raise ConfigError(f"{where}: {kind}.{key} = {excerpt(value)} is not valid: choose one of "
                                  f"{', '.join(rule)}")
        elif not (isinstance(value, int) and not isinstance(value, bool) and rule[0] <= value <= rule[1]):
            raise ConfigError(f"{where}: {kind}.{key} = {excerpt(value)} must be a whole number from {rule[0]} to "
                              f"{rule[1]}")
    return cls(**settings)


def check_shapes(layers: tuple[Layer, ...], path: str = "model.layers",
                 input_shape: tuple[int, int, int] = INPUT_SHAPE) -> tuple[tuple[int, ...], ...]:
    """Each layer's output shape from the input's (C, H, W); a list out of order (check_order) or a layer
    that shrinks the images to nothing is refused."""
    check_order(layers, path)
    shape, shapes = input_shape, []
    for i, layer in enumerate(layers):
        if isinstance(layer, Dense) and len(shape) == 3:
            shape = Flatten().shape_after(shape)  # an MLP on the pixels: the image flattens by itself
        after = layer.shape_after(shape)
        if len(after) == 3 and min(after[1:]) < 1:
            raise ConfigError(f"{path}, layer {i + 1} ({describe(layer)}) shrinks the {shape[1]}x{shape[2]} images to "
                              f"{after[1]}x{after[2]}: use a smaller kernel or pool, pad the convolutions, or fewer "
                              "layers")
        shape = after
        shapes.append(shape)
    return tuple(shapes)


def check_order(layers: tuple[Layer, ...], path: str = "model.layers") -> None:
    """Refuse a list whose layers cannot follow each other, whatever the images' size: a conv or pool after
    flatten, a dense layer on images that conv or pool layers made but never flattened, a list that ends
    with images."""
    flat = imaged = False
    for i, layer in enumerate(layers):
        where = f"{path}, layer {i + 1} ({describe(layer)})"
        if isinstance(layer, (Conv, Pool)) and flat:
            raise ConfigError(f"{where} comes after flatten, where there are no images left to "
                              f"{'convolve' if isinstance(layer, Conv) else 'pool'}: move it before flatten")
        if isinstance(layer, Dense) and imaged and not flat:
            raise ConfigError(f"{where} follows image layers that were never flattened: put flatten before it")
        flat = flat or isinstance(layer, (Dense, Flatten))
        imaged = imaged or isinstance(layer, (Conv, Pool))
    if not flat:
        raise ConfigError(f"{path} ends with images: end it with flatten (and dense layers), before the output layer")


def patch_values(layers: tuple[Layer, ...], input_shape: tuple[int, int, int] = INPUT_SHAPE) -> int:
    """Per image, the values of every conv layer's patches (in_channels * kernel**2 * out_h * out_w):
    the working memory of a convolution computed as one matrix product (models/network/cnn.py)."""
    total, before = 0, input_shape
    for layer, after in zip(layers, check_shapes(layers, input_shape=input_shape)):
        if isinstance(layer, Conv):
            total += before[0] * layer.kernel ** 2 * after[1] * after[2]
        before = after
    return total


def widths(layers: tuple[Layer, ...]) -> list[int]:
    """Each layer with weights' width: a conv layer's channels, a dense layer's units."""
    return [layer.channels if isinstance(layer, Conv) else layer.units for layer in layers
            if isinstance(layer, (Conv, Dense))]


def hidden_kinds(layers: tuple[Layer, ...]) -> tuple[str, ...]:
    """'conv' or 'dense' for each layer with weights (the hidden layers), in order."""
    return tuple("conv" if isinstance(layer, Conv) else "dense" for layer in layers if isinstance(layer, (Conv, Dense)))


def plain_layers(layers: tuple[Layer, ...] | None) -> list | None:
    return None if layers is None else [layer.plain() for layer in layers]
