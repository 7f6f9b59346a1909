"""Layout speed and quality, side by side with the baselines, in one run.

    python benchmarks/layout.py [--json] [--sizes 1000 10000] [--steps-10k 10]

Output vectors (10-d) come from three sources at each size N: the real network (784-N-10 sigmoid,
trained on ../shared/data's 5k MNIST subset with this project's own training), a Gaussian cloud, and
a 10-cluster Gaussian mixture. Figures:

  steps_per_s_<n>               exact all-pairs steps/s, full force set (euclid, dominance, repulsion,
                                centering, 10 free anchors), median over the three sources; the pair
                                terms run on the native kernel (layout/engine/native.py). Each source's figure
                                (_by_source) is the median of calls timed for at least 2 s
                                (_quartiles_by_source: their 25th and 75th percentiles), as are the
                                other steps/s figures: this machine switches between a fast and a slow
                                state every second or two
  jax_steps_per_s_<n>           the same on the Gaussian vectors with the pair terms in JAX, as without
                                a C++ compiler or with NEURON_LAYOUT_NATIVE=0
  naive_steps_per_s_1k          the same energies written with N x N x 3 broadcasting and jax.grad
  stress_sklearn_1k, stress_ours_1k   scale-free stress of scikit-learn's SMACOF (metric MDS, 3-d)
                                and of `euclid` alone, on the real vectors
  tt_quality_ratio_sklearn_1k   scikit-learn's time / ours to reach within 1% of SMACOF's stress, ours
                                timed in a fresh process from build_energy on, compilation included
                                (_warm: a second process with the compiled programs cached;
                                _session: again in this process, which has compiled them already).
                                Like scikit-learn's, the timed run starts after the imports, with
                                the library started (JAX's CPU backend and the seed's key: 0.1-0.2 s
                                once per process); scikit-learn also gets its distances untimed
  ratio_d3_10k                  our steps/s / d3-force-3d's (forceManyBody + forceLink on the 10-NN
                                graph + forceCenter, run with node) at N = 10,000
  peak_rss_mb_10k               peak resident memory of a process running the N = 10,000 layout

Needs scikit-learn (pip install scikit-learn) and node with npm (d3-force-3d is installed into the
cache on first use); neither is a project dependency.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from layout.core.config import AnchorsConfig, ForcesConfig, SimConfig  # noqa: E402
from layout.core.config_file import load_config  # noqa: E402
from layout.core.files import cache_dir  # noqa: E402

TARGETS = {"steps_per_s_1k": 3500, "steps_per_s_10k": 45, "tt_quality_ratio_sklearn_1k": 20, "ratio_d3_10k": 5}
FULL = dataclasses.replace(
    ForcesConfig(), dominance=dataclasses.replace(ForcesConfig().dominance, strength=0.3))
EUCLID_ONLY = dataclasses.replace(
    ForcesConfig(), repulsion=dataclasses.replace(ForcesConfig().repulsion, strength=0.0),
    centering=dataclasses.replace(ForcesConfig().centering, strength=0.0))


# ---------------------------------------------------------------------------------------------
# Output vectors


def real_vectors(n: int) -> np.ndarray:
    """Output vectors of a 784-n-10 sigmoid network trained on the 5k MNIST subset (cached)."""
    from layout.pipeline.train_stage import data_stage, training_stage

    cfg = load_config(REPO / "configs" / "euclid.yaml", [f"model.hidden=[{n}]", "train.epochs=10",
                                                         f"data.dir={REPO.parent / 'shared' / 'data'}"])
    with tempfile.TemporaryDirectory() as out:
        network = training_stage(cfg, data_stage(cfg), Path(out), lays_out=False).network  # laid out below
    return network.weights[-1].astype(np.float32)


def synthetic_vectors(kind: str, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "gaussian":
        return rng.normal(size=(n, 10)).astype(np.float32)
    centres = rng.normal(scale=3.0, size=(10, 10))
    return (centres[rng.integers(0, 10, n)] + rng.normal(size=(n, 10))).astype(np.float32)


def vector_sets(n: int) -> dict[str, np.ndarray]:
    return {"real": real_vectors(n), "gaussian": synthetic_vectors("gaussian", n),
            "clusters": synthetic_vectors("clusters", n)}


def particles_for(vectors: np.ndarray, anchors: str = "free"):
    from layout.engine.features import NeuronFeatures
    from layout.engine.particles import make_particles

    n, c = vectors.shape
    features = NeuronFeatures(
        output_vectors=vectors, dominant=vectors.argmax(1), activation_dominant=vectors.argmax(1),
        class_activation=np.zeros((n, c), np.float32), receptive_fields=np.zeros((n, 1, 1), np.float32),
        layer=np.zeros(n, int), index=np.arange(n), class_names=tuple(map(str, range(c))), influence="weights")
    return make_particles(features, AnchorsConfig(mode=anchors))


# ---------------------------------------------------------------------------------------------
# Steps per second


def call_rates(call, steps: int, repeats: int = 7, seconds: float = 2.0) -> np.ndarray:
    """Steps/s of each timed call() (which runs `steps` steps and waits for them): at least `repeats`
    calls and at least `seconds` of them. This machine switches between a fast and a slow state every
    second or two (about 5,600 and 3,800 steps/s at N = 1,000): a few calls catch one of them, and the
    figure then depends on which."""
    rates, start = [], time.perf_counter()
    while len(rates) < repeats or time.perf_counter() - start < seconds:
        begin = time.perf_counter()
        call()
        rates.append(steps / (time.perf_counter() - begin))
    return np.array(rates)


def step_rates(vectors: np.ndarray, forces: ForcesConfig, steps: int, repeats: int = 7,
               seconds: float = 2.0) -> np.ndarray:
    """Steps/s of each timed call of the compiled simulation (call_rates), compilation excluded."""
    import jax
    import jax.numpy as jnp

    from layout.engine.energies import build_energy
    from layout.engine.simulate import State, make_chunk

    particles = particles_for(vectors)
    terms = build_energy(particles, forces)
    cfg = SimConfig(steps=10**9, record_every=steps, chunk=steps, settle=0)
    run = make_chunk(terms, particles.movable, cfg, 1)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(particles.n_particles, 3)), jnp.float32)
    state = State(x, jnp.zeros_like(x), jnp.int32(0), jnp.int32(-1), jnp.bool_(False))
    state = jax.block_until_ready(run(state))[0]

    def call():
        nonlocal state
        state = jax.block_until_ready(run(state))[0]

    rates = call_rates(call, steps, repeats, seconds)
    if int(state.stop) >= 0:  # a stopped simulation skips most of a step's work: its time would flatter us
        raise RuntimeError(f"the timed simulation stopped at step {int(state.stop)} (failed: {bool(state.failed)})")
    return rates


def steps_per_second(vectors: np.ndarray, forces: ForcesConfig, steps: int, repeats: int = 7,
                     seconds: float = 2.0) -> float:
    """The median of step_rates."""
    return float(np.median(step_rates(vectors, forces, steps, repeats, seconds)))


@contextlib.contextmanager
def native_off():
    """The pair terms in JAX instead of the native kernel, for the side-by-side figure."""
    before = os.environ.get("NEURON_LAYOUT_NATIVE")
    os.environ["NEURON_LAYOUT_NATIVE"] = "0"
    try:
        yield
    finally:
        if before is None:
            del os.environ["NEURON_LAYOUT_NATIVE"]
        else:
            os.environ["NEURON_LAYOUT_NATIVE"] = before


def naive_steps_per_second(vectors: np.ndarray, steps: int = 20) -> float:
    """The baseline: all pairs by N x N x 3 broadcasting, differentiated by jax.grad."""
    import jax
    import jax.numpy as jnp

    v = jnp.asarray(vectors)
    r = jnp.sqrt(((v[:, None] - v[None]) ** 2).sum(-1))
    r = r / r.mean()
    off = 1.0 - jnp.eye(len(v))

    def energy(x):
        d = jnp.sqrt(((x[:, None] - x[None]) ** 2).sum(-1) + 1e-6)
        stress = (off * (d - r) ** 2).sum() / 2 / len(v)
        repulsion = 0.02 * (off * jax.lax.rsqrt(d**2 + 0.0025)).sum() / 2 / len(v)
        return stress + repulsion + 0.01 * (x**2).sum() / 2

    grad = jax.grad(energy)

    @jax.jit
    def run(x):
        return jax.lax.fori_loop(0, steps, lambda i, x: x - 0.1 * grad(x), x)

    x = jnp.asarray(np.random.default_rng(0).normal(size=(len(v), 3)), jnp.float32)
    x = jax.block_until_ready(run(x))
    return float(np.median(call_rates(lambda: jax.block_until_ready(run(x)), steps)))


# ---------------------------------------------------------------------------------------------
# Time to quality against scikit-learn


def stress_of(vectors: np.ndarray, positions: np.ndarray) -> float:
    from scipy.spatial.distance import pdist

    from layout.engine.metrics import normalized_stress

    return normalized_stress(pdist(vectors.astype(np.float64)), pdist(positions.astype(np.float64)))


def sklearn_mds(vectors: np.ndarray) -> tuple[float, float]:
    """(seconds, stress) of scikit-learn's SMACOF, metric MDS to 3-d, one init (its best case)."""
    from scipy.spatial.distance import pdist, squareform
    from sklearn.manifold import MDS

    dissimilarities = squareform(pdist(vectors.astype(np.float64)))
    with warnings.catch_warnings():  # its parameters are being renamed; these work in 1.x
        warnings.simplefilter("ignore", FutureWarning)
        start = time.perf_counter()
        mds = MDS(n_components=3, metric=True, n_init=1, max_iter=300, eps=1e-6, random_state=0,
                  dissimilarity="precomputed", normalized_stress=False)
        positions = mds.fit_transform(dissimilarities)
        seconds = time.perf_counter() - start
    return seconds, stress_of(vectors, positions)


