"""Rendering for real (offscreen VTK): the scene, picking and movie files (the window: test_window.py)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import pytest

from layout.core.config import RenderConfig
from layout.core.run_folder import is_output_name
from render import style
from render.movie import Shot, export, export_settings, gif_delays, gif_step, offscreen_scene, render_shots, shot_list
from render.scene import make_scene_data, pick_neuron, project

REPO = Path(__file__).resolve().parents[1]
SMALL = RenderConfig(width=320, height=240, fps=10, settle_seconds=1.0, orbit_seconds=1.0)


def tiny_data(n_frames: int = 6, seed: int = 0, spread=None):
    """12 neurons of 3 classes drifting apart, and 3 free anchors."""
    rng = np.random.default_rng(seed)
    start = rng.normal(scale=0.3, size=(15, 3))
    end = np.concatenate([np.repeat(np.eye(3) * 2, 4, axis=0), np.eye(3) * 3]) + rng.normal(scale=0.2, size=(15, 3))
    weights = np.linspace(0, 1, n_frames)[:, None, None]
    positions = (1 - weights) * start + weights * end
    vectors = np.repeat(np.eye(3), 4, axis=0) + 0.1
    group = np.concatenate([np.repeat(np.arange(3), 4), np.arange(3)])
    return make_scene_data(positions.astype(np.float32), tuple(f"step {i}" for i in range(n_frames)), group,
                           np.arange(15) >= 12, vectors, ("zero", "one", "two"), "tiny", edges_per_neuron=1,
                           size_by="norm", spread=spread)


def decode_mp4(path: Path) -> list[np.ndarray]:
    """Every frame of an mp4, decoded by ffmpeg, as [height, width, 3] uint8."""
    import imageio_ffmpeg

    frames = imageio_ffmpeg.read_frames(str(path))
    width, height = next(frames)["size"]
    return [np.frombuffer(f, np.uint8).reshape(height, width, 3) for f in frames]


def has_color(image: np.ndarray, hex_color: str, tolerance: int = 12, at_least: int = 8) -> bool:
    target = style.hex_to_rgb(hex_color).astype(int)
    return int((np.abs(image[..., :3].astype(int) - target).max(-1) <= tolerance).sum()) >= at_least


@pytest.fixture
def scene():
    data = tiny_data()
    s = offscreen_scene(data, SMALL)
    yield s, data
    s.plotter.close()


def test_offscreen_render_is_not_blank_and_shows_the_legend_colours(scene):
    s, data = scene
    image = next(render_shots(s, data, [Shot(data.n_frames - 1, 0.0)]))
    assert image.shape == (240, 320, 3)
    background = style.hex_to_rgb("#FFFFFF")
    assert (np.abs(image.astype(int) - background).max(-1) > 30).mean() > 0.02  # something is drawn
    for color in style.CLASS_COLORS[:3]:
        assert has_color(image, color), color
    assert not has_color(image, style.CLASS_COLORS[4])  # only the classes present are in the legend


def drawn(image: np.ndarray) -> np.ndarray:
    return np.abs(image.astype(int) - style.hex_to_rgb("#FFFFFF")).max(-1) > 8


def test_halos_show_each_neurons_spread_and_move_with_it():
    images = {}
    for name, spread in (("none", None), ("zero", np.zeros(12)), ("wide", np.full(12, 0.25))):
        data = tiny_data(spread=spread)
        s = offscreen_scene(data, SMALL)
        images[name] = list(render_shots(s, data, [Shot(0, 0.0), Shot(data.n_frames - 1, 0.0)]))
        s.plotter.close()
    covered = {name: drawn(frames[1]).mean() for name, frames in images.items()}
    assert covered["wide"] > 1.5 * covered["none"]  # halos a quarter of the layout's radius wide
    assert covered["zero"] < 1.05 * covered["none"]  # no spread, no halo
    halo_only = drawn(images["wide"][1]) & ~drawn(images["none"][1])
    assert halo_only.sum() > 500
    pale = images["wide"][1][halo_only].astype(int).min(-1).mean()
    assert pale > 120  # translucent over the white background, not solid class colours
    first_halos = drawn(images["wide"][0]) & ~drawn(images["none"][0])
    assert (first_halos != halo_only).mean() > 0.01  # they follow the neurons from frame to frame


def test_moving_points_changes_the_image(scene):
    s, data = scene
    first, last = render_shots(s, data, [Shot(0, 0.0), Shot(data.n_frames - 1, 0.0)])
    assert np.abs(first.astype(int) - last.astype(int)).max(-1).astype(bool).mean() > 0.01
    again = next(render_shots(s, data, [Shot(0, 0.0)]))
    np.testing.assert_array_equal(again, first)  # frames are a pure function of the frame index


def test_picking_at_a_neurons_projected_position_returns_that_neuron(scene):
    s, data = scene
    t = data.n_frames - 1
    image = next(render_shots(s, data, [Shot(t, 0.0)]))
    screen = project(s.plotter, data.positions[t][:12])
    for k in (0, 5, 11):
        x, y = screen[k]
        assert pick_neuron(s, data, t, x, y) == k
        # the projection agrees with the picture: that pixel has the neuron's class colour (shaded)
        pixel = image[int(round(240 - 1 - y)), int(round(x))].astype(int)
        target = style.class_rgb(data.group[k:k + 1])[0].astype(int)
        assert np.abs(pixel - target).max() < 90
    assert pick_neuron(s, data, t, 2.0, 2.0) is None  # a corner far from every neuron


def test_mp4_decodes_with_the_expected_frames(tmp_path):
    data = tiny_data()
    written = export(data, tmp_path, ("mp4", "gif", "png"), SMALL)
    assert [p.name for p in written] == ["layout.mp4", "layout.gif", "snapshot.png"]
    expected = len(shot_list(data.n_frames, SMALL))
    assert expected == 20  # 1 s of settling (6 frames, resampled) + 1 s orbit at 10 fps
    frames = decode_mp4(tmp_path / "layout.mp4")
    assert len(frames) == expected and frames[0].shape == (240, 320, 3)
    assert np.abs(frames[0].astype(int) - frames[-1].astype(int)).mean() > 1  # it moves
    from PIL import Image  # Pillow, which imageio uses, merges identical consecutive gif frames

    with Image.open(tmp_path / "layout.gif") as gif:
        durations = []
        for i in range(gif.n_frames):
            gif.seek(i)
            durations.append(gif.info["duration"])
        assert gif.size == (320, 240) and 1 < gif.n_frames <= expected
    assert sum(durations) == pytest.approx(expected * 1000 / SMALL.fps, abs=10 * len(durations))
    snapshot = imageio.imread(tmp_path / "snapshot.png")
    assert snapshot.shape[:2] == (240, 320)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["layout.gif", "layout.mp4", "snapshot.png"]


def gif_durations(path: Path) -> list[int]:
    """Each frame's delay in ms, as a viewer reads it (Pillow merges identical consecutive frames)."""
    from PIL import Image

    with Image.open(path) as gif:
        durations = []
        for i in range(gif.n_frames):
            gif.seek(i)
            durations.append(gif.info["duration"])
    return durations


