"""Neuron glyphs (render.glyph: field) on real offscreen renders: each neuron's receptive field drawn at
its projected position, at exact pixels and in the right colours, following it from frame to frame, and
picked where it is drawn."""

from __future__ import annotations

import numpy as np
import pytest

from layout.core.config import RenderConfig
from render import style
from render.glyphs import BORDER, GHOST, field_images
from render.movie import Shot, offscreen_scene, render_shots
from render.scene import PROBE_MARGIN, PROBE_ZOOM, make_scene_data, pick_neuron, project

VIEW = RenderConfig(width=640, height=480)
N = 4
BLOCKS = [(4, 4), (4, 20), (20, 4), (20, 20)]  # neuron i lights the 4x4 block with this top-left pixel


def known_fields() -> np.ndarray:
    """Neuron i: +1 on its own 4x4 block, -0.5 on one pixel row at the bottom, 0 elsewhere."""
    fields = np.zeros((N, 28, 28), np.float32)
    for i, (r, c) in enumerate(BLOCKS):
        fields[i, r:r + 4, c:c + 4] = 1.0
        fields[i, 26, :] = -0.5
    return fields


def field_scene(n_frames: int = 2) -> tuple:
    """Four neurons (each of its own class, free of anchors) in a row across the camera's view, moving
    between two frames (glyphs are 0.7 of the neurons' spacing wide: they do not overlap)."""
    start = np.outer(np.arange(N) - 1.5, [3, -3, 0]).astype(np.float32)
    frames = np.stack([start + t * np.array([0.5, 0.5, 1.0], np.float32) for t in range(n_frames)])
    images = field_images(known_fields(), np.arange(N), np.zeros(N, int), np.ones(N), "neuron", 2000)
    data = make_scene_data(frames, tuple(f"step {t}" for t in range(n_frames)), np.arange(N), np.zeros(N, bool),
                           np.eye(N, dtype=np.float32), ("a", "b", "c", "d"), "glyphs", edges_per_neuron=0,
                           size_by="none", fields=images)
    return data, offscreen_scene(data, VIEW)


def glyph_pixel(scene, data, t: int, neuron: int, row: float, col: float) -> tuple[int, int]:
    """Where field pixel (row, col) of a neuron's glyph lands on screen (image row, column)."""
    points = np.asarray(scene.glyphs.mesh.points).reshape(-1, 4, 3)[list(scene.glyphs.members).index(neuron)]
    corners = project(scene.plotter, points)  # bottom left, bottom right, top right, top left
    size = known_fields().shape[1] + 2 * BORDER
    u, v = (col + BORDER + 0.5) / size, (row + BORDER + 0.5) / size
    x = corners[3] + u * (corners[2] - corners[3]) + v * (corners[0] - corners[3])
    return int(round(VIEW.height - 1 - x[1])), int(round(x[0]))


def color_at(image: np.ndarray, where: tuple[int, int]) -> np.ndarray:
    return image[where[0], where[1], :3].astype(int)


@pytest.fixture
def rendered():
    data, scene = field_scene()
    yield data, scene
    scene.plotter.close()


def test_each_glyph_shows_its_neurons_field_at_its_projected_position(rendered):
    data, scene = rendered
    image = next(render_shots(scene, data, [Shot(0, 20.0)]))
    red, white = (style.hex_to_rgb(c).astype(int) for c in ("#67001F", "#F7F7F7"))
    blue = style.diverging_rgb(np.array(-0.5), 1.0).astype(int)  # halfway to the darkest blue
    for i, (r, c) in enumerate(BLOCKS):
        centre = project(scene.plotter, data.positions[0][i:i + 1])[0]
        inside = glyph_pixel(scene, data, 0, i, r + 1.5, c + 1.5)
        quad = project(scene.plotter, np.asarray(scene.glyphs.mesh.points).reshape(-1, 4, 3)[i])
        np.testing.assert_allclose(quad.mean(0), centre, atol=1.0)  # the glyph is centred where the neuron is
        offset = np.array([c + 2 + BORDER - 15, -(r + 2 + BORDER - 15)]) / 30  # from the centre, in glyph widths
        expected = centre + offset * (quad[2] - quad[0])
        assert np.hypot(inside[1] - expected[0], (VIEW.height - 1 - inside[0]) - expected[1]) < 2
        assert np.abs(color_at(image, inside) - red).max() <= 12, i  # +1: the darkest red, exactly
        for other in (b for j, b in enumerate(BLOCKS) if j != i):  # the other neurons' blocks are 0 here
            assert np.abs(color_at(image, glyph_pixel(scene, data, 0, i, other[0] + 1.5, other[1] + 1.5))
                          - white).max() <= 12
        assert np.abs(color_at(image, glyph_pixel(scene, data, 0, i, 26, 14)) - blue).max() <= 12  # -0.5
        frame = style.class_rgb(np.array([i]))[0].astype(int)  # the border in its class colour
        assert np.abs(color_at(image, glyph_pixel(scene, data, 0, i, -1, 14)) - frame).max() <= 12


