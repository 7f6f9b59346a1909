"""The native pair-force kernel (pair_forces.cc): built once with the machine's C++ compiler, loaded
with ctypes and registered with XLA as the FFI targets "neuron_layout_pair_forces" (energy and
gradient of the pair terms) and "neuron_layout_rest_lengths" (the euclid springs' rest lengths).

XLA's own code for the all-pairs terms runs several times slower (its fused loops do not keep the
vector units busy, and it evaluates every pair twice); the kernel evaluates each unordered pair once,
sixteen at a time, on XLA's own threads. It is a faster way to compute the same
energies: `layout.pairs.pair_energy` uses it when it can and falls back to the JAX definition when
there is no compiler, the build fails, or NEURON_LAYOUT_NATIVE=0 (tests/test_native.py checks that the
two agree).

The library is built next to this file (an editable install, like a compiled extension) or, where that
folder is read-only, in the cache; its name carries a digest of the source, the compiler flags and the
CPU, so a change to any of them builds it again.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import jax
import jax.ffi

from layout.core.files import cache_dir

TARGET = "neuron_layout_pair_forces"
REST_TARGET = "neuron_layout_rest_lengths"
SAMPLED_TARGET = "neuron_layout_sampled_forces"
SOURCE = Path(__file__).with_name("pair_forces.cc")
FALLBACK = "the layout runs on the slower JAX pair forces"
FLAGS = ("-O3", "-march=native", "-fno-math-errno", "-fPIC", "-shared", "-std=c++17")
LOADED: dict[str, ctypes.CDLL] = {}  # the library, once load() has registered it


def enabled() -> bool:
    """False when the user turned the kernel off: NEURON_LAYOUT_NATIVE=0."""
    return os.environ.get("NEURON_LAYOUT_NATIVE", "1").strip().lower() not in ("0", "off", "false", "no")


def compiler() -> str | None:
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return name
    return None


def cpu_signature() -> str:
    """What -march=native depends on: the CPU's model and feature flags."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return "\n".join(sorted({l for l in lines if l.startswith(("model name", "flags"))}))
    except OSError:
        return platform.processor() or platform.machine()


def library_name(cxx: str) -> str:
    digest = hashlib.sha256()
    for part in (SOURCE.read_bytes(), " ".join(FLAGS).encode(), cxx.encode(), jax.__version__.encode(),
                 cpu_signature().encode()):
        digest.update(part)
    return f"pair_forces-{digest.hexdigest()[:16]}.so"


def build_folders() -> list[Path]:
    return [Path(__file__).with_name("_native"), cache_dir() / "native"]


def build(cxx: str, target: Path) -> None:
    """Compile SOURCE into `target`, written under a temporary name and renamed (no half-written
    library, even with several processes building at once)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=target.stem, suffix=".part")
    os.close(fd)
    try:
        command = [cxx, *FLAGS, f"-I{jax.ffi.include_dir()}", str(SOURCE), "-o", tmp]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            lines = [l for l in result.stderr.splitlines() if "error" in l] or result.stderr.splitlines()
            raise RuntimeError(f"{cxx} failed: {lines[0] if lines else 'exit code ' + str(result.returncode)}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@functools.lru_cache(maxsize=None)
def load() -> str | None:
    """Build (once) and register the kernel; None when it is ready, else why it cannot be used."""
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64", "aarch64"):
        return f"the native pair-force kernel is built on Linux only; {FALLBACK}"
    cxx = compiler()
    if cxx is None:
        return f"no C++ compiler found; {FALLBACK}"
    name = library_name(cxx)
    failures = []
    for folder in build_folders():
        path = folder / name
        try:
            if not path.exists():
                build(cxx, path)
            library = ctypes.cdll.LoadLibrary(str(path))
            jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(library.PairForces), platform="cpu")
            jax.ffi.register_ffi_target(REST_TARGET, jax.ffi.pycapsule(library.RestLengths), platform="cpu")
            jax.ffi.register_ffi_target(SAMPLED_TARGET, jax.ffi.pycapsule(library.SampledForces), platform="cpu")
            LOADED["library"] = library
            return None
        except (OSError, RuntimeError) as e:
            failures.append(f"{folder}: {e}")
    return f"the native pair-force kernel could not be built ({failures[-1]}); {FALLBACK}"


def rest_lengths_here(vectors, out) -> None:
    """The kernel's rest lengths of one system, vectors [P, C] float32 (C-contiguous) into out [P, R]
    float32, on this thread without XLA (pair_forces.cc: RestLengthsHere); the kernel must be loaded."""
    pointer = ctypes.c_void_p
    LOADED["library"].RestLengthsHere(pointer(vectors.ctypes.data), ctypes.c_int64(vectors.shape[0]),
                                      ctypes.c_int64(vectors.shape[1]), pointer(out.ctypes.data))


def available() -> bool:
    return enabled() and load() is None


def unavailable_reason() -> str | None:
    """Why the pair terms ran in JAX although the native kernel was wanted (for the command to say);
    None when it ran, was turned off, or was never needed."""
    return load() if enabled() and load.cache_info().currsize else None
