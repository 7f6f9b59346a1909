"""The 3D scene: built once from numpy arrays, then each frame only moves points.

Hidden neurons are one point cloud drawn as shaded spheres (one actor for all of them), coloured by
the class they drive hardest and sized by their output-vector norm; the output units are larger
spheres labelled with their class; optional edges join each neuron to the outputs it drives most.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyvista as pv
from scipy.spatial import cKDTree
from vtkmodules.vtkCommonCore import vtkLookupTable
from vtkmodules.vtkRenderingAnnotation import vtkScalarBarActor

from render import style
from render.glyphs import FieldImages, Glyphs, add_glyphs, place_glyphs, shade_glyphs
from render.image2d import image_actor, set_rgb

HALO_OPACITY = 0.3


@dataclass(frozen=True)
class ColorScale:
    """A colour bar: the quantity the neurons' colours measure, from pale at `low` to dark red at `high`."""

    quantity: str
    low: float
    high: float


@dataclass(frozen=True)
class SceneData:
    """What the scene shows. T frames, P particles (the N neurons first, then the anchors).

    positions [T, P, 3]; labels [T]: the title's text per frame (step, energy); group [P]: class
    index coloured; is_anchor [P]; radius [P]; class_names [C]; name: the run's name;
    edges [E, 2]: (neuron, particle) index pairs to draw as lines; edge_sign [E]: +1 or -1.
    colorings: other ways to colour the neurons, each a caption, an rgb colour per neuron (for example
    the mean activation for each digit) and the share of the colour scale it reaches, which fades a
    field glyph (0: white, 1: as it is); empty when neurons are coloured by class.
    """

    positions: np.ndarray
    labels: tuple[str, ...]
    group: np.ndarray
    is_anchor: np.ndarray
    radius: np.ndarray
    class_names: tuple[str, ...]
    name: str
    edges: np.ndarray
    edge_sign: np.ndarray
    colorings: tuple[tuple[str, np.ndarray, np.ndarray], ...] = ()  # (caption, rgb [N, 3], share [N] in 0..1)
    halo: np.ndarray | None = None  # [N] radius of a translucent halo around each neuron (None: no halos)
    scale: ColorScale | None = None  # with colorings: what their colours measure, shown as a colour bar
    fields: FieldImages | None = None  # render.glyph: field: the neurons drawn as their receptive fields
    probed: tuple[np.ndarray, ...] = ()  # render.probe: each colouring's test image [H, W] uint8, shown
    thumbnails: np.ndarray | None = None  # render.thumbnails: an RGB strip [h, w, 3] at the scene's left edge


    @property
    def n_frames(self) -> int:
        return len(self.positions)

    @property
    def n_neurons(self) -> int:
        return int((~self.is_anchor).sum())


def activation_colorings(activations: np.ndarray, captions: tuple[str, ...]
                         ) -> tuple[tuple[str, np.ndarray, np.ndarray], ...]:
    """One coloring per column of activations [N, K] (e.g. K classes), on a common scale."""
    top = activation_top(activations)
    return tuple((caption, style.activation_rgb(np.append(activations[:, k], top))[:-1],
                  np.clip(activations[:, k] / top, 0, 1).astype(np.float32)) for k, caption in enumerate(captions))


def activation_top(activations: np.ndarray) -> float:
    return float(np.max(activations)) or 1.0


def activation_scale(activations: np.ndarray, quantity: str) -> ColorScale:
    """The colour bar of activation_colorings(activations, ...): values below 0 are drawn as 0."""
    return ColorScale(quantity, 0.0, activation_top(activations))


