"""Large networks: sampled pair terms against exact ones and against PyMDE and UMAP, in one run.

    python benchmarks/scale.py [--json] [--only quality 100k baselines 1m sharded scene ablation]

Output vectors are 10-d, as an MNIST network's: at N = 10,000 the real network's (784-10000-10 sigmoid
trained on ../shared/data's 5k MNIST subset, benchmarks/layout.py), a Gaussian cloud and a 10-cluster
mixture; at 100,000 and 1,000,000 the 10-cluster mixture. Every layout uses configs/euclid.yaml's
forces (euclid, repulsion, centering) and runs all 500 steps (settle 0). Figures:

  stress_ratio_sampled_10k   sampled / exact scale-free stress (layout_metrics, 2,000 query neurons),
                             both from the same PCA start and key, median over the three sources
                             (_by_source: each); target <= 1.02
  trust_diff_sampled_10k     |sampled - exact| trustworthiness (k = 10), the largest over the sources;
                             target <= 0.01
  layout_s_100k              seconds from the energies' binding to the 500th step, nearest neighbours
                             included (the native sampled kernel); target <= 60
  layout_s_1m, peak_rss_gb_1m  the same at 1,000,000 in a fresh process, and that process's peak
                             resident memory; targets <= 900 s, <= 8 GB
  pymde_s_100k, pymde_stress_100k  PyMDE's preserve_distances (embedding dimension 3, CPU, its
                             defaults) on the same vectors, in a child process: seconds and its final
                             stress; null, with pymde_unfinished_after_s, if it runs past --pymde-limit
  ours_s_to_pymde_100k       our seconds until the stress is at PyMDE's final one: the end of the first
                             chunk of 100 steps with a frame at or below it (an upper bound)
  ratio_pymde_100k           pymde_s_100k / ours_s_to_pymde_100k; target >= 3
  umap_s_100k, umap_stress_100k  umap-learn (3 components, its defaults) for reference
  stress_100k                our final stress at 100,000. Stresses at 100,000 are over 2,000,000
                             random pairs, the same pairs for every method
  sharded_equal              in a process with 4 host devices (XLA_FLAGS=--xla_force_host_platform_device_count=4),
                             whether one step of the 100,000-neuron layout sharded over the 4 equals the
                             same step on 1 device (energies within 1e-5, gradient within 1e-5 of its
                             largest), both in JAX (the native kernel is one device's)
  sharded_steps_per_s_100k   {"1": steps/s on 1 device, "4": on 4}, the sampled step alone, median of 5
  gpu_steps_per_s_100k, gpu_steps_per_s_1m  null: no GPU was lent to this session
  frame_ms_100k              one frame of a 100,000-neuron scene at 1280x720 (offscreen VTK), the
                             top 2,000 (render.field_top) as their fields and dots for the rest, median
                             of 30 (benchmarks/render.py's frame_ms); beside it frame_ms_10k, the same
                             at 10,000; target <= 100
  ablation_null_s_100k       the ablation's null at 100,000 neurons over one batch of test images (as
                             many as layout.engine.features.batch_rows gives such a layer): 100 nested
                             random groups for 10 dominance groups of about 10,000 neurons
                             (layout/insight/ablation.py's nested_nulls), median of 3; beside it
                             ablation_null_s_100k_per_class, the same with 100 groups drawn for each
                             class apart (what the ablation did before), and ablation_null_speedup

Needs pymde and umap-learn (pip install pymde umap-learn; neither is a project dependency).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import jax  # noqa: E402

from layout.core.config_file import load_config  # noqa: E402
from layout.engine.energies import build_energy  # noqa: E402
from layout.engine.metrics import layout_metrics, normalized_stress  # noqa: E402
from layout.engine.simulate import simulate  # noqa: E402

TARGETS = {"stress_ratio_sampled_10k": ("<=", 1.02), "trust_diff_sampled_10k": ("<=", 0.01),
           "layout_s_100k": ("<=", 60), "layout_s_1m": ("<=", 900), "peak_rss_gb_1m": ("<=", 8),
           "ratio_pymde_100k": (">=", 3), "frame_ms_100k": ("<=", 100)}
STRESS_PAIRS = 2_000_000


def benchmark(name: str) -> types.ModuleType:
    """benchmarks/<name>.py as a module, loaded by path (benchmarks/layout.py's name is the package's)."""
    spec = importlib.util.spec_from_file_location(f"{name}_benchmark", REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


BENCH = benchmark("layout")
CONFIG = load_config(REPO / "configs" / "euclid.yaml", [])


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def lay_out(vectors: np.ndarray, pairs: str, steps: int = 500) -> tuple[np.ndarray, float, list]:
    """(frames [T, N, 3] of the neurons, seconds from binding the energies to the last step, [(step,
    seconds)] at the end of each chunk), configs/euclid.yaml's forces and anchors."""
    n = len(vectors)
    particles = BENCH.particles_for(vectors, CONFIG.layout.anchors.mode)
    cfg = dataclasses.replace(CONFIG.layout.sim, steps=steps, settle=0.0, pairs=pairs)
    chunks = []
    start = time.perf_counter()
    terms = build_energy(particles, CONFIG.layout.forces)
    trajectory = simulate(terms, particles, cfg, jax.random.key(0),
                          on_chunk=lambda step, total: chunks.append((step, time.perf_counter() - start)))
    return trajectory.positions[:, :n], time.perf_counter() - start, chunks


