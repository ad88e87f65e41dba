"""The editor's per-user state: ``/users``, ``/settings`` and ``/userdata`` under ``--user-dir``.

One user ("default", ComfyUI's single-user layout): settings in ``<user-dir>/default/comfy.settings.json``
and the editor's files (saved workflows, templates of its own) under ``<user-dir>/default/``, so they
survive restarts. File names arrive URL-encoded (``workflows%2Fa.json``) and are confined to that folder by
the same rules as ``/view``: ``..``, absolute paths, backslashes, NUL bytes and symlinks out are refused.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
from pathlib import Path
from typing import Any

from aiohttp import web
from pydantic import BaseModel

from nodegraph.files import atomic_write_bytes

from .files import FileAccessError, confined

logger = logging.getLogger(__name__)

USER = "default"
SETTINGS_FILE = "comfy.settings.json"
USER_CSS = "user.css"
MAX_USERDATA_BYTES = 64 * 1024 * 1024
MAX_SETTINGS_BYTES = 4 * 1024 * 1024
# Settings a user starts with: the first page load shows the default graph (nodegraph's inpainting
# workflow) rather than the frontend's first-run screen and its blank canvas.
DEFAULT_SETTINGS: dict[str, Any] = {"Comfy.TutorialCompleted": True}


class FileInfo(BaseModel):
    path: str
    size: int
    modified: float
    created: float


class Users(BaseModel):
    """No ``users`` key: the page runs single-user, without a login screen."""

    storage: str = "server"
    migrated: bool = True


class UserStore:
    """Settings and files of the one user, on disk."""

    def __init__(self, user_dir: Path):
        self.root = (user_dir / USER).resolve()
        for folder in ("workflows", "subgraphs"):  # the page lists both at start-up
            (self.root / folder).mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    # ---- settings --------------------------------------------------------------------------------
    def settings(self) -> dict[str, Any]:
        """Stored settings over the defaults (an unreadable file counts as none)."""
        return {**DEFAULT_SETTINGS, **self._stored()}

    def _stored(self) -> dict[str, Any]:
        try:
            data = json.loads((self.root / SETTINGS_FILE).read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _write(self, settings: dict[str, Any]) -> None:
        atomic_write_bytes(self.root / SETTINGS_FILE, json.dumps(settings, indent=1).encode())

    def update_settings(self, changes: dict[str, Any]) -> None:
        with self._lock:
            self._write({**self._stored(), **changes})

    def remove_setting(self, setting_id: str) -> None:
        with self._lock:
            stored = self._stored()
            if stored.pop(setting_id, None) is not None:
                self._write(stored)

    # ---- files -----------------------------------------------------------------------------------
    def path(self, name: str) -> Path:
        if name == SETTINGS_FILE:  # settings change through /settings, which validates them
            raise FileAccessError(403, "the settings file is changed through /settings")
        return confined(self.root, "", name)

    def info(self, path: Path) -> FileInfo:
        st = path.stat()
        return FileInfo(path=path.relative_to(self.root).as_posix(), size=st.st_size, modified=st.st_mtime,
                        created=st.st_ctime)

    def listing(self, folder: str, recurse: bool) -> list[Path] | None:
        base = confined(self.root, "", folder) if folder.strip("/") else self.root
        if not base.is_dir():
            return None
        pattern = "**/*" if recurse else "*"
        return sorted(p for p in base.glob(pattern) if p.is_file() and not p.is_symlink()
                      and p.resolve().is_relative_to(self.root) and p.name != SETTINGS_FILE)


def _flag(request: web.Request, name: str, default: bool) -> bool:
    value = request.query.get(name)
    return default if value is None else value.lower() in ("true", "1")


def _error(exc: FileAccessError) -> web.Response:
    return web.json_response({"error": str(exc)}, status=exc.status)


def _no_such_file() -> web.Response:
    return web.json_response({"error": "no such file"}, status=404)


async def _read_limited(request: web.Request, limit: int) -> bytes:
    if request.content_length is not None and request.content_length > limit:
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=request.content_length)
    data = await request.read()
    if len(data) > limit:
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=len(data))
    return data


def add_routes(app: web.Application, user_dir: Path) -> None:
    store = UserStore(user_dir)
    logger.info("editor state under %s", store.root)

    async def get_users(request: web.Request) -> web.StreamResponse:
        return web.json_response(Users().model_dump())

    async def get_settings(request: web.Request) -> web.StreamResponse:
        return web.json_response(store.settings())

    async def get_setting(request: web.Request) -> web.StreamResponse:
        return web.json_response(store.settings().get(request.match_info["id"]))

    async def post_settings(request: web.Request) -> web.StreamResponse:
        try:
            data = json.loads(await _read_limited(request, MAX_SETTINGS_BYTES))
        except ValueError:
            return web.json_response({"error": "the body is not JSON"}, status=400)
        if not isinstance(data, dict):
            return web.json_response({"error": "expected an object of settings"}, status=400)
        store.update_settings(data)
        return web.Response(status=200)

    async def post_setting(request: web.Request) -> web.StreamResponse:
        body = await _read_limited(request, MAX_SETTINGS_BYTES)
        if not body.strip():  # the page stores `undefined` (no body) to drop a setting it migrated
            store.remove_setting(request.match_info["id"])
            return web.Response(status=200)
        try:
            value = json.loads(body)
        except ValueError:
            return web.json_response({"error": "the body is not JSON"}, status=400)
        store.update_settings({request.match_info["id"]: value})
        return web.Response(status=200)

    async def list_userdata(request: web.Request) -> web.StreamResponse:
        folder = request.query.get("dir", "")
        try:
            files = store.listing(folder, _flag(request, "recurse", False))
        except FileAccessError as exc:
            return _error(exc)
        if files is None:
            return web.json_response({"error": "no such folder"}, status=404)
        base = store.root / folder.strip("/") if folder.strip("/") else store.root
        if _flag(request, "full_info", False):
            return web.json_response([{**store.info(p).model_dump(), "path": p.relative_to(base).as_posix()}
                                      for p in files])
        names = [p.relative_to(base).as_posix() for p in files]
        if _flag(request, "split", False):
            return web.json_response([[n, *n.split("/")] for n in names])
        return web.json_response(names)

    def named(request: web.Request) -> Path | web.StreamResponse:
        """The user file a request names, or the refusal of a bad name."""
        try:
            return store.path(request.match_info["file"])
        except FileAccessError as exc:
            return _error(exc)

    async def get_file(request: web.Request) -> web.StreamResponse:
        path = named(request)
        if not isinstance(path, Path):
            return path
        if not path.is_file():
            if path == store.root / USER_CSS:  # index.html always links it: an empty sheet until one is saved
                return web.Response(text="", content_type="text/css")
            return _no_such_file()
        return web.FileResponse(path, headers={"Cache-Control": "no-cache"})

    async def post_file(request: web.Request) -> web.StreamResponse:
        try:
            path = store.path(request.match_info["file"])
        except FileAccessError as exc:
            return _error(exc)
        if path.exists() and not _flag(request, "overwrite", True):
            return web.json_response({"error": "file exists"}, status=409)
        data = await _read_limited(request, MAX_USERDATA_BYTES)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, data)
        logger.info("userdata: saved %s (%d bytes)", path.relative_to(store.root).as_posix(), len(data))
        if _flag(request, "full_info", False):
            return web.json_response(store.info(path).model_dump())
        return web.json_response(path.relative_to(store.root).as_posix())

    async def delete_file(request: web.Request) -> web.StreamResponse:
        path = named(request)
        if not isinstance(path, Path):
            return path
        if not path.is_file():
            return _no_such_file()
        path.unlink()
        return web.Response(status=204)

    async def move_file(request: web.Request) -> web.StreamResponse:
        try:
            source = store.path(request.match_info["file"])
            target = store.path(request.match_info["dest"])
        except FileAccessError as exc:
            return _error(exc)
        if not source.is_file():
            return web.json_response({"error": "no such file"}, status=404)
        if target.exists() and not _flag(request, "overwrite", False):
            return web.json_response({"error": "file exists"}, status=409)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(os.fspath(source), os.fspath(target))
        if _flag(request, "full_info", False):
            return web.json_response(store.info(target).model_dump())
        return web.json_response(target.relative_to(store.root).as_posix())

    routes = [
        ("GET", "/users", get_users),
        ("GET", "/settings", get_settings), ("POST", "/settings", post_settings),
        ("GET", "/settings/{id}", get_setting), ("POST", "/settings/{id}", post_setting),
        ("GET", "/userdata", list_userdata),
        ("GET", "/userdata/{file}", get_file), ("POST", "/userdata/{file}", post_file),
        ("DELETE", "/userdata/{file}", delete_file),
        ("POST", "/userdata/{file}/move/{dest}", move_file),
    ]
    for method, path, handler in routes:
        app.router.add_route(method, path, handler)
        app.router.add_route(method, "/api" + path, handler)
