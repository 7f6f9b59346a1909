"""The interactive window, as a user drives it: playback, keys, the slider and a click that fills the
details panel. Drawn offscreen and driven by VTK's own interactor events, so no display is needed;
where Xvfb exists, the same window also opens on a real X server."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from layout.core.config import RenderConfig
from render import style
from render.glyphs import field_images
from render.scene import activation_colorings, project, sphere_radii
from render.window import NeuronDetails, build_window
from tests.test_render import tiny_data

REPO = Path(__file__).resolve().parents[1]
WINDOW = RenderConfig(width=480, height=320, fps=20)
N = 12  # tiny_data's neurons


def details_for_tiny(rows: int = 28, cols: int = 28, *channels: int) -> NeuronDetails:
    """Neuron i looks at one pixel of its own, (i, 2i), with weight i + 1, and one negative pixel; its
    top images are 3i..3i+2 of 40 made-up test images, its bottom ones 39-3i, ... (images of rows x cols
    pixels: MNIST's 28 x 28, or the user's own data's; with `channels` (3), colour images, the weight
    i + 1 in the red channel, -(i + 1) / 2 in the blue one)."""
    fields = np.zeros((N, rows, cols, *channels), np.float32)
    for i in range(N):
        fields[i, i, 2 * i] = [i + 1, 0, -(i + 1) / 2] if channels else i + 1
        fields[i, rows - 1 - i, 0] = -0.5
    classes = np.arange(N) // 4
    images = np.random.default_rng(0).integers(0, 256, (40, rows, cols, *channels)).astype(np.uint8)
    top = np.arange(N)[:, None] * 3 + np.arange(3)
    return NeuronDetails(receptive_fields=fields, output_vectors=np.eye(3)[classes] * 0.8,
                         class_activation=np.eye(3)[classes] * 0.6 + 0.1, layer=np.ones(N, int), index=np.arange(N),
                         dominant=classes, activation_dominant=(classes + 1) % 3,
                         selectivity=np.linspace(0, 1, N), effective_classes=np.linspace(1, 3, N),
                         top=top, bottom=39 - top, images=images)


@pytest.fixture(params=[(28, 28), (20, 24), (28, 28, 3)], ids=["mnist", "20x24 images", "colour images"])
def window(request):
    data = tiny_data()
    data = type(data)(**{**data.__dict__, "colorings": activation_colorings(
        np.eye(3)[np.arange(N) % 3], ("fires for zero", "fires for one", "fires for two"))})
    player = build_window(data, WINDOW, details_for_tiny(*request.param), off_screen=True)
    player.scene.plotter.render()
    yield player
    player.scene.plotter.close()


def interactor(player):
    return player.scene.plotter.iren.interactor


def tick(player, times: int = 1) -> None:
    for _ in range(times):
        interactor(player).InvokeEvent("TimerEvent")


def press(player, key: str) -> None:
    interactor(player).SetKeySym(key)
    interactor(player).InvokeEvent("KeyPressEvent")


def test_the_timer_plays_the_frames_in_a_loop_and_moves_the_slider(window):
    n_frames = window.data.n_frames
    positions = []
    for expected in [1, 2, 3, 4, 5, 0, 1]:
        tick(window)
        assert window.frame == expected
        assert window.slider.GetRepresentation().GetValue() == expected
        positions.append(np.asarray(window.scene.neurons.points).copy())
    assert n_frames == 6
    np.testing.assert_allclose(positions[0], window.data.positions[1][:N])  # the scene shows the frame
    np.testing.assert_allclose(positions[4], window.data.positions[5][:N])


def test_space_pauses_and_plays_and_o_orbits_the_camera(window):
    tick(window, 2)
    press(window, "space")
    assert not window.playing
    tick(window, 3)
    assert window.frame == 2  # paused: the frame stays
    azimuth = window.scene.plotter.camera.azimuth
    press(window, "o")
    tick(window, 4)
    assert window.frame == 2 and window.scene.plotter.camera.azimuth == pytest.approx(azimuth + 2.0)
    press(window, "space")
    tick(window)
    assert window.playing and window.frame == 3


def test_c_cycles_the_colourings_and_the_title_names_each(window):
    rgb = []
    for _ in range(3):
        rgb.append(np.asarray(window.scene.neurons["rgb"]).copy())
        press(window, "c")
    assert window.coloring == 0  # three colourings, back to the first
    assert not np.array_equal(rgb[0], rgb[1]) and not np.array_equal(rgb[1], rgb[2])
    press(window, "c")
    assert "fires for one" in window.scene.title.GetInput()


def test_the_slider_scrubs_to_a_frame(window):
    slider = window.slider
    slider.GetRepresentation().SetValue(4.2)
    slider.InvokeEvent("InteractionEvent")
    assert window.frame == 4
    np.testing.assert_allclose(np.asarray(window.scene.neurons.points), window.data.positions[4][:N])


def click(player, x: float, y: float) -> None:
    """A left click at window pixel (x, y), VTK's origin (bottom left): press, then release."""
    interactor(player).SetEventInformation(int(round(x)), int(round(y)))
    interactor(player).InvokeEvent("LeftButtonPressEvent")
    interactor(player).InvokeEvent("LeftButtonReleaseEvent")


