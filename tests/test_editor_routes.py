"""The editor's routes over real loopback HTTP (a `nodegraph serve` subprocess): settings and saved workflows
that survive a restart, their confinement, the template browser made from workflows/, the default graph,
the install page without the frontend, and the mask editor's uploads producing MASK 1 = repaint."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from tests.test_server import ROOT, Served, httpx

pytest.importorskip("aiohttp")


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[Served]:
    s = Served(tmp_path_factory.mktemp("editor-routes"), None)
    yield s
    assert s.stop() == 0


def userdata(name: str) -> str:
    return "/api/userdata/" + quote(name, safe="")


def test_boot_routes_answer_what_the_page_expects(served: Served) -> None:
    assert served.get("/api/users").json() == {"storage": "server", "migrated": True}
    settings = served.get("/api/settings").json()
    assert settings["Comfy.TutorialCompleted"] is True  # a new user sees the default graph, not a blank canvas
    listing = served.get("/api/userdata?dir=workflows&recurse=true&split=false&full_info=true")
    assert listing.status_code == 200 and listing.json() == []
    for path, expected in (("/api/i18n", {}), ("/api/workflow_templates", {}), ("/api/global_subgraphs", {}),
                           ("/api/node_replacements", {}), ("/api/experiment/models", []),
                           ("/templates/index_logo.json", {})):
        r = served.get(path)
        assert r.status_code == 200 and r.json() == expected, path
    assert served.get(userdata("user.css")).text == ""  # index.html links it
    assert served.get("/user.css").status_code == 200


def test_settings_and_saved_workflows_persist_across_a_restart(tmp_path: Path) -> None:
    s = Served(tmp_path, None)
    try:
        assert s.post("/api/settings", json={"Comfy.ColorPalette": "light", "Comfy.Locale": "en"}).status_code == 200
        assert s.post("/api/settings/Comfy.Sidebar.Size", json="small").status_code == 200
        assert s.post("/api/settings/Comfy.Dropped", json=1).status_code == 200
        assert s.post("/api/settings/Comfy.Dropped").status_code == 200  # no body: the page drops a setting
        assert s.post("/api/settings/Comfy.Broken", content=b"{nope").status_code == 400
        workflow = {"nodes": [], "links": [], "version": 0.4, "extra": {"note": "ünïcode"}}
        r = s.post(userdata("workflows/inpaint/mine.json") + "?overwrite=true&full_info=true",
                   content=json.dumps(workflow).encode())
        assert r.status_code == 200 and r.json()["path"] == "workflows/inpaint/mine.json"
        assert s.post(userdata("workflows/inpaint/mine.json") + "?overwrite=false",
                      content=b"{}").status_code == 409
        moved = s.post(userdata("workflows/inpaint/mine.json") + "/move/" + quote("workflows/kept.json", safe=""))
        assert moved.status_code == 200 and moved.json() == "workflows/kept.json"
        s.post(userdata("workflows/gone.json"), content=b"{}")
        assert httpx.delete(s.url + userdata("workflows/gone.json"), timeout=30).status_code == 204
    finally:
        assert s.stop() == 0
    s = Served(tmp_path, None)  # same folders, new process
    try:
        settings = s.get("/api/settings").json()
        assert settings["Comfy.ColorPalette"] == "light" and settings["Comfy.Sidebar.Size"] == "small"
        assert s.get("/api/settings/Comfy.Locale").json() == "en"
        assert "Comfy.Dropped" not in settings and "Comfy.Broken" not in settings
        files = s.get("/api/userdata?dir=workflows&recurse=true&split=false&full_info=true").json()
        assert [f["path"] for f in files] == ["kept.json"]
        assert s.get("/api/userdata?dir=workflows&recurse=true").json() == ["kept.json"]
        assert s.get("/api/userdata?dir=workflows&recurse=true&split=true").json() == [["kept.json", "kept.json"]]
        assert s.get(userdata("workflows/kept.json")).json()["extra"]["note"] == "ünïcode"
        assert (tmp_path / "cache/user/default/workflows/kept.json").is_file()
    finally:
        assert s.stop() == 0


@pytest.mark.parametrize("name", ["../escape.json", "workflows/../../escape.json", "/etc/passwd", "a\\b.json",
                                  "workflows/a\x00.json", "C:/x.json"])
def test_userdata_names_stay_inside_the_user_folder(served: Served, name: str) -> None:
    for method in ("GET", "POST", "DELETE"):
        r = httpx.request(method, served.url + userdata(name), content=b"{}", timeout=30)
        assert r.status_code in (400, 403), (method, name, r.status_code)
    assert not (served.cache / "user" / "escape.json").exists() and not (served.cache / "escape.json").exists()


def test_userdata_refuses_a_symlink_out_and_the_settings_file(served: Served, tmp_path: Path) -> None:
    secret = tmp_path / "secret.json"
    secret.write_text('{"secret": 1}')
    (served.cache / "user/default/workflows/link.json").symlink_to(secret)
    assert served.get(userdata("workflows/link.json")).status_code == 403
    assert served.post(userdata("workflows/link.json"), content=b"{}").status_code == 403
    assert secret.read_text() == '{"secret": 1}'
    assert served.get(userdata("comfy.settings.json")).status_code == 403
    assert served.get("/api/userdata?dir=../..").status_code == 400


def test_template_browser_lists_the_workflows_folder(served: Served) -> None:
    index = served.get("/templates/index.json").json()
    names = [t["name"] for t in index[0]["templates"]]
    assert names[0] == "sdxl_inpaint" and set(names) == {p.stem for p in (ROOT / "workflows").glob("*.json")}
    assert served.get("/templates/index.fr.json").json() == index  # localized indexes fall back to ours
    thumb = served.get("/templates/sdxl_inpaint-1.png")
    assert thumb.status_code == 200 and thumb.content.startswith(b"\x89PNG")
    assert served.get("/templates/nope.json").status_code == 404
    assert served.get("/templates/..%2Fpyproject.json").status_code == 404


def test_default_graph_is_the_sdxl_inpainting_workflow_in_ui_format(served: Served) -> None:
    graph = served.get("/api/nodegraph/default_workflow").json()
    assert graph == served.get("/templates/sdxl_inpaint.json").json()
    native = json.loads((ROOT / "workflows/sdxl_inpaint.json").read_text())["nodes"]
    info = served.get("/api/object_info").json()
    assert graph["version"] == 0.4 and len(graph["nodes"]) == len(native)
    by_title = {n["title"]: n for n in graph["nodes"]}
    assert set(by_title) == set(native)
    ids = {n["id"]: t for t, n in by_title.items()}
    # every link of the native workflow, and nothing else
    links = {(ids[src], ids[dst], by_title[ids[dst]]["inputs"][slot]["name"]) for _, src, _, dst, slot, _ in graph["links"]}
    expected = {(v[0], dst, name) for dst, e in native.items() for name, v in e["inputs"].items() if isinstance(v, list)}
    assert links == expected
    # widget values are positional in object_info order, with the editor's control widget after the seed
    sample = by_title["sample"]
    order = [n for g in ("required", "optional") for n in info["nodegraph.Sample"]["input_order"][g]
             if isinstance(info["nodegraph.Sample"]["input"][g][n][0], list) or (
                 info["nodegraph.Sample"]["input"][g][n][0] in ("INT", "FLOAT", "STRING", "BOOLEAN")
                 and not info["nodegraph.Sample"]["input"][g][n][1].get("forceInput"))]
    values = dict(zip([n for n in order for n in ((n, "control") if n == "seed" else (n,))], sample["widgets_values"],
                      strict=True))
    for name, value in native["sample"]["inputs"].items():
        if not isinstance(value, list):
            assert values[name] == value, name
    assert values["control"] == "fixed"


def test_without_the_frontend_the_root_page_says_how_to_install_it(tmp_path: Path, monkeypatch) -> None:
    shadow = tmp_path / "shadow" / "comfyui_frontend_package"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text('raise ImportError("hidden by the test")\n')
    monkeypatch.setenv("PYTHONPATH", str(shadow.parent))
    s = Served(tmp_path / "srv", None)
    try:
        page = s.get("/")
        assert page.status_code == 200 and 'pip install -e ".[ui]"' in page.text
        assert "comfyui-frontend-package" in page.text
        assert s.get("/api/extensions").json() == []
        assert s.get("/api/object_info").status_code == 200  # the API works without the editor
    finally:
        assert s.stop() == 0


def _rgba_png(size: tuple[int, int], alpha_hole: tuple[int, int, int, int] | None) -> bytes:
    from PIL import Image, ImageDraw

    img = Image.new("RGBA", size, (200, 30, 30, 255))
    if alpha_hole is not None:
        ImageDraw.Draw(img).rectangle(alpha_hole, fill=(0, 0, 0, 0))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_mask_editor_upload_gives_mask_one_where_painted(served: Served, tmp_path: Path) -> None:
    """The mask editor uploads the painted mask as a PNG whose alpha is 0 where the user painted; the
    server copies that alpha into the original image, and LoadImage's MASK is 1 - alpha: 1 = repaint."""
    from PIL import Image

    original = io.BytesIO()
    Image.new("RGB", (64, 48), (10, 120, 200)).save(original, format="PNG")
    up = served.post("/api/upload/image", files={"image": ("photo.png", original.getvalue(), "image/png")},
                     data={"type": "input", "overwrite": "true"})
    assert up.status_code == 200, up.text
    ref = {"filename": up.json()["name"], "subfolder": "", "type": "input"}
    painted = _rgba_png((64, 48), (16, 8, 39, 23))  # 24x16 pixels painted
    r = served.post("/api/upload/mask", files={"image": ("clipspace-mask-1.png", painted, "image/png")},
                    data={"type": "input", "subfolder": "clipspace", "original_ref": json.dumps(ref)})
    assert r.status_code == 200, r.text
    stored = served.input / r.json()["subfolder"] / r.json()["name"]
    with Image.open(stored) as img:
        assert img.mode == "RGBA" and img.getpixel((0, 0))[:3] == (10, 120, 200)  # the original's colours

    from nodegraph import Graph
    from nodegraph.executor import Engine

    graph = Graph()
    loaded = graph.add("LoadImage", id="image", path=str(stored))
    graph.add("SaveImage", image=loaded.image)
    result = Engine().run(graph, output_dir=tmp_path)
    image, mask = result["image"]["image"], result["image"]["mask"]
    assert tuple(image.shape) == (1, 48, 64, 3) and tuple(mask.shape) == (1, 48, 64)
    assert mask[0, 8:24, 16:40].min().item() == 1.0  # painted: repaint
    assert mask.sum().item() == 24 * 16  # and nothing else
    assert mask[0, 0, 0].item() == 0.0


