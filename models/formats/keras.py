"""A Keras Sequential model read as data, with h5py alone (never keras.models.load_model): a `.keras`
archive (config.json for the layers, model.weights.h5 for their weights) or a legacy `.h5` file
(the model_config attribute and the model_weights group).

Dense, Conv2D, MaxPooling2D, AveragePooling2D, Flatten, Activation, InputLayer and Dropout are read;
each layer's activation (relu, sigmoid, tanh; a final softmax dropped) as Keras applies it. Keras
keeps images as (H, W, C): its kernels [kh, kw, in, out] are put in this tool's [out, in, kh, kw]
and the first dense layer's rows after a flatten in (C, H, W) order. Anything else: one line naming
the layer, its class and what is read."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np

from layout.core.errors import UserError
from layout.core.layers import Conv, Dense, Flatten, Pool
from models.formats.layered import Layered
from models.formats.onnx_graph import Data, Reading, added, finish
from models.formats.weights import KERAS, from_stored

try:
    import h5py
except ImportError:  # the [formats] extra is not installed: read_keras says so when it is needed
    h5py = None

CONFIG_CAP = 16 * 2**20  # bytes: a config.json longer than this is refused unread
WEIGHTS_CAP = 4 * 2**30  # bytes: a model.weights.h5 larger than this is refused unread
LAYERS = ("InputLayer", "Conv2D", "MaxPooling2D", "AveragePooling2D", "Flatten", "Dense", "Activation", "Dropout")
ACTIVATIONS = ("relu", "sigmoid", "tanh")


def read_keras(path: str | Path, kind: str, image_shape: tuple[int, ...], n_classes: int) -> Layered:
    """The network of a `.keras` archive (kind "keras") or a legacy `.h5` file (kind "h5"), for images of
    `image_shape` ((C, H, W)) and n_classes outputs."""
    if h5py is None:
        raise UserError(f"{path} is a Keras file, and reading it needs the h5py package: pip install -e \".[formats]\"")
    try:
        if kind == "keras":
            with zipfile.ZipFile(path) as archive:
                config = json_of(member(archive, "config.json", CONFIG_CAP, path), path)
                weights = io.BytesIO(member(archive, "model.weights.h5", WEIGHTS_CAP, path))
            with h5py.File(weights, "r") as f:
                return translate(config, lambda name: keras3_weights(f, name, path), path, image_shape, n_classes)
        with h5py.File(path, "r") as f:
            if "model_config" not in f.attrs or "model_weights" not in f:
                raise UserError(f"{path} is an HDF5 file but not a Keras model saved whole (model.save(\"model.h5\")): "
                                "it lacks the model_config attribute or the model_weights group")
            config = json_of(f.attrs["model_config"], path)
            return translate(config, lambda name: legacy_weights(f["model_weights"], name, path), path, image_shape,
                             n_classes)
    except (OSError, RuntimeError, zipfile.BadZipFile, KeyError, ValueError, TypeError) as e:  # h5py: the first two
        why = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise UserError(f"{path} is not an intact Keras file ({why}): save it again with model.save") from None


def member(archive: zipfile.ZipFile, name: str, cap: int, path: str | Path) -> bytes:
    """A member of the archive, its size checked before it is read."""
    info = archive.getinfo(name)
    if info.file_size > cap:
        raise UserError(f"{path}: its {name} claims {info.file_size:,} bytes, over the {cap:,} read")
    return archive.read(info)


def json_of(text, path: str | Path) -> dict:
    config = json.loads(text.decode() if isinstance(text, bytes) else str(text))
    if not isinstance(config, dict):
        raise UserError(f"{path}: its model config is not a JSON object")
    return config


def translate(config: dict, weights_of, path: str | Path, image_shape: tuple[int, ...], n_classes: int) -> Layered:
    """The Sequential model's layers, in order, through the same reading an ONNX graph gets."""
    layers = config.get("config", {}).get("layers") if isinstance(config.get("config"), dict) else None
    if config.get("class_name") != "Sequential" or not isinstance(layers, list):
        raise UserError(f"{path} holds a Keras {config.get('class_name', 'model')!s:.40}, not a Sequential model: only "
                        "keras.Sequential([...]) models are read (export others to ONNX)")
    reading, x, flat_from = Reading(str(path)), None, None
    for layer in layers:
        kind, cfg = described(layer, path)
        name = str(cfg.get("name", "(unnamed)"))[:60]
        if x is None:
            x = Data(start_shape(kind, cfg, image_shape, path))
            if kind == "InputLayer":
                continue
        if x.final:
            raise UserError(f"{path}: layer {name} ({kind}) follows the softmax: it must be the last activation")
        if kind not in LAYERS:
            raise UserError(f"{path}: layer {name} ({kind}) is not supported here: the layers read are "
                            f"{', '.join(LAYERS)}")
        if kind == "Flatten":
            flat_from = x.shape if len(x.shape) == 3 and channels_last(cfg) else None
            if len(x.shape) > 1:
                reading.layers.append(Flatten())
            x = Data((int(np.prod(x.shape)),), x.linear)
        elif kind in ("MaxPooling2D", "AveragePooling2D"):
            x = pooled(kind, cfg, x, reading, name)
        elif kind == "Activation":
            x = activated(cfg.get("activation"), x, reading, name)
        elif kind in ("Conv2D", "Dense"):
            if x.linear:
                raise UserError(f"{path}: layer {name} ({kind}) follows a layer with no activation: every layer but "
                                f"the last needs one ({', '.join(ACTIVATIONS)})")
            kernel, bias = weights_of(name)
            x = convolved(cfg, kernel, bias, x, reading, name) if kind == "Conv2D" else dense(
                kernel, bias, x, reading, name, flat_from)
            flat_from = None
            x = activated(cfg.get("activation", "linear"), x, reading, name)
    if x is None:
        raise UserError(f"{path} holds a Sequential model without layers: there is no network to lay out")
    return finish(reading, x, n_classes)


