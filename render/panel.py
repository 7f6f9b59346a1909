"""The window's details panel: everything about the neuron last clicked.

Its receptive field at exact pixels (with a colour bar for greyscale inputs), its output weights and its
mean activation per class as bar charts (PyVista's Chart2D), the test images that activate it most and
least, its selectivity, layer and index. Every picture is a 2D image actor at whole screen pixels per weight or
image pixel (no smoothing); `show_neuron` fills them all for one neuron.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyvista as pv
from vtkmodules.vtkCommonCore import vtkLookupTable
from vtkmodules.vtkRenderingAnnotation import vtkScalarBarActor

from render import style
from render.image2d import image_actor, set_rgb

MARGIN = 10  # pixels
TEXT_HEIGHT = 84  # pixels of the text at the top


@dataclass(frozen=True)
class NeuronDetails:
    """Per neuron [N, ...]: receptive_fields [N, H, W] (or [N, H, W, 3] for colour inputs; `signed`: weights,
    else images in 0..1, as style.field_rgb draws them), output_vectors [N, C], class_activation [N, C],
    layer [N] (numbered from 1, the first hidden layer, as in every output), index [N] (within its layer),
    dominant [N], activation_dominant [N]; selectivity and effective_classes [N] (NaN where undefined);
    top and bottom [N, k]: the test images that activate it most and least, indices into `images`
    [n_test, H, W(, 3)] uint8; filters [N, kh, kw(, 3)]: a CNN's first conv layer's kernels, NaN for every
    other neuron (shown beside the field when given)."""

    receptive_fields: np.ndarray
    output_vectors: np.ndarray
    class_activation: np.ndarray
    layer: np.ndarray
    index: np.ndarray
    dominant: np.ndarray
    activation_dominant: np.ndarray
    selectivity: np.ndarray | None = None
    effective_classes: np.ndarray | None = None
    top: np.ndarray | None = None
    bottom: np.ndarray | None = None
    images: np.ndarray | None = None
    filters: np.ndarray | None = None
    signed: bool = True


def describe(details: NeuronDetails, names: tuple[str, ...], i: int) -> str:
    """The panel's text for neuron i."""
    text = (f"neuron {i}: layer {details.layer[i]}, index {details.index[i]}\n"
            f"drives hardest: {names[details.dominant[i]]}   most active for: {names[details.activation_dominant[i]]}")
    if details.selectivity is not None:
        text += (f"\nselectivity {details.selectivity[i]:.3f}   effective classes "
                 f"{details.effective_classes[i]:.2f}")
    return text


def zoom(image: np.ndarray, k: int) -> np.ndarray:
    return np.repeat(np.repeat(image, k, 0), k, 1)


def field_rgb(field: np.ndarray, k: int, signed: bool = True) -> np.ndarray:
    """One field [h, w(, 3)] by style.field_rgb, scaled by its own largest |value|, at k x k pixels per value."""
    limit = float(np.abs(field).max()) or 1.0
    return zoom(style.field_rgb(field[None], np.array([limit]), signed)[0], k)


def digits_strip(images: np.ndarray, indices: np.ndarray, gap: int = 2) -> np.ndarray:
    """The test images `indices` side by side (greyscale as dark ink on white)."""
    rows, cols = images.shape[1:3]
    strip = np.full((rows, len(indices) * (cols + gap), 3), 255, np.uint8)
    for j, i in enumerate(indices):
        strip[:, j * (cols + gap):j * (cols + gap) + cols] = style.picture_rgb(images[i])
    return strip


def diverging_bar(limit: float, x: float, y: float) -> vtkScalarBarActor:
    table = vtkLookupTable()
    table.SetNumberOfTableValues(len(style.DIVERGING_TABLE))
    table.SetRange(-limit, limit)
    table.Build()
    for i, rgb in enumerate(style.DIVERGING_TABLE):
        table.SetTableValue(i, *(rgb / 255.0), 1.0)
    bar = vtkScalarBarActor()
    bar.SetLookupTable(table)
    bar.SetNumberOfLabels(3)
    bar.SetLabelFormat("%+.2g")
    bar.UnconstrainedFontSizeOn()
    bar.GetLabelTextProperty().SetFontSize(10)
    bar.GetLabelTextProperty().SetColor(*pv.Color(style.TEXT_COLOR).float_rgb)
    bar.GetLabelTextProperty().ShadowOff()
    bar.SetPosition(x, y)
    bar.SetWidth(0.12)
    bar.SetHeight(0.25)
    return bar


@dataclass
class Panel:
    """The panel's parts, filled by show_neuron."""

    details: NeuronDetails
    class_names: tuple[str, ...]
    text: object
    field: pv.ImageData
    field_zoom: int
    field_bar: vtkScalarBarActor
    weights: pv.BarPlot
    activation: pv.BarPlot
    top: pv.ImageData | None
    bottom: pv.ImageData | None
    filter: pv.ImageData | None = None
    filter_zoom: int = 1


