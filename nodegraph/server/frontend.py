"""The visual editor: ComfyUI's frontend (``comfyui-frontend-package``, installed by the ``ui`` extra) at ``/``.

The frontend is GPL-3.0 upstream and is never copied into this repository: it is served from the installed
package, and without it ``/`` is a short page that says how to install it. Besides the static files this
module answers the editor-only routes: the template browser (``/templates/...``, made from nodegraph's
``workflows/*.json``), the editor's default graph (nodegraph's SDXL inpainting workflow, through a small
extension of ours), and the optional routes the page probes at start-up, each with what the page tolerates.
"""

from __future__ import annotations

import html
import json
import logging
import re
import uuid
from collections.abc import Awaitable, Callable
from functools import cache
from pathlib import Path
from typing import Any

from aiohttp import web

from nodegraph.node import Registry

from .uiformat import workflow_to_ui

logger = logging.getLogger(__name__)

FRONTEND_PACKAGE = "comfyui-frontend-package"
WORKFLOWS_DIR = Path(__file__).resolve().parents[2] / "workflows"
WEB_DIR = Path(__file__).resolve().parent / "web"
EXTENSION_URL = "/extensions/nodegraph/nodegraph.js"
DEFAULT_TEMPLATE = "sdxl_inpaint"
THUMBNAIL = "demo_image.png"
_TEMPLATE_NAME = re.compile(r"^[A-Za-z0-9_-]{1,100}$")

INSTALL_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>nodegraph</title></head>
<body style="font-family: sans-serif; max-width: 46em; margin: 3em auto; line-height: 1.5">
<h1>nodegraph is running</h1>
<p>This server speaks ComfyUI's HTTP and websocket API (try <a href="/api/object_info">/api/object_info</a>).
The visual editor is ComfyUI's frontend, which is not installed here. Install it with nodegraph's
<code>ui</code> extra and restart the server:</p>
<pre>pip install -e ".[ui]"      # from a nodegraph checkout
nodegraph serve</pre>
<p>(the extra installs <code>{package}</code>, GPL-3.0, from PyPI).</p>
</body></html>
"""


def frontend_dir() -> Path | None:
    """The installed frontend's static folder, or None when the ``ui`` extra is not installed."""
    try:
        import comfyui_frontend_package  # type: ignore[import-not-found,import-untyped,unused-ignore]
    except ImportError:
        return None
    static = Path(comfyui_frontend_package.__file__).resolve().parent / "static"
    return static if (static / "index.html").is_file() else None


def frontend_version() -> str | None:
    from importlib import metadata

    try:
        return metadata.version(FRONTEND_PACKAGE)
    except metadata.PackageNotFoundError:
        return None


def template_names() -> list[str]:
    """The workflows the template browser lists: ``workflows/*.json`` of this checkout, default first."""
    if not WORKFLOWS_DIR.is_dir():
        return []
    names = sorted(p.stem for p in WORKFLOWS_DIR.glob("*.json") if _TEMPLATE_NAME.match(p.stem))
    return sorted(names, key=lambda n: n != DEFAULT_TEMPLATE)


