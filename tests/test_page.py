"""layout.html (`--export html`): one self-contained page, opened in a real browser (Debian's chromium, driven
by playwright, software WebGL): no console error, no request outside file://, the legend's colours drawn, the
slider moving the picture, a click opening the clicked neuron's panel with its weights' colours at exact
pixels, and hostile strings shown as text. Without chromium or playwright the browser tests are skipped."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

from models.data.idx import read_idx
from render import style
from render.glyphs import field_images
from render.html.page import RunSummary, page_html, stored_frames, write_page
from render.panel import NeuronDetails
from render.scene import make_scene_data
from tests.conftest import messages
from tests.test_render import has_color

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
BROWSER_ARGS = ["--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--no-sandbox", "--disable-gpu-sandbox",
                "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"]
HOSTILE = "<img src=x onerror=alert(1)>"


def page_data(path: Path) -> dict:
    """The JSON a page carries, as page.js reads it."""
    text = path.read_text(encoding="utf-8")
    found = re.search(r'<script type="application/json" id="layout-data">(.*?)</script>', text, re.S)
    return json.loads(found.group(1))


def unpacked(packed: dict) -> np.ndarray:
    return np.frombuffer(base64.b64decode(packed["data"]), np.dtype(packed["dtype"]).newbyteorder("<")).reshape(
        packed["shape"])


def run_html(shared_data: Path, out: Path, *extra: str, window: bool = False) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "DISPLAY"}  # no display: a window run exports instead
    return subprocess.run(
        [sys.executable, "-m", "layout.run", "configs/euclid.yaml", *([] if window else ["--no-window"]),
         "--export", "html", "--out", str(out), "--data-dir", str(shared_data), "--set", "train.epochs=2",
         "--set", "layout.sim.steps=150", *extra], cwd=REPO, capture_output=True, text=True, timeout=600, env=env)


@pytest.fixture(scope="module")
def euclid_run(shared_data, tmp_path_factory) -> Path:
    """A real run of configs/euclid.yaml (shortened) with --no-window --export html, probing the first test
    image of each class."""
    out = tmp_path_factory.mktemp("page") / "run"
    result = run_html(shared_data, out, "--set", "render.probe=per_class")
    assert result.returncode == 0, result.stderr
    return out


def test_the_page_is_one_file_holding_the_run(euclid_run):
    names = sorted(p.name for p in euclid_run.iterdir())
    assert "layout.html" in names and "layout.mp4" not in names and "snapshot.png" not in names
    data = page_data(euclid_run / "layout.html")
    with np.load(euclid_run / "trajectory.npz", allow_pickle=False) as z:
        positions = z["positions"]
    frames = data["frames"]
    assert frames["count"] == len(positions) == len(frames["stored"])  # 110 particles: every frame kept
    q = unpacked(frames["positions"]).astype(np.float64)
    restored = np.asarray(frames["low"]) + q / 65535 * np.asarray(frames["span"])
    assert np.abs(restored - positions).max() <= max(frames["span"]) / 65535  # uint16: within one step
    assert data["class_names"] == [str(d) for d in range(10)] and data["n_neurons"] == 100
    assert data["verdicts"] and all("layer 1" in v for v in data["verdicts"])  # the structure tests' verdicts
    text = (euclid_run / "layout.html").read_text(encoding="utf-8")
    assert "three.js 0.187.0" in text and "Permission is hereby granted" in text  # the pinned version's licence
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text)  # nothing fetched when it opens


def test_many_particles_keep_fewer_frames_and_always_the_first_and_last():
    assert len(stored_frames(60, 110)) == 60
    kept = stored_frames(500, 10_010)
    assert kept[0] == 0 and kept[-1] == 499 and len(kept) * 10_010 * 6 <= 12_000_000 and np.all(np.diff(kept) > 0)


def tiny_page_inputs(names: tuple[str, ...], name: str, n: int = 6, seed: int = 0, top: int = 100):
    """A hand-made scene of n neurons with 4x4 fields (the `top` largest output vectors drawn as images), their
    details and a summary."""
    rng = np.random.default_rng(seed)
    c = len(names)
    positions = rng.normal(size=(5, n + c, 3)).astype(np.float32)
    is_anchor = np.arange(n + c) >= n
    group = np.concatenate([np.arange(n) % c, np.arange(c)])
    vectors = rng.normal(size=(n, c)).astype(np.float32)
    fields = rng.normal(size=(n, 4, 4)).astype(np.float32)
    images = field_images(fields, group[:n], np.zeros(n, int), np.linalg.norm(vectors, axis=1), "neuron", top)
    scene = make_scene_data(positions, tuple(f"step {i}" for i in range(5)), group, is_anchor, vectors, names, name,
                            1, "norm", fields=images)
    activation = np.abs(rng.normal(size=(n, c))).astype(np.float32)
    details = NeuronDetails(receptive_fields=fields, output_vectors=vectors, class_activation=activation,
                            layer=np.ones(n, int), index=np.arange(n), dominant=group[:n],
                            activation_dominant=activation.argmax(1), selectivity=np.full(n, 0.5),
                            effective_classes=np.full(n, 2.0), top=np.zeros((n, 2), int), bottom=np.ones((n, 2), int),
                            images=rng.integers(0, 255, (3, 4, 4), dtype=np.uint8))
    summary = RunSummary(verdicts=(f"verdict about {HOSTILE}",), figures=(("spearman", 0.5),),
                         layer_names=((1, HOSTILE),))
    return scene, details, summary


def test_strings_from_configs_and_data_cannot_end_the_data_element_or_become_markup():
    text = page_html(*tiny_page_inputs((HOSTILE, "</script><script>alert(2)</script>", "b&c"), HOSTILE))
    assert "<img" not in text and "alert(2)</script>" not in text and "<script>alert" not in text
    assert f"<title>{HOSTILE.replace('<', '&lt;').replace('>', '&gt;')}: neuron layout</title>" in text
    assert "eval(" not in text.split('id="layout-data"')[1] and "innerHTML" not in text.split('id="layout-data"')[1]


def test_an_unwritable_output_folder_fails_before_any_work_for_the_page(tmp_path, shared_data):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = run_html(shared_data, blocker / "run")
    assert result.returncode == 2 and result.stdout == ""
    assert messages(result.stderr) == [f"error: cannot write to the output folder {blocker / 'run'} (Not a "
                                       "directory): choose another with --out"]


def test_without_no_window_and_no_display_the_page_is_exported(shared_data, tmp_path):
    result = run_html(shared_data, tmp_path / "run", "--set", "structure.enabled=false", window=True)
    assert result.returncode == 0, result.stderr
    assert "exporting instead of opening a window" in result.stdout
    assert page_data(tmp_path / "run" / "layout.html")["verdicts"] == []  # structure tests off: none to show


# ---- in a real browser ----

def browser_missing() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install playwright; the browser is Debian's chromium)"
    if not Path(CHROMIUM).exists():
        return f"{CHROMIUM} is missing (apt-get install chromium)"
    return None


needs_browser = pytest.mark.skipif(browser_missing() is not None, reason=browser_missing() or "")


class Opened:
    """A page open in headless chromium, with what it logged and requested."""

    def __init__(self, page):
        self.page = page
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.dialogs: list[str] = []
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(str(e)))
        page.on("request", lambda r: self.requests.append(r.url))
        page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))

    def screenshot(self) -> np.ndarray:
        return iio.imread(self.page.screenshot(), extension=".png")[..., :3]


@pytest.fixture(scope="module")
def browser():
    if browser_missing():
        pytest.skip(browser_missing())
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        yield launched
        launched.close()


def open_page(browser, path: Path) -> Opened:
    opened = Opened(browser.new_page(viewport={"width": 1280, "height": 720}))
    opened.page.goto(path.resolve().as_uri())
    opened.page.wait_for_function("() => window.neuronLayout && window.neuronLayout.ready", timeout=30_000)
    opened.page.wait_for_function("() => window.neuronLayout.rendered > 2", timeout=30_000)
    return opened


@needs_browser
def test_the_page_loads_offline_and_draws_the_legend_colours(browser, euclid_run):
    opened = open_page(browser, euclid_run / "layout.html")
    image = opened.screenshot()
    assert opened.errors == []
    assert opened.requests and all(url.startswith(("file://", "data:")) for url in opened.requests)
    assert (np.abs(image.astype(int) - 255).sum(2) > 30).mean() > 0.05  # not blank
    drawn = [c for c in style.CLASS_COLORS if has_color(image, c, tolerance=3)]
    assert len(drawn) >= 8, drawn  # the anchors' spheres and the fields' frames in their class colours
    legend = opened.page.locator("#legend .row").all_text_contents()
    assert legend == [str(d) for d in range(10)]
    opened.page.close()


@needs_browser
def test_the_slider_and_the_keys_move_the_picture(browser, euclid_run):
    opened = open_page(browser, euclid_run / "layout.html")
    last = opened.screenshot()
    opened.page.fill("#slider", "0")  # the first frame: the start of the simulation
    opened.page.wait_for_function("() => window.neuronLayout.frame === 0")
    first = opened.screenshot()
    assert (np.abs(first.astype(int) - last).sum(2) > 30).mean() > 0.02
    assert opened.page.text_content("#frame-label").startswith("frame 1 of ")
    opened.page.keyboard.press("ArrowRight")
    assert opened.page.evaluate("window.neuronLayout.frame") == 1
    opened.page.keyboard.press(" ")  # space plays
    opened.page.wait_for_function("() => window.neuronLayout.frame > 1.5")
    assert opened.page.text_content("#play") == "pause"
    assert opened.errors == []
    opened.page.close()


@needs_browser
def test_the_colourings_recolour_the_neurons_and_show_their_scale_and_probed_image(browser, euclid_run, shared_data):
    opened = open_page(browser, euclid_run / "layout.html")
    page = opened.page
    options = page.locator("#coloring option").all_text_contents()
    assert options == ["dominant class", "mean activation per class", "selectivity", "probed images"]
    by_class = opened.screenshot()
    page.select_option("#coloring", label="mean activation per class")
    assert page.locator("#which option").all_text_contents() == [str(d) for d in range(10)]
    page.select_option("#which", label="7")
    assert page.locator("#legend").text_content().startswith("mean activation")  # a colour bar, not the classes
    assert "mean activation, 7" in page.text_content("#frame-label")
    recoloured = opened.screenshot()
    assert (np.abs(recoloured.astype(int) - by_class).sum(2) > 30).mean() > 0.01
    assert has_color(recoloured, style.ACTIVATION_HIGH, tolerance=40, at_least=4)  # the most active, dark red
    page.select_option("#coloring", label="probed images")
    assert page.locator("#probe").is_visible() and len(page.locator("#which option").all()) == 10
    assert "probe: test image" in page.text_content("#frame-label")
    probe = np.array(page.evaluate("""() => { const c = document.getElementById('probe');
        return Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data); }""")).reshape(28, 28, 4)
    images = read_idx(shared_data / "mnist" / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(shared_data / "mnist" / "t10k-labels-idx1-ubyte.gz")
    first_zero = images[np.flatnonzero(labels == 0)[0]]  # per_class: the first test image of each class
    np.testing.assert_array_equal(probe[..., :3], style.picture_rgb(first_zero))  # dark ink on white, exact
    assert opened.errors == []
    page.close()


def uncovered_neuron(page, n: int) -> int:
    """A neuron whose centre on screen no other neuron's disc or square reaches, away from the overlays."""
    at = np.array(page.evaluate(f"Array.from({{length: {n}}}, (_, i) => window.neuronLayout.project(i))"))
    reach = np.array(page.evaluate(f"Array.from({{length: {n}}}, (_, i) => window.neuronLayout.pixelRadius(i))"))
    for i in np.argsort(np.abs(at[:, 0] - 640) + np.abs(at[:, 1] - 360)):
        gap = np.abs(at - at[i]).max(1)
        gap[i] = np.inf
        if (gap > np.maximum(reach, 8) + 2).all():
            return int(i)
    pytest.fail("every neuron is covered by another on screen")


