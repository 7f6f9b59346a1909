"""The interactive window: the layout plays from start to settled and loops.

Mouse: rotate, zoom, pan. Space: pause or play. o: slow orbit on or off. c: next colouring (with
render.color_by: class_mean, the next digit). With render.probe: n / p probe the next / previous test
image, a digit key the next image of that class. The slider scrubs frames.
Clicking a neuron enlarges it and shows its details on the right (render/panel.py); hovering over a
neuron names it and its class.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pyvista as pv

from layout.core.config import RenderConfig
from render import style
from render.movie import fast_plotter
from render.panel import NeuronDetails, Panel, add_panel, show_neuron
from render.scene import (
    Scene,
    SceneData,
    build_scene,
    pick_neuron,
    probe_caption,
    probe_coloring,
    show_frame,
    sphere_radii,
)

__all__ = ["NeuronDetails", "Player", "build_window", "show_window"]

ENLARGED = 1.8  # the clicked neuron's size, in its own


@dataclass(frozen=True)
class ProbeData:
    """What the window needs to probe any test image: images [n, H, W] uint8, labels [n], every hidden
    neuron's activations [n, N] and the class probabilities [n, C], and the image shown first."""

    images: np.ndarray
    labels: np.ndarray
    activations: np.ndarray
    probabilities: np.ndarray
    start: int


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
    panel: Panel | None = None
    hover: object = None  # the text naming the neuron under the mouse
    probe: ProbeData | None = None
    probed: int = 0  # the test image probed now

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

    def probe_image(self, i: int) -> None:
        """Colour the neurons by their activation on test image i and show it (n, p and the digit keys)."""
        p = self.probe
        self.probed = int(i) % len(p.labels)
        names = self.data.class_names
        caption = probe_caption(self.probed, names[p.labels[self.probed]], p.probabilities[self.probed], names)
        self.data = dataclasses.replace(self.data, colorings=(probe_coloring(p.activations[self.probed], caption),),
                                        probed=(p.images[self.probed],))
        self.coloring = 0
        self.goto(self.frame)
        self.scene.plotter.render()

    def probe_class(self, label: int) -> None:
        """Probe the next test image of class `label` after the one shown."""
        p = self.probe
        after = np.flatnonzero(p.labels == label)
        if len(after):
            later = after[after > self.probed]
            self.probe_image(later[0] if len(later) else after[0])

    def select(self, i: int) -> None:
        """Enlarge neuron i (its glyph, or its sphere) and show it in the panel."""
        self.selected = i
        enlarge(self.scene, self.data, i)
        if self.panel is not None:
            show_neuron(self.panel, i)
        self.scene.plotter.render()

    def name_under(self, x: float, y: float) -> None:
        """The hover text: the neuron under window pixel (x, y) and the class it drives, or nothing."""
        i = pick_neuron(self.scene, self.data, self.frame, x, y)
        if i is None:
            self.hover.SetInput("")
        else:
            self.hover.SetInput(f"neuron {i}: drives {self.data.class_names[self.data.group[i]]}")
            self.hover.SetPosition(x + 14, y + 10)
        self.scene.plotter.render()


def enlarge(scene: Scene, data: SceneData, i: int) -> None:
    """Draw neuron i (its glyph, or its sphere or dot) ENLARGED times its size, every other at its own."""
    glyphs = scene.glyphs
    if glyphs is not None:
        glyphs.half = glyphs.base_half * np.where(glyphs.members == i, ENLARGED, 1.0).astype(np.float32)
    radius = sphere_radii(data)
    radius[i] *= ENLARGED
    scene.neurons["radius"] = radius


def build_window(data: SceneData, cfg: RenderConfig, details: NeuronDetails | None = None, *,
                 off_screen: bool = False, probe: ProbeData | None = None) -> Player:
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
    if probe is not None:
        player.probe, player.probed = probe, probe.start
        plotter.add_key_event("n", lambda: player.probe_image(player.probed + 1))
        plotter.add_key_event("p", lambda: player.probe_image(player.probed - 1))
        for digit in range(min(10, len(data.class_names))):
            plotter.add_key_event(str(digit), lambda d=digit: player.probe_class(d))
    keys = "space: play/pause   o: orbit   c: next colouring   click a neuron: details"
    keys += "   n/p, 0-9: probe another image" if probe is not None else ""
    plotter.add_text(keys, position="lower_right", font_size=9, color=style.TEXT_COLOR)
    player.hover = plotter.add_text("", position=(0, 0), font_size=10, color=style.TEXT_COLOR)
    plotter.iren.add_observer("MouseMoveEvent", lambda interactor, _: player.name_under(*interactor.GetEventPosition()))
    if details is not None:
        plotter.subplot(0, 1)
        player.panel = add_panel(plotter, details, data.class_names, cfg.width // 4, cfg.height)
        plotter.subplot(0, 0)

        def on_click(interactor, _event) -> None:
            i = pick_neuron(player.scene, player.data, player.frame, *interactor.GetEventPosition())
            if i is not None:
                player.select(i)

        plotter.iren.add_observer("LeftButtonPressEvent", on_click)
    plotter.add_timer_event(max_steps=10**9, duration=max(1, int(1000 / cfg.fps)), callback=player.tick)
    return player


def show_window(data: SceneData, cfg: RenderConfig, details: NeuronDetails | None = None,
                close_after_frames: int | None = None, probe: ProbeData | None = None) -> Player:
    """Open the window and play; returns when the user closes it (or after `close_after_frames`
    timer ticks, for tests and demos)."""
    player = build_window(data, cfg, details, probe=probe)
    player.ticks_left = close_after_frames
    player.scene.plotter.show(auto_close=True)
    return player