def pair_sample(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    i = rng.integers(0, n, STRESS_PAIRS)
    return i, (i + rng.integers(1, n, STRESS_PAIRS)) % n


def sampled_stress(vectors: np.ndarray, positions: np.ndarray, pairs: tuple[np.ndarray, np.ndarray]) -> float:
    i, j = pairs
    distance = lambda a: np.sqrt(((a[i].astype(np.float64) - a[j]) ** 2).sum(1))  # noqa: E731
    return normalized_stress(distance(vectors), distance(positions))


def quality_10k() -> dict:
    out: dict = {}
    for name, v in BENCH.vector_sets(10_000).items():
        figures = {}
        for pairs in ("exact", "sampled"):
            frames, seconds, _ = lay_out(v, pairs)
            figures[pairs], _ = layout_metrics(v, frames[-1], v.argmax(1))
            figures[pairs]["seconds"] = seconds
        out[name] = {
            "stress_exact": figures["exact"]["normalized_stress"],
            "stress_sampled": figures["sampled"]["normalized_stress"],
            "stress_ratio": figures["sampled"]["normalized_stress"] / figures["exact"]["normalized_stress"],
            "trust_exact": figures["exact"]["trustworthiness"], "trust_sampled": figures["sampled"]["trustworthiness"],
            "trust_diff": abs(figures["sampled"]["trustworthiness"] - figures["exact"]["trustworthiness"]),
            "seconds_exact": figures["exact"]["seconds"], "seconds_sampled": figures["sampled"]["seconds"]}
    return {"stress_ratio_sampled_10k": statistics.median(s["stress_ratio"] for s in out.values()),
            "trust_diff_sampled_10k": max(s["trust_diff"] for s in out.values()),
            "quality_10k_by_source": out}


def pymde_in_child(vectors: np.ndarray, limit: float) -> tuple[np.ndarray | None, float | None]:
    """pymde_embedding in a fresh process, stopped after `limit` seconds: (embedding, seconds), or
    (None, None) if it did not finish."""
    with tempfile.TemporaryDirectory() as scratch:
        np.save(Path(scratch) / "vectors.npy", vectors)
        try:
            subprocess.run([sys.executable, __file__, "--child-pymde", scratch], check=True, timeout=limit,
                           capture_output=True)
        except subprocess.TimeoutExpired:
            return None, None
        seconds = float((Path(scratch) / "seconds.txt").read_text())
        return np.load(Path(scratch) / "embedding.npy"), seconds


def child_pymde(scratch: str) -> None:
    embedding, seconds = pymde_embedding(np.load(Path(scratch) / "vectors.npy"))
    np.save(Path(scratch) / "embedding.npy", embedding)
    (Path(scratch) / "seconds.txt").write_text(str(seconds))


def pymde_embedding(vectors: np.ndarray) -> tuple[np.ndarray, float]:
    """PyMDE's preserve_distances embedding (3-d, CPU) and its seconds. pymde imports torchvision for
    its datasets module only; where torchvision is missing (or does not match torch), an empty module
    stands in for it."""
    try:
        import torchvision  # noqa: F401
    except (ImportError, RuntimeError):
        sys.modules["torchvision"] = types.ModuleType("torchvision")
    import pymde
    import torch

    pymde.seed(0)
    start = time.perf_counter()
    embedding = pymde.preserve_distances(torch.tensor(vectors), embedding_dim=3, device="cpu").embed()
    return embedding.numpy(), time.perf_counter() - start


def umap_embedding(vectors: np.ndarray) -> tuple[np.ndarray, float]:
    import umap

    start = time.perf_counter()
    embedding = umap.UMAP(n_components=3).fit_transform(vectors)
    return embedding, time.perf_counter() - start


def at_100k(baselines: bool, pymde_limit: float = 1800.0) -> dict:
    """Our layout at 100,000, and with `baselines` PyMDE's and UMAP's (the time to PyMDE's stress needs
    our frames: the layout is run in either case)."""
    v = BENCH.synthetic_vectors("clusters", 100_000)
    pairs = pair_sample(len(v))
    frames, seconds, chunks = lay_out(v, "sampled")
    stresses = [sampled_stress(v, f, pairs) for f in frames]
    out = {"layout_s_100k": seconds, "stress_100k": stresses[-1]}
    if not baselines:
        return out
    embedding, pymde_s = pymde_in_child(v, pymde_limit)
    if embedding is None:
        out.update(pymde_s_100k=None, pymde_unfinished_after_s=pymde_limit, ratio_pymde_100k=None)
    else:
        target = sampled_stress(v, embedding, pairs)
        record = CONFIG.layout.sim.record_every
        reached = next((k * record for k, s in enumerate(stresses) if s <= target), None)
        ours = None if reached is None else next(t for step, t in chunks if step >= reached)
        out.update(pymde_s_100k=pymde_s, pymde_stress_100k=target, ours_step_to_pymde_100k=reached,
                   ours_s_to_pymde_100k=ours, ratio_pymde_100k=None if ours is None else pymde_s / ours)
    embedding, umap_s = umap_embedding(v)
    out.update(umap_s_100k=umap_s, umap_stress_100k=sampled_stress(v, embedding, pairs))
    return out


def child_1m() -> None:
    """Run by a fresh interpreter: the 1,000,000-neuron layout; print its seconds, stress and peak RSS."""
    v = BENCH.synthetic_vectors("clusters", 1_000_000)
    frames, seconds, _ = lay_out(v, "sampled")
    status = Path("/proc/self/status").read_text()
    peak = int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1]) / 2**20
    print(json.dumps({"layout_s_1m": seconds, "peak_rss_gb_1m": peak,
                      "stress_1m": sampled_stress(v, frames[-1], pair_sample(len(v)))}))


