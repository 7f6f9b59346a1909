"""Weight arrays from a safetensors or npz file (read as data: safetensors' own reader, numpy without
pickles), in the order the file stores them, and the MLP they form, or the CNN of a config's
model.layers they fill."""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from layout.core.errors import UserError
from layout.core.files import npz_contents
from layout.core.layers import INPUT_SHAPE, Conv, Dense, Flatten, Layer, check_shapes
from models.formats.layered import Layered
from models.network.cnn import weight_shapes

try:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file
except ImportError:  # the [formats] extra is not installed: safetensors_arrays says so when it is needed
    SafetensorError, load_file = ValueError, None

HEADER_CAP = 100 * 2**20  # bytes: a safetensors header longer than this is refused unread


@dataclass(frozen=True)
class Mlp:
    """An MLP read from weight arrays: weights[l] [n_in, n_out] and biases[l] [n_out], float32."""

    weights: tuple[np.ndarray, ...]
    biases: tuple[np.ndarray, ...]
    order: str  # "PyTorch's [out, in]" or "Keras' [in, out]": how the file stored the matrices


def safetensors_arrays(path: str | Path) -> list[tuple[str, np.ndarray]]:
    """(name, array) in the order of the tensors' data in the file, the header checked before reading."""
    if load_file is None:
        raise UserError(f"{path} is a safetensors file, and reading it needs the safetensors package: "
                        "pip install -e \".[formats]\"")

    size = Path(path).stat().st_size
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        if n > HEADER_CAP or 8 + n > size:
            raise UserError(f"{path} is not an intact safetensors file: its header claims {n:,} bytes, in a file of "
                            f"{size:,} (at most {HEADER_CAP:,} are read)")
        try:
            header = json.loads(f.read(n))
        except ValueError as e:
            raise UserError(f"{path} is not an intact safetensors file: its header is not JSON ({e})") from None
    try:
        arrays = load_file(str(path))
    except (SafetensorError, ValueError, OSError) as e:
        raise UserError(f"{path} is not an intact safetensors file: {e}") from None
    names = sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][0])
    return [(name, arrays[name]) for name in names]


def npz_arrays(path: str | Path) -> list[tuple[str, np.ndarray]]:
    """(name, array) in the order np.savez stored them; never unpickles."""
    reasons = {"pickled": "holds pickled Python objects, which are never loaded (they can run code): save the weights "
                          "as plain numeric arrays (np.savez)",
               "unreadable": "is not a readable .npz archive ({})", "damaged": "is not an intact .npz archive ({})"}
    arrays = npz_contents(path, lambda kind, detail: UserError(f"{path} {reasons[kind].format(detail)}"))[1]
    return list(arrays.items())


def natural(name: str) -> list:
    """A sort key that puts layers.2 before layers.10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def listing(arrays: list[tuple[str, np.ndarray]]) -> str:
    shown = ", ".join(f"{name} {list(a.shape)}" for name, a in arrays[:12])
    return shown + (f" and {len(arrays) - 12} more" if len(arrays) > 12 else "")


def check_floats(arrays: list[tuple[str, np.ndarray]], where: str) -> None:
    if any(not np.issubdtype(a.dtype, np.floating) for _, a in arrays):
        raise UserError(f"{where} holds arrays that are not floating point: save the weights as float32")


def chains(matrices: list[np.ndarray], n_inputs: int, n_classes: int) -> list[str]:
    """The storage orders in which `matrices` chain from n_inputs to n_classes."""
    found = []
    for order, (i, o) in (("PyTorch's [out, in]", (1, 0)), ("Keras' [in, out]", (0, 1))):
        sizes = [m.shape[i] for m in matrices] + [matrices[-1].shape[o]]
        if sizes[0] == n_inputs and sizes[-1] == n_classes and all(
                m.shape[o] == nxt.shape[i] for m, nxt in zip(matrices, matrices[1:])):
            found.append(order)
    return found


def mlp_from_arrays(arrays: list[tuple[str, np.ndarray]], input_shape: tuple[int, int, int], n_classes: int,
                    path: str | Path) -> Mlp:
    """The MLP whose weight matrices (the 2-D arrays) chain from the data's inputs (of input_shape, C x H x W)
    to its n_classes, in the file's order or by their names' natural order, with one bias (a 1-D array) per
    matrix or none at all. Stored in Keras' order for colour images, the first matrix's rows are taken to
    follow Keras' (H, W, C) flatten. Anything else: a UserError listing the arrays and what the file needs."""
    n_inputs = input_shape[0] * input_shape[1] * input_shape[2]
    where = f"{path} ({listing(arrays)})"
    if not arrays:
        raise UserError(f"{path} holds no arrays: save the network's weights and biases into it")
    if any(a.ndim not in (1, 2) for _, a in arrays):
        raise UserError(f"{where} holds arrays that are neither weight matrices nor bias vectors (a CNN's conv "
                        "kernels?): for a CNN, list its layers in the config's model.layers (configs/cnn.yaml "
                        "shows how), and the arrays are matched to them")
    check_floats(arrays, where)
    for ordering in (arrays, sorted(arrays, key=lambda item: natural(item[0]))):
        matrices = [a for _, a in ordering if a.ndim == 2]
        vectors = [a for _, a in ordering if a.ndim == 1]
        found = chains(matrices, n_inputs, n_classes) if matrices else []
        if len(found) == 1:
            break
    if len(found) != 1:
        why = ("they chain both as PyTorch's [out, in] and as Keras' [in, out], so the order is ambiguous"
               if found else f"no order of them chains from the data's {n_inputs} inputs to its {n_classes} classes")
        raise UserError(f"{where}: {why}: save only the weight matrices (and their biases) of an MLP whose first "
                        f"layer takes {n_inputs} inputs and whose last gives {n_classes} outputs")
    order = found[0]
    weights = tuple((m.T if order.startswith("PyTorch") else m).astype(np.float32) for m in matrices)
    if order.startswith("Keras") and input_shape[0] > 1:
        weights = (chw_rows(weights[0], input_shape), *weights[1:])
        order += " (first-layer rows in (H, W, C) pixel order)"
    if vectors and [len(v) for v in vectors] != [w.shape[1] for w in weights]:
        raise UserError(f"{where}: its 1-D arrays do not match the layers' outputs as biases "
                        f"({[w.shape[1] for w in weights]}): save one bias per weight matrix, in order")
    biases = tuple(v.astype(np.float32) for v in vectors) or tuple(np.zeros(w.shape[1], np.float32) for w in weights)
    return Mlp(weights, biases, order)