def described(layer, path: str | Path) -> tuple[str, dict]:
    if not (isinstance(layer, dict) and isinstance(layer.get("class_name"), str)
            and isinstance(layer.get("config", {}), dict)):
        raise UserError(f"{path}: its model config lists a layer that is not a class name and a config")
    return layer["class_name"], layer.get("config", {})


def start_shape(kind: str, cfg: dict, image_shape: tuple[int, ...], path: str | Path) -> tuple[int, ...]:
    """The images' shape per example ((C, H, W) or (n,)) at the model's input, from Keras' (H, W, C)."""
    shape = cfg.get("batch_shape") or cfg.get("batch_input_shape")
    if not isinstance(shape, list) or len(shape) < 2:
        raise UserError(f"{path}: its first layer ({kind}) gives no input shape: build the model with "
                        "keras.Input(shape=(28, 28, 1)) first")
    c, h, w = image_shape
    fits = {(h, w, c): image_shape, (c * h * w,): (c * h * w,), **({(h, w): image_shape} if c == 1 else {})}
    if tuple(shape[1:]) not in fits:
        raise UserError(f"{path} takes inputs of shape {shape[1:]}, but the data's images are {h} x {w} x {c}: "
                        f"build the model with keras.Input(shape=({h}, {w}, {c})) or ({c * h * w},)")
    return fits[tuple(shape[1:])]


def channels_last(cfg: dict) -> bool:
    return cfg.get("data_format", "channels_last") in ("channels_last", None)


def pair(value, name: str, what: str, path: str | Path) -> int:
    """A Keras size given as n or [n, n]: n; anything else refused."""
    values = value if isinstance(value, list) else [value, value]
    if len(values) != 2 or values[0] != values[1] or not isinstance(values[0], int):
        raise UserError(f"{path}: layer {name} has {what} {value}: only square ones are read")
    return values[0]


def pooled(kind: str, cfg: dict, x: Data, reading: Reading, name: str) -> Data:
    size = pair(cfg.get("pool_size", 2), name, "pool_size", reading.path)
    strides = cfg.get("strides") or size
    overlapping = pair(strides, name, "strides", reading.path) != size
    if len(x.shape) != 3 or overlapping or cfg.get("padding", "valid") != "valid":
        raise UserError(f"{reading.path}: layer {name} ({kind}) pools {size}x{size} with strides {strides}, padding "
                        f"{cfg.get('padding')}: only windows that do not overlap (strides = pool_size) over images, "
                        "padding valid, are read")
    if not channels_last(cfg):
        raise UserError(f"{reading.path}: layer {name} ({kind}) is channels_first: only channels_last models are read")
    layer = Pool("max" if kind == "MaxPooling2D" else "avg", size)
    reading.layers.append(layer)
    return Data(layer.shape_after(x.shape), x.linear)


def activated(activation, x: Data, reading: Reading, name: str) -> Data:
    """The data after a layer's activation: linear (none yet), relu/sigmoid/tanh, or a final softmax."""
    if activation in (None, "linear"):
        return x
    if activation == "softmax":
        return Data(x.shape, x.linear, "Softmax")
    if activation not in ACTIVATIONS or not x.linear:
        why = ("follows no conv or dense layer directly" if activation in ACTIVATIONS
               else f"is not one of {', '.join(ACTIVATIONS)} (or softmax last)")
        raise UserError(f"{reading.path}: layer {name} has the activation {str(activation)[:40]}, which {why}")
    reading.activations.append((activation, name))
    return Data(x.shape)