def child_sharded() -> None:
    """Run by a fresh interpreter with 4 host devices: one sampled step at 100,000 on 1 and 4 devices."""
    import jax.numpy as jnp

    from layout.engine.sampled import SampledTerm, sampled_step_function, with_sampling

    v = BENCH.synthetic_vectors("clusters", 100_000)
    particles = BENCH.particles_for(v, CONFIG.layout.anchors.mode)
    terms = build_energy(particles, CONFIG.layout.forces)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((particles.n_particles, 3)).astype(np.float32))
    results, rates = [], {}
    for devices in (1, 4):
        sampled = with_sampling(terms, particles.vectors, 16, 32, np.array([0, 1], np.uint32), native=False,
                                devices=devices)
        step = jax.jit(sampled_step_function(tuple(t for t in sampled.values() if isinstance(t, SampledTerm))))
        results.append([np.asarray(a) for a in jax.block_until_ready(step(x, True, 3))])
        times = []
        for k in range(5):
            start = time.perf_counter()
            jax.block_until_ready(step(x, True, k))
            times.append(time.perf_counter() - start)
        rates[str(devices)] = 1 / statistics.median(times)
    (e1, g1), (e4, g4) = results
    equal = bool(np.allclose(e1, e4, rtol=1e-5) and np.abs(g1 - g4).max() <= 1e-5 * np.abs(g1).max())
    print(json.dumps({"sharded_equal": equal, "sharded_steps_per_s_100k": rates,
                      "sharded_gradient_max_diff": float(np.abs(g1 - g4).max())}))