def test_png_text_carries_prompt_and_editor_workflow() -> None:
    from nodegraph.server.pnginfo import png_text

    prompt: dict[str, Any] = {"1": {"class_type": "Sample", "inputs": {}}}
    workflow = {"nodes": [], "links": [], "version": 0.4}
    chunks = png_text(prompt, {"extra_pnginfo": {"workflow": workflow, "other": [1]}, "client": "x"})
    assert json.loads(chunks["prompt"]) == prompt and json.loads(chunks["workflow"]) == workflow
    assert json.loads(chunks["other"]) == [1] and list(chunks)[:2] == ["prompt", "workflow"]
    assert png_text(prompt, {}) == {"prompt": json.dumps(prompt)}
    assert "nodegraph_workflow" not in png_text(prompt, {"extra_pnginfo": {"nodegraph_workflow": "spoof"}})


def test_comfyui_prompt_converts_to_the_editor_format() -> None:
    """An API prompt of ComfyUI class_types -> UI format, positional widgets as ComfyUI's editor writes them,
    and back through the comfyui importer to the same prompt."""
    from nodegraph.node import REGISTRY
    from nodegraph.server.object_info import object_info
    from nodegraph.server.uiformat import prompt_to_ui
    from nodegraph.settings import EngineSettings

    REGISTRY.load_entry_points()
    info = object_info(REGISTRY, EngineSettings())
    assert "KSampler" in info  # ComfyUI's class_types are described (nodegraph.comfy_spec)
    prompt = json.loads((ROOT / "tests/comfy/inpaint_api.json").read_text())
    ui = prompt_to_ui(prompt, info)
    by_type = {n["type"]: n for n in ui["nodes"]}
    assert by_type["KSampler"]["widgets_values"] == [42, "fixed", 4, 7.5, "euler", "normal", 1.0]
    assert by_type["LoadImage"]["widgets_values"] == ["workflows/demo_image_alpha.png", "image"]
    linked = sum(isinstance(v, list) for e in prompt.values() for v in e["inputs"].values())
    assert len(ui["links"]) == linked
    from nodegraph.comfy_ui import ui_to_api

    back = ui_to_api(ui, REGISTRY)
    ids = {str(n["id"]): k for k, n in zip(prompt, ui["nodes"], strict=True)}
    for node_id, entry in back.items():
        original = prompt[ids[node_id]]
        assert entry["class_type"] == original["class_type"]
        for name, value in original["inputs"].items():
            if name == "upload":
                continue
            got = entry["inputs"][name]
            assert (got == value) if not isinstance(value, list) else [ids[str(got[0])], got[1]] == value, name