def make_scene_data(positions: np.ndarray, labels: tuple[str, ...], group: np.ndarray, is_anchor: np.ndarray,
                    vectors: np.ndarray, class_names: tuple[str, ...], name: str, edges_per_neuron: int,
                    size_by: str, colorings: tuple[tuple[str, np.ndarray], ...] = (),
                    spread: np.ndarray | None = None, scale: ColorScale | None = None,
                    fields: FieldImages | None = None, size_values: np.ndarray | None = None,
                    probed: tuple[np.ndarray, ...] = (), thumbnails: np.ndarray | None = None) -> SceneData:
    """SceneData from a trajectory's frames and the neurons' output vectors [N, C].

    Sizes follow the output-vector norm (or `size_values`, as render.size_by asks), scaled to the final
    layout's spacing; with anchors present, each neuron gets lines to the `edges_per_neuron` outputs with
    the largest |weight|. `spread` [N] (positional spread in units of the layout's RMS radius) becomes a
    halo of that radius."""
    n = int((~is_anchor).sum())
    final = positions[-1][:n]
    spacing = float(np.median(cKDTree(final).query(final, k=2)[0][:, 1])) if n > 1 else 1.0
    sizes = np.linalg.norm(vectors, axis=1) if size_values is None else np.clip(size_values, 0, None)
    radius = style.particle_radii(sizes, "none" if size_by == "none" else "norm", max(spacing, 1e-6),
                                  int(is_anchor.sum()))
    edges, sign = np.zeros((0, 2), int), np.zeros(0)
    k = min(edges_per_neuron, vectors.shape[1])
    if k and is_anchor.any():
        top = np.argsort(-np.abs(vectors), axis=1)[:, :k]
        edges = np.column_stack([np.repeat(np.arange(n), k), n + top.ravel()])
        sign = np.sign(np.take_along_axis(vectors, top, 1)).ravel()
    halo = None
    if spread is not None:
        rms_radius = float(np.sqrt(((final - final.mean(0)) ** 2).sum(1).mean())) or 1.0
        halo = (np.asarray(spread, np.float32) * rms_radius).astype(np.float32)
    return SceneData(positions=np.asarray(positions, np.float32), labels=tuple(labels), group=np.asarray(group),
                     is_anchor=np.asarray(is_anchor, bool), radius=radius, class_names=tuple(class_names),
                     name=name, edges=edges, edge_sign=sign, colorings=tuple(colorings), halo=halo,
                     scale=scale if colorings else None, fields=fields, probed=tuple(probed), thumbnails=thumbnails)


@dataclass
class Scene:
    """Handles to what build_scene added; show_frame moves their points."""

    plotter: pv.Plotter
    neurons: pv.PolyData
    halos: pv.PolyData | None
    anchors: pv.PolyData | None
    labels: list | None  # the anchors' text actors
    edges: pv.PolyData | None
    title: object  # the title text actor
    glyphs: Glyphs | None = None  # render.glyph: field
    probe_image: object = None  # render.probe: the vtkImageData of the probed image in the corner


def point_cloud(points: np.ndarray, groups: np.ndarray, radius: np.ndarray) -> pv.PolyData:
    cloud = pv.PolyData(np.asarray(points, np.float32))
    cloud["rgb"] = style.class_rgb(groups)
    cloud["radius"] = np.asarray(radius, np.float32)
    return cloud


def add_spheres(plotter: pv.Plotter, cloud: pv.PolyData, spheres: bool = True, opacity: float = 1.0):
    """All points of `cloud` as shaded spheres of their own radius and colour, in one actor; or, with
    spheres=False, as gaussian glows whose sd is that radius."""
    actor = plotter.add_points(cloud, style="points_gaussian", scalars="rgb", rgb=True, emissive=False,
                               render_points_as_spheres=spheres, show_scalar_bar=False, opacity=opacity)
    actor.mapper.scale_array = "radius"
    actor.mapper.scale_factor = 1.0
    return actor


def edge_lines(data: SceneData, points: np.ndarray) -> pv.PolyData:
    lines = np.column_stack([np.full(len(data.edges), 2), data.edges]).ravel()
    mesh = pv.PolyData(np.asarray(points, np.float32), lines=lines)
    colors = [style.hex_to_rgb(style.EDGE_COLORS["positive" if s > 0 else "negative"]) for s in data.edge_sign]
    mesh.cell_data["rgb"] = np.array(colors, np.uint8).reshape(-1, 3)
    return mesh


def build_scene(plotter: pv.Plotter, data: SceneData) -> Scene:
    """Add every actor once, at frame 0, with the legend and a camera framing all frames."""
    plotter.set_background(style.BACKGROUND)
    first = data.positions[0]
    neuron = ~data.is_anchor
    neurons = point_cloud(first[neuron], data.group[neuron], sphere_radii(data))
    add_spheres(plotter, neurons)
    halos = None
    if data.halo is not None:  # soft translucent glows in the neuron's class colour
        halos = point_cloud(first[neuron], data.group[neuron], data.halo / 2)  # VTK's splat: sd = the scale
        add_spheres(plotter, halos, spheres=False, opacity=HALO_OPACITY)
    anchors = labels = None
    if data.is_anchor.any():
        anchors = point_cloud(first[data.is_anchor], data.group[data.is_anchor], data.radius[data.is_anchor])
        add_spheres(plotter, anchors)
        # one 2D text per anchor, moved to the anchor's projection each frame (a label placement
        # mapper would re-place all labels on every render: 3 ms a frame)
        labels = [plotter.add_text(data.class_names[g], position=(0, 0), font_size=14, color=style.TEXT_COLOR)
                  for g in data.group[data.is_anchor]]
        for label in labels:
            label.GetTextProperty().SetBold(True)
    edges = None
    if len(data.edges):
        edges = edge_lines(data, first)
        plotter.add_mesh(edges, scalars="rgb", rgb=True, opacity=0.35, line_width=1, show_scalar_bar=False)
    if data.colorings and data.scale is not None:  # colours that measure something: a colour bar says what
        plotter.add_actor(color_bar(data.scale))
    elif not data.colorings:  # colours by class: the legend names them
        add_class_legend(plotter, data.class_names)
    height = plotter.window_size[1]
    # a plain text actor: a corner annotation re-lays itself out on every change (20 ms a frame)
    title = plotter.add_text(style.frame_title(data.name, data.labels[0]), position=(8, height - 26),
                             font_size=12, color=style.TEXT_COLOR)
    frame_camera(plotter, data.positions)
    glyphs = None if data.fields is None else add_glyphs(plotter, data.fields, first[neuron], data.radius[neuron])
    probe_image = add_probe_image(plotter, data.probed[0]) if data.probed else None
    if data.thumbnails is not None:  # beside the scene, below the title
        height = plotter.window_size[1]
        add_image(plotter, data.thumbnails, PROBE_MARGIN, height - 34 - len(data.thumbnails))
    scene = Scene(plotter, neurons, halos, anchors, labels, edges, title, glyphs, probe_image)
    if anchors is not None:  # labels follow their anchors through frames, orbits and mouse moves
        plotter.renderer.AddObserver("StartEvent", lambda *_: place_labels(scene, np.asarray(anchors.points)))
    if glyphs is not None:  # glyphs follow their neurons and face the camera, however it moved
        plotter.renderer.AddObserver("StartEvent", lambda *_: place_glyphs(glyphs, np.asarray(neurons.points),
                                                                           plotter.camera))
    return scene