def convolved(cfg: dict, kernel: np.ndarray, bias: np.ndarray, x: Data, reading: Reading, name: str) -> Data:
    k = pair(cfg.get("kernel_size"), name, "kernel_size", reading.path)
    stride = pair(cfg.get("strides", 1), name, "strides", reading.path)
    padding = cfg.get("padding", "valid")
    if (len(x.shape) != 3 or not channels_last(cfg) or pair(cfg.get("dilation_rate", 1), name, "dilation_rate",
                                                             reading.path) != 1 or cfg.get("groups", 1) != 1
            or padding not in ("valid", "same") or padding == "same" and (stride != 1 or k % 2 == 0)):
        raise UserError(f"{reading.path}: layer {name} (Conv2D) has strides {stride}, padding {padding}, dilation "
                        f"{cfg.get('dilation_rate', 1)}, groups {cfg.get('groups', 1)}: only channels_last, "
                        "ungrouped, undilated convolutions of images, padding valid (or same with stride 1 and an odd "
                        "kernel) are read")
    w = from_stored(kernel, KERAS, None)
    if w.shape[1:] != (x.shape[0], k, k):
        raise UserError(f"{reading.path}: layer {name}'s kernel is {list(kernel.shape)}, not [{k}, {k}, {x.shape[0]}, "
                        "filters]")
    layer = Conv(w.shape[0], k, stride, (k - 1) // 2 if padding == "same" else 0)
    return added(reading, layer, w, checked_bias(bias, w.shape[0], name, reading), layer.shape_after(x.shape))


def dense(kernel: np.ndarray, bias: np.ndarray, x: Data, reading: Reading, name: str,
          flat_from: tuple[int, ...] | None) -> Data:
    if len(x.shape) != 1 or kernel.ndim != 2 or kernel.shape[0] != x.shape[0]:
        raise UserError(f"{reading.path}: layer {name} (Dense) multiplies data of shape {list(x.shape)} by a kernel "
                        f"of shape {list(kernel.shape)}: flatten the images first")
    w = from_stored(kernel, KERAS, flat_from)
    return added(reading, Dense(w.shape[1]), w, checked_bias(bias, w.shape[1], name, reading), (w.shape[1],))


def checked_bias(bias: np.ndarray | None, n: int, name: str, reading: Reading) -> np.ndarray:
    if bias is None:
        return np.zeros(n, np.float32)
    if bias.shape != (n,):
        raise UserError(f"{reading.path}: layer {name}'s bias is {list(bias.shape)}, not [{n}]")
    return bias


def keras3_weights(f, name: str, path: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
    """(kernel, bias or None) of layer `name` in a .keras archive's model.weights.h5: the arrays 0, 1 of
    the layers/<group>/vars whose `name` attribute is the layer's (Keras numbers the groups by class
    within the model, and the layers by class within the session)."""
    layers = hard_group(f, "layers", path)
    for group in layers:
        held = layers[group] if isinstance(layers.get(group, getlink=True), h5py.HardLink) else None
        if not isinstance(held, h5py.Group) or not isinstance(held.get("vars", getlink=True), h5py.HardLink):
            continue  # no weights of its own, or kept elsewhere: never the layer looked for
        found = hard_group(held, "vars", path)
        if text(found.attrs.get("name", group)) == name:
            return kernel_and_bias([dataset(found, key, path) for key in sorted(found, key=int)], name, path)
    raise UserError(f"{path}: model.weights.h5 holds no weights for layer {name}")


def legacy_weights(group, name: str, path: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
    """(kernel, bias or None) of layer `name` in a legacy .h5's model_weights: the arrays its weight_names
    attribute lists, the kernel first."""
    layer = hard_group(group, name, path)
    names = [text(n) for n in layer.attrs.get("weight_names", [])]
    return kernel_and_bias([dataset(layer, n, path) for n in names], name, path)


def text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def kernel_and_bias(arrays: list[np.ndarray], name: str, path: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
    if len(arrays) not in (1, 2) or arrays[0].ndim not in (2, 4) or len(arrays) == 2 and arrays[1].ndim != 1:
        raise UserError(f"{path}: layer {name} stores {len(arrays)} arrays of shapes "
                        f"{[list(a.shape) for a in arrays]}, not a kernel and a bias")
    return arrays[0].astype(np.float32), arrays[1].astype(np.float32) if len(arrays) == 2 else None


def hard_group(parent, name: str, path: str | Path):
    """A group inside the file itself (a link to another file is never followed)."""
    node = parent
    for part in name.split("/"):
        if not isinstance(node.get(part, getlink=True), h5py.HardLink):
            raise UserError(f"{path}: the weights of layer {name} are missing (or kept in another file, never read)")
        node = node[part]
    if not isinstance(node, h5py.Group):
        raise UserError(f"{path}: the weights of layer {name} are not a group of arrays")
    return node


def dataset(group, name: str, path: str | Path) -> np.ndarray:
    """A floating-point array stored in this file: no link to another file, no external or virtual data."""
    *parents, last = name.split("/")
    if parents:
        group = hard_group(group, "/".join(parents), path)
    node = group[last] if isinstance(group.get(last, getlink=True), h5py.HardLink) else None
    if not isinstance(node, h5py.Dataset) or node.external or node.is_virtual:
        raise UserError(f"{path}: the array {group.name}/{name} is missing, or kept in another file (never read)")
    if not np.issubdtype(node.dtype, np.floating):
        raise UserError(f"{path}: the array {group.name}/{name} is {node.dtype}, not floating point")
    return np.asarray(node[()])