def test_a_click_on_a_neuron_fills_the_details_panel(window):
    plotter = window.scene.plotter
    panel = window.panel
    details = details_for_tiny(*panel.details.receptive_fields.shape[1:])
    rows, cols = details.receptive_fields.shape[1:3]
    colour = details.receptive_fields.ndim == 4
    assert panel.text.GetText(2) == "click a neuron"
    tick(window, 5)  # the last frame, where the classes sit apart
    plotter.render()
    screen = project(plotter, window.data.positions[window.frame][:N])
    gaps = np.linalg.norm(screen[:, None] - screen[None], axis=2) + np.eye(N) * 1e9
    alone = np.flatnonzero(gaps.min(1) > 15)  # no other neuron within the 12 pixels a click may miss by
    assert len(alone) >= 2
    for k in alone[:2]:
        click(window, *screen[k])
        assert window.selected == k
        text = panel.text.GetText(2)
        assert text.startswith(f"neuron {k}: layer 1, index {k}\n")  # layers numbered from 1, as everywhere
        assert f"drives hardest: {window.data.class_names[k // 4]}" in text
        assert f"selectivity {details.selectivity[k]:.3f}" in text
        shown = np.flipud(np.asarray(panel.field.point_data["rgb"]).reshape(rows * panel.field_zoom,
                                                                             cols * panel.field_zoom, 3))
        if colour:  # each channel from 0 at -limit through mid grey at 0 to 255 at +limit; no colour bar
            expected = np.rint(255 * (0.5 + 0.5 * details.receptive_fields[k] / (k + 1))).astype(np.uint8)
            assert not panel.field_bar.GetVisibility()
        else:
            expected = style.diverging_rgb(details.receptive_fields[k], k + 1)  # symmetric limits: white at 0
            assert panel.field_bar.GetLookupTable().GetRange() == (-(k + 1), k + 1)
        np.testing.assert_array_equal(shown[::panel.field_zoom, ::panel.field_zoom], expected)  # exact pixels
        np.testing.assert_allclose(np.ravel(panel.weights.y), details.output_vectors[k])
        np.testing.assert_allclose(np.ravel(panel.activation.y), details.class_activation[k])
        strip = np.flipud(np.asarray(panel.top.point_data["rgb"]).reshape(rows, -1, 3))
        for j, image in enumerate(details.top[k]):
            drawn = strip[:, j * (cols + 2):j * (cols + 2) + cols]  # a colour image as it is, grey as ink on white
            np.testing.assert_array_equal(drawn if colour else drawn[..., 0],
                                          details.images[image] if colour else 255 - details.images[image])
        assert np.asarray(window.scene.neurons["radius"])[k] == pytest.approx(
            sphere_radii(window.data)[k] * 1.8)  # the clicked neuron is drawn larger
    click(window, 2, 2)  # a corner: no neuron there, the panel keeps the last one
    assert window.selected == k and panel.text.GetText(2).startswith(f"neuron {k}:")


def test_hovering_over_a_neuron_names_it_and_its_class(window):
    tick(window, 5)
    window.scene.plotter.render()
    screen = project(window.scene.plotter, window.data.positions[window.frame][:N])
    interactor(window).SetEventInformation(int(round(screen[9][0])), int(round(screen[9][1])))
    interactor(window).InvokeEvent("MouseMoveEvent")
    assert window.hover.GetInput() in {f"neuron {k}: drives {window.data.class_names[k // 4]}" for k in range(N)
                                       if np.hypot(*(screen[k] - screen[9])) <= 12}
    interactor(window).SetEventInformation(2, 2)
    interactor(window).InvokeEvent("MouseMoveEvent")
    assert window.hover.GetInput() == ""


