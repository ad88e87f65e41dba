"""ComfyUI's frontend driving `nodegraph serve`, in a real headless Chromium (Debian's package) through
Playwright: boot without console errors from our API, the node library, the default inpainting graph, an
uploaded image with a painted mask, Queue, progress, the output in the job queue, and a reload that keeps
the saved workflow and the history. Screenshots of each stage go to pytest's tmp dir."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest

from tests.test_server import Served, httpx

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if importlib.util.find_spec("playwright") is None:
    pytest.skip("Playwright for Python is not installed (pip install playwright; no browser download needed)",
                allow_module_level=True)
if CHROMIUM is None:
    pytest.skip("no system Chromium (apt-get install chromium)", allow_module_level=True)
if importlib.util.find_spec("comfyui_frontend_package") is None:
    pytest.skip("the editor is not installed (pip install -e '.[ui]')", allow_module_level=True)

from playwright.sync_api import Browser, ConsoleMessage, Page, Response, sync_playwright  # noqa: E402
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError  # noqa: E402

DEFAULT_TITLES = {"checkpoint", "image", "mask", "positive", "negative", "encode", "latent_mask", "sample", "decode",
                  "composite", "save"}
GRAPH_READY = "() => window.app && window.app.graph && window.app.graph._nodes.length > 0"
# Requests the page makes that fail for reasons that are not our API's:
#  - other hosts (the frontend checks api.comfy.org for releases; this machine has no internet),
#  - 404s for optional user files the page probes and a new user does not have: the legacy templates file
#    and the workflows folder's index (ComfyUI answers 404 too; the page treats it as "none").
EXPECTED_404 = {"/api/userdata/comfy.templates.json", "/api/userdata/workflows/.index.json"}


class PageLog:
    """Console errors and failed responses of the page, minus the ones listed above."""

    def __init__(self, page: Page, origin: str):
        self.origin = origin
        self.errors: list[str] = []
        self.progress: list[Any] = []
        page.on("console", self._console)
        page.on("response", self._response)

    def _ours(self, url: str) -> bool:
        return url.startswith(self.origin)

    def _console(self, msg: ConsoleMessage) -> None:
        if msg.type != "error":
            return
        url = msg.location.get("url", "") if msg.location else ""
        if msg.text.startswith("Failed to load resource") and url:
            if not self._ours(url) or unquote(urlsplit(url).path) in EXPECTED_404:
                return
        self.errors.append(f"{msg.text[:500]} ({url})")

    def _response(self, response: Response) -> None:
        if response.status >= 400 and self._ours(response.url) and unquote(urlsplit(response.url).path) not in EXPECTED_404:
            self.errors.append(f"HTTP {response.status} {response.request.method} {response.url}")


@pytest.fixture(scope="module")
def served(tmp_path_factory, builtin_models_dir) -> Iterator[Served]:
    s = Served(tmp_path_factory.mktemp("editor"), builtin_models_dir)
    # at the default fit-to-window zoom the canvas draws nodes as boxes: show widgets in the screenshots
    httpx.post(s.url + "/api/settings", json={"LiteGraph.Canvas.MinFontSizeForLOD": 2}, timeout=30)
    yield s
    assert s.stop() == 0


def shot(page: Page, folder: Path, name: str) -> Path:
    path = folder / f"{name}.png"
    page.screenshot(path=str(path))
    return path


def set_widget(page: Page, title: str, name: str, value: Any) -> None:
    page.evaluate("""([title, name, value]) => {
        const node = app.graph._nodes.find(n => n.title === title);
        const widget = node.widgets.find(w => w.name === name);
        widget.value = value;
        widget.callback?.(value);
        app.graph.setDirtyCanvas(true, true);
    }""", [title, name, value])


def widget_values(page: Page, title: str) -> dict[str, Any]:
    return dict(page.evaluate("""(title) => app.graph._nodes.find(n => n.title === title).widgets
        .map(w => [w.name, w.value])""", title))


def open_job_queue(page: Page) -> None:
    """The queue and history panel (the "N active" button toggles it; the page may restore it open)."""
    page.wait_for_timeout(500)
    if not page.get_by_text("Job Queue", exact=True).first.is_visible():
        page.locator("button:has-text('active')").first.click()
    page.get_by_text("Job Queue", exact=True).first.wait_for(timeout=10_000)


UPLOAD_WITH_MASK = """async () => {
    // what the editor's upload button and mask editor send: the picture, then the painted mask as a PNG
    // whose alpha is 0 where the user painted, with original_ref naming the picture
    const api = window.comfyAPI.api.api;
    const picture = await (await fetch('/api/view?filename=demo_image.png&type=input')).blob();
    let form = new FormData();
    form.append('image', picture, 'editor_photo.png');
    form.append('overwrite', 'true');
    const up = await (await api.fetchApi('/upload/image', {method: 'POST', body: form})).json();
    const bitmap = await createImageBitmap(picture);
    const canvas = document.createElement('canvas');
    canvas.width = bitmap.width; canvas.height = bitmap.height;
    const g = canvas.getContext('2d');
    g.fillStyle = 'rgba(0, 0, 0, 1)';
    g.fillRect(0, 0, canvas.width, canvas.height);
    g.clearRect(canvas.width / 4, canvas.height / 4, canvas.width / 2, canvas.height / 2);
    const painted = await new Promise(resolve => canvas.toBlob(resolve, 'image/png'));
    form = new FormData();
    form.append('image', painted, 'clipspace-painted-mask.png');
    form.append('type', 'input');
    form.append('subfolder', 'clipspace');
    form.append('original_ref', JSON.stringify({filename: up.name, subfolder: up.subfolder, type: up.type}));
    const masked = await api.fetchApi('/upload/mask', {method: 'POST', body: form});
    return [up, masked.status, await masked.json(), [bitmap.width, bitmap.height]];
}"""


@contextmanager
def chromium() -> Iterator[Browser]:
    """Debian's headless Chromium, driven by Playwright."""
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