PYTORCH, KERAS = "PyTorch's [out, in] (conv [out, in, kh, kw])", "Keras' [in, out] (conv [kh, kw, in, out])"


def as_stored(shape: tuple[int, ...], order: str) -> tuple[int, ...]:
    """A weight's shape as a file in `order` stores it, from this tool's (conv [out, in, k, k], dense [in, out])."""
    if len(shape) == 4:
        return shape if order == PYTORCH else (shape[2], shape[3], shape[1], shape[0])
    return shape[::-1] if order == PYTORCH else shape


def from_stored(a: np.ndarray, order: str, flattened_from: tuple[int, ...] | None) -> np.ndarray:
    """A stored weight in this tool's layout. Keras flattens images in (H, W, C) order and this tool in
    (C, H, W), as PyTorch does: a dense layer's rows after a flatten are put in (C, H, W) order."""
    if a.ndim == 4:
        return a if order == PYTORCH else a.transpose(3, 2, 0, 1)
    if order == PYTORCH:
        return a.T
    return a if flattened_from is None else chw_rows(a, flattened_from)


def chw_rows(a: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """A dense weight [C * H * W, out] whose rows follow images flattened in (H, W, C) order (Keras'), with
    its rows in (C, H, W) order (this tool's); `shape` is (C, H, W)."""
    c, h, w = shape
    return a.reshape(h, w, c, -1).transpose(2, 0, 1, 3).reshape(c * h * w, -1)


def cnn_from_arrays(arrays: list[tuple[str, np.ndarray]], layers: tuple[Layer, ...], n_classes: int,
                    path: str | Path, activation: str, input_shape: tuple[int, int, int] = INPUT_SHAPE
                    ) -> tuple[Layered, str]:
    """The network of `layers` (model.layers) with the file's weights, matched to the layers by order
    (the file's, else their names' natural order) and shape, in PyTorch's or Keras' storage order;
    (the network, the order found). Anything else: a UserError listing the arrays and the shapes needed."""
    where = f"{path} ({listing(arrays)})"
    check_floats(arrays, where)
    expected = weight_shapes(layers, n_classes, input_shape)
    flat_from = flattened_inputs(layers, input_shape)
    for ordering in (arrays, sorted(arrays, key=lambda item: natural(item[0]))):
        weights = [a for _, a in ordering if a.ndim in (2, 4)]
        biases = [a for _, a in ordering if a.ndim == 1]
        found = [order for order in (PYTORCH, KERAS) if len(weights) == len(expected) and all(
            a.shape == as_stored(w, order) for a, (w, _) in zip(weights, expected))]
        if len(found) == 1 and (not biases or [len(b) for b in biases] == [b[0] for _, b in expected]):
            order = found[0]
            ws = tuple(from_stored(a, order, f).astype(np.float32) for a, f in zip(weights, flat_from))
            bs = tuple(b.astype(np.float32) for b in biases) or tuple(np.zeros(b, np.float32) for _, b in expected)
            return Layered(layers, ws, bs, activation), order
    needed = ", ".join(f"{list(as_stored(w, PYTORCH))} + bias {b[0]}" for w, b in expected)
    raise UserError(f"{where} does not match model.layers, which needs, in order, {needed} (PyTorch's order; Keras' "
                    "kernels [kh, kw, in, out] and dense [in, out] are read too): set model.layers to the network "
                    "the file holds, and save only its weights and biases")


def flattened_inputs(layers: tuple[Layer, ...], input_shape: tuple[int, int, int] = INPUT_SHAPE
                     ) -> list[tuple[int, ...] | None]:
    """For each layer with weights (the output layer last): the (C, H, W) of the images it takes,
    flattened, where it is the dense layer right after a flatten; else None."""
    found, before, images = [], input_shape, None
    for layer, after in zip(layers, check_shapes(layers, input_shape=input_shape)):
        if isinstance(layer, Flatten) and len(before) == 3:
            images = before
        if isinstance(layer, (Conv, Dense)):
            found.append(images if isinstance(layer, Dense) else None)
            images = None
        before = after
    return found + [images]