def at_sharded() -> dict:
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    out = subprocess.run([sys.executable, __file__, "--child-sharded"], check=True, capture_output=True, text=True,
                         env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def at_1m() -> dict:
    out = subprocess.run([sys.executable, __file__, "--child-1m"], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


PARTS = ("quality", "100k", "baselines", "1m", "sharded", "scene", "ablation")


def at_scene() -> dict:
    """frame_ms_100k beside frame_ms_10k, with benchmarks/render.py's scene and timer."""
    bench = benchmark("render")
    from layout.core.config import RenderConfig

    cfg = RenderConfig(width=1280, height=720)
    return {f"frame_ms_{n // 1000}k": bench.frame_ms(bench.moving_layout(n, 10, fields=True), cfg)
            for n in (10_000, 100_000)}


def at_ablation() -> dict:
    """ablation_null_s_100k (nested groups) beside the per-class groups, on one batch of a random
    784-100000-10 ReLU layer's activations; the two nulls are drawn from the same generator."""
    from layout.engine.features import batch_rows
    from layout.insight.ablation import nested_nulls, random_groups, silenced_hits

    n, classes, count = 100_000, 10, 100
    rng = np.random.default_rng(0)
    network = benchmark("render").random_network(n)
    images = batch_rows(network)
    hidden = np.maximum(rng.standard_normal((images, n), np.float32), 0)
    labels = rng.integers(0, classes, images)
    sizes = rng.multinomial(n, np.full(classes, 1 / classes))
    nested, _ = nested_nulls(rng, n, sizes, count)
    per_class = [random_groups(rng, n, int(s), count) for s in sizes]

    def seconds(run) -> float:
        run()
        times = []
        for _ in range(3):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    ours = seconds(lambda: silenced_hits(network, 0, hidden, labels, nested))
    before = seconds(lambda: [silenced_hits(network, 0, hidden, labels, g) for g in per_class])
    return {"ablation_null_s_100k": ours, "ablation_null_s_100k_per_class": before,
            "ablation_null_speedup": before / ours, "ablation_batch_images": images}


def measure(parts: tuple[str, ...], pymde_limit: float) -> dict:
    result = {"cpu": cpu_model(), "cores": os.cpu_count()}
    if "quality" in parts:
        result.update(quality_10k())
    if "100k" in parts or "baselines" in parts:
        result.update(at_100k("baselines" in parts, pymde_limit))
    if "1m" in parts:
        result.update(at_1m())
    if "sharded" in parts:
        result.update(at_sharded())
    if "scene" in parts:
        result.update(at_scene())
    if "ablation" in parts:
        result.update(at_ablation())
    result.update(gpu_steps_per_s_100k=None, gpu_steps_per_s_1m=None)
    return result


def report(r: dict) -> str:
    lines = [f"CPU: {r['cpu']} ({r['cores']} cores)"]
    for key, (sense, target) in TARGETS.items():
        value = r.get(key)
        if value is None:
            lines.append(f"{key:28s}{'n/a':>12s}   target {sense} {target}")
            continue
        met = value <= target if sense == "<=" else value >= target
        lines.append(f"{key:28s}{value:12.3f}   target {sense} {target}: {'met' if met else 'MISSED'}")
    if "sharded_equal" in r:
        lines.append(f"{'sharded_equal':28s}{str(r['sharded_equal']):>12s}   steps/s on 1 and 4 host devices: "
                     + ", ".join(f"{k}: {v:.2f}" for k, v in r["sharded_steps_per_s_100k"].items()))
    for key in ("frame_ms_10k", "stress_100k", "pymde_s_100k", "pymde_unfinished_after_s", "pymde_stress_100k",
                "ours_s_to_pymde_100k", "umap_s_100k", "umap_stress_100k", "stress_1m", "ablation_null_s_100k",
                "ablation_null_s_100k_per_class", "ablation_null_speedup"):
        if r.get(key) is not None:
            lines.append(f"{key:28s}{r[key]:12.3f}")
    for name, s in r.get("quality_10k_by_source", {}).items():
        lines.append(f"10k {name}: stress exact {s['stress_exact']:.4f} sampled {s['stress_sampled']:.4f} "
                     f"(x{s['stress_ratio']:.4f}), trustworthiness {s['trust_exact']:.4f} / {s['trust_sampled']:.4f}, "
                     f"seconds {s['seconds_exact']:.1f} / {s['seconds_sampled']:.1f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--only", nargs="+", choices=PARTS, default=PARTS, help="measure these parts only")
    parser.add_argument("--child-1m", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child-sharded", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child-pymde", help=argparse.SUPPRESS)
    parser.add_argument("--pymde-limit", type=float, default=1800.0, help="seconds PyMDE may run (default 1800)")
    args = parser.parse_args()
    if args.child_1m:
        return child_1m()
    if args.child_sharded:
        return child_sharded()
    if args.child_pymde:
        return child_pymde(args.child_pymde)
    result = measure(tuple(args.only), args.pymde_limit)
    print(json.dumps(result) if args.json else report(result))


if __name__ == "__main__":
    main()
