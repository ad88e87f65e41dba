"""What a running node may ask of the engine: progress, cancellation, output paths, shared resources."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from nodegraph.errors import Interrupted
from nodegraph.settings import EngineSettings

T = TypeVar("T")


class RunListener(Protocol):
    """Receives run events; the CLI draws progress bars from them."""

    def node_started(self, node_id: str, node_type: str) -> None: ...

    def node_progress(self, node_id: str, done: int, total: int) -> None: ...

    def node_finished(self, node_id: str, status: str) -> None: ...


class SilentListener:
    def node_started(self, node_id: str, node_type: str) -> None:
        pass

    def node_progress(self, node_id: str, done: int, total: int) -> None:
        pass

    def node_finished(self, node_id: str, status: str) -> None:
        pass


@dataclass
class CancelToken:
    """Set from a signal handler or another thread; checked between steps."""

    _event: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        if self._event.is_set():
            raise Interrupted("run cancelled")


class Progress:
    """A step counter for one node's long loop; each update is also a cancellation point."""

    def __init__(self, ctx: RunContext, total: int):
        self._ctx = ctx
        self.total = total
        self.done = 0
        ctx.listener.node_progress(ctx.node_id, 0, total)

    def update(self, n: int = 1) -> None:
        self.done += n
        self._ctx.listener.node_progress(self._ctx.node_id, self.done, self.total)
        self._ctx.cancel.check()


@dataclass
class RunContext:
    """Handed to a node that declares a ``RunContext`` parameter."""

    node_id: str
    output_dir: Path
    listener: RunListener
    cancel: CancelToken
    resources: dict[type, Any]
    loaded: list[str]
    workflow_json: str | None = None
    settings: EngineSettings = field(default_factory=EngineSettings)

    def progress(self, total: int) -> Progress:
        return Progress(self, total)

    def check_cancelled(self) -> None:
        self.cancel.check()

    def resource(self, kind: type[T], factory: Callable[[], T] | None = None) -> T:
        """A session-wide object (a model manager, say) shared by every run of the same engine."""
        if kind not in self.resources:
            self.resources[kind] = factory() if factory else kind()
        return self.resources[kind]

    def record_loaded(self, component: str) -> None:
        """Tell the run report that a model component was read from disk during this run."""
        self.loaded.append(component)
