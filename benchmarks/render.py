"""Rendering speed, side by side with a plain PyVista loop, in one run.

    python benchmarks/render.py [--json] [--frames 90]

  export_fps         our mp4 export at 1280x720 with 1,000 neurons (+10 anchors): frames per second
                     including encoding (target >= 30)
  plain_fps          a plain PyVista loop on the same frames: open_movie + write_frame, the neurons
                     as sphere glyphs rebuilt per frame (PyVista's movie example)
  export_ratio       export_fps / plain_fps (target >= 1.5)
  frame_ms_10k       one frame (move points, render, read back) with 10,000 neurons (target <= 33 ms)
  field_export_fps   the same mp4 export with the 1,000 neurons drawn as their fields (render.glyph: field)
                     (target >= 30), beside sphere_export_fps (the spheres, measured again in this run)
  field_ratio        field_export_fps / sphere_export_fps (target >= 0.8)
  field_frame_ms_10k one frame with 10,000 neurons as fields (the default top 2,000 as images, dots for
                     the rest), beside sphere_frame_ms_10k (target: field_frame_ratio <= 1.5)
  atlas_build_s_10k  the glyph images and their texture atlas for 10,000 neurons, all of them as
                     images (target <= 0.3 s)
  top_examples_s_1k  the 9 most and least activating test images of each of 1,000 neurons (a 784-1000-10
                     network) over the 10,000 test images, after compilation (target <= 1 s)
  e2e_cold_s         `python -m layout.run configs/euclid.yaml --no-window --export mp4` with an empty
                     cache: training, compilation and all (target <= 30 s)
  e2e_warm_s         the same again: cached network and compiled programs (target <= 10 s)

Rendering is software (no GPU) on this machine; timings are medians over the frames.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from layout.core.config import RenderConfig  # noqa: E402
from render.glyphs import atlas, field_images  # noqa: E402
from render.movie import offscreen_scene, render_shots, shot_list, write_mp4  # noqa: E402
from render.scene import make_scene_data  # noqa: E402

TARGETS = {"export_fps": (30, ">="), "export_ratio": (1.5, ">="), "frame_ms_10k": (33, "<="),
           "e2e_cold_s": (30, "<="), "e2e_warm_s": (10, "<="), "field_export_fps": (30, ">="),
           "field_ratio": (0.8, ">="), "field_frame_ratio": (1.5, "<="), "atlas_build_s_10k": (0.3, "<="),
           "top_examples_s_1k": (1.0, "<=")}


def random_fields(n: int, rng) -> np.ndarray:
    """[n, 28, 28] fields with blobs, as trained ones have: smoothed noise."""
    noise = rng.normal(size=(n, 28, 28)).astype(np.float32)
    for axis in (1, 2):
        noise = (noise + np.roll(noise, 1, axis) + np.roll(noise, -1, axis)) / 3
    return noise


def moving_layout(n: int, n_frames: int, seed: int = 0, fields: bool = False, top: int = 2000):
    """n neurons of 10 classes drifting into 10 clusters, with 10 anchors: a SceneData (with `fields`,
    the neurons drawn as random receptive fields, the `top` largest as images)."""
    rng = np.random.default_rng(seed)
    group = rng.integers(0, 10, n)
    centres = rng.normal(scale=2.0, size=(10, 3))
    start = rng.normal(size=(n + 10, 3))
    end = np.concatenate([centres[group] + 0.3 * rng.normal(size=(n, 3)), centres * 1.4])
    w = np.linspace(0, 1, n_frames)[:, None, None]
    positions = ((1 - w) * start + w * end).astype(np.float32)
    vectors = np.eye(10)[group] + 0.2 * rng.random((n, 10))
    images = None
    if fields:
        images = field_images(random_fields(n, rng), group, np.zeros(n, int), np.linalg.norm(vectors, axis=1),
                              "neuron", top)
    return make_scene_data(positions, tuple(f"step {i}" for i in range(n_frames)),
                           np.concatenate([group, np.arange(10)]), np.arange(n + 10) >= n, vectors,
                           tuple(map(str, range(10))), "benchmark", edges_per_neuron=0, size_by="norm", fields=images)


def top_examples_s(n: int, repeats: int = 5) -> float:
    """top_examples for a 784-n-10 network at its initialisation over the 10,000 test images: median
    seconds after one call that compiles."""
    import jax

    from layout.core.config import DataConfig
    from layout.engine.features import top_examples
    from models.data.datasets import load_dataset
    from models.network.mlp import init_params
    from models.network.network import History, Network, Snapshots

    params = init_params(jax.random.key(0), (784, n, 10), "relu")
    empty = np.zeros(0)
    network = Network((784, n, 10), "relu", tuple(np.asarray(p["w"]) for p in params),
                      tuple(np.asarray(p["b"]) for p in params), "mnist", tuple(range(10)), tuple(map(str, range(10))),
                      History(empty, empty, empty, empty), Snapshots(empty, empty, empty, (), ()), 0.0, 0.0, 0.0, 0)
    images = load_dataset(DataConfig(dir=str(REPO.parent / "shared" / "data"))).test.images
    top_examples(network, images, 9)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        top_examples(network, images, 9)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def atlas_build_s(n: int, repeats: int = 5) -> float:
    """The glyph images and their atlas for n neurons, all as images: median seconds."""
    rng = np.random.default_rng(1)
    fields, group, norms = random_fields(n, rng), rng.integers(0, 10, n), rng.random(n)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        atlas(field_images(fields, group, np.zeros(n, int), norms, "neuron", n).tiles)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def our_export_fps(data, cfg: RenderConfig) -> float:
    scene = offscreen_scene(data, cfg)
    shots = shot_list(data.n_frames, cfg)
    try:
        with tempfile.TemporaryDirectory() as out:
            start = time.perf_counter()
            write_mp4(Path(out) / "layout.mp4", render_shots(scene, data, shots), cfg)
            return len(shots) / (time.perf_counter() - start)
    finally:
        scene.plotter.close()


def plain_fps(data, cfg: RenderConfig) -> float:
    """PyVista's movie example applied to the same frames: glyph spheres rebuilt per frame."""
    import pyvista as pv

    plotter = pv.Plotter(off_screen=True, window_size=(cfg.width, cfg.height))
    shots = shot_list(data.n_frames, cfg)
    sphere = pv.Sphere(radius=1.0, theta_resolution=12, phi_resolution=12)
    with tempfile.TemporaryDirectory() as out:
        plotter.open_movie(str(Path(out) / "plain.mp4"), framerate=cfg.fps)
        cloud = pv.PolyData(data.positions[0])
        cloud["radius"] = data.radius
        cloud["group"] = data.group
        plotter.add_mesh(cloud.glyph(scale="radius", geom=sphere, orient=False), scalars="group", name="glyphs")
        plotter.camera_position = "iso"
        start = time.perf_counter()
        for shot in shots:
            cloud = pv.PolyData(data.positions[shot.frame])
            cloud["radius"] = data.radius
            cloud["group"] = data.group
            plotter.add_mesh(cloud.glyph(scale="radius", geom=sphere, orient=False), scalars="group",
                             name="glyphs", show_scalar_bar=False)
            plotter.camera.azimuth = shot.azimuth
            plotter.write_frame()
        seconds = time.perf_counter() - start
        plotter.close()
    return len(shots) / seconds