def test_gif_delays_are_whole_hundredths_that_add_up_to_the_movies_time():
    assert gif_delays(3, 30) == [30, 40, 30]
    assert sum(gif_delays(30, 30)) == 1000 and set(gif_delays(30, 30)) == {30, 40}
    assert gif_delays(4, 50) == [20] * 4 and [gif_step(fps) for fps in (30, 50, 51, 120)] == [1, 1, 2, 3]


def test_a_fast_gif_keeps_every_nth_frame_at_the_movies_speed(tmp_path):
    fast = RenderConfig(width=160, height=120, fps=120, settle_seconds=0.25, orbit_seconds=0.25)
    render, notes = export_settings(fast, ("gif",))
    assert render == fast and notes == ("a gif shows at most 50 frames a second (its delays are whole hundredths, "
                                        "and viewers slow down shorter ones): layout.gif keeps every 3rd frame of "
                                        "the 120 fps movie, at its speed",)
    data = tiny_data(seed=3)
    export(data, tmp_path, ("gif",), render)
    durations = gif_durations(tmp_path / "layout.gif")
    shots = len(shot_list(data.n_frames, fast))
    assert shots == 60 and min(durations) >= 20 and all(d % 10 == 0 for d in durations)
    assert sum(durations) == pytest.approx(shots * 1000 / 120, abs=10)  # 0.5 s, as the mp4 at 120 fps


def test_odd_sizes_are_rendered_a_pixel_larger_for_an_mp4_and_said_so(tmp_path):
    odd = RenderConfig(width=161, height=121, fps=10, settle_seconds=0.5, orbit_seconds=0.5)
    render, notes = export_settings(odd, ("mp4", "png"))
    assert (render.width, render.height) == (162, 122)
    assert notes == ("render.width x height = 161 x 121 is odd, and an H.264 movie needs even sizes: rendered at "
                     "162 x 122",)
    export(tiny_data(), tmp_path, ("mp4", "png"), render)
    assert decode_mp4(tmp_path / "layout.mp4")[0].shape == (122, 162, 3)
    assert imageio.imread(tmp_path / "snapshot.png").shape[:2] == (122, 162)  # every file alike
    assert export_settings(odd, ("png",)) == (odd, ())  # a png of any size is fine


def test_shot_list_settles_then_orbits_once():
    shots = shot_list(50, SMALL)
    settle, orbit = shots[:10], shots[10:]
    assert [s.frame for s in settle][0] == 0 and settle[-1].frame == 49
    assert all(s.azimuth == 0 for s in settle)
    assert [s.frame for s in orbit] == [49] * 10 and orbit[-1].azimuth == pytest.approx(360)


