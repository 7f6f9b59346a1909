"""An ONNX file read as data (onnx.load without external data, never run) and translated into this
tool's layer list by following its graph from the input: a small interpreter over an allowlist of
ops. Initializer names are never trusted; what counts is which node consumes which tensor.

The image data flows through Conv, MaxPool, AveragePool, Relu / Sigmoid / Tanh, Flatten, Reshape
(only one that flattens), Gemm or MatMul + Add, Identity and Dropout; a final Softmax or LogSoftmax is
dropped (it changes no prediction). Shape, Gather, Unsqueeze, Squeeze, Concat, Slice, Cast, Constant
and Transpose are evaluated while reading, on constants and on the data's shape only: the chains
PyTorch's exporters write to flatten a batch. Anything else is refused with the op, its node and
the supported list."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from layout.core.errors import UserError
from layout.core.layers import Conv, Dense, Flatten, Layer, Pool
from models.formats.layered import Layered

try:
    import onnx
    from google.protobuf.message import DecodeError
    from onnx import numpy_helper
except ImportError:  # the [formats] extra is not installed: read_onnx says so when it is needed
    onnx = numpy_helper = None
    DecodeError = ValueError

DATA_OPS = ("Conv", "MaxPool", "AveragePool", "Relu", "Sigmoid", "Tanh", "Flatten", "Reshape", "Gemm", "MatMul",
            "Add", "Identity", "Dropout", "Softmax", "LogSoftmax")
SHAPE_OPS = ("Shape", "Gather", "Unsqueeze", "Squeeze", "Concat", "Slice", "Cast", "Constant", "Transpose")
ACTIVATION_OPS = {"Relu": "relu", "Sigmoid": "sigmoid", "Tanh": "tanh"}
BATCH = 1_000_003  # stands for the batch size in the data's shape (no layer is this wide: MAX_UNITS)
SUPPORTED = ", ".join(DATA_OPS) + " (and, on shapes only, " + ", ".join(SHAPE_OPS) + ")"


@dataclass
class Data:
    """The image data at one point of the graph: its shape per image ((C, H, W) or (n,)), and whether
    the last weighted layer's activation is still to come (its output is still linear)."""

    shape: tuple[int, ...]
    linear: bool = False
    final: str = ""  # the Softmax or LogSoftmax applied: nothing may follow


@dataclass
class Reading:
    """The interpreter's state: the layers so far, their parameters, the activations seen."""

    path: str
    layers: list = field(default_factory=list)
    weights: list = field(default_factory=list)
    biases: list = field(default_factory=list)
    activations: list = field(default_factory=list)

    def refuse(self, node, why: str) -> UserError:
        return UserError(f"{self.path}: node {node.name or '(unnamed)'} ({node.op_type}) {why}")


def read_onnx(path: str | Path, image_shape: tuple[int, ...], n_classes: int) -> Layered:
    """The network an ONNX file holds, for images of `image_shape` ((C, H, W)) and n_classes outputs."""
    model = load_model(path)
    graph = model.graph
    reading = Reading(str(path))
    values: dict = {}
    for tensor in graph.initializer:
        values[tensor.name] = array_of(tensor, path)
    inputs = [i for i in graph.input if i.name not in values]
    if len(inputs) != 1:
        raise UserError(f"{path} has {len(inputs)} inputs ({', '.join(i.name for i in inputs)}): a network here "
                        "takes one, the images")
    values[inputs[0].name] = input_data(inputs[0], image_shape, path)
    for node in graph.node:  # an op outside the allowlist anywhere is named first, before any node is read
        if not supported(node):
            raise reading.refuse(node, f"is not supported here: the ops read are {SUPPORTED}")
    for node in graph.node:
        for name, value in zip(node.output, step(node, [value_of(values, name, node, reading) for name in node.input
                                                        ], reading)):
            values[name] = value
    if len(graph.output) != 1 or not isinstance(values.get(graph.output[0].name), Data):
        raise UserError(f"{path} must have one output, the logits computed from the images; it has "
                        f"{len(graph.output)} ({', '.join(o.name for o in graph.output)})")
    return finish(reading, values[graph.output[0].name], n_classes)


