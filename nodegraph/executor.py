"""Demand-driven execution: output nodes pull what they need; caches answer before anything runs.

A run is planned backwards from the output nodes: a node whose key is in the memory or disk tier is
served from there and its own inputs are not demanded at all (so a cached text encoding never touches
the text encoders). Then the demanded nodes run forwards in topological order.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nodegraph.cache import DiskCache, MemoryCache
from nodegraph.context import CancelToken, RunContext, RunListener, SilentListener
from nodegraph.errors import Interrupted, NodeExecutionError
from nodegraph.graph import Graph, ValidGraph, validate
from nodegraph.keys import node_key
from nodegraph.node import REGISTRY, NodeSpec, Registry
from nodegraph.settings import EngineSettings, use_settings

logger = logging.getLogger(__name__)


class _Replan(Exception):
    """A planned cache hit turned out unreadable; plan again without it."""


@dataclass
class RunResult:
    """What a run did (the report) and the values it produced, by node id and output name."""

    ok: bool = True
    seconds: float = 0.0
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)
    loaded: list[str] = field(default_factory=list)
    outputs: dict[str, list[str]] = field(default_factory=dict)
    error: dict[str, Any] | None = None
    values: dict[str, dict[str, Any]] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)

    @property
    def interrupted(self) -> bool:
        return bool(self.error and self.error.get("interrupted"))

    def __getitem__(self, node_id: str) -> dict[str, Any]:
        return self.values[node_id]

    def report(self) -> dict[str, Any]:
        return {"ok": self.ok, "seconds": round(self.seconds, 6), "nodes": self.nodes, "loaded": self.loaded,
                "outputs": self.outputs, "error": self.error}

    def status(self, node_id: str) -> str:
        return self.nodes[node_id]["status"]


def _as_outputs(spec: NodeSpec, result: Any) -> dict[str, Any]:
    names = list(spec.outputs)
    if spec.is_output and not names:
        return {}
    if len(names) == 1:
        return {names[0]: result}
    if isinstance(result, dict):
        return {n: result[n] for n in names}
    if not isinstance(result, tuple) or len(result) != len(names):
        raise TypeError(f"{spec.name} must return {len(names)} values {names}, got {type(result).__name__}")
    return dict(zip(names, result, strict=True))


class Engine:
    """Runs graphs; keeps the memory tier, the disk tier and session resources between runs."""

    def __init__(self, settings: EngineSettings | None = None, *, registry: Registry | None = None):
        # No settings: a library caller's defaults, read from the environment once, here (the state
        # directory and model budget), with no disk tier of node outputs.
        self.settings = settings if settings is not None else EngineSettings.from_env(cache_dir=None)
        self.registry = registry or REGISTRY
        self.memory = MemoryCache(self.settings.memory_cache_bytes)
        self.disk = (DiskCache(self.settings.cache_dir, self.settings.disk_cache_bytes, registry=self.registry)
                     if self.settings.cache_dir is not None else None)
        self.resources: dict[type, Any] = {}

    def run(
        self,
        graph: Graph,
        *,
        outputs: list[str] | None = None,
        output_dir: str | Path = ".",
        listener: RunListener | None = None,
        cancel: CancelToken | None = None,
        raise_on_error: bool = True,
        workflow_json: str | None = None,
    ) -> RunResult:
        """Validate (raises WorkflowError) then run. ``outputs`` limits which output nodes are demanded;
        by default every output node. Node failures raise NodeExecutionError unless ``raise_on_error``
        is False, in which case the result carries the error."""
        with use_settings(self.settings):
            return self._run(graph, outputs, Path(output_dir), listener, cancel, raise_on_error, workflow_json)

    def _run(self, graph: Graph, outputs: list[str] | None, output_dir: Path, listener: RunListener | None,
             cancel: CancelToken | None, raise_on_error: bool, workflow_json: str | None) -> RunResult:
        vg = validate(graph, outputs)
        result = RunResult(nodes={n: {"type": inst.type, "status": "skipped", "cache": None, "seconds": 0.0}
                                  for n, inst in graph.nodes.items()})
        listener = listener or SilentListener()
        cancel = cancel or CancelToken()
        start = time.perf_counter()
        try:
            for _attempt in range(8):
                try:
                    self._run_once(vg, result, Path(output_dir), listener, cancel, workflow_json)
                    break
                except _Replan:
                    continue
        except NodeExecutionError as exc:
            result.ok = False
            result.error = exc.to_dict()
            if isinstance(exc.cause, (Interrupted, KeyboardInterrupt)):
                result.error["interrupted"] = True
            if raise_on_error:
                raise
        except (Interrupted, KeyboardInterrupt) as exc:
            result.ok = False
            result.error = {"interrupted": True, "message": str(exc) or "interrupted"}
            if raise_on_error:
                raise
        finally:
            result.seconds = time.perf_counter() - start
            if self.disk is not None and self.disk.enabled and self.disk.wrote:
                try:
                    self.disk.prune()
                except OSError as exc:
                    logger.warning("disk cache: could not prune %s: %s", self.disk.root, exc)
        return result

    def _keys(self, vg: ValidGraph, needed: set[str], result: RunResult) -> dict[str, str]:
        keys = result.keys
        for n in vg.order:
            if n not in needed or n in keys:
                continue
            spec = vg.specs[n]
            literals = vg.literals[n]
            external = None
            if spec.fingerprint is not None:
                try:
                    external = spec.fingerprint(**literals)
                except Exception as exc:
                    result.nodes[n]["status"] = "failed"
                    raise NodeExecutionError(n, spec.name, exc) from exc
            upstream = {name: (keys[link.node], link.output) for name, link in vg.links[n].items()}
            if spec.content_inputs:
                literals = {k: v for k, v in literals.items() if k not in spec.content_inputs}
            keys[n] = node_key(spec.name, spec.version, literals, upstream, external)
        return keys

    def _run_once(self, vg: ValidGraph, result: RunResult, output_dir: Path, listener: RunListener,
                  cancel: CancelToken, workflow_json: str | None) -> None:
        # Ancestors of the demanded outputs: only their keys are ever needed.
        ancestors: set[str] = set()
        stack = list(vg.outputs)
        while stack:
            n = stack.pop()
            if n in ancestors:
                continue
            ancestors.add(n)
            stack.extend(link.node for link in vg.links[n].values())
        keys = self._keys(vg, ancestors, result)

        # Backward plan: a cached node's inputs are not demanded.
        need = set(vg.outputs)
        hits: dict[str, str] = {}
        disk = self.disk if self.disk is not None and self.disk.enabled else None
        for n in reversed(vg.order):
            if n not in need:
                continue
            spec = vg.specs[n]
            if n in result.values:
                continue
            if not spec.is_output and not spec.always_run:
                k = keys[n]
                if k in self.memory:
                    hits[n] = "memory"
                    continue
                if spec.persist and disk is not None and disk.contains(k):
                    hits[n] = "disk"
                    continue
            need.update(link.node for link in vg.links[n].values())

        values = result.values
        by_key: dict[str, dict[str, Any]] = {}  # identical sub-graphs under other ids compute once
        for n in vg.order:
            if n not in need or n in values:
                continue
            spec = vg.specs[n]
            report = result.nodes[n]
            k = keys[n]
            t0 = time.perf_counter()
            tier = hits.get(n)
            if tier is None and not spec.is_output and not spec.always_run and k in by_key:
                values[n] = by_key[k]
                tier = "memory"
            elif tier == "memory":
                value = self.memory.get(k)
                if value is None:  # evicted since planning, by a large entry this run added
                    raise _Replan()
                values[n] = value
            elif tier == "disk":
                assert disk is not None
                found, value = disk.get(k)
                if not found:
                    raise _Replan()
                values[n] = value
                self.memory.put(k, value)
            if tier is not None:
                by_key.setdefault(k, values[n])
                report.update(status="cached", cache=tier, seconds=time.perf_counter() - t0)
                listener.node_finished(n, "cached")
                continue
            cancel.check()
            listener.node_started(n, spec.name)
            kwargs = dict(vg.literals[n])
            for name, link in vg.links[n].items():
                kwargs[name] = values[link.node][link.output]
            if spec.context_param is not None:
                kwargs[spec.context_param] = RunContext(n, output_dir, listener, cancel, self.resources,
                                                        result.loaded, workflow_json, self.settings)
            try:
                raw = spec.fn(**kwargs)
                produced = _as_outputs(spec, raw)
            except Interrupted:
                report.update(status="interrupted", seconds=time.perf_counter() - t0)
                listener.node_finished(n, "interrupted")
                raise
            except Exception as exc:
                report.update(status="failed", seconds=time.perf_counter() - t0)
                listener.node_finished(n, "failed")
                raise NodeExecutionError(n, spec.name, exc) from exc
            except KeyboardInterrupt as exc:
                report.update(status="interrupted", seconds=time.perf_counter() - t0)
                listener.node_finished(n, "interrupted")
                raise Interrupted(f"interrupted in node {n!r} ({spec.name})") from exc
            values[n] = produced
            if spec.is_output:
                result.outputs[n] = [str(p) for p in (raw or [])]
            else:
                by_key[k] = produced
                self.memory.put(k, produced)
                if spec.persist and disk is not None:
                    disk.put(k, produced)
            report.update(status="executed", cache=None, seconds=time.perf_counter() - t0)
            listener.node_finished(n, "executed")

        # Ancestors that were not demanded because a descendant came from a cache: say whether their own
        # result is cached too (it was not read, so "read": false), so a report tells what a rerun reuses.
        for n in ancestors - need:
            report = result.nodes[n]
            if report["status"] != "skipped" or vg.specs[n].is_output:
                continue
            k = keys[n]
            if k in self.memory and not vg.specs[n].always_run:
                report.update(status="cached", cache="memory", read=False)
            elif vg.specs[n].persist and disk is not None and disk.contains(k):
                report.update(status="cached", cache="disk", read=False)
