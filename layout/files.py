"""Writing outputs safely, and where the tool keeps its caches.

Every output is written to a temporary name in its destination folder and renamed when complete, so
a crash, a full disk or Ctrl-C never leaves a half-written file under the real name.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator


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
    import platformdirs  # installed with pooch

    return Path(platformdirs.user_cache_dir("neuron-layout"))


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