def test_command_exports_every_output_file(shared_data, tmp_path):
    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "layout.run", "configs/euclid.yaml", "--no-window", "--export", "mp4", "gif", "png",
         "--out", str(out), "--data-dir", str(shared_data), "--set", "render.width=320",
         "--set", "render.height=240", "--set", "render.settle_seconds=1", "--set", "render.orbit_seconds=0.5",
         "--set", "render.fps=10", "--set", "layout.sim.steps=150"],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    names = sorted(p.name for p in out.iterdir())
    assert names == ["atlas_layer1.png", "atlas_top_layer1.png", "config.yaml", "layout.gif", "layout.mp4",
                     "manifest.json", "metrics.json", "network.npz", "neurons.csv", "report.md", "snapshot.png",
                     "structure.json", "structure_layer1.png", "top_images.npz", "trajectory.npz"]
    assert all(is_output_name(name) for name in names)  # what a later run into the folder replaces
    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(manifest["files"]) == [n for n in names if n != "manifest.json"]
    for name, entry in manifest["files"].items():
        digest = hashlib.sha256((out / name).read_bytes()).hexdigest()
        assert entry == {"bytes": (out / name).stat().st_size, "sha256": digest}, name
    assert manifest["command"].startswith("neuron-layout configs/euclid.yaml --no-window --export mp4 gif png")
    frames = decode_mp4(out / "layout.mp4")
    assert len(frames) == 15 and frames[0].shape == (240, 320, 3)
    assert imageio.imread(out / "snapshot.png").shape[:2] == (240, 320)
    metrics = json.loads((out / "metrics.json").read_text())
    with np.load(out / "trajectory.npz", allow_pickle=False) as z:
        assert z["step"][-1] == metrics["layout"]["steps"] <= 150
    assert "Traceback" not in result.stderr
    for path in out.iterdir():
        assert path.stat().st_mode & 0o044  # ordinary readable files, not private temporaries


def test_activation_colorings_recolour_the_neurons_and_the_movie_cycles_them(tmp_path):
    from render.scene import activation_colorings

    activations = np.zeros((12, 3))
    activations[np.arange(12), np.arange(12) % 3] = 1.0  # neuron i fires only for class i % 3
    base = tiny_data()
    data = type(base)(**{**base.__dict__, "colorings": activation_colorings(activations, ("a", "b", "c"))})
    assert [c for c, _, _ in data.colorings] == ["a", "b", "c"]
    np.testing.assert_array_equal(data.colorings[0][1][0], style.hex_to_rgb(style.ACTIVATION_HIGH))
    np.testing.assert_array_equal(data.colorings[0][1][1], style.hex_to_rgb(style.ACTIVATION_LOW))
    s = offscreen_scene(data, SMALL)
    try:
        a, b = render_shots(s, data, [Shot(data.n_frames - 1, 0.0, 0), Shot(data.n_frames - 1, 0.0, 1)])
    finally:
        s.plotter.close()
    assert np.abs(a.astype(int) - b.astype(int)).max(-1).astype(bool).mean() > 0.002
    shots = shot_list(data.n_frames, SMALL, n_colorings=3)
    orbit = [shot.coloring for shot in shots if shot.azimuth > 0]
    assert orbit == sorted(orbit) and set(orbit) == {0, 1, 2}  # each class in turn during the orbit


def color_bars(plotter) -> list:
    props = plotter.renderer.GetViewProps()
    items = (props.GetItemAsObject(i) for i in range(props.GetNumberOfItems()))
    return [p for p in items if p.IsA("vtkScalarBarActor")]


def test_colours_that_measure_something_get_a_colour_bar_not_the_class_legend():
    from render.scene import activation_colorings, activation_scale

    base = tiny_data()
    drop = np.linspace(0, 0.04, 12)[:, None]
    data = type(base)(**{**base.__dict__, "colorings": activation_colorings(drop, ("accuracy drop when silenced",)),
                         "scale": activation_scale(drop, "accuracy drop")})
    s = offscreen_scene(data, SMALL)
    try:
        image = next(render_shots(s, data, [Shot(data.n_frames - 1, 0.0)]))
        bars = color_bars(s.plotter)
        assert s.plotter.legend is None and len(bars) == 1
        assert bars[0].GetTitle() == "accuracy drop" and bars[0].GetLookupTable().GetRange() == (0.0, 0.04)
    finally:
        s.plotter.close()
    right = image[:, int(0.85 * image.shape[1]):]  # the bar's gradient, from the pale end to the dark red
    assert has_color(right, style.ACTIVATION_HIGH, tolerance=20)
    plain = offscreen_scene(base, SMALL)  # coloured by class: the legend, no bar
    try:
        assert plain.plotter.legend is not None
        assert not color_bars(plain.plotter)
    finally:
        plain.plotter.close()
