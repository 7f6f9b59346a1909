"""Reading networks trained elsewhere: a 100 MB MLP (784-31500-10) as safetensors and as ONNX.

    python benchmarks/formats.py [--json] [--repeats N]

Each figure is the median over the repeats of reading and checking the file as --network does
before the test-set evaluation (sniff the format, read the arrays, check the header or interpret
the graph, infer the layers), beside the floor of that format's own reader:

  import_s_safetensors_100mb   models.formats: safetensors_arrays + mlp_from_arrays (target <= 2 s)
  floor_s_safetensors_100mb    safetensors.numpy.load_file alone
  import_s_onnx_100mb          models.formats.onnx_graph.read_onnx (onnx.load, checker, interpreter)
                               (target <= 2 s)
  floor_s_onnx_100mb           onnx.load alone
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from safetensors.numpy import load_file, save_file

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

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
        st, ox = Path(folder) / "model.safetensors", Path(folder) / "model.onnx"
        w = weights()
        save_file(w, str(st))
        onnx.save(onnx_model(w), str(ox))
        del w

        def read_safetensors():
            assert sniff(st) == "safetensors"
            return mlp_from_arrays(safetensors_arrays(st), 784, 10, st)

        def read_onnx_file():
            assert sniff(ox) == "onnx"
            return read_onnx(ox, (1, 28, 28), 10)

        figures = {
            "cpu": cpu_model(),
            "safetensors_mb": round(st.stat().st_size / 1e6, 1), "onnx_mb": round(ox.stat().st_size / 1e6, 1),
            "import_s_safetensors_100mb": median_seconds(read_safetensors, args.repeats),
            "floor_s_safetensors_100mb": median_seconds(lambda: load_file(str(st)), args.repeats),
            "import_s_onnx_100mb": median_seconds(read_onnx_file, args.repeats),
            "floor_s_onnx_100mb": median_seconds(lambda: onnx.load(str(ox)), args.repeats),
            "target_s": 2.0,
        }
    cpu = figures["cpu"]
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    print(f"CPU: {cpu}; median of {args.repeats}")
    for kind in ("safetensors", "onnx"):
        print(f"{kind:12s} {figures[kind + '_mb']:6.1f} MB  read and checked {figures[f'import_s_{kind}_100mb']:.3f} s"
              f"  (its reader alone {figures[f'floor_s_{kind}_100mb']:.3f} s; target <= 2 s)")


if __name__ == "__main__":
    main()