def test_glyphs_follow_their_neurons_and_face_the_camera_as_it_orbits(rendered):
    data, scene = rendered
    red = style.hex_to_rgb("#67001F").astype(int)
    first = next(render_shots(scene, data, [Shot(0, 0.0)]))
    for shot in (Shot(1, 0.0), Shot(1, 25.0)):  # moved, then orbited: each checked as it is drawn
        image, t = next(render_shots(scene, data, [shot])), shot.frame
        if shot.azimuth == 0:
            moved = image
        for i, (r, c) in enumerate(BLOCKS):
            where = glyph_pixel(scene, data, t, i, r + 1.5, c + 1.5)
            assert np.abs(color_at(image, where) - red).max() <= 12, (t, i)
            quad = np.asarray(scene.glyphs.mesh.points).reshape(-1, 4, 3)[i]
            np.testing.assert_allclose(quad.mean(0), data.positions[t][i], atol=1e-5)  # centred on the neuron
            forward = np.asarray(scene.plotter.camera.GetDirectionOfProjection())
            assert abs(np.dot(quad[1] - quad[0], forward)) < 1e-4 and abs(np.dot(quad[3] - quad[0], forward)) < 1e-4
    assert np.abs(first.astype(int) - moved.astype(int)).max() > 0


def test_a_click_anywhere_on_a_glyph_picks_its_neuron(rendered):
    data, scene = rendered
    next(render_shots(scene, data, [Shot(0, 10.0)]))
    for i, (r, c) in enumerate(BLOCKS):
        for row, col in ((1, 1), (26, 26), (14, 14)):  # near two corners and the middle
            y, x = glyph_pixel(scene, data, 0, i, row, col)
            assert pick_neuron(scene, data, 0, x, VIEW.height - 1 - y) == i
    assert pick_neuron(scene, data, 0, 2, 2) is None


def test_only_the_top_neurons_by_norm_get_images_and_the_rest_are_dots():
    fields = np.random.default_rng(0).normal(size=(10, 28, 28)).astype(np.float32)
    norms = np.arange(10.0)
    images = field_images(fields, np.zeros(10, int), np.zeros(10, int), norms, "neuron", 3)
    assert images.members.tolist() == [7, 8, 9] and images.tiles.shape == (3, 30, 30, 3)
    assert field_images(fields, np.zeros(10, int), np.zeros(10, int), norms, "neuron", 0).members.tolist() == []


def test_field_colour_limits_are_symmetric_per_neuron_or_per_layer():
    fields = np.zeros((2, 28, 28), np.float32)
    fields[0, 0, 0], fields[1, 0, 0] = 2.0, 1.0  # the second neuron's peak is half the first's
    fields[1, 0, 1] = -1.0
    own = field_images(fields, np.zeros(2, int), np.zeros(2, int), np.ones(2), "neuron", 10).tiles
    shared = field_images(fields, np.zeros(2, int), np.zeros(2, int), np.ones(2), "layer", 10).tiles
    darkest, darkest_blue = style.hex_to_rgb("#67001F"), style.hex_to_rgb("#053061")
    np.testing.assert_array_equal(own[1, BORDER, BORDER], darkest)  # its own limit: 1 is the top
    np.testing.assert_array_equal(own[1, BORDER, BORDER + 1], darkest_blue)  # and -1 the bottom
    np.testing.assert_array_equal(shared[1, BORDER, BORDER], style.diverging_rgb(np.array(0.5), 1.0))
    np.testing.assert_array_equal(own[0, BORDER + 5, BORDER + 5], style.hex_to_rgb("#F7F7F7"))  # 0 is white


def test_a_colouring_fades_each_glyph_by_its_share_and_the_probed_image_shows_in_the_corner():
    data, scene = field_scene()
    scene.plotter.close()
    share = np.array([1.0, 0.5, 0.0, 0.25], np.float32)
    digit = np.zeros((28, 28), np.uint8)
    digit[4:24, 12:16] = 255  # a "1"
    probed = type(data)(**{**data.__dict__, "colorings": (("probe", np.zeros((N, 3), np.uint8), share),),
                           "probed": (digit,)})
    scene = offscreen_scene(probed, VIEW)
    try:
        image = next(render_shots(scene, probed, [Shot(0, 0.0)]))
        for i, (r, c) in enumerate(BLOCKS):  # +1 weights, faded towards white by the share
            keep = GHOST + (1 - GHOST) * share[i]
            expected = 255 - keep * (255 - style.hex_to_rgb("#67001F").astype(float))
            got = color_at(image, glyph_pixel(scene, probed, 0, i, r + 1.5, c + 1.5))
            assert np.abs(got - expected).max() <= 12, (i, got, expected)
        corner = image[VIEW.height - PROBE_MARGIN - 28 * PROBE_ZOOM:VIEW.height - PROBE_MARGIN,
                       PROBE_MARGIN:PROBE_MARGIN + 28 * PROBE_ZOOM, 0]
        ink = np.repeat(np.repeat(255 - digit, PROBE_ZOOM, 0), PROBE_ZOOM, 1)
        np.testing.assert_array_equal(corner, ink)  # the probed image, dark on white, at exact pixels
    finally:
        scene.plotter.close()


