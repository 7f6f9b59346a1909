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
  html_export_s_1k   writing layout.html for 1,000 neurons as fields (100 frames, details and top images of
                     the real test set), beside png_export_s_1k: the snapshot.png of the same scene (target <= 1 s)
  html_mb_100        the size of layout.html from configs/euclid.yaml (100 neurons, every frame; target <= 3 MB)
  html_mb_10k        the same for 10,000 neurons (target <= 25 MB), html_frames_10k the frames it keeps
  html_fps_1k        playback in headless chromium (software WebGL, SwiftShader) at 1280x720 by the page's own
                     frame counter, 1,000 neurons (target >= 30), html_fps_10k 10,000 (target >= 10)

  python benchmarks/render.py --only html   measures the page's figures alone

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
           "top_examples_s_1k": (1.0, "<="), "html_export_s_1k": (1.0, "<="), "html_mb_100": (3, "<="),
           "html_mb_10k": (25, "<="), "html_fps_1k": (30, ">="), "html_fps_10k": (10, ">=")}


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


def random_network(n: int):
    """A 784-n-10 ReLU network at its initialisation (key 0), untrained: no history, no snapshots."""
    import jax

    from models.network.mlp import init_params
    from models.network.network import History, Network, Snapshots

    params = init_params(jax.random.key(0), (784, n, 10), "relu")
    empty = np.zeros(0)
    return Network((784, n, 10), "relu", tuple(np.asarray(p["w"]) for p in params),
                   tuple(np.asarray(p["b"]) for p in params), "mnist", tuple(range(10)), tuple(map(str, range(10))),
                   History(empty, empty, empty, empty), Snapshots(empty, empty, empty, (), ()), 0.0, 0.0, 0.0, 0)


def top_examples_s(n: int, repeats: int = 5) -> float:
    """top_examples for a 784-n-10 network at its initialisation over the 10,000 test images: median
    seconds after one call that compiles."""
    from layout.core.config import DataConfig
    from layout.engine.features import top_examples
    from models.data.datasets import load_dataset

    network = random_network(n)
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


def end_to_end(cache: str, export: str = "mp4") -> tuple[float, int]:
    """(seconds, bytes of what it exported) of configs/euclid.yaml --no-window --export `export`."""
    data_dir = REPO.parent / "shared" / "data"
    env = dict(os.environ, NEURON_LAYOUT_CACHE=cache, NEURON_LAYOUT_DATA=str(data_dir))
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "layout.run", "configs/euclid.yaml", "--no-window", "--export", export,
                        "--out", out], cwd=REPO, env=env, check=True, capture_output=True)
        seconds = time.perf_counter() - start
        return seconds, (Path(out) / ("layout.html" if export == "html" else f"layout.{export}")).stat().st_size


def page_inputs(n: int, n_frames: int):
    """A moving layout of n neurons drawn as fields, with the details of each (top images from the real
    test set) and a summary, as the pipeline gives render.html.page."""
    from models.data.idx import read_idx
    from render.html.page import RunSummary
    from render.panel import NeuronDetails

    rng = np.random.default_rng(2)
    scene = moving_layout(n, n_frames, fields=True)
    test = read_idx(REPO.parent / "shared" / "data" / "mnist" / "t10k-images-idx3-ubyte.gz")
    group = scene.group[:n]
    activation = rng.random((n, 10)).astype(np.float32)
    details = NeuronDetails(receptive_fields=random_fields(n, rng), output_vectors=rng.normal(size=(n, 10)),
                            class_activation=activation, layer=np.ones(n, int), index=np.arange(n), dominant=group,
                            activation_dominant=activation.argmax(1), selectivity=rng.random(n),
                            effective_classes=1 + 9 * rng.random(n), top=rng.integers(0, len(test), (n, 9)),
                            bottom=rng.integers(0, len(test), (n, 9)), images=test)
    summary = RunSummary(("layer 1, a verdict",), (("spearman", 0.7),), ((1, "layer 1"),))
    return scene, details, summary


def html_export_s(inputs, repeats: int = 5) -> float:
    from render.html.page import write_page

    times = []
    with tempfile.TemporaryDirectory() as out:
        for _ in range(repeats):
            start = time.perf_counter()
            write_page(Path(out) / "layout.html", *inputs)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def png_export_s(data, cfg: RenderConfig) -> float:
    """The snapshot.png of the same scene, as --export png writes it (scene built, one frame, png)."""
    from render.movie import export

    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        export(data, Path(out), ("png",), cfg)
        return time.perf_counter() - start


def page_fps(inputs, seconds: float = 4.0) -> float:
    """Frames per second of the page playing its frames in headless chromium, by its own frame counter."""
    from playwright.sync_api import sync_playwright

    from render.html.page import write_page
    from tests.test_page import BROWSER_ARGS, CHROMIUM

    with tempfile.TemporaryDirectory() as out, sync_playwright() as p:
        path = write_page(Path(out) / "layout.html", *inputs)
        browser = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 720})
        page.goto(path.as_uri())
        page.wait_for_function("() => window.neuronLayout && window.neuronLayout.ready", timeout=120_000)
        page.evaluate("() => window.neuronLayout.play(true)")
        time.sleep(1.0)  # past the first frames' texture uploads
        before, start = page.evaluate("() => window.neuronLayout.rendered"), time.perf_counter()
        time.sleep(seconds)
        rendered = page.evaluate("() => window.neuronLayout.rendered") - before
        fps = rendered / (time.perf_counter() - start)
        browser.close()
    return fps


def measure_html() -> dict:
    from render.html.page import stored_frames

    cfg = RenderConfig(width=1280, height=720)
    page_1k, page_10k = page_inputs(1000, 100), page_inputs(10000, 100)
    with tempfile.TemporaryDirectory() as out, tempfile.TemporaryDirectory() as cache:
        from render.html.page import write_page

        size_10k = write_page(Path(out) / "layout.html", *page_10k).stat().st_size
        _, size_100 = end_to_end(cache, "html")
    return {"html_export_s_1k": html_export_s(page_1k), "png_export_s_1k": png_export_s(page_1k[0], cfg),
            "html_mb_100": size_100 / 1e6, "html_mb_10k": size_10k / 1e6,
            "html_frames_10k": len(stored_frames(100, 10010)),
            "html_fps_1k": page_fps(page_1k), "html_fps_10k": page_fps(page_10k)}


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
            "e2e_cold_s": cold[0], "e2e_warm_s": warm[0], **measure_html(), "frames": len(shot_list(data_1k.n_frames, cfg)),
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
    parser.add_argument("--only", choices=["html"], help="measure only the page's figures")
    args = parser.parse_args()
    result = measure_html() if args.only == "html" else measure(args.frames)
    print(json.dumps(result) if args.json else report(result))


if __name__ == "__main__":
    main()