def probe_caption(index: int, label: str, probabilities: np.ndarray, names: tuple[str, ...]) -> str:
    """The title of a probed image: its index and label, and the three likeliest classes."""
    order = np.argsort(-probabilities, kind="stable")
    odds = ", ".join(f"{names[c]} {probabilities[c]:.2f}" for c in order[:3])
    return f"probe: test image {index}, a {label}; predicted {odds}"


def probe_coloring(activations: np.ndarray, caption: str) -> tuple[str, np.ndarray, np.ndarray]:
    """The colouring of one probed image from its activations [N]."""
    return activation_colorings(np.asarray(activations)[:, None], (caption,))[0]


PROBE_ZOOM = 4  # screen pixels per pixel of the probed image
PROBE_MARGIN = 8


def digit_image(image: np.ndarray) -> np.ndarray:
    """[H * zoom, W * zoom, 3] uint8: a test image at exact pixels (greyscale as dark ink on white)."""
    return np.repeat(np.repeat(style.picture_rgb(image), PROBE_ZOOM, 0), PROBE_ZOOM, 1)


def add_probe_image(plotter: pv.Plotter, image: np.ndarray):
    """The probed test image in the bottom left corner, 4x, exact pixels; its vtkImageData is returned so
    that show_frame can change it."""
    return add_image(plotter, digit_image(image), PROBE_MARGIN, PROBE_MARGIN)


def add_image(plotter: pv.Plotter, rgb: np.ndarray, x: int, y: int) -> pv.ImageData:
    """rgb [h, w, 3] uint8 (row 0 at the top) drawn flat at exact pixels, its bottom left at (x, y)."""
    actor, data = image_actor(rgb, x, y)
    plotter.renderer.AddViewProp(actor)
    return data


def show_probe_image(data: pv.ImageData, image: np.ndarray) -> None:
    set_rgb(data, digit_image(image))


DOT = 0.5  # the radius of a neuron left without an image (above render.field_top), in its sphere radii


def sphere_radii(data: SceneData) -> np.ndarray:
    """The neurons' sphere radii: none for those drawn as images, small dots for the rest of a field scene."""
    radius = data.radius[~data.is_anchor].copy()
    if data.fields is not None:
        radius *= DOT
        radius[data.fields.members] = 0.0
    return radius


def add_class_legend(plotter: pv.Plotter, class_names: tuple[str, ...]) -> None:
    legend = plotter.add_legend([(name, style.CLASS_COLORS[i % len(style.CLASS_COLORS)])
                                 for i, name in enumerate(class_names)], bcolor="white", border=False, face="circle")
    height = min(0.045 * len(class_names), 0.8)
    legend.SetPosition(0.89, 0.93 - height)  # the right edge, below the title's height
    legend.SetPosition2(0.1, height)


