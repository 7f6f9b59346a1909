"""Offscreen export: mp4 (H.264 through imageio-ffmpeg), gif or png.

A movie shows the layout settling (the simulation's frames resampled to `settle_seconds`) and then
one full orbit of the final layout (`orbit_seconds`), so that its 3D shape reads on a flat screen.
Every file is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import dataclasses
import math
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import imageio.v3 as iio
import imageio_ffmpeg
import numpy as np
import pyvista as pv

from layout.core import ctrl_c
from layout.core.config import RenderConfig
from layout.core.errors import UserError
from layout.core.files import atomic_path
from render.scene import Scene, SceneData, build_scene, show_frame


class ExportError(UserError):
    """A movie or picture could not be written."""


def one_line(error: Exception) -> str:
    text = " ".join(str(error).split()).split(" FFMPEG COMMAND")[0]
    return text[:160] or type(error).__name__


@dataclass(frozen=True)
class Shot:
    """One movie frame: which simulation frame, and how far the camera has orbited (degrees)."""

    frame: int
    azimuth: float
    coloring: int = 0


def shot_list(n_frames: int, cfg: RenderConfig, n_colorings: int = 1) -> list[Shot]:
    """The settling frames spread over settle_seconds, then the orbit of the last frame, stepping
    through the colorings (e.g. the digits) in equal parts of the orbit."""
    n_settle = int(round(cfg.settle_seconds * cfg.fps))
    n_orbit = int(round(cfg.orbit_seconds * cfg.fps))
    settle = np.linspace(0, n_frames - 1, n_settle).round().astype(int) if n_settle else []  # holds or skips
    shots = [Shot(int(f), 0.0) for f in settle]
    shots += [Shot(n_frames - 1, 360.0 * (k + 1) / n_orbit, k * n_colorings // n_orbit) for k in range(n_orbit)]
    return shots or [Shot(n_frames - 1, 0.0)]


def offscreen_scene(data: SceneData, cfg: RenderConfig) -> Scene:
    return build_scene(fast_plotter(pv.Plotter(off_screen=True, window_size=(cfg.width, cfg.height))), data)


def fast_plotter(plotter: pv.Plotter) -> pv.Plotter:
    """No multisampling: PyVista's default 8x makes every software-rendered frame about 5x slower (and
    FXAA falls back to even slower supersampling without a display)."""
    plotter.ren_win.SetMultiSamples(0)
    return plotter


def render_shots(scene: Scene, data: SceneData, shots: list[Shot]) -> Iterator[np.ndarray]:
    """Yield each shot as an RGB image [height, width, 3] uint8."""
    with ctrl_c.deferred():  # Ctrl-C during a render lands in a VTK callback, which would swallow it
        yield from _render(scene, data, shots)


def _render(scene: Scene, data: SceneData, shots: list[Shot]) -> Iterator[np.ndarray]:
    camera = scene.plotter.camera
    start = camera.azimuth
    for shot in shots:
        ctrl_c.check()
        show_frame(scene, data, shot.frame, shot.coloring)
        camera.azimuth = start + shot.azimuth
        scene.plotter.render()  # (PyVista renders by itself only for the first screenshot)
        yield np.asarray(scene.plotter.screenshot(return_img=True))


def write_mp4(path: Path, images: Iterator[np.ndarray], cfg: RenderConfig,
              on_frame: Callable[[int], None] | None = None) -> Path:
    with atomic_path(path) as tmp, warnings.catch_warnings():
        # ffmpeg starts with fork + exec; Python warns about forking a threaded (JAX) process, but the
        # child runs no Python code before exec.
        warnings.filterwarnings("ignore", message=".*os.fork", category=RuntimeWarning)
        writer = imageio_ffmpeg.write_frames(
            str(tmp), (cfg.width, cfg.height), fps=cfg.fps, codec="libx264", pix_fmt_out="yuv420p",
            macro_block_size=2, quality=None, ffmpeg_log_level="error",
            # veryfast: 2-3x quicker than x264's default preset, at the same quality (crf 20) for a
            # few percent more bytes; encoding runs beside rendering in ffmpeg's own process
            output_params=["-f", "mp4", "-movflags", "+faststart", "-preset", "veryfast", "-crf", "20"])
        try:
            writer.send(None)
            for i, image in enumerate(images):
                writer.send(np.ascontiguousarray(image))
                if on_frame:
                    on_frame(i + 1)
            writer.close()
            check_mp4(tmp)  # imageio-ffmpeg does not check ffmpeg's exit status
        except (OSError, RuntimeError) as e:  # ffmpeg missing, crashed, or the disk is full
            close_quietly(writer)
            raise ExportError(f"writing {path.name} failed ({one_line(e)}): free some disk space, or export "
                              "--export gif or png instead") from None
        except BaseException:  # Ctrl-C: let ffmpeg finish before the partial file is removed
            close_quietly(writer)
            raise
    return path


def check_mp4(path: Path) -> None:
    """Raise OSError unless `path` is a complete MP4: top-level boxes that exactly fill the file,
    with the index ('moov') and the frames ('mdat'), as ffmpeg leaves it only when it finished."""
    data = path.read_bytes()
    boxes, at = set(), 0
    while at + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[at:at + 8])
        if size == 1 and at + 16 <= len(data):
            size = struct.unpack(">Q", data[at + 8:at + 16])[0]
        if size < 8:
            break
        boxes.add(kind)
        at += size
    if at != len(data) or not {b"moov", b"mdat"} <= boxes:
        raise OSError(f"ffmpeg stopped early: the movie is incomplete ({len(data)} bytes)")


def close_quietly(writer) -> None:
    try:
        writer.close()
    except (OSError, RuntimeError):
        pass


GIF_MAX_FPS = 50  # a gif's frame delays are whole hundredths of a second; viewers slow down any below 0.02 s


def gif_step(fps: int) -> int:
    """Keep every this many frames in a gif, so that no frame is shown for less than 0.02 s."""
    return math.ceil(fps / GIF_MAX_FPS)


def gif_delays(n_frames: int, fps: float) -> list[int]:
    """Per-frame delays in milliseconds, each a whole number of hundredths, that add up to the movie's
    time (so 30 fps is 30, 40, 30, 30, 40, ... ms, not 30 ms throughout: 10% fast)."""
    ends = np.round(np.arange(1, n_frames + 1) * 100 / fps).astype(int)
    return (np.diff(ends, prepend=0) * 10).tolist()


def write_gif(path: Path, images: Iterator[np.ndarray], cfg: RenderConfig,
              on_frame: Callable[[int], None] | None = None) -> Path:
    step = gif_step(cfg.fps)
    frames = []
    for i, image in enumerate(images):
        if i % step == 0:
            frames.append(image)
        if on_frame:
            on_frame(i + 1)
    with atomic_path(path) as tmp:
        iio.imwrite(tmp, np.stack(frames), extension=".gif", duration=gif_delays(len(frames), cfg.fps / step), loop=0)
    return path


def export_settings(cfg: RenderConfig, formats: tuple[str, ...]) -> tuple[RenderConfig, tuple[str, ...]]:
    """The render settings the exports use, and a note for each way they differ from what was asked: an
    H.264 movie needs an even width and height (odd ones are rendered a pixel larger, for every file
    alike), and a gif at most 50 frames a second."""
    notes = []
    if "mp4" in formats and (cfg.width % 2 or cfg.height % 2):
        even = dataclasses.replace(cfg, width=cfg.width + cfg.width % 2, height=cfg.height + cfg.height % 2)
        notes.append(f"render.width x height = {cfg.width} x {cfg.height} is odd, and an H.264 movie needs even "
                     f"sizes: rendered at {even.width} x {even.height}")
        cfg = even
    if "gif" in formats and gif_step(cfg.fps) > 1:
        notes.append(f"a gif shows at most {GIF_MAX_FPS} frames a second (its delays are whole hundredths, and "
                     f"viewers slow down shorter ones): layout.gif keeps every {ordinal(gif_step(cfg.fps))} frame "
                     f"of the {cfg.fps} fps movie, at its speed")
    return cfg, tuple(notes)


def ordinal(n: int) -> str:
    return f"{n}{'nd' if n == 2 else 'rd' if n == 3 else 'th'}"


def write_png(path: Path, image: np.ndarray) -> Path:
    with atomic_path(path) as tmp:
        iio.imwrite(tmp, image, extension=".png")
    return path


WRITERS = {"mp4": write_mp4, "gif": write_gif}



def movie_frames(data: SceneData, formats: tuple[str, ...], cfg: RenderConfig) -> int:
    """How many frames export() will render for the movies among `formats`."""
    movies = sum(fmt in WRITERS for fmt in formats)
    return movies * len(shot_list(data.n_frames, cfg, max(len(data.colorings), 1)))


def export(data: SceneData, out: Path, formats: tuple[str, ...], cfg: RenderConfig,
           on_frame: Callable[[int], None] | None = None) -> tuple[Path, ...]:
    """Write layout.mp4 / layout.gif (the movie) and snapshot.png (the final layout) as asked;
    on_frame(n) reports the number of movie frames done so far, over all formats."""
    scene = offscreen_scene(data, cfg)
    written = []
    try:
        shots = shot_list(data.n_frames, cfg, max(len(data.colorings), 1))
        movies = [fmt for fmt in formats if fmt in WRITERS]
        for k, fmt in enumerate(movies):
            report = (lambda i, k=k: on_frame(k * len(shots) + i)) if on_frame else None
            written.append(WRITERS[fmt](out / f"layout.{fmt}", render_shots(scene, data, shots), cfg, report))
        if "png" in formats:
            image = next(render_shots(scene, data, [Shot(data.n_frames - 1, 0.0)]))
            written.append(write_png(out / "snapshot.png", image))
    finally:
        scene.plotter.close()
    return tuple(written)
