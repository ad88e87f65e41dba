"""What a running node may ask of the engine: progress, cancellation, output paths, settings, shared resources."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from nodegraph.errors import Interrupted
from nodegraph.events import NodeProgress, PreviewFactory, PreviewSettings, RunListener, SilentListener
from nodegraph.settings import EngineSettings

T = TypeVar("T")

__all__ = ["CancelToken", "Progress", "RunContext", "RunListener", "SilentListener"]


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
    """A step counter for one node's long loop; each update is an event and a cancellation point."""

    def __init__(self, ctx: RunContext, total: int):
        self._ctx = ctx
        self.total = total
        self.done = 0
        self._preview_step = 0
        self._preview_time = float("-inf")
        ctx.listener.on_event(NodeProgress(ctx.node_id, 0, total))

    def _preview_due(self) -> bool:
        wanted = self._ctx.previews
        if wanted is None:
            return False
        return (self.done - self._preview_step >= wanted.every_steps
                and time.monotonic() - self._preview_time >= wanted.min_interval_s)

    def update(self, n: int = 1, preview: PreviewFactory | None = None) -> None:
        """Count ``n`` steps. ``preview`` builds a preview image; it is called only when the run asked for
        previews and one is due, so a node may pass it on every step at no cost."""
        self.done += n
        image = None
        if preview is not None and self._preview_due():
            image = preview()
            self._preview_step = self.done
            self._preview_time = time.monotonic()
        self._ctx.listener.on_event(NodeProgress(self._ctx.node_id, self.done, self.total, image))
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
    run_id: str = ""
    previews: PreviewSettings | None = None  # None: this run wants no previews
    # Extra text chunks for PNGs this run writes (the server's ComfyUI-style ``prompt``/``workflow``).
    png_text: Mapping[str, str] = field(default_factory=dict)

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