def color_bar(scale: ColorScale) -> vtkScalarBarActor:
    """A vertical colour bar at the right edge, from style.activation_rgb's pale to its dark red."""
    table = vtkLookupTable()
    table.SetNumberOfTableValues(COLOR_BAR_STEPS)
    table.SetRange(scale.low, scale.high)
    table.Build()
    for i, rgb in enumerate(style.activation_rgb(np.arange(COLOR_BAR_STEPS, dtype=float))):
        table.SetTableValue(i, *(rgb / 255.0), 1.0)
    bar = vtkScalarBarActor()
    bar.SetLookupTable(table)
    bar.SetTitle(scale.quantity)
    bar.SetNumberOfLabels(3)
    bar.UnconstrainedFontSizeOn()  # the sizes below, not ones scaled to the bar
    bar.SetLabelFormat("%.3g")
    bar.SetPosition(0.85, 0.12)
    bar.SetWidth(0.1)
    bar.SetHeight(0.7)
    for text in (bar.GetTitleTextProperty(), bar.GetLabelTextProperty()):
        text.SetColor(*pv.Color(style.TEXT_COLOR).float_rgb)
        text.SetFontSize(12)
        text.ShadowOff()
        text.ItalicOff()
    return bar


COLOR_BAR_STEPS = 64


def frame_camera(plotter: pv.Plotter, positions: np.ndarray) -> None:
    """An oblique view centred on the final layout, far enough to fit it from every side (the orbit)."""
    final = positions[-1]
    centre = final.mean(0)
    radius = float(np.linalg.norm(final - centre, axis=1).max()) or 1.0
    camera = plotter.camera
    camera.focal_point = centre
    camera.up = (0.0, 0.0, 1.0)
    direction = np.array([1.0, 1.0, 0.8]) / np.linalg.norm([1.0, 1.0, 0.8])
    camera.position = centre + direction * 1.1 * radius / np.sin(np.radians(camera.view_angle / 2))
    plotter.renderer.ResetCameraClippingRange()


def show_frame(scene: Scene, data: SceneData, t: int, coloring: int = 0) -> None:
    """Move every point to frame t, colour the neurons by `coloring` and update the title; no actor
    is added or removed."""
    points = data.positions[t]
    scene.neurons.points = points[~data.is_anchor]
    if scene.halos is not None:
        scene.halos.points = points[~data.is_anchor]
    caption = ""
    if data.colorings:
        caption, rgb, share = data.colorings[coloring % len(data.colorings)]
        scene.neurons["rgb"] = rgb
        if scene.glyphs is not None:
            shade_glyphs(scene.glyphs, share)
        if scene.probe_image is not None:
            show_probe_image(scene.probe_image, data.probed[coloring % len(data.probed)])
    if scene.anchors is not None:
        scene.anchors.points = points[data.is_anchor]
    if scene.edges is not None:
        scene.edges.points = points
    scene.title.SetInput(style.frame_title(data.name, f"{data.labels[t]}   {caption}".rstrip()))
    scene.plotter.renderer.ResetCameraClippingRange()  # particles may leave the first frame's depth range


def place_labels(scene: Scene, anchors: np.ndarray) -> None:
    """Put each anchor's label just right of where the anchor appears on screen."""
    for label, (x, y) in zip(scene.labels, project(scene.plotter, anchors)):
        label.SetPosition(x + 6, y - 8)


def project(plotter: pv.Plotter, points: np.ndarray) -> np.ndarray:
    """Screen pixel coordinates [n, 2] (origin bottom left, as VTK's) of world points [n, 3]."""
    renderer = plotter.renderer
    width, height = renderer.GetSize()
    matrix = renderer.GetActiveCamera().GetCompositeProjectionTransformMatrix(width / height, -1, 1)
    m = np.array([[matrix.GetElement(i, j) for j in range(4)] for i in range(4)])
    h = np.column_stack([points, np.ones(len(points))]) @ m.T
    ndc = h[:, :2] / h[:, 3:4]
    x0, y0 = renderer.GetOrigin()
    return np.column_stack([x0 + (ndc[:, 0] + 1) * width / 2, y0 + (ndc[:, 1] + 1) * height / 2])


def pick_neuron(scene: Scene, data: SceneData, t: int, x: float, y: float, tolerance: float = 12.0) -> int | None:
    """The neuron drawn nearest to screen pixel (x, y) (VTK's origin, bottom left) at frame t, if one
    is within `tolerance` pixels or its glyph covers the pixel; among several, the one closest to the
    camera."""
    neurons = data.positions[t][~data.is_anchor]
    screen = project(scene.plotter, neurons)
    gap = np.hypot(screen[:, 0] - x, screen[:, 1] - y)
    hit = gap <= tolerance
    if scene.glyphs is not None and len(scene.glyphs.members):  # a glyph's square, as last drawn
        corners = project(scene.plotter, np.asarray(scene.glyphs.mesh.points)).reshape(-1, 4, 2)
        low, high = corners.min(1), corners.max(1)
        hit[scene.glyphs.members] |= (low[:, 0] <= x) & (x <= high[:, 0]) & (low[:, 1] <= y) & (y <= high[:, 1])
    near = np.flatnonzero(hit)
    if len(near) == 0:
        return None
    camera = np.array(scene.plotter.camera.position)
    return int(near[np.argmin(np.linalg.norm(neurons[near] - camera, axis=1))])
