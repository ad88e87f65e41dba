"""Typed run events: the one channel through which a run reports what it does.

The executor emits these to a single ``RunListener``; the CLI's progress bars, the run report and the
server's websocket messages are all built from them, and nothing else reports progress. Events are
plain frozen dataclasses (they never leave the process as they are: the server turns them into its own
pydantic protocol messages).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Literal, Protocol

CacheTier = Literal["memory", "disk"]


class NodeStatus(str, Enum):
    """What happened to one node in one run (the report's ``status``)."""

    EXECUTED = "executed"
    CACHED = "cached"
    SKIPPED = "skipped"
    FAILED = "failed"
    INTERRUPTED = "interrupted"


@dataclass(frozen=True)
class PreviewImage:
    """An encoded preview of a node's intermediate result (a sampler's current denoised estimate)."""

    format: Literal["JPEG", "PNG"]
    data: bytes


@dataclass(frozen=True)
class RunError:
    """Why a run failed: the node, its type, and the exception (never a traceback or a server path)."""

    node_id: str | None
    node_type: str | None
    exception_type: str
    message: str


@dataclass(frozen=True)
class RunStarted:
    run_id: str
    will_execute: tuple[str, ...]  # the plan: node ids that will run, in order
    cached: tuple[str, ...]  # node ids the plan serves from a cache tier
    # Ancestors not demanded (a descendant is served from a cache) whose own result a tier also holds:
    # not read, but a report says what a rerun could reuse.
    unread_cached: tuple[tuple[str, CacheTier], ...] = ()


@dataclass(frozen=True)
class NodeStarted:
    node_id: str
    node_type: str


@dataclass(frozen=True)
class NodeCached:
    node_id: str
    node_type: str
    tier: CacheTier
    seconds: float = 0.0  # time to read it from the tier


@dataclass(frozen=True)
class NodeProgress:
    node_id: str
    value: int
    total: int
    preview: PreviewImage | None = None


@dataclass(frozen=True)
class NodeFinished:
    node_id: str
    node_type: str
    status: NodeStatus
    seconds: float
    files: tuple[str, ...] = ()  # what an output node wrote (absolute paths)


@dataclass(frozen=True)
class RunFinished:
    run_id: str
    seconds: float


@dataclass(frozen=True)
class RunFailed:
    run_id: str
    seconds: float
    error: RunError


@dataclass(frozen=True)
class RunInterrupted:
    run_id: str
    seconds: float
    node_id: str | None = None
    node_type: str | None = None


RunEvent = (
    RunStarted | NodeStarted | NodeCached | NodeProgress | NodeFinished | RunFinished | RunFailed | RunInterrupted
)


class RunListener(Protocol):
    """Receives every event of a run, in order, on the thread that runs it."""

    def on_event(self, event: RunEvent) -> None: ...


class SilentListener:
    def on_event(self, event: RunEvent) -> None:
        pass


@dataclass
class FanOut:
    """Sends each event to several listeners (the report and a progress bar, say)."""

    listeners: Sequence[RunListener] = field(default_factory=tuple)

    def on_event(self, event: RunEvent) -> None:
        for listener in self.listeners:
            listener.on_event(event)


@dataclass(frozen=True)
class PreviewSettings:
    """When a long node may attach a preview to a progress event; ``None`` on the run means never."""

    every_steps: int = 1
    min_interval_s: float = 0.25
    max_size: int = 512  # longest side in pixels


PreviewFactory = Callable[[], PreviewImage | None]
