"""The worker: one thread that takes journaled prompts in order and runs them on the long-lived Engine.

It turns the engine's typed events (``nodegraph.events``) into ComfyUI's websocket messages; nothing else
reports progress. The HTTP side only journals prompts and wakes the worker, so it never waits on a run.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nodegraph.context import CancelToken
from nodegraph.errors import WorkflowError
from nodegraph.events import (
    NodeCached,
    NodeFinished,
    NodeProgress,
    NodeStarted,
    NodeStatus,
    PreviewSettings,
    RunError,
    RunEvent,
    RunFailed,
    RunFinished,
    RunInterrupted,
    RunStarted,
)
from nodegraph.node import Registry
from nodegraph.settings import EngineSettings, PathPolicy

from .journal import Journal, Row, State
from .pnginfo import png_text
from .protocol import (
    ExecInfo,
    Executed,
    Executing,
    ExecutionCached,
    ExecutionError,
    ExecutionInterrupted,
    ExecutionStart,
    ExecutionSuccess,
    ImageRef,
    PreviewFrames,
    ProgressData,
    StatusBody,
    StatusData,
    message,
    now_ms,
    preview_frame,
    preview_frame_with_metadata,
)
from .translate import comfy_id_of

if TYPE_CHECKING:
    from nodegraph.executor import Engine

logger = logging.getLogger(__name__)

Send = Callable[[str | None, "str | bytes | PreviewFrames"], None]
"""Deliver a frame to one client id, or to every client when the id is None (thread-safe)."""


def http_policy(settings: EngineSettings) -> PathPolicy:
    """What a workflow that arrived over HTTP may touch: reads under the input and models directories,
    writes under the output directory; relative reads resolve against the input directory."""
    reads = [p for p in (settings.input_dir, *settings.models_dirs, settings.models_state_dir) if p is not None]
    return PathPolicy(write_roots=(settings.output_dir,), read_roots=tuple(reads), base_dir=settings.input_dir)


def status_message(queue_remaining: int, sid: str | None = None) -> str:
    return message("status", StatusData(status=StatusBody(exec_info=ExecInfo(queue_remaining=queue_remaining)),
                                        sid=sid))


def wants_previews(extra_data: dict[str, Any], server_default: bool) -> bool:
    method = extra_data.get("preview_method")
    if method in (None, "", "default"):
        return server_default
    return str(method).lower() != "none"


class PromptListener:
    """Turns one run's events into websocket messages for the prompt's client, and its history entry."""

    def __init__(self, row: Row, send: Send, output_dir: Path, node_types: dict[str, str], previews: bool,
                 metadata: dict[str, Any]):
        self.row = row
        self._send = send
        self._output_dir = output_dir.resolve()
        self._node_types = node_types
        self.previews = previews
        self._metadata = metadata
        self._ids = set(row.prompt)
        self._executing: str | None = None
        self.executed: list[str] = []
        self.outputs: dict[str, dict[str, list[dict[str, Any]]]] = {}
        self.messages: list[list[Any]] = []  # what ComfyUI keeps in the history entry's status
        self.state: State = "error"
        self.error: dict[str, Any] | None = None

    def cid(self, node_id: str | None) -> str | None:
        return None if node_id is None else comfy_id_of(node_id, self._ids, self._metadata)

    def class_type(self, node_id: str | None) -> str | None:
        cid = self.cid(node_id)
        entry = self.row.prompt.get(cid) if cid is not None else None
        if isinstance(entry, dict) and isinstance(entry.get("class_type"), str):
            return str(entry["class_type"])
        return self._node_types.get(node_id or "")

    def _emit(self, kind: str, data: Any, record: bool = False, everyone: bool = False) -> None:
        if record:
            self.messages.append([kind, data.model_dump(mode="json")])
            if self.row.client_id is None and not everyone:
                return  # as in ComfyUI: a prompt without a client id gets its run messages in /history only
        # (node messages of a prompt without a client id go to everyone, as in ComfyUI)
        self._send(None if everyone else self.row.client_id, message(kind, data))

    def _mark_executed(self, cid: str | None) -> None:
        if cid is not None and cid not in self.executed:
            self.executed.append(cid)

    def image_ref(self, path: str) -> ImageRef | None:
        resolved = Path(path).resolve()
        if not resolved.is_relative_to(self._output_dir):
            return None  # only files /view can serve are announced
        rel = resolved.relative_to(self._output_dir)
        return ImageRef(filename=rel.name, subfolder=rel.parent.as_posix() if rel.parent != Path(".") else "",
                        type="output")

    def on_event(self, event: RunEvent) -> None:
        pid = self.row.prompt_id
        if isinstance(event, RunStarted):
            self._emit("execution_start", ExecutionStart(prompt_id=pid, timestamp=now_ms()), record=True)
            cached = list(dict.fromkeys(c for c in (self.cid(n) for n in event.cached) if c is not None))
            self._emit("execution_cached", ExecutionCached(nodes=cached, prompt_id=pid, timestamp=now_ms()),
                       record=True)
            for c in cached:
                self._mark_executed(c)
        elif isinstance(event, NodeCached):
            self._mark_executed(self.cid(event.node_id))
        elif isinstance(event, NodeStarted):
            cid = self.cid(event.node_id)
            if cid != self._executing:  # one ComfyUI node may run as several of ours: announce it once
                self._executing = cid
                self._emit("executing", Executing(node=cid, display_node=cid, prompt_id=pid))
        elif isinstance(event, NodeProgress):
            cid = self.cid(event.node_id) or event.node_id
            self._emit("progress", ProgressData(value=event.value, max=event.total, prompt_id=pid, node=cid))
            if event.preview is not None and self.previews:
                fmt, data = event.preview.format, event.preview.data
                self._send(self.row.client_id, PreviewFrames(
                    legacy=preview_frame(fmt, data), with_metadata=preview_frame_with_metadata(fmt, data, cid, pid)))
        elif isinstance(event, NodeFinished):
            cid = self.cid(event.node_id) or event.node_id
            if event.status in (NodeStatus.EXECUTED, NodeStatus.CACHED):
                self._mark_executed(cid)
            refs = [r for r in (self.image_ref(f) for f in event.files) if r is not None]
            if refs:
                images = self.outputs.setdefault(cid, {}).setdefault("images", [])
                images.extend(r.model_dump() for r in refs)
                self._emit("executed", Executed(node=cid, display_node=cid, output={"images": refs}, prompt_id=pid))
        elif isinstance(event, RunFinished):
            self.state = "success"
            self._emit("execution_success", ExecutionSuccess(prompt_id=pid, timestamp=now_ms()), record=True)
        elif isinstance(event, RunFailed):
            self.fail(event.error)
        elif isinstance(event, RunInterrupted):
            self.state = "interrupted"
            self._emit("execution_interrupted", ExecutionInterrupted(
                prompt_id=pid, timestamp=now_ms(), node_id=self.cid(event.node_id),
                node_type=self.class_type(event.node_id) or event.node_type, executed=list(self.executed)),
                record=True, everyone=True)  # ComfyUI broadcasts interrupts

    def fail(self, error: RunError) -> None:
        self.state = "error"
        data = ExecutionError(prompt_id=self.row.prompt_id, timestamp=now_ms(), node_id=self.cid(error.node_id),
                              node_type=self.class_type(error.node_id) or error.node_type,
                              executed=list(self.executed), exception_message=error.message,
                              exception_type=error.exception_type)
        self.error = data.model_dump(mode="json")
        self._emit("execution_error", data, record=True)


class Worker:
    """Runs journaled prompts one at a time, in order, on one Engine that lives as long as the server."""

    def __init__(self, journal: Journal, settings: EngineSettings, registry: Registry, send: Send, *,
                 previews: bool = False, preview_settings: PreviewSettings | None = None):
        self.journal = journal
        self.settings = settings
        self.registry = registry
        self._send = send
        self._previews = previews
        self._preview_settings = preview_settings or PreviewSettings()
        self._engine: Engine | None = None
        self._wake = threading.Condition()
        self._stopping = False
        self._free: set[str] = set()
        self._cancel: CancelToken | None = None
        self.current: str | None = None
        self.registry_ready = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="nodegraph-worker", daemon=True)

    # ---- called from the HTTP side ---------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        with self._wake:
            self._wake.notify_all()

    def stop(self, timeout: float = 30.0) -> None:
        """Interrupt the running prompt (it goes back to pending: nothing is lost) and end the thread."""
        with self._wake:
            self._stopping = True
            if self._cancel is not None:
                self._cancel.cancel()
            self._wake.notify_all()
        if self.registry_ready.is_set():  # an import in progress cannot be interrupted; the thread is a daemon
            self._thread.join(timeout)

    def interrupt(self, prompt_id: str | None = None) -> bool:
        with self._wake:
            if self._cancel is None or (prompt_id is not None and prompt_id != self.current):
                return False
            self._cancel.cancel()
            return True

    def free(self, unload_models: bool, free_memory: bool) -> None:
        """Done by the worker between prompts, so a running prompt keeps what it uses."""
        with self._wake:
            if unload_models:
                self._free.add("models")
            if free_memory:
                self._free.add("memory")
            self._wake.notify_all()

    def queue_remaining(self) -> int:
        return self.journal.count_pending() + (1 if self.current else 0)

    # ---- the worker thread -----------------------------------------------------------------------
    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = make_engine(self.settings, self.registry)
        return self._engine

    def _loop(self) -> None:
        # Node packages import torch and diffusers (seconds): loaded here, after the socket listens, and
        # before any prompt (also one journaled by an earlier run) is translated or run.
        try:
            self.registry.load_entry_points()
        finally:
            self.registry_ready.set()
        while True:
            with self._wake:
                self._apply_free()
                if self._stopping:
                    return
                row = self.journal.claim_next()
                if row is None:
                    self._wake.wait(timeout=5.0)
                    continue
                self.current = row.prompt_id
                self._cancel = CancelToken()
            try:
                self._execute(row, self._cancel)
            except Exception:  # a bug here must not kill the queue: record it and go on
                logger.exception("prompt %s: unexpected server error", row.prompt_id)
                self.journal.finish(row.prompt_id, "error", {}, [], {"exception_message": "internal server error"})
                self._send(None, status_message(self.journal.count_pending()))
                if row.client_id is not None:  # clients wait for this; never leave them hanging
                    self._send(row.client_id, message("executing", Executing(node=None, prompt_id=row.prompt_id)))
            finally:
                with self._wake:
                    self.current = None
                    self._cancel = None

    def _apply_free(self) -> None:
        if not self._free or self._engine is None:
            self._free.clear()
            return
        engine = self._engine
        if "models" in self._free:
            engine.resources.clear()
        if "memory" in self._free:
            clear = getattr(engine.memory, "clear", None)  # a Store may be shared (batch): clear only if it can
            if callable(clear):
                clear()
        self._free.clear()
        try:
            import gc

            gc.collect()
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass

    def _execute(self, row: Row, cancel: CancelToken) -> None:
        from nodegraph.workflow import graph_from_data

        t0 = time.perf_counter()
        loaded = "nothing"
        self._send(None, status_message(self.queue_remaining()))
        graph = graph_from_data(row.graph, self.registry)
        types = {n: inst.type for n, inst in graph.nodes.items()}
        listener = PromptListener(row, self._send, self.settings.output_dir, types,
                                  wants_previews(row.extra_data, self._previews), graph.metadata)
        try:
            result = self.engine.run(graph, outputs=row.targets or None, listener=listener, cancel=cancel,
                                     raise_on_error=False, workflow_json=workflow_json(row),
                                     previews=self._preview_settings if listener.previews else None,
                                     policy=http_policy(self.settings), run_id=row.prompt_id,
                                     png_text=png_text(row.prompt, row.extra_data))
            loaded = ", ".join(result.loaded) or "nothing"
        except WorkflowError as err:  # the files changed since the prompt was accepted
            listener.fail(RunError(None, None, "WorkflowError", str(err)))
        if listener.state == "interrupted" and self._stopping:
            self.journal.requeue(row.prompt_id)  # shut down mid-run: it runs again on the next start
            logger.info("prompt %s interrupted by shutdown; back in the queue", row.prompt_id)
        else:
            self.journal.finish(row.prompt_id, listener.state, listener.outputs, listener.messages, listener.error)
            logger.info("prompt %s %s in %.2fs (%d images; loaded: %s)", row.prompt_id, listener.state,
                        time.perf_counter() - t0, sum(len(v.get("images", [])) for v in listener.outputs.values()),
                        loaded)
        # As in ComfyUI: the queue status (this prompt no longer counted), then the "done" message, which comes
        # after the history row exists: clients fetch /history the moment they see it.
        self._send(None, status_message(self.journal.count_pending()))
        if row.client_id is not None:
            self._send(row.client_id, message("executing", Executing(node=None, prompt_id=row.prompt_id)))


def workflow_json(row: Row) -> str:
    """What SaveImage embeds as ``nodegraph_workflow``: the native graph, so ``nodegraph run out.png`` reruns it.
    The editor's workflow and the API prompt go in ComfyUI's own chunks (``pnginfo.png_text``)."""
    import json

    return json.dumps(row.graph)


# ---- the engine --------------------------------------------------------------------------------------
def make_engine(settings: EngineSettings, registry: Registry) -> Engine:
    from nodegraph.executor import Engine

    return Engine(settings, registry=registry)


def new_prompt_id() -> str:
    return str(uuid.uuid4())