def time_to_quality(vectors: np.ndarray, target: float) -> tuple[float | None, float, int | None]:
    """(seconds from build_energy on, compilation included, to the end of the first chunk whose frames
    reach `target` stress; final stress; step reached) for `euclid` alone."""
    import jax

    from layout.engine.energies import build_energy
    from layout.engine.simulate import simulate

    particles = particles_for(vectors, anchors="none")
    cfg = SimConfig(steps=600, record_every=5, chunk=10, settle=0)
    stamps = []
    # JAX's backend started and the seed's key made before the clock starts: 0.1-0.2 s once per
    # process, like the imports (scikit-learn takes its seed as a number)
    key = jax.random.key(0)
    start = time.perf_counter()
    terms = build_energy(particles, EUCLID_ONLY)
    trajectory = simulate(terms, particles, cfg, key,
                          on_chunk=lambda step, total: stamps.append((step, time.perf_counter() - start)))
    reached = [s for s, x in zip(trajectory.step, trajectory.positions) if stress_of(vectors, x) <= target]
    final = stress_of(vectors, trajectory.final)
    if not reached:
        return None, final, None
    step = int(reached[0])
    return next(t for s, t in stamps if s >= step), final, step


def time_to_quality_in_child(scratch: str, target: float, label: str) -> tuple:
    """time_to_quality for scratch/vectors.npy in a fresh interpreter whose JAX compilation cache is
    scratch/jit (empty on the first call, filled by it for the next)."""
    out = subprocess.run([sys.executable, __file__, "--ttq-child", scratch, str(target), label],
                         check=True, capture_output=True, text=True)
    return tuple(json.loads(out.stdout.strip().splitlines()[-1]))