def load_model(path: str | Path):
    if onnx is None:
        raise UserError(f"{path} is an ONNX file, and reading it needs the onnx package: pip install -e \".[formats]\"")
    try:
        model = onnx.load(str(path), load_external_data=False)
        for tensor in model.graph.initializer:
            array_of(tensor, path)  # external data refused before the checker would look for its file
        onnx.checker.check_model(model)
    except (DecodeError, ValueError, OSError, RuntimeError, onnx.checker.ValidationError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{path} is not an intact ONNX file ({first[:200]}): export it again") from None
    return model


def array_of(tensor, path: str | Path) -> np.ndarray:
    """A tensor stored in the file, as numpy; one whose data lies in another file is refused unread."""
    if tensor.data_location == onnx.TensorProto.EXTERNAL or len(tensor.external_data):
        raise UserError(f"{path}: tensor {tensor.name} keeps its data in a separate file, which is never read: export "
                        "the model as one file (torch.onnx.export(..., external_data=False), or "
                        "onnx.save_model(model, path, save_as_external_data=False))")
    try:
        return numpy_helper.to_array(tensor)
    except (ValueError, TypeError) as e:
        raise UserError(f"{path} is not an intact ONNX file: tensor {tensor.name} cannot be read ({e})") from None


def input_data(value_info, image_shape: tuple[int, ...], path: str | Path) -> Data:
    """The graph's input, checked against the data: [batch, C, H, W], [batch, H, W] or [batch, C*H*W]."""
    dims = [d.dim_value if d.HasField("dim_value") else None for d in value_info.type.tensor_type.shape.dim]
    per_image = tuple(dims[1:])
    flat = (math.prod(image_shape),)
    fits = {image_shape: image_shape, flat: flat, **({image_shape[1:]: image_shape} if image_shape[0] == 1 else {})}
    if per_image not in fits:
        raise UserError(f"{path} takes inputs of shape {dims} (None: any), but the data's images are "
                        f"{' x '.join(map(str, image_shape))}: the network must take [batch, "
                        f"{', '.join(map(str, image_shape))}] or [batch, {math.prod(image_shape)}]")
    return Data(fits[per_image])


def value_of(values: dict, name: str, node, reading: Reading):
    if name == "":
        return None  # an optional input left out
    if name not in values:
        raise reading.refuse(node, f"reads tensor {name}, which nothing before it in the file defines: the file is "
                                   "damaged, or not in the order ONNX requires")
    return values[name]


def attributes(node) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def supported(node) -> bool:
    return node.domain in ("", "ai.onnx") and node.op_type in DATA_OPS + SHAPE_OPS


def step(node, inputs: list, reading: Reading) -> list:
    """The values of a node's outputs: a Data (image data), or a numpy array (a constant)."""
    op = node.op_type
    data = [x for x in inputs if isinstance(x, Data)]
    if op in SHAPE_OPS:
        if op == "Shape":
            return [shape_of(inputs[0], attributes(node))]
        if data:
            raise reading.refuse(node, "works on the image data, which only the ops of layers may do here")
        try:
            return [constant(op, inputs, attributes(node), node, reading)]
        except (ValueError, IndexError, TypeError, KeyError) as e:
            raise reading.refuse(node, f"cannot be evaluated on its constant inputs ({e})") from None
    if len(data) != 1 or not isinstance(inputs[0], Data) and op != "Add":
        raise reading.refuse(node, "must take the image data as its first input and constants otherwise")
    (x,) = data
    if x.final:
        raise reading.refuse(node, f"follows a {x.final}: a Softmax may only end the network")
    return [layer_step(op, x, [v for v in inputs if not isinstance(v, Data)], attributes(node), node, reading)]


def shape_of(x, attrs: dict) -> np.ndarray:
    full = np.array([BATCH, *x.shape], np.int64) if isinstance(x, Data) else np.array(np.shape(x), np.int64)
    return full[attrs.get("start", 0):attrs.get("end", len(full))]


def constant(op: str, inputs: list, attrs: dict, node, reading: Reading) -> np.ndarray:
    """A shape op evaluated on constants."""
    if op == "Constant":
        if "value" not in attrs:
            raise reading.refuse(node, "holds no tensor value (only `value` constants are read)")
        return array_of(attrs["value"], reading.path)
    x = inputs[0]
    if op == "Gather":
        return np.take(x, inputs[1], axis=attrs.get("axis", 0))
    if op in ("Unsqueeze", "Squeeze"):
        axes = tuple(int(a) for a in (attrs["axes"] if "axes" in attrs else inputs[1] if len(inputs) > 1 else []))
        if op == "Unsqueeze":
            return np.expand_dims(x, axes)
        return np.squeeze(x, axes or None)
    if op == "Concat":
        return np.concatenate([np.atleast_1d(v) for v in inputs], axis=attrs.get("axis", 0))
    if op == "Slice":
        starts, ends = inputs[1], inputs[2]
        axes = inputs[3] if len(inputs) > 3 and inputs[3] is not None else range(len(starts))
        steps = inputs[4] if len(inputs) > 4 and inputs[4] is not None else [1] * len(starts)
        index = [slice(None)] * np.ndim(x)
        for a, s, e, k in zip(axes, starts, ends, steps):
            index[int(a)] = slice(int(s), int(min(e, np.iinfo(np.int64).max // 2)), int(k))
        return x[tuple(index)]
    if op == "Cast":
        return x.astype(onnx.helper.tensor_dtype_to_np_dtype(attrs["to"]))
    return np.transpose(x, attrs.get("perm"))  # Transpose


def layer_step(op: str, x: Data, consts: list, attrs: dict, node, reading: Reading) -> Data:
    """A data op: a layer added to the reading, or the data passed on as it is."""
    if op in ("Identity", "Dropout"):
        return x
    if op in ("Softmax", "LogSoftmax"):
        return Data(x.shape, x.linear, op)
    if op in ACTIVATION_OPS:
        if not x.linear:
            raise reading.refuse(node, "is an activation that follows no conv or dense layer directly: each "
                                       "layer here has one activation, applied to its output")
        reading.activations.append((ACTIVATION_OPS[op], node))
        return Data(x.shape)
    if op in ("Flatten", "Reshape"):
        return flattened(op, x, consts, attrs, node, reading)
    if op in ("MaxPool", "AveragePool"):
        return pooled(op, x, attrs, node, reading)
    if op == "Add":
        return biased(x, consts, node, reading)
    if x.linear:
        raise reading.refuse(node, "follows a layer that has no activation: every layer but the last needs one "
                                   "(Relu, Sigmoid or Tanh)")
    if op == "Conv":
        return convolved(x, consts, attrs, node, reading)
    return dense(op, x, consts, attrs, node, reading)


def flattened(op: str, x: Data, consts: list, attrs: dict, node, reading: Reading) -> Data:
    n = math.prod(x.shape)
    if op == "Flatten" and attrs.get("axis", 1) != 1:
        raise reading.refuse(node, f"flattens from axis {attrs['axis']}: only axis 1 (each image) is read")
    if op == "Reshape":
        target = [int(t) for t in np.asarray(consts[0]).ravel()] if consts else []
        if not attrs.get("allowzero", 0):
            target = [([BATCH, *x.shape][i] if t == 0 and i <= len(x.shape) else t) for i, t in enumerate(target)]
        if not (len(target) == 2 and target[0] in (BATCH, 1, -1) and target[1] in (n, -1) and target != [-1, -1]):
            shown = [("batch" if t == BATCH else t) for t in target]
            raise reading.refuse(node, f"reshapes the data to {shown}: only reshapes to [batch, {n}] (a flatten) "
                                       "are read")
    if len(x.shape) > 1:
        reading.layers.append(Flatten())
    return Data((n,), x.linear)


def pooled(op: str, x: Data, attrs: dict, node, reading: Reading) -> Data:
    kernel = list(attrs.get("kernel_shape", []))
    size = kernel[0] if kernel else 0
    if len(x.shape) != 3 or kernel != [size, size]:
        raise reading.refuse(node, f"pools a {x.shape} with kernel {kernel}: only square pooling of images is read")
    if (list(attrs.get("strides", [1, 1])) != kernel or any(attrs.get("pads", [0])) or unusual_window(attrs)
            or attrs.get("ceil_mode", 0) and any(n % size for n in x.shape[1:])):
        raise reading.refuse(node, f"pools {size}x{size} with strides {list(attrs.get('strides', [1, 1]))}, pads "
                                   f"{list(attrs.get('pads', [0]))}: only windows that do not overlap (stride = size) "
                                   "and no padding are read")
    kind = "max" if op == "MaxPool" else "avg"
    if x.linear and kind == "avg":
        raise reading.refuse(node, "averages a layer's output before its activation: only max pooling may come "
                                   "between a layer and its activation (the two commute)")
    layer = Pool(kind, size)
    reading.layers.append(layer)
    return Data(layer.shape_after(x.shape), x.linear)


def convolved(x: Data, consts: list, attrs: dict, node, reading: Reading) -> Data:
    w = np.asarray(consts[0], np.float32)
    if len(x.shape) != 3 or w.ndim != 4 or w.shape[1] != x.shape[0] or w.shape[2] != w.shape[3]:
        raise reading.refuse(node, f"convolves data of shape {list(x.shape)} with weights {list(w.shape)}: only "
                                   "square kernels over all the input channels of images are read")
    k = w.shape[2]
    strides, pads = list(attrs.get("strides", [1, 1])), list(attrs.get("pads", [0, 0, 0, 0]))
    if attrs.get("group", 1) != 1 or unusual_window(attrs) or len(set(strides)) != 1 or len(set(pads)) != 1:
        raise reading.refuse(node, f"has groups {attrs.get('group', 1)}, dilations {list(attrs.get('dilations', [1]))}"
                                   f", strides {strides}, pads {pads}, auto_pad {attrs.get('auto_pad', b'NOTSET')}: "
                                   "only ungrouped, undilated convolutions with one stride and the same padding on "
                                   "every side are read")
    given = len(consts) > 1 and consts[1] is not None
    b = np.asarray(consts[1], np.float32) if given else np.zeros(w.shape[0], np.float32)
    layer = Conv(w.shape[0], k, strides[0], pads[0])
    return added(reading, layer, w, b.reshape(-1), layer.shape_after(x.shape))


def unusual_window(attrs: dict) -> bool:
    """True where a conv or pool window is dilated or padded automatically (neither is read)."""
    return any(d != 1 for d in attrs.get("dilations", [1])) or attrs.get("auto_pad", b"NOTSET") not in (
        b"NOTSET", b"VALID")


def dense(op: str, x: Data, consts: list, attrs: dict, node, reading: Reading) -> Data:
    if len(x.shape) != 1:
        raise reading.refuse(node, f"multiplies data of shape {list(x.shape)}: flatten the images first")
    w = np.asarray(consts[0], np.float32)
    if op == "Gemm":
        if attrs.get("transA", 0):
            raise reading.refuse(node, "transposes the data (transA = 1), which is not read")
        w = (w.T if attrs.get("transB", 0) else w) * attrs.get("alpha", 1.0)
    if w.ndim != 2 or w.shape[0] != x.shape[0]:
        raise reading.refuse(node, f"multiplies {x.shape[0]} inputs by weights of shape {list(np.shape(consts[0]))}")
    b = np.zeros(w.shape[1], np.float32)
    if op == "Gemm" and len(consts) > 1 and consts[1] is not None:
        b = b + np.broadcast_to(np.asarray(consts[1], np.float32) * attrs.get("beta", 1.0), (1, w.shape[1]))[0]
    return added(reading, Dense(w.shape[1]), w, b, (w.shape[1],))


def added(reading: Reading, layer: Layer, w: np.ndarray, b: np.ndarray, shape: tuple[int, ...]) -> Data:
    reading.layers.append(layer)
    reading.weights.append(w)
    reading.biases.append(b.astype(np.float32))
    return Data(shape, linear=True)


def biased(x: Data, consts: list, node, reading: Reading) -> Data:
    """Add: a bias added to the output of the layer just read (MatMul + Add, a Conv's separate bias)."""
    last = reading.layers[-1] if reading.layers else None
    if not x.linear or not isinstance(last, (Conv, Dense)) or len(consts) != 1:
        raise reading.refuse(node, "adds to the data other than a bias right after a conv or dense layer")
    n = reading.biases[-1].shape[0]
    c = np.asarray(consts[0], np.float32)
    fits = {(), (1,)} | ({(n, 1, 1), (1, n, 1, 1)} if isinstance(last, Conv) else {(n,), (1, n)})
    if c.shape not in fits:
        raise reading.refuse(node, f"adds an array of shape {list(c.shape)} to a layer of {n} units or channels, "
                                   "which is no bias (one value per unit or channel)")
    reading.biases[-1] = reading.biases[-1] + c.reshape(-1)
    return x


def finish(reading: Reading, out: Data, n_classes: int) -> Layered:
    """The layer list read, checked: it ends in a dense layer of n_classes outputs with no activation,
    and every hidden layer has the same activation."""
    path = reading.path
    if not reading.layers or not isinstance(reading.layers[-1], Dense) or not out.linear:
        raise UserError(f"{path} must end in a dense (Gemm or MatMul) layer with no activation, the logits (a "
                        "Softmax after it is fine)")
    if reading.layers[-1].units != n_classes:
        raise UserError(f"{path} has {reading.layers[-1].units} outputs, but the data has {n_classes} classes")
    names = sorted({name for name, _ in reading.activations})
    if not names:
        raise UserError(f"{path} has no hidden layer (one layer from the images to the logits): there are no hidden "
                        "neurons to lay out")
    if len(names) > 1:
        raise UserError(f"{path} uses the activations {', '.join(names)}: a network here has one activation for all "
                        "its hidden layers")
    hidden = tuple(reading.layers[:-1])
    if len(hidden) and isinstance(hidden[0], Flatten):
        hidden = hidden[1:]  # flattening the input: an MLP's images arrive flat
    return Layered(hidden, tuple(reading.weights), tuple(reading.biases), names[0])
