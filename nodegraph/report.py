"""The run report (``RunResult``), built by a listener from the run's events like every other consumer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from nodegraph.events import (
    NodeCached,
    NodeFinished,
    NodeStatus,
    RunError,
    RunEvent,
    RunFailed,
    RunFinished,
    RunInterrupted,
    RunStarted,
)


@dataclass
class RunResult:
    """What a run did (the report) and the values it produced, by node id and output name."""

    ok: bool = True
    seconds: float = 0.0
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)
    loaded: list[str] = field(default_factory=list)
    outputs: dict[str, list[str]] = field(default_factory=dict)
    error: RunError | None = None
    interrupted: bool = False
    values: dict[str, dict[str, Any]] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)
    run_id: str = ""

    def __getitem__(self, node_id: str) -> dict[str, Any]:
        return self.values[node_id]

    def error_dict(self) -> dict[str, Any] | None:
        """The report's ``error``: the node, its type, the exception and message; ``interrupted`` when so."""
        if self.error is None and not self.interrupted:
            return None
        out: dict[str, Any] = {}
        if self.error is not None:
            e = self.error
            out = {"node": e.node_id, "type": e.node_type, "exception": e.exception_type, "message": e.message}
        if self.interrupted:
            out["interrupted"] = True
            out.setdefault("message", "interrupted")
        return out

    def report(self) -> dict[str, Any]:
        return {"ok": self.ok, "run_id": self.run_id, "seconds": round(self.seconds, 6), "nodes": self.nodes,
                "loaded": self.loaded, "outputs": self.outputs, "error": self.error_dict()}

    def status(self, node_id: str) -> NodeStatus:
        return NodeStatus(self.nodes[node_id]["status"])


def new_result(node_types: dict[str, str], run_id: str) -> RunResult:
    """A report in which every node is still ``skipped``."""
    return RunResult(nodes={n: {"type": t, "status": NodeStatus.SKIPPED, "cache": None, "seconds": 0.0}
                            for n, t in node_types.items()}, run_id=run_id)


class ReportListener:
    """Fills a ``RunResult`` from events: node statuses, cache tiers, times, files written, the error."""

    def __init__(self, result: RunResult):
        self.result = result

    def on_event(self, event: RunEvent) -> None:
        nodes = self.result.nodes
        kind = type(event)
        if kind is NodeFinished:  # the most frequent event first
            assert isinstance(event, NodeFinished)
            info = nodes[event.node_id]
            info.update(status=event.status, cache=None, seconds=event.seconds)
            info.pop("read", None)
            if event.status is NodeStatus.EXECUTED and event.files:
                self.result.outputs[event.node_id] = list(event.files)
        elif isinstance(event, RunStarted):
            for node_id, tier in event.unread_cached:
                if nodes[node_id]["status"] == NodeStatus.SKIPPED:
                    nodes[node_id].update(status=NodeStatus.CACHED, cache=tier, read=False)
        elif isinstance(event, NodeCached):
            nodes[event.node_id].update(status=NodeStatus.CACHED, cache=event.tier, seconds=event.seconds)
            nodes[event.node_id].pop("read", None)
        elif isinstance(event, RunFinished):
            self.result.ok, self.result.seconds = True, event.seconds
        elif isinstance(event, RunFailed):
            self.result.ok, self.result.seconds, self.result.error = False, event.seconds, event.error
        elif isinstance(event, RunInterrupted):
            self.result.ok, self.result.seconds, self.result.interrupted = False, event.seconds, True
            if event.node_id is not None:
                self.result.error = RunError(event.node_id, event.node_type, "Interrupted",
                                             f"interrupted in node {event.node_id!r} ({event.node_type})")