def field_data():
    """tiny_data with its neurons drawn as their fields (render.glyph: field)."""
    data, details = tiny_data(), details_for_tiny()
    images = field_images(details.receptive_fields, details.dominant, np.zeros(N, int), np.ones(N), "neuron", 2000)
    return type(data)(**{**data.__dict__, "fields": images})


def test_glyphs_in_the_window_face_the_camera_and_a_click_on_one_picks_it():
    player = build_window(field_data(), WINDOW, details_for_tiny(), off_screen=True)
    try:
        plotter = player.scene.plotter
        tick(player, 5)
        plotter.render()
        quads = np.asarray(player.scene.glyphs.mesh.points).reshape(N, 4, 3)
        np.testing.assert_allclose(quads.mean(1), player.data.positions[player.frame][:N], atol=1e-5)
        screen = project(plotter, quads.reshape(-1, 3)).reshape(N, 4, 2)
        picked = []
        for k in range(N):
            near_corner = screen[k, 0] + 0.2 * (screen[k, 2] - screen[k, 0])  # inside the square, off centre
            others = [j for j in range(N) if j != k and (screen[j].min(0) <= near_corner).all()
                      and (near_corner <= screen[j].max(0)).all()]
            if others:  # another glyph covers that pixel too: the test needs a pixel of k's alone
                continue
            click(player, *near_corner)
            assert player.selected == k
            picked.append(k)
        assert len(picked) >= 3
    finally:
        plotter.close()


@pytest.fixture
def xvfb():
    """A virtual display for the real-window test (apt-get install xvfb; .ci/run installs it)."""
    if shutil.which("Xvfb") is None:
        pytest.skip("Xvfb is not installed (apt-get install xvfb): the offscreen tests above drive the same window")
    number = next(n for n in range(97, 200) if not Path(f"/tmp/.X{n}-lock").exists())  # a free display
    display = f":{number}"
    server = subprocess.Popen(["Xvfb", display, "-screen", "0", "1024x768x24", "-nolisten", "tcp"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    assert server.poll() is None, "Xvfb did not start"
    yield display
    server.terminate()
    server.wait(timeout=10)


WINDOW_SCRIPT = """
import json
from layout.core.config import RenderConfig
from render.window import show_window
from tests.test_window import details_for_tiny, field_data
player = show_window(field_data(), RenderConfig(width=400, height=300, fps=20), details_for_tiny(),
                     close_after_frames=15)
print(json.dumps({"frame": player.frame, "window": type(player.scene.plotter.ren_win).__name__}))
"""


def test_window_opens_on_a_real_display_plays_frames_and_closes_on_its_own(xvfb):
    env = dict(os.environ, DISPLAY=xvfb)
    result = subprocess.run([sys.executable, "-c", WINDOW_SCRIPT], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["frame"] > 0  # the timer advanced the playback
    assert "OffScreen" not in report["window"] and "EGL" not in report["window"]  # a real X window


def test_n_p_and_digit_keys_probe_other_test_images(tmp_path):
    from render.scene import probe_coloring
    from render.window import ProbeData

    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (20, 28, 28)).astype(np.uint8)
    labels = np.arange(20) % 3
    activations = rng.random((20, N)).astype(np.float32)
    probabilities = np.full((20, 3), 1 / 3)
    probe = ProbeData(images, labels, activations, probabilities, start=4)
    data = field_data()
    data = type(data)(**{**data.__dict__, "colorings": (probe_coloring(activations[4], "first"),),
                         "probed": (images[4],)})
    player = build_window(data, WINDOW, details_for_tiny(), off_screen=True, probe=probe)
    try:
        player.scene.plotter.render()
        press(player, "n")
        assert player.probed == 5
        _, _, share = player.data.colorings[0]
        np.testing.assert_allclose(share, activations[5] / activations[5].max(), atol=1e-6)
        np.testing.assert_allclose(player.scene.glyphs.shown, share)  # the glyphs are faded by it
        shown = np.flipud(np.asarray(player.scene.probe_image.point_data["rgb"]).reshape(112, 112, 3))[::4, ::4, 0]
        np.testing.assert_array_equal(shown, 255 - images[5])  # the probed image is the one shown
        press(player, "p")
        press(player, "p")
        assert player.probed == 3
        press(player, "2")  # the next image of class 2 after image 3
        assert player.probed == 5 and labels[player.probed] == 2
        assert player.scene.title.GetInput().endswith(
            "probe: test image 5, a two; predicted zero 0.33, one 0.33, two 0.33")
    finally:
        player.scene.plotter.close()