def frame_ms(data, cfg: RenderConfig, repeats: int = 30) -> float:
    scene = offscreen_scene(data, cfg)
    from render.movie import Shot

    try:
        times = []
        shots = [Shot(i % data.n_frames, 0.0) for i in range(repeats)]
        images = render_shots(scene, data, shots)
        for _ in shots:
            start = time.perf_counter()
            next(images)
            times.append(time.perf_counter() - start)
        return 1000 * statistics.median(times)
    finally:
        scene.plotter.close()


def end_to_end(cache: str) -> float:
    data_dir = REPO.parent / "shared" / "data"
    env = dict(os.environ, NEURON_LAYOUT_CACHE=cache, NEURON_LAYOUT_DATA=str(data_dir))
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "layout.run", "configs/euclid.yaml", "--no-window", "--export", "mp4",
                        "--out", out], cwd=REPO, env=env, check=True, capture_output=True)
        return time.perf_counter() - start


def measure(n_frames: int) -> dict:
    cfg = RenderConfig(width=1280, height=720, fps=30, settle_seconds=n_frames / 60, orbit_seconds=n_frames / 60)
    data_1k = moving_layout(1000, 60)
    ours, plain = our_export_fps(data_1k, cfg), plain_fps(data_1k, cfg)
    field_1k = moving_layout(1000, 60, fields=True)
    sphere_again, field = our_export_fps(data_1k, cfg), our_export_fps(field_1k, cfg)  # side by side
    sphere_10k = frame_ms(moving_layout(10000, 10), cfg)
    field_10k = frame_ms(moving_layout(10000, 10, fields=True), cfg)
    with tempfile.TemporaryDirectory() as cache:
        cold = end_to_end(cache)
        warm = end_to_end(cache)
    return {"export_fps": ours, "plain_fps": plain, "export_ratio": ours / plain,
            "sphere_export_fps": sphere_again, "field_export_fps": field, "field_ratio": field / sphere_again,
            "sphere_frame_ms_10k": sphere_10k, "field_frame_ms_10k": field_10k,
            "field_frame_ratio": field_10k / sphere_10k, "atlas_build_s_10k": atlas_build_s(10000),
            "top_examples_s_1k": top_examples_s(1000),
            "frame_ms_1k": frame_ms(data_1k, cfg), "frame_ms_10k": sphere_10k,
            "e2e_cold_s": cold, "e2e_warm_s": warm, "frames": len(shot_list(data_1k.n_frames, cfg)),
            "size": [cfg.width, cfg.height]}


def report(r: dict) -> str:
    lines = []
    for key, value in r.items():
        if key in TARGETS:
            target, sense = TARGETS[key]
            met = value >= target if sense == ">=" else value <= target
            lines.append(f"{key:16s}{value:10.2f}   target {sense} {target}: {'met' if met else 'MISSED'}")
        elif isinstance(value, float):
            lines.append(f"{key:16s}{value:10.2f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--frames", type=int, default=90, help="movie frames to export per measurement")
    args = parser.parse_args()
    result = measure(args.frames)
    print(json.dumps(result) if args.json else report(result))


if __name__ == "__main__":
    main()
