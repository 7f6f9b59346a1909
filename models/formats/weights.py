"""Weight arrays from a safetensors or npz file (read as data: safetensors' own reader, numpy without
pickles), in the order the file stores them, and the MLP they form."""

from __future__ import annotations

import json
import re
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from layout.core.errors import UserError

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

    @property
    def sizes(self) -> tuple[int, ...]:
        return (self.weights[0].shape[0], *(w.shape[1] for w in self.weights))


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
    try:
        with np.load(path, allow_pickle=False) as z:
            return [(name, z[name]) for name in z.files]
    except ValueError as e:
        if "allow_pickle" in str(e):
            raise UserError(f"{path} holds pickled Python objects, which are never loaded (they can run code): save "
                            "the weights as plain numeric arrays (np.savez)") from None
        raise UserError(f"{path} is not a readable .npz archive ({e})") from None
    except (OSError, zipfile.BadZipFile, EOFError) as e:
        raise UserError(f"{path} is not an intact .npz archive ({e})") from None


def natural(name: str) -> list:
    """A sort key that puts layers.2 before layers.10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def listing(arrays: list[tuple[str, np.ndarray]]) -> str:
    shown = ", ".join(f"{name} {list(a.shape)}" for name, a in arrays[:12])
    return shown + (f" and {len(arrays) - 12} more" if len(arrays) > 12 else "")


def chains(matrices: list[np.ndarray], n_inputs: int, n_classes: int) -> list[str]:
    """The storage orders in which `matrices` chain from n_inputs to n_classes."""
    found = []
    for order, (i, o) in (("PyTorch's [out, in]", (1, 0)), ("Keras' [in, out]", (0, 1))):
        sizes = [m.shape[i] for m in matrices] + [matrices[-1].shape[o]]
        if sizes[0] == n_inputs and sizes[-1] == n_classes and all(
                m.shape[o] == nxt.shape[i] for m, nxt in zip(matrices, matrices[1:])):
            found.append(order)
    return found


def mlp_from_arrays(arrays: list[tuple[str, np.ndarray]], n_inputs: int, n_classes: int, path: str | Path) -> Mlp:
    """The MLP whose weight matrices (the 2-D arrays) chain from the data's n_inputs to its n_classes, in
    the file's order or by their names' natural order, with one bias (a 1-D array) per matrix or none
    at all. Anything else: a UserError listing the arrays and what the file needs."""
    where = f"{path} ({listing(arrays)})"
    if not arrays:
        raise UserError(f"{path} holds no arrays: save the network's weights and biases into it")
    if any(a.ndim not in (1, 2) for _, a in arrays):
        raise UserError(f"{where} holds arrays that are neither weight matrices nor bias vectors (a CNN's conv "
                        "kernels?): reading a CNN from weight arrays is not built yet; an MLP's file holds only "
                        "2-D weights and 1-D biases")
    if any(not np.issubdtype(a.dtype, np.floating) for _, a in arrays):
        raise UserError(f"{where} holds arrays that are not floating point: save the weights as float32")
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
    if vectors and [len(v) for v in vectors] != [w.shape[1] for w in weights]:
        raise UserError(f"{where}: its 1-D arrays do not match the layers' outputs as biases "
                        f"({[w.shape[1] for w in weights]}): save one bias per weight matrix, in order")
    biases = tuple(v.astype(np.float32) for v in vectors) or tuple(np.zeros(w.shape[1], np.float32) for w in weights)
    return Mlp(weights, biases, order)