@needs_browser
def test_a_click_on_a_neuron_opens_its_panel_with_its_weights_at_exact_pixels(browser, euclid_run):
    opened = open_page(browser, euclid_run / "layout.html")
    page = opened.page
    i = uncovered_neuron(page, 100)
    x, y = page.evaluate(f"window.neuronLayout.project({i})")
    page.mouse.click(x, y)
    assert page.text_content("#panel-title") == f"neuron {i}"
    with np.load(euclid_run / "network.npz", allow_pickle=False) as z:
        kernel = z["w0"]  # [784, 100]: the first layer's input weights, one column per neuron
    field = kernel[:, i].reshape(28, 28)
    expected = style.field_rgb(field[None], np.array([np.abs(field).max()]))[0]
    h, w, values = field_pixels(page)
    np.testing.assert_array_equal(np.array(values).reshape(h, w, 4)[..., :3], expected)
    bars = page.locator("#weights .value").all_text_contents()
    assert [float(b) for b in bars] == pytest.approx(list(z_vectors(euclid_run)[i]), rel=5e-3)  # shown to 3 digits
    page.fill("#search", "100")
    page.press("#search", "Enter")
    assert page.text_content("#search-note") == 'no neuron "100": ids run from 0 to 99'
    page.fill("#search", "7")
    page.press("#search", "Enter")
    assert page.text_content("#panel-title") == "neuron 7"
    assert len(page.locator("#top canvas").all()) == 9  # render.top_images
    assert opened.errors == []
    page.close()


