"""Demand-driven execution: plan (``nodegraph.plan``) first, then carry the plan out, emitting typed events.

The plan serves every node it can from the memory or disk tier and demands only what those do not cover.
If a planned entry turns out unreadable (evicted, corrupt), the run plans again without that entry; each
such replan rules one more (key, tier) out, so the loop ends, and a run that ends without every demanded
output node executed is a failure, never a success.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nodegraph.cache import DiskCache, MemoryCache, Store
from nodegraph.context import CancelToken, RunContext
from nodegraph.errors import Interrupted, NodeExecutionError
from nodegraph.events import (
    CacheTier,
    FanOut,
    NodeCached,
    NodeFinished,
    NodeStarted,
    NodeStatus,
    PreviewSettings,
    RunError,
    RunFailed,
    RunFinished,
    RunInterrupted,
    RunListener,
    RunStarted,
)
from nodegraph.graph import Graph
from nodegraph.keys import node_key
from nodegraph.node import REGISTRY, NodeSpec, Registry
from nodegraph.plan import Action, Plan, PlannedNode
from nodegraph.report import ReportListener, RunResult, new_result
from nodegraph.settings import EngineSettings, PathPolicy, use_settings
from nodegraph.validation import ValidGraph, validate

logger = logging.getLogger(__name__)

__all__ = ["Engine", "OutputNotWritten", "RunResult"]


class _Unreadable(Exception):
    """A planned cache hit could not be read; plan again without it."""

    def __init__(self, key: str, tier: CacheTier):
        self.entry = (key, tier)


class OutputNotWritten(RuntimeError):
    """An output node returned without the files it should have written."""


def _cacheable(spec: NodeSpec) -> bool:
    return not spec.is_output and not spec.always_run


def as_outputs(spec: NodeSpec, result: Any) -> dict[str, Any]:
    """A node function's return value as ``{output name: value}``; a wrong shape is a TypeError."""
    names = list(spec.outputs)
    if spec.is_output and not names:
        return {}
    if len(names) == 1:
        if isinstance(result, tuple):
            raise TypeError(f"{spec.name} has one output {names[0]!r} but returned a tuple of {len(result)}")
        return {names[0]: result}
    if isinstance(result, dict):
        missing, extra = sorted(set(names) - set(result)), sorted(set(result) - set(names))
        if missing or extra:
            raise TypeError(f"{spec.name} returned a dict with missing keys {missing} / extra keys {extra}; "
                            f"its outputs are {names}")
        return {n: result[n] for n in names}
    if not isinstance(result, tuple) or len(result) != len(names):
        raise TypeError(f"{spec.name} must return {len(names)} values {names}, got {type(result).__name__}")
    return dict(zip(names, result, strict=True))


def written_files(spec: NodeSpec, result: Any) -> tuple[str, ...]:
    """The files an output node says it wrote, each checked to exist: writing nothing is a failure."""
    if not isinstance(result, (list, tuple)) or not all(isinstance(p, (str, Path)) for p in result):
        raise OutputNotWritten(f"{spec.name} is an output node and must return the list of files it wrote, "
                               f"got {type(result).__name__}")
    if not result:
        raise OutputNotWritten(f"{spec.name} wrote no files")
    missing = [str(p) for p in result if not Path(p).is_file()]
    if missing:
        raise OutputNotWritten(f"{spec.name} reported files that do not exist: {missing[:3]}")
    return tuple(str(p) for p in result)


@dataclass
class _Run:
    """The state of one run in progress."""

    vg: ValidGraph
    run_id: str
    listener: RunListener
    cancel: CancelToken
    result: RunResult
    output_dir: Path
    workflow_json: str | None
    previews: PreviewSettings | None
    png_text: Mapping[str, str]
    by_key: dict[str, dict[str, Any]] = field(default_factory=dict)  # identical sub-graphs compute once
    current: tuple[str, str] | None = None  # (node id, type) of the node executing now