@cache
def _read_workflow(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((WORKFLOWS_DIR / f"{name}.json").read_text(encoding="utf-8"))
    return data


class Templates:
    """Our example workflows in the editor's UI format, made once per server from ``object_info``."""

    def __init__(self, registry: Registry, info: Callable[[], Awaitable[dict[str, Any]]]):
        self._registry = registry
        self._info = info
        self._ui: dict[str, dict[str, Any]] = {}

    async def ui(self, name: str) -> dict[str, Any] | None:
        if name not in template_names():
            return None
        if name not in self._ui:
            info = await self._info()  # also waits for the node packages to be registered
            graph = workflow_to_ui(_read_workflow(name), self._registry, info)
            graph["id"] = str(uuid.uuid5(uuid.NAMESPACE_URL, f"nodegraph:workflows/{name}"))
            self._ui[name] = graph
        return self._ui[name]

    def index(self) -> list[dict[str, Any]]:
        """The template browser's ``index.json``: one category of our workflows."""
        templates = []
        for name in template_names():
            data = _read_workflow(name)
            templates.append({"name": name, "title": str(data.get("name") or name),
                              "description": str(data.get("description") or ""), "mediaType": "image",
                              "mediaSubtype": "png", "tags": ["Inpainting", "nodegraph"]})
        return [{"moduleName": "default", "title": "nodegraph", "type": "image", "category": "nodegraph",
                 "templates": templates}]


def add_routes(app: web.Application, registry: Registry, info: Callable[[], Awaitable[dict[str, Any]]]) -> None:
    """Register the editor's routes; call it after the API routes (the static files take what is left)."""
    templates = Templates(registry, info)
    static = frontend_dir()

    async def template_file(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name == "index_logo.json":
            return web.json_response({})
        if re.fullmatch(r"index(\.[A-Za-z_-]{1,20})?\.json", name):  # localized indexes: the same list
            return web.json_response(templates.index())
        stem, dot, ext = name.rpartition(".")
        if ext == "json":
            graph = await templates.ui(stem)
            if graph is not None:
                return web.json_response(graph)
        thumb = re.fullmatch(r"(.+)-\d+\.png", name)
        if thumb and thumb.group(1) in template_names() and (WORKFLOWS_DIR / THUMBNAIL).is_file():
            return web.FileResponse(WORKFLOWS_DIR / THUMBNAIL)
        return web.json_response({"error": "no such template"}, status=404)

    async def default_workflow(request: web.Request) -> web.StreamResponse:
        graph = await templates.ui(DEFAULT_TEMPLATE)
        if graph is None:
            return web.json_response({"error": "no default workflow in this installation"}, status=404)
        return web.json_response(graph)

    async def extensions(request: web.Request) -> web.StreamResponse:
        return web.json_response([EXTENSION_URL] if static is not None else [])

    async def extension_file(request: web.Request) -> web.StreamResponse:
        path = WEB_DIR / "nodegraph.js"
        return web.FileResponse(path, headers={"Content-Type": "text/javascript", "Cache-Control": "no-cache"})

    async def empty_object(request: web.Request) -> web.StreamResponse:
        return web.json_response({})

    async def empty_list(request: web.Request) -> web.StreamResponse:
        return web.json_response([])

    async def index(request: web.Request) -> web.StreamResponse:
        if static is None:
            return web.Response(text=INSTALL_PAGE.replace("{package}", html.escape(FRONTEND_PACKAGE)),
                                content_type="text/html")
        # no-cache: after an upgrade of the package the page must not keep pointing at old asset names
        return web.FileResponse(static / "index.html", headers={"Cache-Control": "no-cache"})

    async def user_css(request: web.Request) -> web.StreamResponse:
        # index.html links it; ComfyUI's user stylesheet lives under /api/userdata/user.css, this one is empty
        return web.Response(text="", content_type="text/css")

    api: list[tuple[str, Any]] = [
        ("/extensions", extensions),
        ("/nodegraph/default_workflow", default_workflow),
        # Optional routes the page probes; these answers are what it expects from a server without them.
        ("/i18n", empty_object),
        ("/workflow_templates", empty_object),     # custom-node templates: none
        ("/global_subgraphs", empty_object),       # blueprints: none
        ("/node_replacements", empty_object),
        ("/experiment/models", empty_list),        # the model library's folders: none (ours are built in)
    ]
    for path, handler in api:
        app.router.add_get(path, handler)
        app.router.add_get("/api" + path, handler)
    app.router.add_get("/templates/{name}", template_file)
    app.router.add_get(EXTENSION_URL, extension_file)
    app.router.add_get("/", index)
    app.router.add_get("/user.css", user_css)
    if static is not None:
        app.router.add_static("/", static, follow_symlinks=False, append_version=False)
        logger.info("editor: %s %s at /", FRONTEND_PACKAGE, frontend_version())
    else:
        logger.info("editor: %s is not installed; / says how to install it", FRONTEND_PACKAGE)