def z_vectors(run: Path) -> np.ndarray:
    """The network's output vectors: each hidden neuron's weights to the ten outputs (network.npz's w1)."""
    with np.load(run / "network.npz", allow_pickle=False) as z:
        return z["w1"]


@needs_browser
def test_hostile_names_show_as_text_and_run_no_code(browser, tmp_path):
    names = (HOSTILE, "</script><script>alert(2)</script>", "b&c")
    path = write_page(tmp_path / "layout.html", *tiny_page_inputs(names, HOSTILE))
    opened = open_page(browser, path)
    page = opened.page
    assert opened.dialogs == [] and opened.errors == []
    assert page.locator("#legend .row").all_text_contents() == list(names)
    assert page.text_content("#title") == HOSTILE and page.title() == f"{HOSTILE}: neuron layout"
    assert page.locator("#labels span").all_text_contents() == list(names)  # the anchors' labels
    assert page.evaluate("document.querySelectorAll('img, iframe').length") == 0
    assert page.locator("#verdict-list li").all_text_contents() == [f"verdict about {HOSTILE}"]
    page.fill("#search", "0")
    page.press("#search", "Enter")
    assert HOSTILE in page.text_content("#panel-text")  # the layer's name
    assert opened.dialogs == []
    page.close()


def field_pixels(page) -> np.ndarray:
    """The details panel's field as the canvas holds it, [h, w, 3]."""
    return np.array(page.evaluate("""() => { const c = document.getElementById('field');
        return [c.height, c.width, Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data)]; }"""),
        dtype=object)


