"""ComfyUI's HTTP + websocket routes (under ``/`` and ``/api``) and the security middleware, on aiohttp.

The event loop only validates, journals and answers; runs happen on the worker thread (``queue.py``),
which hands frames back to the loop through ``Hub.send`` (thread-safe).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import platform
import sqlite3
import sys
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiohttp import WSMsgType, web
from pydantic import BaseModel, ValidationError

from nodegraph.errors import Issue, WorkflowError
from nodegraph.node import REGISTRY, Registry
from nodegraph.settings import EngineSettings

from . import frontend, userdata
from .files import (
    FileAccessError,
    Folders,
    clean_upload_name,
    confined,
    mask_into_image,
    served_content_type,
    store_upload,
    verify_image,
    view_variant,
)
from .journal import Journal, Row
from .object_info import object_info
from .protocol import (
    MAX_JSON_DEPTH,
    MAX_PROMPT_BYTES,
    ClearOrDelete,
    FreeRequest,
    InterruptRequest,
    Job,
    JobList,
    JobsCancelRequest,
    Pagination,
    PreviewFrames,
    PromptAccepted,
    PromptRejected,
    PromptRequest,
    UploadReply,
    json_depth,
)
from .queue import Worker, http_policy, new_prompt_id, status_message
from .translate import comfy_id_of, graph_from_prompt, rejection

logger = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}
MAX_PENDING_FRAMES = 10_000


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8188
    token: str | None = None
    allow_origins: tuple[str, ...] = ()
    max_upload: int = 50 * 1024 * 1024
    previews: bool = False
    engine: EngineSettings = field(default_factory=EngineSettings)
    temp_dir: Path = Path("temp")
    journal: Path = Path("queue.sqlite")
    user_dir: Path = Path("user")  # the editor's settings and saved workflows

    def check(self) -> None:
        """Refuse unsafe set-ups before binding: a non-loopback address without a token."""
        if self.host not in LOOPBACK_HOSTS and not self.token:
            raise ValueError(f"--host {self.host} exposes the server beyond this machine: give --token TOKEN "
                             "(clients then send 'Authorization: Bearer TOKEN' or ?token=TOKEN)")


# ---- the websocket hub --------------------------------------------------------------------------
class Hub:
    """Connected websockets by client id; frames are queued per connection so each client sees them in order."""

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self._clients: dict[str, set[asyncio.Queue[str | bytes | None]]] = {}
        self._with_metadata: set[asyncio.Queue[str | bytes | None]] = set()  # sockets that asked for type 4
        self._lock = threading.Lock()
        self._pending: list[tuple[str | None, str | bytes | PreviewFrames]] = []
        self._scheduled = False

    def send(self, client_id: str | None, frame: str | bytes | PreviewFrames) -> None:
        """Thread-safe: callable from the worker thread.

        Frames wait in one list and the loop is woken once per burst, not once per frame: each wake-up is a
        self-pipe write plus a loop iteration, which the worker thread pays for in GIL hand-offs mid-run.
        """
        loop = self.loop
        if loop is None or loop.is_closed():
            return
        with self._lock:
            self._pending.append((client_id, frame))
            if self._scheduled:
                return
            self._scheduled = True
        if _running_loop() is loop:  # sent from a handler: no self-pipe round trip needed
            self._drain()
            return
        try:
            loop.call_soon_threadsafe(self._drain)
        except RuntimeError:  # the loop closed between the check and the call (shutdown)
            with self._lock:
                self._pending.clear()
                self._scheduled = False

    def _drain(self) -> None:
        with self._lock:
            frames, self._pending = self._pending, []
            self._scheduled = False
        for client_id, frame in frames:
            self._dispatch(client_id, frame)

    def _dispatch(self, client_id: str | None, frame: str | bytes | PreviewFrames) -> None:
        targets = self._clients.values() if client_id is None else [self._clients.get(client_id, set())]
        for queues in targets:
            for q in queues:
                if q.qsize() < MAX_PENDING_FRAMES:  # a client that stopped reading loses frames, not our memory
                    if isinstance(frame, PreviewFrames):
                        q.put_nowait(frame.with_metadata if q in self._with_metadata else frame.legacy)
                    else:
                        q.put_nowait(frame)

    def announce(self, q: asyncio.Queue[str | bytes | None], flags: dict[str, Any]) -> None:
        """A socket's feature_flags: previews with metadata (type 4) when it supports them."""
        if flags.get("supports_preview_metadata") is True:
            self._with_metadata.add(q)
        else:
            self._with_metadata.discard(q)

    def add(self, client_id: str) -> asyncio.Queue[str | bytes | None]:
        q: asyncio.Queue[str | bytes | None] = asyncio.Queue()
        self._clients.setdefault(client_id, set()).add(q)
        return q

    def remove(self, client_id: str, q: asyncio.Queue[str | bytes | None]) -> None:
        self._with_metadata.discard(q)
        queues = self._clients.get(client_id)
        if queues is not None:
            queues.discard(q)
            if not queues:
                del self._clients[client_id]

    def close_all(self) -> None:
        for queues in self._clients.values():
            for q in queues:
                q.put_nowait(None)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


