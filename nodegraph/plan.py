"""A run's plan as data: which nodes execute, which are served from which cache tier, which are not needed.

Computed backwards from the demanded output nodes without running anything: a node whose key a tier holds
is served from there and its own inputs are not demanded (so a cached text encoding never touches the text
encoders). ``Engine.plan`` returns it; ``nodegraph run --dry-run`` prints it; the executor carries it out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any, NamedTuple

from nodegraph.events import CacheTier


class Action(str, Enum):
    """What the plan does with one node."""

    EXECUTE = "execute"
    MEMORY = "memory"  # served from the memory tier
    DISK = "disk"  # served from the disk tier
    DONE = "done"  # computed earlier in the same run (only in a plan made again after an unreadable entry)
    NOT_NEEDED = "not_needed"  # no demanded output depends on it, or a descendant is served from a cache


class PlannedNode(NamedTuple):  # a tuple: one per node per run, so cheap to build
    node_id: str
    node_type: str
    action: Action
    key: str | None  # None for a node that is no ancestor of a demanded output
    # For a node not needed because a descendant is cached: the tier that also holds its own result.
    cached_in: CacheTier | None = None


@dataclass(frozen=True)
class Plan:
    outputs: tuple[str, ...]  # demanded output nodes
    order: tuple[str, ...]  # nodes to execute or read, in topological order
    nodes: Mapping[str, PlannedNode]  # every node of the graph

    @property
    def will_execute(self) -> tuple[str, ...]:
        return tuple(n for n in self.order if self.nodes[n].action is Action.EXECUTE)

    @property
    def cached(self) -> tuple[str, ...]:
        return tuple(n for n in self.order if self.nodes[n].action in (Action.MEMORY, Action.DISK))

    def action(self, node_id: str) -> Action:
        return self.nodes[node_id].action

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the order, and per node its type, action, key and (when unread) tier."""
        return {
            "outputs": list(self.outputs),
            "order": list(self.order),
            "nodes": {n: {"type": p.node_type, "action": p.action.value, "key": p.key, "cached_in": p.cached_in}
                      for n, p in self.nodes.items()},
        }

    def describe(self) -> list[str]:
        """One line per node, in the order the run would take (what ``--dry-run`` prints)."""
        lines = []
        for n in self.order:
            p = self.nodes[n]
            how = "execute" if p.action is Action.EXECUTE else f"cached ({p.action.value})"
            lines.append(f"{n} {p.node_type}: {how}")
        for n, p in self.nodes.items():
            if p.action is Action.NOT_NEEDED:
                extra = f", its result is cached in {p.cached_in}" if p.cached_in else ""
                lines.append(f"{n} {p.node_type}: not needed{extra}")
        return lines
