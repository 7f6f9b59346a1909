"""Writing outputs safely, and where the tool keeps its caches.

Every output is written to a temporary name in its destination folder and renamed when complete, so
a crash, a full disk or Ctrl-C never leaves a half-written file under the real name.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import stat
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import platformdirs

from layout.core.config_values import excerpt
from layout.core.errors import UserError


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it to `path`, on failure delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes the file private; outputs are ordinary files
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except OSError as e:  # name the output, not its temporary name (or none, as some writers give)
        raise OSError(e.errno, e.strerror or str(e), str(path)) from e
    finally:
        tmp_path.unlink(missing_ok=True)


def write_atomic(path: str | Path, write: Callable[[Any], None], mode: str = "wb") -> Path:
    """Open a temporary file beside `path`, let `write(file)` fill it, then rename it to `path`."""
    with atomic_path(path) as tmp:
        with open(tmp, mode) as f:
            write(f)
    return Path(path)


def write_text(path: str | Path, text: str) -> Path:
    return write_atomic(path, lambda f: f.write(text), mode="w")


def write_json(path: str | Path, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def cache_dir() -> Path:
    """Root of the tool's caches: $NEURON_LAYOUT_CACHE, else the platform's user cache folder."""
    env = os.environ.get("NEURON_LAYOUT_CACHE")
    if env:
        return Path(env).expanduser()
    return Path(platformdirs.user_cache_dir("neuron-layout"))


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def npz_contents(path: str | Path, refuse: Callable[[str, str], Exception], names: tuple[str, ...] | None = None
                 ) -> tuple[list[str], dict[str, np.ndarray]]:
    """(every array name in an .npz, in its order; the arrays `names` that it holds, or all of them), never
    unpickling. A problem raises refuse(kind, detail): kind 'pickled' (an object array), 'unreadable'
    (numpy's other ValueErrors) or 'damaged' (not an intact zip)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            wanted = z.files if names is None else [name for name in names if name in z.files]
            return list(z.files), {name: z[name] for name in wanted}
    except ValueError as e:
        raise refuse("pickled" if "allow_pickle" in str(e) else "unreadable", str(e)) from None
    except (OSError, zipfile.BadZipFile, EOFError) as e:
        raise refuse("damaged", str(e)) from None


def read_npz(path: str | Path, what: str) -> tuple[dict[str, np.ndarray], dict]:
    """(arrays, meta) of an .npz file written by this tool, whose `meta` entry is a JSON object.

    Never unpickles (allow_pickle=False). Any problem is a UserError naming the file, `what` it should
    have been and the reason."""
    def refuse(reason: str) -> UserError:
        return UserError(f"{path} is not a {what} written by neuron-layout: {reason}")

    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise UserError(f"{path} does not exist: check the path") from None
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from None
    if stat.S_ISDIR(mode):
        raise UserError(f"{path} is a folder, not a {what}: name the .npz file inside it")
    if not stat.S_ISREG(mode):  # a FIFO or a device would block the read, or never end
        raise UserError(f"{path} is not a regular file: name a .npz file")
    with open(path, "rb") as f:
        head = f.read(8)
    if head[:4] != ZIP_MAGIC:
        raise refuse(not_npz(head))
    reasons = {"pickled": "it holds pickled Python objects, which are never loaded (they can run code)",
               "unreadable": "unreadable ({})", "damaged": "not an intact .npz archive ({})"}
    arrays = npz_contents(path, lambda kind, detail: refuse(reasons[kind].format(detail)))[1]
    try:
        meta = json.loads(str(arrays.pop("meta")))
    except KeyError:
        raise refuse("it has no 'meta' entry") from None
    except json.JSONDecodeError as e:
        raise refuse(f"its 'meta' entry is not JSON ({e})") from None
    if not isinstance(meta, dict):
        raise refuse("its 'meta' entry is not a JSON object")
    return arrays, meta


ZIP_MAGIC = b"PK\x03\x04"  # an .npz is a zip of .npy arrays


def not_npz(head: bytes) -> str:
    """Why a file that does not start like a zip archive is not an .npz, from its first bytes."""
    if head.startswith(b"\x93NUMPY"):
        return "it is a single .npy array, not an .npz archive of named arrays"
    if head[:1] == b"\x80":  # pickle protocols 2 and up
        return "it holds pickled Python objects, which are never loaded (they can run code)"
    if not head:
        return "it is empty"
    return f"it is not an .npz archive (a zip of .npy arrays): it starts with {head[:8]!r}"


FLOAT32_MAX = float(np.finfo(np.float32).max)


def require_arrays(path: str | Path, what: str, arrays: dict, shapes: dict[str, tuple]) -> None:
    """Check that each named array exists, has the expected shape (None: any length) and holds real
    numbers that float32, the precision everything is computed in, can hold (float64 1e300 cannot)."""
    for name, shape in shapes.items():
        if name not in arrays:
            raise UserError(f"{path} is not a {what} written by neuron-layout: it has no '{name}' array")
        a = arrays[name]
        if a.ndim != len(shape) or any(s is not None and s != n for s, n in zip(shape, a.shape)):
            expected = "x".join("any" if s is None else str(s) for s in shape) or "a scalar"
            raise UserError(f"{path} does not fit: '{name}' has shape {'x'.join(map(str, a.shape)) or 'scalar'}, "
                            f"expected {expected}")
        if a.dtype.kind not in "biuf":
            raise UserError(f"{path} is not a {what} written by neuron-layout: '{name}' holds {a.dtype} values, "
                            "not real numbers")
        if a.dtype.kind == "f" and a.size and not (np.isfinite(a).all() and -FLOAT32_MAX <= float(a.min())
                                                   and float(a.max()) <= FLOAT32_MAX):
            raise UserError(f"{path} is damaged: '{name}' holds NaN or infinite values, or values beyond float32's "
                            "range")


# The .npz files a user gives back: the meta fields that mark each, and the option that takes it.
KINDS = {"network file": ({"sizes", "activation", "classes"}, "--network"),
         "trajectory file": ({"terms", "made_by"}, "--trajectory")}

# What a meta field must be: a test of its value, and its description for the message.
Field = tuple[Callable[[Any], bool], str]


def whole(v: Any, low: int = 0) -> bool:
    return type(v) is int and v >= low  # (not bool, which is an int in Python)


def number(v: Any, low: float = -math.inf, high: float = math.inf) -> bool:
    return type(v) in (int, float) and math.isfinite(v) and low <= v <= high


def list_of(test: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, list) and all(test(x) for x in v)


def optional(test: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is None or test(v)


def require_meta(path: str | Path, what: str, meta: dict, fields: dict[str, Field]) -> None:
    """Check that each named meta field is there and is what it must be (a file of this tool's other
    kind is named as what it is)."""
    for other, (marks, option) in KINDS.items():
        if other != what and marks <= set(meta) and not set(fields) <= set(meta):
            raise UserError(f"{path} is a {other}, not a {what}: give it with {option}")
    for name, (test, wanted) in fields.items():
        if name not in meta:
            raise UserError(f"{path} is not a {what} written by neuron-layout: its meta lacks '{name}'")
        if not test(meta[name]):
            raise UserError(f"{path} is not a {what} written by neuron-layout: its meta's '{name}' is "
                            f"{excerpt(meta[name])}, not {wanted}")
