"""Writing outputs safely, and where the tool keeps its caches.

Every output is written to a temporary name in its destination folder and renamed when complete, so
a crash, a full disk or Ctrl-C never leaves a half-written file under the real name.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import platformdirs

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
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {name: z[name] for name in z.files}
    except ValueError as e:
        if "allow_pickle" in str(e):
            raise refuse("it holds pickled Python objects, which are never loaded (they can run code)") from None
        raise refuse(f"unreadable ({e})") from None
    except (OSError, zipfile.BadZipFile, EOFError) as e:
        raise refuse(f"not an intact .npz archive ({e})") from None
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


def require_arrays(path: str | Path, what: str, arrays: dict, shapes: dict[str, tuple]) -> None:
    """Check that each named array exists, has the expected shape (None: any length) and is finite."""
    for name, shape in shapes.items():
        if name not in arrays:
            raise UserError(f"{path} is not a {what} written by neuron-layout: it has no '{name}' array")
        a = arrays[name]
        if a.ndim != len(shape) or any(s is not None and s != n for s, n in zip(shape, a.shape)):
            expected = "x".join("any" if s is None else str(s) for s in shape) or "a scalar"
            raise UserError(f"{path} does not fit: '{name}' has shape {'x'.join(map(str, a.shape)) or 'scalar'}, "
                            f"expected {expected}")
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            raise UserError(f"{path} is damaged: '{name}' holds NaN or infinite values")
