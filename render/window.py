"""The interactive window: the layout plays from start to settled and loops.

Mouse: rotate, zoom, pan. Space: pause or play. o: slow orbit on or off. c: next colouring (with
render.color_by: class_mean, the next digit). The slider scrubs frames.
Clicking a neuron shows its details on the right: its receptive field (28x28 input weights, red
positive, blue negative), its output weights and its mean activation per class as bars, its layer
and index.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyvista as pv

from layout.core.config import RenderConfig
from render import style
from render.movie import fast_plotter
from render.scene import Scene, SceneData, build_scene, pick_neuron, show_frame


@dataclass(frozen=True)
class NeuronDetails:
    """Per neuron [N, ...]: receptive_fields [N, 28, 28], output_vectors [N, C], class_activation [N, C],
    layer [N] (numbered from 1, the first hidden layer, as in every output), index [N] (within its layer),
    dominant [N], activation_dominant [N]."""

    receptive_fields: np.ndarray
    output_vectors: np.ndarray
    class_activation: np.ndarray
    layer: np.ndarray
    index: np.ndarray
    dominant: np.ndarray
    activation_dominant: np.ndarray


def bars(values: np.ndarray, names: tuple[str, ...], width: int = 12) -> str:
    """Text bars, one line per class: '3 ######      +0.82'."""
    top = float(np.max(np.abs(values))) or 1.0
    lines = []
    for name, v in zip(names, values):
        n = int(round(width * abs(v) / top))
        lines.append(f"{name[:10]:>10s} {('#' * n if v >= 0 else '-' * n):<{width}s} {v:+.2f}")
    return "\n".join(lines)


def describe(details: NeuronDetails, names: tuple[str, ...], i: int) -> str:
    """The text of the details panel for neuron i."""
    return (f"neuron {i}: layer {details.layer[i]}, index {details.index[i]}\n"
            f"drives hardest: {names[details.dominant[i]]}   most active for: "
            f"{names[details.activation_dominant[i]]}\n\noutput weights\n{bars(details.output_vectors[i], names)}"
            f"\n\nmean activation per class\n{bars(details.class_activation[i], names)}")


def field_image(field: np.ndarray) -> pv.ImageData:
    image = pv.ImageData(dimensions=(28, 28, 1))
    image.point_data["weight"] = np.flipud(field).ravel()  # row 0 of the image at the top
    return image


@dataclass
class Player:
    """The window's playback state and its callbacks (one small object, not a god class: it only
    moves the frame index and asks the scene to show it)."""

    scene: Scene
    data: SceneData
    frame: int = 0
    playing: bool = True
    orbit: bool = False
    coloring: int = 0
    slider: object = None
    selected: int | None = None  # the neuron whose details the panel shows
    ticks_left: int | None = None  # close the window after this many timer ticks (tests, demos)

    def goto(self, frame: int) -> None:
        self.frame = int(np.clip(frame, 0, self.data.n_frames - 1))
        show_frame(self.scene, self.data, self.frame, self.coloring)

    def tick(self, *_) -> None:
        if self.playing:
            self.goto((self.frame + 1) % self.data.n_frames)
            if self.slider is not None:
                self.slider.GetRepresentation().SetValue(self.frame)
        if self.orbit:
            self.scene.plotter.camera.azimuth += 0.5
        self.scene.plotter.render()
        if self.ticks_left is not None:
            self.ticks_left -= 1
            if self.ticks_left <= 0:
                self.scene.plotter.close()

    def toggle_play(self) -> None:
        self.playing = not self.playing

    def toggle_orbit(self) -> None:
        self.orbit = not self.orbit

    def next_coloring(self) -> None:
        self.coloring = (self.coloring + 1) % max(len(self.data.colorings), 1)
        self.goto(self.frame)


def build_window(data: SceneData, cfg: RenderConfig, details: NeuronDetails | None = None, *,
                 off_screen: bool = False) -> Player:
    """The window with everything in it (scene, slider, keys, timer, details panel), not yet shown; with
    `off_screen`, drawn without a display, its interactor driven by VTK events alone (tests)."""
    shape = (1, 2) if details is not None else (1, 1)
    plotter = fast_plotter(pv.Plotter(window_size=(cfg.width, cfg.height), shape=shape, off_screen=off_screen,
                                      col_weights=[3, 1] if details is not None else None,
                                      title=f"neuron-layout: {data.name}"))
    plotter.subplot(0, 0)
    player = Player(build_scene(plotter, data), data)
    player.slider = plotter.add_slider_widget(lambda v: player.goto(int(round(v))), [0, data.n_frames - 1],
                                              value=0, title="frame", pointa=(0.1, 0.06), pointb=(0.55, 0.06),
                                              fmt="%.0f", style="modern", interaction_event="always")
    plotter.add_key_event("space", player.toggle_play)
    plotter.add_key_event("o", player.toggle_orbit)
    plotter.add_key_event("c", player.next_coloring)
    plotter.add_text("space: play/pause   o: orbit   c: next colouring   click a neuron: details", position="lower_right",
                     font_size=9, color=style.TEXT_COLOR)
    if details is not None:
        add_details_panel(plotter, player, details)
    plotter.add_timer_event(max_steps=10**9, duration=max(1, int(1000 / cfg.fps)), callback=player.tick)
    return player


def show_window(data: SceneData, cfg: RenderConfig, details: NeuronDetails | None = None,
                close_after_frames: int | None = None) -> Player:
    """Open the window and play; returns when the user closes it (or after `close_after_frames`
    timer ticks, for tests and demos)."""
    player = build_window(data, cfg, details)
    player.ticks_left = close_after_frames
    player.scene.plotter.show(auto_close=True)
    return player


def add_details_panel(plotter: pv.Plotter, player: Player, details: NeuronDetails) -> None:
    """The right-hand viewport: the clicked neuron's receptive field and its numbers."""
    plotter.subplot(0, 1)
    plotter.set_background(style.BACKGROUND)
    image = field_image(details.receptive_fields[0])
    field = plotter.add_mesh(image, scalars="weight", cmap="RdBu_r", show_scalar_bar=False)
    plotter.view_xy()
    text = plotter.add_text("click a neuron", position="lower_left", font_size=8, color=style.TEXT_COLOR,
                            font="courier")
    plotter.subplot(0, 0)

    def on_click(interactor, _event) -> None:
        x, y = interactor.GetEventPosition()
        i = pick_neuron(player.scene, player.data, player.frame, x, y)
        if i is None:
            return
        player.selected = i
        weights = details.receptive_fields[i]
        limit = float(np.abs(weights).max()) or 1.0
        image.point_data["weight"] = np.flipud(weights).ravel()
        field.mapper.scalar_range = (-limit, limit)
        text.SetText(0, describe(details, player.data.class_names, i))
        plotter.render()

    plotter.iren.add_observer("LeftButtonPressEvent", on_click)