# ---- security ------------------------------------------------------------------------------------
def _host_port(netloc: str) -> tuple[str, int | None]:
    parts = urlsplit("//" + netloc)
    try:
        port = parts.port
    except ValueError:
        port = -1
    return (parts.hostname or "").lower(), port


def token_cookie(config: ServerConfig) -> tuple[str, str]:
    """(name, value) of the cookie that stands for the token in a browser.

    Browsers scope cookies by host, not port: the name carries the port, so two servers on one host keep
    their own, and the value is an HMAC of the token, so the token itself never sits in a cookie that
    another service on the same host name would be sent.
    """
    assert config.token
    value = hmac.new(config.token.encode(), b"nodegraph editor cookie", hashlib.sha256).hexdigest()
    return f"nodegraph_token_{config.port}", value


def security_middleware(config: ServerConfig) -> Any:
    allowed_origins = {o.rstrip("/").lower() for o in config.allow_origins}
    cookie_name, cookie_value = token_cookie(config) if config.token else ("", "")

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        from_query = False
        if config.token:
            supplied = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
            if not supplied and "token" in request.query:
                supplied, from_query = request.query["token"], True
            if supplied:
                allowed = hmac.compare_digest(supplied.encode(), config.token.encode())
            else:
                allowed = hmac.compare_digest(request.cookies.get(cookie_name, "").encode(), cookie_value.encode())
            if not allowed:
                return web.json_response({"error": "a token is required: 'Authorization: Bearer TOKEN', "
                                                   "?token=TOKEN, or open /?token=TOKEN in the browser once"},
                                         status=401)
        else:
            # Without a token only loopback names may reach us: a DNS-rebinding page uses its own host name.
            host, _ = _host_port(request.host)
            if host not in LOOPBACK_HOSTS:
                return web.json_response({"error": f"Host {request.host!r} is not this server"}, status=403)
        origin = request.headers.get("Origin")
        if origin is not None and not _same_origin(origin, request, allowed_origins):
            return web.json_response({"error": f"cross-origin request from {origin!r} refused "
                                               "(start the server with --allow-origin to allow it)"}, status=403)
        response = await handler(request)
        if from_query and not response.prepared and request.cookies.get(cookie_name) != cookie_value:
            # The editor page calls the API and its websocket without the token: a page opened once with
            # ?token=TOKEN leaves a cookie standing for it (SameSite=Strict, not readable by scripts; behind a
            # TLS-terminating proxy it is not marked Secure, since this server sees plain http), and the
            # Origin check above still refuses other sites.
            response.set_cookie(cookie_name, cookie_value, httponly=True, samesite="Strict",
                                secure=request.scheme == "https", path="/")
        return response

    return check


def _same_origin(origin: str, request: web.Request, allowed: set[str]) -> bool:
    if origin.rstrip("/").lower() in allowed:
        return True
    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return False  # "null" (sandboxed frames, file:// pages) and anything odd
    default = 443 if parts.scheme == "https" else 80
    own_host, own_port = _host_port(request.host)
    own_port = own_port or (443 if request.scheme == "https" else 80)
    return parts.scheme == request.scheme and parts.hostname.lower() == own_host and (parts.port or default) == own_port


# ---- the application -----------------------------------------------------------------------------
class _Rejected(Exception):
    def __init__(self, reply: PromptRejected):
        self.reply = reply