def test_the_probe_colours_neurons_by_their_activation_on_the_image(shared_data):
    from layout.core.config import DataConfig, RenderConfig, RunConfig
    from layout.pipeline.render_stage import probe_colorings
    from layout.pipeline.train_stage import TrainResult
    from models.data.datasets import load_dataset
    from models.network.store import load_network
    from tests.data.make_reference import NETWORK

    network = load_network(NETWORK)
    dataset = load_dataset(DataConfig(dir=str(shared_data)))
    trained = TrainResult(RunConfig(), dataset, network, {}, ())
    x = dataset.test.images[7].reshape(1, -1) / 255.0
    hidden = 1 / (1 + np.exp(-(x @ network.weights[0].astype(np.float64) + network.biases[0])))[0]
    logits = hidden @ network.weights[1] + network.biases[1]
    p = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    cfg = RunConfig(render=RenderConfig(probe=7))
    (coloring,), scale, images = probe_colorings(cfg, trained, network.class_names, (0,))
    caption, rgb, share = coloring
    np.testing.assert_allclose(share, np.clip(hidden / hidden.max(), 0, 1), atol=1e-5)
    np.testing.assert_array_equal(rgb, style.activation_rgb(hidden.astype(np.float32)))
    assert scale.high == pytest.approx(hidden.max(), rel=1e-5) and np.array_equal(images[0], dataset.test.images[7])
    label = network.class_names[dataset.test.labels[7]]
    assert caption.startswith(f"probe: test image 7, a {label}; predicted {network.class_names[p.argmax()]} "
                              f"{p.max():.2f}")
    per_class = RunConfig(render=RenderConfig(probe="per_class"))
    colorings, _, images = probe_colorings(per_class, trained, network.class_names, (0,))
    assert len(colorings) == len(images) == 10
    assert [dataset.test.labels[np.flatnonzero((dataset.test.images == im).all((1, 2)))[0]] for im in images] == \
        list(range(10))  # one test image of each class, in class order


def test_a_glyph_in_front_hides_the_one_behind_it_from_every_side():
    """Depth is the renderer's own: two neurons on the camera's line of sight, the nearer one's field
    is what shows where they overlap, before and after half an orbit."""
    fields = np.zeros((2, 28, 28), np.float32)
    fields[0] = 1.0  # all red
    fields[1] = -1.0  # all blue
    images = field_images(fields, np.arange(2), np.zeros(2, int), np.ones(2), "neuron", 10)
    positions = np.array([[[0.0, 0.0, 0.0], [-1.0, -1.0, -0.8]]], np.float32)
    data = make_scene_data(positions, ("step 0",), np.arange(2), np.zeros(2, bool), np.eye(2, dtype=np.float32),
                           ("a", "b"), "depth", edges_per_neuron=0, size_by="none", fields=images)
    scene = offscreen_scene(data, VIEW)
    red, blue = style.hex_to_rgb("#67001F").astype(int), style.hex_to_rgb("#053061").astype(int)
    camera = scene.plotter.camera
    middle = positions[0].mean(0)
    line = (positions[0][0] - positions[0][1]) / np.linalg.norm(positions[0][0] - positions[0][1])
    try:
        for side, nearer in ((1.0, red), (-1.0, blue)):  # from neuron 0's side, then from neuron 1's
            camera.focal_point, camera.position = middle, middle + side * 8.0 * line
            camera.up = (0.0, 0.0, 1.0) if abs(line[2]) < 0.9 else (0.0, 1.0, 0.0)
            scene.plotter.renderer.ResetCameraClippingRange()
            scene.plotter.render()
            image = np.asarray(scene.plotter.screenshot(return_img=True))
            centre = project(scene.plotter, middle[None])[0]
            pixel = color_at(image, (int(round(VIEW.height - 1 - centre[1])), int(round(centre[0]))))
            assert np.abs(pixel - nearer).max() <= 12, side
    finally:
        scene.plotter.close()


def test_inputs_that_are_not_images_fall_back_to_spheres_with_one_note():
    from layout.core.config import RunConfig
    from layout.engine.features import NeuronFeatures
    from layout.pipeline.render_stage import fields_for, glyph_note

    def features(fields: np.ndarray) -> NeuronFeatures:
        n = len(fields)
        return NeuronFeatures(output_vectors=np.eye(3)[np.arange(n) % 3], dominant=np.arange(n) % 3,
                              activation_dominant=np.arange(n) % 3, class_activation=np.ones((n, 3)),
                              receptive_fields=fields, layer=np.zeros(n, int), index=np.arange(n),
                              class_names=("a", "b", "c"), influence="weights")

    tabular = features(np.ones((6, 20), np.float32))  # 20 inputs in a row: a table, not a picture
    assert glyph_note(RunConfig(), tabular) == ("render.glyph = field draws each neuron's input weights as an image, "
                                                "but this network's 20 inputs are not an image: drawing spheres")
    assert fields_for(RunConfig(), tabular) is None
    pictures = features(np.ones((6, 28, 28), np.float32))
    assert glyph_note(RunConfig(), pictures) is None and fields_for(RunConfig(), pictures).members.tolist() == list(
        range(6))