def ttq_child(scratch: str, target: float) -> None:
    from models.network.train import enable_compilation_cache

    enable_compilation_cache(Path(scratch) / "jit")
    print(json.dumps(time_to_quality(np.load(Path(scratch) / "vectors.npy"), target)))


# ---------------------------------------------------------------------------------------------
# d3-force-3d and memory


def d3_steps_per_second(vectors: np.ndarray, ticks: int) -> float:
    """d3-force-3d's steps/s on the same particles, run with node."""
    from scipy.spatial import cKDTree

    folder = cache_dir() / "benchmarks" / "npm"
    if not (folder / "node_modules" / "d3-force-3d").is_dir():
        folder.mkdir(parents=True, exist_ok=True)
        subprocess.run(["npm", "install", "--no-save", "--prefix", str(folder), "d3-force-3d@3"], check=True,
                       capture_output=True)
    shutil.copy(REPO / "benchmarks" / "d3_layout.mjs", folder / "d3_layout.mjs")
    distances, neighbours = cKDTree(vectors).query(vectors, k=11)
    scale = 30.0 / distances[:, 1:].mean()  # d3's default link distance is 30
    links = [[i, int(j), float(d * scale)] for i in range(len(vectors))
             for j, d in zip(neighbours[i, 1:], distances[i, 1:]) if i < j or i not in neighbours[j, 1:]]
    positions = np.random.default_rng(0).normal(scale=100, size=(len(vectors), 3)).tolist()
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump({"positions": positions, "links": links}, f)
    out = subprocess.run(["node", str(folder / "d3_layout.mjs"), f.name, str(ticks)], check=True,
                         capture_output=True, text=True)
    Path(f.name).unlink()
    return 1.0 / json.loads(out.stdout)["median_step_s"]


def peak_rss_child(n: int, steps: int) -> None:
    """Run by a fresh interpreter: the full N-particle layout for `steps` steps; print peak RSS in MB."""
    vectors = synthetic_vectors("clusters", n)
    steps_per_second(vectors, FULL, steps, repeats=1, seconds=0.0)
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the forking parent across exec
    status = Path("/proc/self/status").read_text()
    print(int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1]) / 1024)