def add_panel(plotter: pv.Plotter, details: NeuronDetails, class_names: tuple[str, ...], width: int,
              height: int) -> Panel:
    """The panel's actors in the current subplot, `width` x `height` pixels, showing neuron 0 until a
    neuron is clicked."""
    plotter.set_background(style.BACKGROUND)
    renderer = plotter.renderer
    text = plotter.add_text("click a neuron", position="upper_left", font_size=9, color=style.TEXT_COLOR)
    rows, cols = details.receptive_fields.shape[1:3]  # the data's image size (28 x 28 for MNIST)
    k = max(1, int((width - 3 * MARGIN) * 0.62 // cols))
    field_top = height - TEXT_HEIGHT
    actor, field = image_actor(field_rgb(details.receptive_fields[0], k, details.signed), MARGIN,
                               field_top - rows * k)
    renderer.AddViewProp(actor)
    bar = diverging_bar(1.0, (2 * MARGIN + cols * k) / width, (field_top - rows * k) / height)
    bar.SetVisibility(details.receptive_fields.ndim == 3)  # colour fields: grey is 0, no single scale
    renderer.AddViewProp(bar)
    charts_top = (field_top - rows * k - MARGIN) / height
    digit_rows = 0 if details.top is None else details.images.shape[1]
    digits = 0 if details.top is None else 2 * (digit_rows + 16) + MARGIN
    chart_h = (charts_top - digits / height - 0.02) / 2
    x = np.arange(len(class_names), dtype=float)
    charts = []
    for j, (title, values) in enumerate((("output weights", details.output_vectors[0]),
                                         ("mean activation per class", details.class_activation[0]))):
        chart = pv.Chart2D(size=(0.96, chart_h * 0.95), loc=(0.02, charts_top - (j + 1) * chart_h), x_label="",
                           y_label="")
        chart.title = title
        plot = chart.bar(x, np.asarray(values, float), color=style.CLASS_COLORS[0])
        chart.x_axis.tick_locations = x
        chart.x_axis.tick_labels = list(class_names)
        plotter.add_chart(chart)
        charts.append(plot)
    top = bottom = None
    if details.top is not None:
        for row, (label, indices) in enumerate((("most active", details.top[0]), ("least active", details.bottom[0]))):
            y = MARGIN + (1 - row) * (digit_rows + 16)
            actor, strip = image_actor(digits_strip(details.images, indices), MARGIN, y)
            renderer.AddViewProp(actor)
            plotter.add_text(label, position=(MARGIN, y + digit_rows + 1), font_size=7, color=style.TEXT_COLOR)
            top, bottom = (strip, bottom) if row == 0 else (top, strip)
    panel = Panel(details, class_names, text, field, k, bar, charts[0], charts[1], top, bottom)
    if details.filters is not None:  # a CNN's first conv layer: its kernel at the right of the field
        kh, kw = details.filters.shape[1:3]
        zoom_by = max(1, min(2 * k, (width // 4 - MARGIN) // kw))
        x, y = width - MARGIN - kw * zoom_by, field_top - rows * k
        actor, panel.filter = image_actor(filter_rgb(details.filters[0], zoom_by), x, y)
        renderer.AddViewProp(actor)
        plotter.add_text("filter", position=(x, y + kh * zoom_by + 2), font_size=7, color=style.TEXT_COLOR)
        panel.filter_zoom = zoom_by
    return panel


def filter_rgb(kernel: np.ndarray, k: int) -> np.ndarray:
    """A conv kernel [kh, kw(, 3)] by style.field_rgb at k x k pixels per weight; blank (0) where it is NaN."""
    return field_rgb(np.nan_to_num(kernel), k)


def show_neuron(panel: Panel, i: int) -> None:
    """Fill the panel with neuron i."""
    d = panel.details
    field = d.receptive_fields[i]
    set_rgb(panel.field, field_rgb(field, panel.field_zoom, d.signed))
    limit = float(np.abs(field).max()) or 1.0
    panel.field_bar.GetLookupTable().SetRange(-limit, limit)
    x = np.arange(len(panel.class_names), dtype=float)
    for plot, values in ((panel.weights, d.output_vectors[i]), (panel.activation, d.class_activation[i])):
        plot.update(x, np.asarray(values, float))
    colour = style.CLASS_COLORS[int(d.dominant[i]) % len(style.CLASS_COLORS)]
    panel.weights.color = colour
    panel.activation.color = style.CLASS_COLORS[int(d.activation_dominant[i]) % len(style.CLASS_COLORS)]
    if panel.filter is not None:
        set_rgb(panel.filter, filter_rgb(d.filters[i], panel.filter_zoom))
    if panel.top is not None:
        set_rgb(panel.top, digits_strip(d.images, d.top[i]))
        set_rgb(panel.bottom, digits_strip(d.images, d.bottom[i]))
    panel.text.SetText(2, describe(d, panel.class_names, i))  # upper left