class Engine:
    """Runs graphs; keeps the memory tier, the disk tier and session resources between runs."""

    def __init__(self, settings: EngineSettings | None = None, *, registry: Registry | None = None):
        # No settings: a library caller's defaults, read from the environment once, here (the state
        # directory and model budget), with no disk tier of node outputs.
        self.settings = settings if settings is not None else EngineSettings.from_env(cache_dir=None)
        self.registry = registry or REGISTRY
        self.memory: Store = MemoryCache(self.settings.memory_cache_bytes)
        self.disk = (DiskCache(self.settings.cache_dir, self.settings.disk_cache_bytes, registry=self.registry)
                     if self.settings.cache_dir is not None else None)
        self.resources: dict[type, Any] = {}

    # ---- planning ----------------------------------------------------------------------------------
    def plan(self, graph: Graph, outputs: list[str] | None = None, policy: PathPolicy | None = None) -> Plan:
        """Validate (raises WorkflowError) and plan without running anything."""
        with use_settings(self.settings):  # check hooks read the engine's limits
            vg = validate(graph, outputs, policy)
            return self._plan(vg, self._keys(vg), set(), set())

    def _disk(self) -> DiskCache | None:
        return self.disk if self.disk is not None and self.disk.enabled else None

    def _keys(self, vg: ValidGraph) -> dict[str, str]:
        """Keys of the ancestors of the demanded outputs (no other key is ever needed)."""
        ancestors = vg.ancestors()
        keys: dict[str, str] = {}
        for n in vg.order:
            if n not in ancestors:
                continue
            spec = vg.specs[n]
            literals = vg.literals[n]
            external = None
            if spec.fingerprint is not None:
                try:
                    external = spec.fingerprint(**literals)
                except Exception as exc:
                    raise NodeExecutionError(n, spec.name, exc) from exc
            upstream = {name: (keys[link.node], str(link.output)) for name, link in vg.links[n].items()}
            if spec.content_inputs:
                literals = {k: v for k, v in literals.items() if k not in spec.content_inputs}
            keys[n] = node_key(spec.name, spec.version, literals, upstream, external, salt=getattr(spec, "salt", ""))
        return keys

    def _tier(self, spec: NodeSpec, key: str, unusable: set[tuple[str, CacheTier]]) -> CacheTier | None:
        """The tier that would serve this node's result, if any."""
        if not _cacheable(spec):
            return None
        if (key, "memory") not in unusable and self.memory.contains(key):
            return "memory"
        disk = self._disk()
        if spec.persist and disk is not None and (key, "disk") not in unusable and disk.contains(key):
            return "disk"
        return None

    def _plan(self, vg: ValidGraph, keys: dict[str, str], done: set[str],
              unusable: set[tuple[str, CacheTier]]) -> Plan:
        need = set(vg.outputs)
        actions: dict[str, Action] = {}
        for n in reversed(vg.order):
            if n not in need:
                continue
            if n in done:
                actions[n] = Action.DONE
                continue
            tier = self._tier(vg.specs[n], keys[n], unusable)
            if tier is not None:
                actions[n] = Action.MEMORY if tier == "memory" else Action.DISK
                continue
            actions[n] = Action.EXECUTE
            need.update(link.node for link in vg.links[n].values())
        nodes: dict[str, PlannedNode] = {}
        for n, inst in vg.graph.nodes.items():
            key = keys.get(n)
            if n in actions:
                nodes[n] = PlannedNode(n, inst.type, actions[n], key)
            else:
                cached_in = self._tier(vg.specs[n], key, unusable) if key is not None else None
                nodes[n] = PlannedNode(n, inst.type, Action.NOT_NEEDED, key, cached_in)
        return Plan(tuple(vg.outputs), tuple(n for n in vg.order if n in actions), nodes)

    # ---- running -----------------------------------------------------------------------------------
    def run(
        self,
        graph: Graph,
        *,
        outputs: list[str] | None = None,
        listener: RunListener | None = None,
        cancel: CancelToken | None = None,
        raise_on_error: bool = True,
        workflow_json: str | None = None,
        previews: PreviewSettings | None = None,
        policy: PathPolicy | None = None,
        run_id: str | None = None,
        output_dir: str | Path | None = None,
        png_text: Mapping[str, str] | None = None,
    ) -> RunResult:
        """Validate (raises WorkflowError) then run. ``outputs`` limits which output nodes are demanded;
        by default every output node. Node failures raise NodeExecutionError unless ``raise_on_error``
        is False, in which case the result carries the error. ``output_dir`` overrides the settings'
        for this run; ``previews`` asks long nodes for preview images on their progress events; ``png_text``
        adds text chunks to the PNGs the run writes."""
        with use_settings(self.settings):  # check hooks read the engine's limits
            vg = validate(graph, outputs, policy)
        run_id = run_id or uuid.uuid4().hex
        result = new_result({n: inst.type for n, inst in graph.nodes.items()}, run_id)
        report = ReportListener(result)
        run = _Run(vg, run_id, FanOut((report, listener)) if listener is not None else report,
                   cancel or CancelToken(), result,
                   Path(output_dir) if output_dir is not None else self.settings.output_dir, workflow_json, previews,
                   dict(png_text or {}))
        start = time.perf_counter()
        try:
            with use_settings(self.settings):
                self._run(run)
        except NodeExecutionError as exc:
            seconds = time.perf_counter() - start
            if isinstance(exc.cause, (Interrupted, KeyboardInterrupt)):
                run.listener.on_event(RunInterrupted(run_id, seconds, exc.node_id, exc.node_type))
            else:
                run.listener.on_event(RunFailed(run_id, seconds, RunError(exc.node_id, exc.node_type,
                                                                          type(exc.cause).__name__, str(exc.cause))))
            if raise_on_error:
                raise
        except (Interrupted, KeyboardInterrupt):
            node_id, node_type = run.current or (None, None)
            run.listener.on_event(RunInterrupted(run_id, time.perf_counter() - start, node_id, node_type))
            if raise_on_error:
                raise
        else:
            run.listener.on_event(RunFinished(run_id, time.perf_counter() - start))
        finally:
            disk = self._disk()
            if disk is not None and disk.wrote:
                try:
                    disk.prune()
                except OSError as exc:
                    logger.warning("disk cache: could not prune %s: %s", disk.root, exc)
        return result

    def _run(self, run: _Run) -> None:
        vg = run.vg
        try:
            keys = self._keys(vg)
        except NodeExecutionError as exc:
            run.listener.on_event(NodeFinished(exc.node_id, exc.node_type, NodeStatus.FAILED, 0.0))
            raise
        run.result.keys.update(keys)
        unusable: set[tuple[str, CacheTier]] = set()
        plan = self._plan(vg, keys, set(), unusable)
        unread = tuple((n, p.cached_in) for n, p in plan.nodes.items()
                       if p.cached_in is not None and not vg.specs[n].is_output)
        run.listener.on_event(RunStarted(run.run_id, plan.will_execute, plan.cached, unread))
        while True:
            try:
                self._execute(run, plan, keys)
                break
            except _Unreadable as exc:
                # Each pass rules one more entry out, and a plan never uses a ruled-out entry: this ends.
                assert exc.entry not in unusable, "a plan used an entry already found unreadable"
                unusable.add(exc.entry)
                plan = self._plan(vg, keys, set(run.result.values), unusable)
        not_run = [n for n in vg.outputs if n not in run.result.values]
        if not_run:  # cannot happen by construction; never report success for it
            spec = vg.specs[not_run[0]]
            raise NodeExecutionError(not_run[0], spec.name, OutputNotWritten(f"output node(s) {not_run} did not run"))

    def _execute(self, run: _Run, plan: Plan, keys: dict[str, str]) -> None:
        values = run.result.values
        for n in plan.order:
            if n in values:
                continue
            spec = run.vg.specs[n]
            action = plan.action(n)
            key = keys[n]
            if action is Action.EXECUTE and _cacheable(spec) and key in run.by_key:
                self._serve(run, n, spec, key, run.by_key[key], "memory", time.perf_counter())
            elif action is Action.MEMORY:
                t0 = time.perf_counter()
                found, value = self.memory.get(key)
                if not found:  # evicted since planning, by a large entry this run added
                    raise _Unreadable(key, "memory")
                self._serve(run, n, spec, key, value, "memory", t0)
            elif action is Action.DISK:
                t0 = time.perf_counter()
                disk = self._disk()
                found, value = disk.get(key) if disk is not None else (False, None)
                if not found or not isinstance(value, dict):
                    raise _Unreadable(key, "disk")
                self.memory.put(key, value)
                self._serve(run, n, spec, key, value, "disk", t0)
            else:
                self._execute_node(run, n, spec, key)

    def _serve(self, run: _Run, n: str, spec: NodeSpec, key: str, value: dict[str, Any], tier: CacheTier,
               t0: float) -> None:
        run.result.values[n] = value
        run.by_key.setdefault(key, value)
        run.listener.on_event(NodeCached(n, spec.name, tier, time.perf_counter() - t0))

    def _execute_node(self, run: _Run, n: str, spec: NodeSpec, key: str) -> None:
        run.cancel.check()
        run.listener.on_event(NodeStarted(n, spec.name))
        run.current = (n, spec.name)
        t0 = time.perf_counter()
        kwargs = dict(run.vg.literals[n])
        for name, link in run.vg.links[n].items():
            kwargs[name] = run.result.values[link.node][str(link.output)]
        if spec.context_param is not None:
            kwargs[spec.context_param] = RunContext(n, run.output_dir, run.listener, run.cancel, self.resources,
                                                    run.result.loaded, run.workflow_json, self.settings,
                                                    run.run_id, run.previews, run.png_text)
        files: tuple[str, ...] = ()
        try:
            raw = spec.fn(**kwargs)
            produced = as_outputs(spec, raw)
            if spec.is_output:
                files = written_files(spec, raw)
        except Interrupted:
            run.listener.on_event(NodeFinished(n, spec.name, NodeStatus.INTERRUPTED, time.perf_counter() - t0))
            raise
        except Exception as exc:
            run.listener.on_event(NodeFinished(n, spec.name, NodeStatus.FAILED, time.perf_counter() - t0))
            raise NodeExecutionError(n, spec.name, exc) from exc
        except KeyboardInterrupt as exc:
            run.listener.on_event(NodeFinished(n, spec.name, NodeStatus.INTERRUPTED, time.perf_counter() - t0))
            raise Interrupted(f"interrupted in node {n!r} ({spec.name})") from exc
        run.current = None
        run.result.values[n] = produced
        if not spec.is_output:
            run.by_key[key] = produced
            self.memory.put(key, produced)
            disk = self._disk()
            if spec.persist and disk is not None:
                disk.put(key, produced)
        run.listener.on_event(NodeFinished(n, spec.name, NodeStatus.EXECUTED, time.perf_counter() - t0, files))