@needs_browser
def test_the_page_holds_the_fields_of_the_neurons_drawn_as_images_and_says_so_for_the_rest(browser, tmp_path):
    scene, details, summary = tiny_page_inputs(("a", "b"), "tiny", top=3)
    path = write_page(tmp_path / "layout.html", scene, details, summary)
    page = open_page(browser, path).page
    members = set(scene.fields.members.tolist())
    for i in range(6):
        page.fill("#search", str(i))
        page.press("#search", "Enter")
        assert page.locator("#panel-field").is_visible() == (i in members)
        assert page.locator("#no-field").is_visible() == (i not in members)
        if i in members:
            h, w, values = field_pixels(page)
            field = details.receptive_fields[i]
            expected = style.field_rgb(field[None], np.array([np.abs(field).max()]))[0]
            np.testing.assert_array_equal(np.array(values).reshape(h, w, 4)[..., :3], expected)
    page.close()


@needs_browser
def test_the_training_timeline_page_titles_each_frame_with_epoch_and_accuracy(browser, shared_data, tmp_path):
    out = tmp_path / "run"
    result = run_html(shared_data, out, "--set", "render.timeline=training", "--set", "train.snapshot_every=1",
                      "--set", "layout.sim.snapshot_steps=20", "--set", "structure.enabled=false")
    assert result.returncode == 0, result.stderr
    opened = open_page(browser, out / "layout.html")
    opened.page.fill("#slider", "0")
    assert "epoch 0" in opened.page.text_content("#frame-label")
    assert opened.errors == []
    opened.page.close()