def open_editor(browser: Browser, origin: str, path: str = "/", width: int = 1440, height: int = 900
                ) -> tuple[Page, PageLog]:
    """A new page on the editor, once its graph has loaded, with the log of its errors."""
    page = browser.new_page(viewport={"width": width, "height": height})
    log = PageLog(page, origin)
    page.goto(origin + path)
    page.wait_for_function(GRAPH_READY, timeout=90_000)
    return page, log


def test_editor_end_to_end(served: Served, tmp_path: Path) -> None:
    artifacts = tmp_path / "screenshots"
    artifacts.mkdir()
    with chromium() as browser:
        try:
            # 1. boot: the default graph is nodegraph's SDXL inpainting workflow
            page, log = open_editor(browser, served.url)
            titles = set(page.evaluate("() => app.graph._nodes.map(n => n.title)"))
            assert titles == DEFAULT_TITLES
            links = page.evaluate("() => app.graph.links.size ?? Object.keys(app.graph.links).length")
            assert links == 17
            assert widget_values(page, "sample")["seed"] == 42
            page.wait_for_timeout(1500)  # let start-up requests settle before judging the console
            shot(page, artifacts, "01-boot")
            assert log.errors == [], log.errors

            # 2. the node library: native nodes under nodegraph/..., ComfyUI's under their own categories
            types = page.evaluate("() => Object.keys(LiteGraph.registered_node_types)")
            assert {"nodegraph.Sample", "nodegraph.LoadCheckpoint", "nodegraph.LoadImage", "nodegraph.SaveImage"} <= set(types)
            page.get_by_role("button", name="Node Library (n)").click()
            page.get_by_text("nodegraph", exact=True).first.click()
            # ComfyUI's own "sampling" folder sits beside ours in the (flat) tree: open each until ours shows Sample
            folders = page.get_by_text("sampling", exact=True)
            for i in range(folders.count()):
                folders.nth(i).click()
                try:
                    page.get_by_text("Sample", exact=True).first.wait_for(timeout=5_000)
                    break
                except PlaywrightTimeoutError:
                    continue
            else:
                raise AssertionError("no 'sampling' folder of the node library lists nodegraph's Sample")
            if importlib.util.find_spec("nodegraph.comfy_spec") is not None:  # ComfyUI's vocabulary is described
                assert {"KSampler", "CheckpointLoaderSimple", "LoadImage", "SaveImage"} <= set(types)
            shot(page, artifacts, "02-node-library")
            page.get_by_role("button", name="Node Library (n)").click()

            # 3. an image with a painted mask, uploaded the way the editor does
            up, status, masked, size = page.evaluate(UPLOAD_WITH_MASK)
            assert status == 200 and masked["subfolder"] == "clipspace", masked
            stored = served.input / "clipspace" / masked["name"]
            from PIL import Image

            with Image.open(stored) as img:
                alpha = img.getchannel("A")
                assert alpha.getpixel((size[0] // 2, size[1] // 2)) == 0 and alpha.getpixel((0, 0)) == 255
            set_widget(page, "checkpoint", "source", "builtin:tiny-sdxl-inpaint")
            set_widget(page, "image", "path", f"clipspace/{masked['name']}")
            set_widget(page, "mask", "path", f"clipspace/{masked['name']}")
            set_widget(page, "mask", "channel", "alpha")
            set_widget(page, "mask", "invert", True)  # 1 - alpha: painted = 1 = repaint
            set_widget(page, "sample", "steps", 12)
            set_widget(page, "positive", "prompt", "a green pear")

            # 4. save it (Ctrl+S asks for a name): it goes to the server's user folder
            page.keyboard.press("Control+s")
            name_box = page.get_by_role("dialog").locator("input").first
            name_box.fill("editor-e2e")
            name_box.press("Enter")
            saved = served.cache / "user/default/workflows/editor-e2e.json"
            deadline = time.monotonic() + 15
            while not saved.exists() and time.monotonic() < deadline:
                time.sleep(0.2)
            assert saved.exists()
            assert {n.get("title") for n in json.loads(saved.read_text())["nodes"]} == DEFAULT_TITLES

            # 5. Queue: progress events move, the output shows in the job queue
            page.evaluate("""() => {
                window.__progress = [];
                window.__events = [];
                const api = window.comfyAPI.api.api;
                api.addEventListener('progress', e => window.__progress.push([e.detail.value, e.detail.max]));
                for (const type of ['execution_start', 'execution_error', 'execution_success'])
                    api.addEventListener(type, e => window.__events.push([type, e.detail]));
            }""")
            page.get_by_role("button", name="Run", exact=True).click()
            page.wait_for_function("() => window.__progress.length >= 3 || window.__events.some(e => e[0] !== "
                                   "'execution_start')", timeout=120_000)
            events = page.evaluate("() => window.__events")
            assert not [e for e in events if e[0] == "execution_error"] and log.errors == [], (events, log.errors)
            # the queue button's panel shows the running node's progress bar
            page.get_by_text(re.compile(r"Current node:.*[1-9]\d*%")).first.wait_for(timeout=30_000)
            shot(page, artifacts, "03-running")
            page.wait_for_function("() => window.__events.some(e => e[0] !== 'execution_start')", timeout=120_000)
            events = page.evaluate("() => window.__events")
            assert [e[0] for e in events] == ["execution_start", "execution_success"], events
            values = [v for v, _ in page.evaluate("() => window.__progress")]
            total = page.evaluate("() => window.__progress.at(-1)[1]")
            # one event per step (12 steps at strength 0.99 run 11), in order, to the end
            assert total >= 10 and values == sorted(values) and values[-1] == total and len(values) >= total
            open_job_queue(page)
            output = page.locator("img[src*='filename=sdxl_inpaint_'][src*='type=output']").first
            output.wait_for(timeout=60_000)
            filename = urlsplit(output.get_attribute("src") or "").query
            page.wait_for_timeout(500)
            finished = shot(page, artifacts, "04-finished")
            outputs = sorted(served.output.glob("sdxl_inpaint_*.png"))
            assert len(outputs) == 1 and outputs[0].name in filename
            with Image.open(outputs[0]) as result:
                assert result.size == tuple(size)
                native = json.loads(result.text["nodegraph_workflow"])  # `nodegraph run` reruns the PNG
            assert native["version"] == 1 and native["nodes"]["8"]["inputs"]["steps"] == 12
            assert log.errors == [], log.errors

            # 6. reload: the saved workflow and the history are still there
            page.reload()
            page.wait_for_function(GRAPH_READY, timeout=90_000)
            assert set(page.evaluate("() => app.graph._nodes.map(n => n.title)")) == DEFAULT_TITLES
            assert widget_values(page, "sample")["steps"] == 12
            assert widget_values(page, "checkpoint")["source"] == "builtin:tiny-sdxl-inpaint"
            page.get_by_role("button", name="Workflows (w)").click()
            page.get_by_text("editor-e2e").first.wait_for(timeout=15_000)
            page.get_by_role("button", name="Workflows (w)").click()
            open_job_queue(page)
            page.locator("img[src*='filename=sdxl_inpaint_'][src*='type=output']").first.wait_for(timeout=30_000)
            shot(page, artifacts, "05-reloaded")
            assert log.errors == [], log.errors
        except Exception:
            shot(page, artifacts, "failed")  # the page as it was when the test failed
            raise
    print(f"screenshots: {artifacts} (finished run: {finished})")


def test_editor_behind_a_token(tmp_path: Path, builtin_models_dir: Path) -> None:
    """A server with --token: the page opened once as /?token=... boots and talks to the API and the
    websocket without further help (the token travels in a cookie); without it the page gets nothing."""
    s = Served(tmp_path / "server", builtin_models_dir, "--token", "s3cret")
    try:
        with chromium() as browser:
            page, log = open_editor(browser, s.url, "/?token=s3cret", 1280, 800)
            assert "nodegraph.Sample" in page.evaluate("() => Object.keys(LiteGraph.registered_node_types)")
            assert page.evaluate("async () => (await fetch('/api/queue')).status") == 200
            page.wait_for_function("() => window.comfyAPI.api.api.socket?.readyState === 1", timeout=30_000)
            page.wait_for_timeout(1000)
            assert log.errors == [], log.errors
            stranger = browser.new_context().new_page()  # another browser profile: no cookie
            assert stranger.goto(s.url + "/").status == 401
    finally:
        assert s.stop() == 0
