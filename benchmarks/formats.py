"""Reading networks trained elsewhere: a 100 MB MLP (784-31500-10) as safetensors, ONNX and Keras.

    python benchmarks/formats.py [--json] [--repeats N]

Each figure is the median over the repeats of reading and checking the file as --network does
before the test-set evaluation (sniff the format, read the arrays, check the header or interpret
the graph, infer the layers), beside the floor of that format's own reader:

  import_s_safetensors_100mb   models.formats: safetensors_arrays + mlp_from_arrays (target <= 2 s)
  floor_s_safetensors_100mb    safetensors.numpy.load_file alone
  import_s_onnx_100mb          models.formats.onnx_graph.read_onnx (onnx.load, checker, interpreter)
                               (target <= 2 s)
  floor_s_onnx_100mb           onnx.load alone
  import_s_keras_100mb         models.formats.keras.read_keras on a .keras archive in the layout Keras 3
                               writes (config.json, model.weights.h5; made here with h5py, no Keras)
  floor_s_keras_100mb          the archive's weights file read into memory and its arrays by h5py alone
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import statistics
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import h5py
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from safetensors.numpy import load_file, save_file

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from models.formats.keras import read_keras  # noqa: E402
from models.formats.onnx_graph import read_onnx  # noqa: E402
from models.formats.sniff import sniff  # noqa: E402
from models.formats.weights import mlp_from_arrays, safetensors_arrays  # noqa: E402

HIDDEN = 31_500  # 784 * 31,500 * 4 bytes + the output layer: 100 MB of float32


def weights() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"0.weight": rng.standard_normal((HIDDEN, 784), np.float32), "0.bias": np.zeros(HIDDEN, np.float32),
            "2.weight": rng.standard_normal((10, HIDDEN), np.float32), "2.bias": np.zeros(10, np.float32)}


def onnx_model(w: dict[str, np.ndarray]) -> onnx.ModelProto:
    """784-HIDDEN-10 sigmoid as PyTorch's TorchScript exporter writes it: Gemm (transB), Sigmoid, Gemm."""
    nodes = [helper.make_node("Gemm", ["x", "0.weight", "0.bias"], ["h"], transB=1),
             helper.make_node("Sigmoid", ["h"], ["a"]),
             helper.make_node("Gemm", ["a", "2.weight", "2.bias"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 784])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 10])],
                              [numpy_helper.from_array(a, name) for name, a in w.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def keras_archive(w: dict[str, np.ndarray], path: Path) -> None:
    """784-HIDDEN-10 sigmoid as keras.Sequential([Input((784,)), Dense(HIDDEN, sigmoid), Dense(10)]).save()
    lays it out: config.json, and model.weights.h5 with layers/<name>/vars/0 (kernel [in, out]) and 1."""
    layers = [{"class_name": "InputLayer", "config": {"batch_shape": [None, 784], "name": "input_layer"}},
              {"class_name": "Dense", "config": {"name": "dense", "units": HIDDEN, "activation": "sigmoid"}},
              {"class_name": "Dense", "config": {"name": "dense_1", "units": 10, "activation": "linear"}}]
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        for name, kernel, bias in (("dense", w["0.weight"].T, w["0.bias"]), ("dense_1", w["2.weight"].T, w["2.bias"])):
            group = f.create_group(f"layers/{name}/vars")
            group.attrs["name"] = name
            group["0"], group["1"] = kernel, bias
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("config.json", json.dumps({"class_name": "Sequential", "config": {"layers": layers}}))
        archive.writestr("model.weights.h5", buffer.getvalue())


def h5_floor(path: Path) -> None:
    with zipfile.ZipFile(path) as archive, h5py.File(io.BytesIO(archive.read("model.weights.h5"))) as f:
        [f[f"layers/{name}/vars/{i}"][()] for name in ("dense", "dense_1") for i in "01"]


def cpu_model() -> str:
    info = Path("/proc/cpuinfo")
    if info.exists() and "model name" in info.read_text():
        return info.read_text().split("model name")[1].split("\n")[0].strip(":\t ")
    return platform.processor() or platform.machine()


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        st, ox, ke = Path(folder) / "model.safetensors", Path(folder) / "model.onnx", Path(folder) / "model.keras"
        w = weights()
        save_file(w, str(st))
        onnx.save(onnx_model(w), str(ox))
        keras_archive(w, ke)
        del w

        def read_safetensors():
            assert sniff(st) == "safetensors"
            return mlp_from_arrays(safetensors_arrays(st), (1, 28, 28), 10, st)

        def read_onnx_file():
            assert sniff(ox) == "onnx"
            return read_onnx(ox, (1, 28, 28), 10)

        def read_keras_file():
            assert sniff(ke) == "keras"
            return read_keras(ke, "keras", (1, 28, 28), 10)

        figures = {
            "cpu": cpu_model(),
            "safetensors_mb": round(st.stat().st_size / 1e6, 1), "onnx_mb": round(ox.stat().st_size / 1e6, 1),
            "keras_mb": round(ke.stat().st_size / 1e6, 1),
            "import_s_safetensors_100mb": median_seconds(read_safetensors, args.repeats),
            "floor_s_safetensors_100mb": median_seconds(lambda: load_file(str(st)), args.repeats),
            "import_s_onnx_100mb": median_seconds(read_onnx_file, args.repeats),
            "floor_s_onnx_100mb": median_seconds(lambda: onnx.load(str(ox)), args.repeats),
            "import_s_keras_100mb": median_seconds(read_keras_file, args.repeats),
            "floor_s_keras_100mb": median_seconds(lambda: h5_floor(ke), args.repeats),
            "target_s": 2.0,
        }
    cpu = figures["cpu"]
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    print(f"CPU: {cpu}; median of {args.repeats}")
    for kind in ("safetensors", "onnx", "keras"):
        print(f"{kind:12s} {figures[kind + '_mb']:6.1f} MB  read and checked {figures[f'import_s_{kind}_100mb']:.3f} s"
              f"  (its reader alone {figures[f'floor_s_{kind}_100mb']:.3f} s; target <= 2 s)")


if __name__ == "__main__":
    main()