class Server:
    def __init__(self, config: ServerConfig, registry: Registry | None = None):
        self.config = config
        self.registry = registry or REGISTRY
        settings = config.engine
        self.folders = Folders(input=settings.input_dir or Path("input"), output=settings.output_dir,
                               temp=config.temp_dir)
        for folder in (self.folders.input, self.folders.output, self.folders.temp):
            folder.mkdir(parents=True, exist_ok=True)
        self.hub = Hub()
        self.journal = Journal(config.journal)
        if self.journal.recovered:
            logger.warning("%d prompt(s) left running by the last server are pending again", self.journal.recovered)
        self.worker = Worker(self.journal, settings, self.registry, self.hub.send, previews=config.previews)

    def app(self) -> web.Application:
        app = web.Application(middlewares=[security_middleware(self.config)],
                              client_max_size=max(self.config.max_upload + 1024 * 1024, MAX_PROMPT_BYTES))
        routes: list[tuple[str, str, Handler]] = [
            ("GET", "/ws", self.websocket),
            ("POST", "/prompt", self.post_prompt), ("GET", "/prompt", self.get_prompt),
            ("GET", "/queue", self.get_queue), ("POST", "/queue", self.post_queue),
            ("GET", "/history", self.get_history), ("GET", "/history/{prompt_id}", self.get_history_item),
            ("POST", "/history", self.post_history),
            ("GET", "/jobs", self.get_jobs), ("GET", "/jobs/{job_id}", self.get_job),
            ("POST", "/jobs/cancel", self.cancel_jobs), ("POST", "/jobs/{job_id}/cancel", self.cancel_job),
            ("POST", "/interrupt", self.interrupt), ("POST", "/free", self.free),
            ("GET", "/object_info", self.get_object_info), ("GET", "/object_info/{node_class}", self.get_object_info_one),
            ("GET", "/view", self.view), ("POST", "/upload/image", self.upload_image),
            ("POST", "/upload/mask", self.upload_mask),
            ("GET", "/system_stats", self.system_stats), ("GET", "/embeddings", self.empty_list),
            ("GET", "/features", self.features),
        ]
        for method, path, handler in routes:
            app.router.add_route(method, path, handler)
            app.router.add_route(method, "/api" + path, handler)
        userdata.add_routes(app, self.config.user_dir)
        frontend.add_routes(app, self.registry, self._info)  # last: its static files take what is left
        app.on_startup.append(self._on_startup)
        app.on_shutdown.append(self._on_shutdown)
        app.on_cleanup.append(self._on_cleanup)
        return app

    async def _on_startup(self, app: web.Application) -> None:
        self.hub.loop = asyncio.get_running_loop()
        self.worker.start()

    async def _registry(self) -> Registry:
        """The registry once the worker has loaded the node packages (they import torch: seconds)."""
        if not self.worker.registry_ready.is_set():
            await asyncio.to_thread(self.worker.registry_ready.wait)
        return self.registry

    async def _on_shutdown(self, app: web.Application) -> None:
        self.hub.close_all()

    async def _on_cleanup(self, app: web.Application) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.worker.stop)
        self.journal.close()

    def _status(self) -> None:
        self.hub.send(None, status_message(self.worker.queue_remaining()))

    # ---- websocket --------------------------------------------------------------------------------
    async def websocket(self, request: web.Request) -> web.StreamResponse:
        # No permessage-deflate: frames are small JSON or already-compressed previews, and zlib per frame cost
        # more CPU on the event loop than anything else it did per prompt (measured: bench/server.py).
        ws = web.WebSocketResponse(heartbeat=30.0, max_msg_size=1024 * 1024, compress=False)
        await ws.prepare(request)
        sid = request.query.get("clientId") or new_prompt_id().replace("-", "")
        queue = self.hub.add(sid)
        queue.put_nowait(status_message(self.worker.queue_remaining(), sid))

        async def pump() -> None:
            while True:
                frame = await queue.get()
                if frame is None or ws.closed:
                    return
                if isinstance(frame, bytes):
                    await ws.send_bytes(frame)
                else:
                    await ws.send_str(frame)

        sender = asyncio.create_task(pump())
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                try:
                    data = json.loads(msg.data)
                except ValueError:
                    continue
                if isinstance(data, dict) and data.get("type") == "feature_flags":
                    flags = data.get("data")
                    self.hub.announce(queue, flags if isinstance(flags, dict) else {})
                    queue.put_nowait(json.dumps({"type": "feature_flags", "data": self._features()}))
        finally:
            self.hub.remove(sid, queue)
            queue.put_nowait(None)
            await asyncio.wait([sender], timeout=5)
            sender.cancel()
        return ws

    # ---- prompts ----------------------------------------------------------------------------------
    async def _json_body(self, request: web.Request, limit: int = MAX_PROMPT_BYTES) -> Any:
        if request.content_length is not None and request.content_length > limit:
            raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=request.content_length)
        raw = await request.read()
        if len(raw) > limit:
            raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=len(raw))
        if not raw.strip():
            return {}
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError):
            raise web.HTTPBadRequest(text=json.dumps({"error": "the body is not valid JSON"}),
                                     content_type="application/json") from None
        if json_depth(data) > MAX_JSON_DEPTH:
            raise web.HTTPBadRequest(text=json.dumps({"error": f"JSON nested deeper than {MAX_JSON_DEPTH}"}),
                                     content_type="application/json")
        return data

    def _parse(self, model: type[BaseModel], data: Any) -> Any:
        try:
            return model.model_validate(data if data is not None else {})
        except ValidationError as exc:
            raise web.HTTPBadRequest(text=json.dumps({"error": "invalid request body",
                                                      "details": exc.errors(include_url=False, include_context=False,
                                                                            include_input=False)}),
                                     content_type="application/json") from None

    async def post_prompt(self, request: web.Request) -> web.StreamResponse:
        body: PromptRequest = self._parse(PromptRequest, await self._json_body(request))
        await self._registry()
        try:  # validation may read files (fingerprints, image headers): off the event loop
            prompt, graph, targets = await asyncio.to_thread(self._check_prompt, body)
        except _Rejected as rejected:
            return web.json_response(rejected.reply.model_dump(mode="json"), status=400)
        prompt_id = body.prompt_id or new_prompt_id()
        if self.journal.exists(prompt_id):
            return web.json_response({"error": {"type": "duplicate_prompt_id", "message": "prompt_id already used",
                                                "details": prompt_id, "extra_info": {}}, "node_errors": {}},
                                     status=400)
        number = body.number
        if number is None:  # as in ComfyUI, `front` applies to the server's own numbering only
            number = self.journal.next_number()
            if body.front:
                number = -number
        extra = dict(body.extra_data)
        if body.client_id is not None:
            extra["client_id"] = body.client_id  # where ComfyUI keeps it in queue items
        try:
            self.journal.add(prompt_id, number, body.client_id, prompt, extra, targets or [], graph.to_dict())
        except sqlite3.IntegrityError:  # the same prompt_id posted twice at once
            return web.json_response({"error": {"type": "duplicate_prompt_id", "message": "prompt_id already used",
                                                "details": prompt_id, "extra_info": {}}, "node_errors": {}},
                                     status=400)
        logger.info("prompt %s queued (%d nodes, client %s)", prompt_id, len(graph.nodes), body.client_id or "-")
        self.worker.wake()
        self._status()
        return web.json_response(PromptAccepted(prompt_id=prompt_id, number=number).model_dump())

    def _check_prompt(self, body: PromptRequest) -> tuple[dict[str, Any], Any, list[str] | None]:
        """(the prompt in API shape, our graph, our output ids to run) or ``_Rejected`` with every problem."""
        prompt = body.prompt
        metadata: dict[str, Any] = {}
        try:
            if prompt is not None:
                from nodegraph.model_files import resolve_model_names

                models = self.config.engine.models_dirs
                graph = graph_from_prompt(resolve_model_names(prompt, self.registry, models), self.registry)
            elif body.workflow is not None:
                from nodegraph.workflow import graph_from_data

                graph = graph_from_data(body.workflow, self.registry, "workflow", self.config.engine.models_dirs)
                # /queue and /history show prompts in API shape: the native nodes under their own names
                prompt = {n: {"class_type": e["type"], "inputs": e["inputs"]} for n, e in graph.to_dict()["nodes"].items()}
            else:
                raise WorkflowError([Issue(kind="invalid_file", message="no prompt: send {\"prompt\": {...}} "
                                           "(ComfyUI API format) or {\"workflow\": {...}} (native v1)")])
            metadata = graph.metadata
            targets = self._targets(body.partial_execution_targets, prompt, graph)
            self._validate(graph, targets)
        except WorkflowError as err:
            raise _Rejected(rejection(err.issues, prompt, metadata)) from None
        return prompt, graph, targets

    def _targets(self, requested: list[str] | None, prompt: dict[str, Any], graph: Any) -> list[str] | None:
        """Our output node ids for ComfyUI's ``partial_execution_targets`` (prompt ids); None = all."""
        if not requested:
            return None
        ids = set(prompt)
        wanted = {str(t) for t in requested}
        out = []
        for node_id, inst in graph.nodes.items():
            spec = self.registry.get(inst.type)
            if spec is not None and spec.is_output and comfy_id_of(node_id, ids, graph.metadata) in wanted:
                out.append(node_id)
        if not out:
            raise WorkflowError([Issue(kind="no_output_node", message="partial_execution_targets names no output "
                                       f"node of this prompt: {sorted(wanted)}")])
        return out

    def _validate(self, graph: Any, targets: list[str] | None) -> None:
        """Full validation, HTTP path policy included, before anything is journaled."""
        from nodegraph.settings import use_settings
        from nodegraph.validation import validate

        with use_settings(self.config.engine):  # check hooks read the server's limits
            validate(graph, targets, policy=http_policy(self.config.engine))

    async def get_prompt(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"exec_info": {"queue_remaining": self.worker.queue_remaining()}})

    @staticmethod
    def _item(row: Row) -> list[Any]:
        return [row.number, row.prompt_id, row.prompt, row.extra_data, row.targets]

    async def get_queue(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"queue_running": [self._item(r) for r in self.journal.running()],
                                  "queue_pending": [self._item(r) for r in self.journal.pending()]})

    async def post_queue(self, request: web.Request) -> web.StreamResponse:
        body: ClearOrDelete = self._parse(ClearOrDelete, await self._json_body(request))
        if body.clear:
            self.journal.cancel_pending(None)
        if body.delete:
            self.journal.cancel_pending(body.delete)
        self._status()
        return web.Response(status=200)

    def _history_entry(self, row: Row) -> dict[str, Any]:
        ids = set(row.prompt)
        meta = {cid: {"node_id": cid, "display_node": cid, "parent_node": None, "real_node_id": cid}
                for cid in row.outputs if cid in ids}
        return {"prompt": self._item(row), "outputs": row.outputs,
                "status": {"status_str": "success" if row.state == "success" else "error",
                           "completed": row.state == "success", "messages": row.messages},
                "meta": meta}

    async def get_history(self, request: web.Request) -> web.StreamResponse:
        try:
            max_items = int(request.query["max_items"]) if "max_items" in request.query else None
            offset = int(request.query.get("offset", 0))
        except ValueError:
            raise web.HTTPBadRequest(text="max_items and offset must be integers") from None
        rows = self.journal.history(max_items, max(offset, 0))
        return web.json_response({r.prompt_id: self._history_entry(r) for r in rows})

    async def get_history_item(self, request: web.Request) -> web.StreamResponse:
        row = self.journal.get(request.match_info["prompt_id"])
        if row is None or row.state not in ("success", "error", "interrupted"):
            return web.json_response({})
        return web.json_response({row.prompt_id: self._history_entry(row)})

    async def post_history(self, request: web.Request) -> web.StreamResponse:
        body: ClearOrDelete = self._parse(ClearOrDelete, await self._json_body(request))
        if body.clear:
            self.journal.delete_history(None)
        if body.delete:
            self.journal.delete_history(body.delete)
        return web.Response(status=200)

    # ---- jobs (newer frontends) -------------------------------------------------------------------
    _JOB_STATUS = {"pending": "pending", "running": "in_progress", "success": "completed", "error": "failed",
                   "interrupted": "cancelled", "cancelled": "cancelled"}

    def _job(self, row: Row) -> Job:
        def ms(t: float | None) -> int | None:
            return None if t is None else int(t * 1000)

        outputs = [{**img, "nodeId": node, "mediaType": "images"}
                   for node, v in row.outputs.items() for img in v.get("images", [])]
        error = None if row.error is None else {**row.error, "node_id": row.error.get("node_id") or "",
                                                 "node_type": row.error.get("node_type") or ""}
        return Job(id=row.prompt_id, status=self._JOB_STATUS[row.state], create_time=int(row.created * 1000),  # type: ignore[arg-type]
                   execution_start_time=ms(row.started), execution_end_time=ms(row.ended),
                   outputs_count=len(outputs), previewable_outputs_count=len(outputs),
                   preview_output=outputs[-1] if outputs else None, execution_error=error, priority=row.number)

    async def get_jobs(self, request: web.Request) -> web.StreamResponse:
        wanted = [s for s in request.query.get("status", "").split(",") if s]
        states = tuple(k for k, v in self._JOB_STATUS.items() if not wanted or v in wanted)
        try:
            limit = int(request.query["limit"]) if "limit" in request.query else None
            offset = max(int(request.query.get("offset", 0)), 0)
        except ValueError:
            raise web.HTTPBadRequest(text="limit and offset must be integers") from None
        rows = self.journal.jobs(states) if states else []
        window = rows[offset: None if limit is None else offset + limit]
        reply = JobList(jobs=[self._job(r) for r in window],
                        pagination=Pagination(offset=offset, limit=limit, total=len(rows),
                                              has_more=offset + len(window) < len(rows)))
        return web.json_response(reply.model_dump(mode="json", exclude={"jobs": {"__all__": {"outputs", "workflow"}}}))

    async def get_job(self, request: web.Request) -> web.StreamResponse:
        row = self.journal.get(request.match_info["job_id"])
        if row is None:
            return web.json_response({"error": "no such job"}, status=404)
        pnginfo = row.extra_data.get("extra_pnginfo")
        workflow = pnginfo.get("workflow") if isinstance(pnginfo, dict) else None
        job = self._job(row).model_copy(update={"outputs": row.outputs,
                                                "workflow": workflow if isinstance(workflow, dict) else None})
        return web.json_response(job.model_dump(mode="json", exclude=set() if job.workflow else {"workflow"}))

    def _cancel(self, prompt_id: str) -> bool:
        return bool(self.journal.cancel_pending([prompt_id])) or self.worker.interrupt(prompt_id)

    async def cancel_job(self, request: web.Request) -> web.StreamResponse:
        found = self._cancel(request.match_info["job_id"])
        self._status()
        return web.json_response({"cancelled": found})

    async def cancel_jobs(self, request: web.Request) -> web.StreamResponse:
        body: JobsCancelRequest = self._parse(JobsCancelRequest, await self._json_body(request))
        cancelled = [j for j in body.job_ids if self._cancel(j)]
        self._status()
        return web.json_response({"cancelled": cancelled})

    async def interrupt(self, request: web.Request) -> web.StreamResponse:
        body: InterruptRequest = self._parse(InterruptRequest, await self._json_body(request))
        self.worker.interrupt(body.prompt_id)
        return web.Response(status=200)

    async def free(self, request: web.Request) -> web.StreamResponse:
        body: FreeRequest = self._parse(FreeRequest, await self._json_body(request))
        self.worker.free(body.unload_models, body.free_memory)
        return web.Response(status=200)

    # ---- node definitions -------------------------------------------------------------------------
    async def _info(self) -> dict[str, Any]:
        """Built per request (tens of ms, off the loop): the file combos follow the folders' contents."""
        info: dict[str, Any] = await asyncio.to_thread(object_info, await self._registry(), self.config.engine)
        return info

    async def get_object_info(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(await self._info())

    async def get_object_info_one(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["node_class"]
        info = await self._info()
        return web.json_response({name: info[name]} if name in info else {})

    # ---- files ------------------------------------------------------------------------------------
    async def view(self, request: web.Request) -> web.StreamResponse:
        q = request.query
        try:
            path = confined(self.folders.root(q.get("type", "output")), q.get("subfolder", ""), q.get("filename", ""))
        except FileAccessError as exc:
            return web.json_response({"error": str(exc)}, status=exc.status)
        if not path.is_file():
            return web.json_response({"error": "no such file"}, status=404)
        headers = {"Content-Disposition": f'filename="{path.name}"', "X-Content-Type-Options": "nosniff"}
        try:
            variant = await asyncio.to_thread(view_variant, path, q.get("preview"), q.get("channel"),
                                              self.config.engine.max_input_pixels)
        except FileAccessError as exc:
            return web.json_response({"error": str(exc)}, status=exc.status)
        except Exception:  # not an image Pillow can read: only the file itself can be served
            return web.json_response({"error": "preview and channel need an image"}, status=400)
        if variant is not None:
            return web.Response(body=variant[0], content_type=variant[1], headers=headers)
        return web.FileResponse(path, headers={**headers, "Content-Type": served_content_type(path)})

    async def _upload(self, request: web.Request, mask: bool) -> web.StreamResponse:
        try:
            form = await request.post()
        except web.HTTPRequestEntityTooLarge:
            return web.json_response({"error": f"upload larger than {self.config.max_upload} bytes"}, status=413)
        image = form.get("image")
        if not isinstance(image, web.FileField):
            return web.json_response({"error": "multipart field 'image' (a file) is required"}, status=400)
        kind = str(form.get("type") or "input")
        subfolder = str(form.get("subfolder") or "")
        overwrite = str(form.get("overwrite") or "").lower() in ("true", "1")
        try:
            data = image.file.read(self.config.max_upload + 1)
            if len(data) > self.config.max_upload:
                return web.json_response({"error": f"upload larger than {self.config.max_upload} bytes"}, status=413)
            if kind not in ("input", "temp", "output"):
                raise FileAccessError(400, "type must be input, temp or output")
            name = clean_upload_name(image.filename or "")
            target = confined(self.folders.root(kind), subfolder, name)
            max_pixels = self.config.engine.max_input_pixels
            if mask:
                ref = json.loads(str(form.get("original_ref") or "{}"))
                if not isinstance(ref, dict) or not ref.get("filename"):
                    raise FileAccessError(400, "original_ref must be JSON {filename, subfolder, type}")
                original = confined(self.folders.root(str(ref.get("type") or "input")),
                                    str(ref.get("subfolder") or ""), str(ref["filename"]))
                data = await asyncio.to_thread(mask_into_image, original, data, max_pixels)
            else:
                await asyncio.to_thread(verify_image, data, max_pixels)
            stored = await asyncio.to_thread(store_upload, target.parent, name, data, overwrite)
        except FileAccessError as exc:
            return web.json_response({"error": str(exc)}, status=exc.status)
        except ValueError:
            return web.json_response({"error": "original_ref is not JSON"}, status=400)
        logger.info("upload: %s/%s (%s, %d bytes)", subfolder or ".", stored, kind, len(data))
        return web.json_response(UploadReply(name=stored, subfolder=subfolder, type=kind).model_dump())

    async def upload_image(self, request: web.Request) -> web.StreamResponse:
        return await self._upload(request, mask=False)

    async def upload_mask(self, request: web.Request) -> web.StreamResponse:
        return await self._upload(request, mask=True)

    # ---- small informational routes --------------------------------------------------------------
    async def system_stats(self, request: web.Request) -> web.StreamResponse:
        def version(dist: str) -> str:
            try:
                return metadata.version(dist)
            except metadata.PackageNotFoundError:
                return "unknown"

        devices: list[dict[str, Any]] = []
        torch = sys.modules.get("torch")  # reported once a prompt has loaded it; never imported just for this
        if torch is not None and torch.cuda.is_available():
            for i in range(torch.cuda.device_count()):
                free, total = torch.cuda.mem_get_info(i)
                devices.append({"name": torch.cuda.get_device_name(i), "type": "cuda", "index": i,
                                "vram_total": total, "vram_free": free, "torch_vram_total": total,
                                "torch_vram_free": free})
        else:
            devices.append({"name": "cpu", "type": "cpu", "index": None, "vram_total": 0, "vram_free": 0,
                            "torch_vram_total": 0, "torch_vram_free": 0})
        ram_total = ram_free = 0
        try:
            pages = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_AVPHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
            ram_total, ram_free = pages[0] * pages[2], pages[1] * pages[2]
        except (ValueError, OSError, AttributeError):
            pass
        return web.json_response({"system": {"os": platform.system().lower(), "python_version": sys.version,
                                             "pytorch_version": version("torch"),
                                             "comfyui_version": f"nodegraph-{version('nodegraph')}",
                                             "embedded_python": False, "argv": ["nodegraph", "serve"],
                                             "ram_total": ram_total, "ram_free": ram_free},
                                  "devices": devices})

    async def empty_list(self, request: web.Request) -> web.StreamResponse:
        return web.json_response([])

    def _features(self) -> dict[str, Any]:
        return {"supports_preview_metadata": True, "max_upload_size": self.config.max_upload}

    async def features(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(self._features())