def peak_rss_mb(n: int, steps: int) -> float:
    out = subprocess.run([sys.executable, __file__, "--peak-rss-child", str(n), "--steps-10k", str(steps)],
                         check=True, capture_output=True, text=True)
    return float(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------


def measure(sizes: list[int], steps_10k: int) -> dict:
    result: dict = {"sources": ["real", "gaussian", "clusters"]}
    for n in sizes:
        label = f"{n // 1000}k"
        steps = 100 if n <= 2000 else steps_10k
        sets = vector_sets(n)
        rates = {name: step_rates(v, FULL, steps) for name, v in sets.items()}
        per_source = {name: float(np.median(r)) for name, r in rates.items()}
        result[f"steps_per_s_{label}_by_source"] = per_source
        result[f"steps_per_s_{label}_quartiles_by_source"] = {
            name: np.percentile(r, [25, 75]).tolist() for name, r in rates.items()}
        result[f"steps_per_s_{label}"] = statistics.median(per_source.values())
        result[f"gpairs_per_s_{label}"] = result[f"steps_per_s_{label}"] * (n + 10) ** 2 / 1e9
        with native_off():
            result[f"jax_steps_per_s_{label}"] = steps_per_second(sets["gaussian"], FULL, steps)
        if n == 1000:
            result["naive_steps_per_s_1k"] = naive_steps_per_second(sets["real"])
            for name, v in sets.items():
                sk_seconds, sk_stress = sklearn_mds(v)
                target = 1.01 * sk_stress
                with tempfile.TemporaryDirectory() as scratch:  # fresh processes: the first one compiles
                    np.save(Path(scratch) / "vectors.npy", v)
                    cold, ours_stress, step = time_to_quality_in_child(scratch, target, "cold")
                    warm, _, _ = time_to_quality_in_child(scratch, target, "warm")
                time_to_quality(v, target)  # compile in this process, then time a run that reuses it
                session, _, _ = time_to_quality(v, target)
                result[f"quality_1k_{name}"] = {
                    "stress_sklearn": sk_stress, "sklearn_s": sk_seconds, "stress_ours": ours_stress,
                    "step_reached": step, "ours_s_cold": cold, "ours_s_warm": warm, "ours_s_session": session,
                    **{f"ratio_{k}": (sk_seconds / t if t else None)
                       for k, t in (("cold", cold), ("warm", warm), ("session", session))}}
            real = result["quality_1k_real"]
            result.update(stress_sklearn_1k=real["stress_sklearn"], stress_ours_1k=real["stress_ours"],
                          tt_quality_ratio_sklearn_1k=real["ratio_cold"],
                          tt_quality_ratio_sklearn_1k_warm=real["ratio_warm"],
                          tt_quality_ratio_sklearn_1k_session=real["ratio_session"])
        if n == 10000:
            d3 = d3_steps_per_second(sets["real"], ticks=10)
            result.update(d3_steps_per_s_10k=d3, ratio_d3_10k=result["steps_per_s_10k"] / d3,
                          peak_rss_mb_10k=peak_rss_mb(n, steps_10k))
    return result


def report(r: dict) -> str:
    lines = []
    for key, target in TARGETS.items():
        if key in r and r[key] is not None:
            lines.append(f"{key:32s}{r[key]:12.2f}   target >= {target}: {'met' if r[key] >= target else 'MISSED'}")
    for key in ("tt_quality_ratio_sklearn_1k_warm", "tt_quality_ratio_sklearn_1k_session", "jax_steps_per_s_1k",
                "jax_steps_per_s_10k", "naive_steps_per_s_1k", "gpairs_per_s_1k", "gpairs_per_s_10k",
                "d3_steps_per_s_10k", "stress_sklearn_1k", "stress_ours_1k", "peak_rss_mb_10k"):
        if key in r:
            lines.append(f"{key:32s}{r[key]:12.3f}" + ("   target < 1024" if key == "peak_rss_mb_10k" else ""))
    for key in sorted(k for k in r if k.startswith("quality_1k_")):
        q = r[key]
        lines.append(f"{key}: sklearn {q['sklearn_s']:.2f} s, stress {q['stress_sklearn']:.4f}; ours to within 1% "
                     f"(step {q['step_reached']}): {q['ours_s_cold']:.3f} s new process compiling, "
                     f"{q['ours_s_warm']:.3f} s new process with compiled programs cached, "
                     f"{q['ours_s_session']:.3f} s in a session; our final stress {q['stress_ours']:.4f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--steps-10k", type=int, default=10, help="steps timed per repeat at N = 10,000")
    parser.add_argument("--peak-rss-child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--ttq-child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peak_rss_child:
        return peak_rss_child(args.peak_rss_child, args.steps_10k)
    if args.ttq_child:
        scratch, target, _ = args.ttq_child
        return ttq_child(scratch, float(target))
    from models.network.train import enable_compilation_cache

    with tempfile.TemporaryDirectory() as jit_cache:  # starts empty: the first compile of each is timed
        enable_compilation_cache(jit_cache)
        result = measure(args.sizes, args.steps_10k)
    print(json.dumps(result) if args.json else report(result))


if __name__ == "__main__":
    main()
