"""Validation of a whole graph before it runs: every problem collected at once, each naming node and input.

Besides types, links and values this enforces the run's ``PathPolicy`` (DESIGN.md §7): a literal input
whose annotation carries a ``FileRole`` is resolved (relative reads against ``policy.base_dir``, relative
writes against the first write root; ``..`` and symlinks followed) and must lie where the policy allows.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import typing
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args, get_origin

import networkx as nx

from nodegraph.errors import Issue, WorkflowError, short_repr
from nodegraph.graph import Graph, Link
from nodegraph.node import InputSpec, NodeSpec, Registry
from nodegraph.settings import PathPolicy
from nodegraph.types import FileRole, can_connect, file_role_of, strip_optional

MAX_LITERAL_DEPTH = 32
# A model source that names no local file may be a hub id ("org/name") or carry a scheme ("builtin:...").
# org/name; a name ending in a weights suffix is a file ComfyUI-style ("sdxl/model.safetensors"), never a repo
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/(?![\w.-]*\.(?:safetensors|ckpt|pt|pth|bin)$)[\w.-]+$", re.IGNORECASE)
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:")


@dataclass
class ValidGraph:
    """A graph that passed validation: literals normalised, links resolved to output names, sorted."""

    graph: Graph
    specs: dict[str, NodeSpec]
    literals: dict[str, dict[str, Any]]
    links: dict[str, dict[str, Link]]
    order: list[str]
    outputs: list[str]

    def ancestors(self) -> set[str]:
        """The demanded output nodes and everything they depend on."""
        seen: set[str] = set()
        stack = list(self.outputs)
        while stack:
            n = stack.pop()
            if n not in seen:
                seen.add(n)
                stack.extend(link.node for link in self.links[n].values())
        return seen


def unknown_type(node_id: str, node_type: str, registry: Registry) -> Issue:
    close = difflib.get_close_matches(str(node_type), list(registry.all()), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return Issue(kind="unknown_node_type", node=node_id, message=f"unknown node type {node_type!r}{hint}",
                 found=node_type, expected=close or None)


def _allows_non_finite(annotation: Any) -> bool:
    """An input opts in to NaN/Infinity with pydantic's own ``Field(allow_inf_nan=True)``."""
    annotation = strip_optional(annotation)
    if get_origin(annotation) is not typing.Annotated:
        return False
    return any(getattr(extra, "allow_inf_nan", None) is True
               or any(getattr(m, "allow_inf_nan", None) is True for m in getattr(extra, "metadata", ()))
               for extra in get_args(annotation)[1:])


def literal_problem(value: Any, limit: int = MAX_LITERAL_DEPTH, non_finite_ok: bool = False) -> str | None:
    """What makes a literal unusable before its type is even checked: too deep, NaN/Infinity, or text
    that cannot be encoded as UTF-8 (lone surrogates, which JSON allows). Iterative: no recursion."""
    kind = type(value)
    if kind is int or kind is bool or value is None or (kind is str and value.isascii()):
        return None  # the common literals, answered without the walk
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return f"value is nested deeper than {limit} levels"
        if isinstance(item, float) and not non_finite_ok and not math.isfinite(item):
            return f"{item} is not a finite number"
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return "text contains characters that cannot be encoded as UTF-8 (a lone surrogate?)"
        elif isinstance(item, dict):
            stack.extend((k, depth + 1) for k in item)
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend((v, depth + 1) for v in item)
    return None


def _unknown_input(node_id: str, spec: NodeSpec, name: str) -> Issue:
    close = difflib.get_close_matches(name, list(spec.inputs), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f"; inputs: {sorted(spec.inputs)}"
    return Issue(kind="unknown_input", node=node_id, input=name, message=f"{spec.name} has no input {name!r}{hint}",
                 expected=sorted(spec.inputs), found=name)


def _check_link(graph: Graph, node_id: str, spec: NodeSpec, name: str, inp: InputSpec, value: Link) -> list[Issue]:
    source = graph.nodes.get(value.node)
    if source is None:
        return [Issue(kind="missing_node", node=node_id, input=name,
                      message=f"links to node {value.node!r}, which does not exist", found=value.node)]
    source_spec = graph.registry.get(source.type)
    if source_spec is None:
        return []  # reported on the source node itself
    names = list(source_spec.outputs)
    output = value.output
    if isinstance(output, int) and not isinstance(output, bool):
        if not 0 <= output < len(names):
            return [Issue(kind="missing_output", node=node_id, input=name,
                          message=f"links to output index {output} of node {value.node!r} ({source.type}), "
                                  f"which has {len(names)} outputs {names}", expected=names, found=output)]
        output = names[output]
    if output not in source_spec.outputs:
        return [Issue(kind="missing_output", node=node_id, input=name,
                      message=f"links to output {output!r} of node {value.node!r} ({source.type}), "
                              f"which has outputs {names}", expected=names, found=output)]
    out_type = source_spec.outputs[output]
    if inp.socket is None or not can_connect(out_type, inp.socket):
        expected = inp.socket or f"a literal ({inp.annotation})"
        return [Issue(kind="type_mismatch", node=node_id, input=name,
                      message=f"{spec.name}.{name} expects {expected} but is linked to "
                              f"{source.type}.{output} (node {value.node!r}) of type {out_type}",
                      expected=expected, found=out_type)]
    return []


def check_input(graph: Graph, node_id: str, spec: NodeSpec, name: str, value: Any) -> list[Issue]:
    """Problems with one input of one node; links are checked against their source's declared type."""
    if name not in spec.inputs:
        return [_unknown_input(node_id, spec, name)]
    inp = spec.inputs[name]
    if isinstance(value, Link):
        return _check_link(graph, node_id, spec, name, inp, value)
    if inp.is_link_only:
        if value is None and not inp.required:
            return []
        return [Issue(kind="invalid_value", node=node_id, input=name,
                      message=f"expects a link to a {inp.socket} output, got a literal {short_repr(value)}",
                      expected=inp.socket, found=short_repr(value))]
    problem = literal_problem(value, non_finite_ok=_allows_non_finite(inp.annotation))
    if problem is not None:
        return [Issue(kind="invalid_value", node=node_id, input=name, message=problem,
                      expected=inp.describe(), found=short_repr(value))]
    try:
        inp.validate(value)
    except (ValueError, OverflowError) as exc:
        return [Issue(kind="invalid_value", node=node_id, input=name,
                      message=f"invalid value {short_repr(value)}: {exc}", expected=inp.describe(),
                      found=short_repr(value))]
    return []


def _inside(path: Path, roots: Iterable[Path]) -> bool:
    return any(path == root or path.is_relative_to(root) for root in roots)


def _is_remote_source(value: str, base: Path | None) -> bool:
    """A model source that names no local file: a scheme (``builtin:...``) or a hub id that is no path here."""
    if _SCHEME.match(value) and not re.match(r"^[A-Za-z]:[\\/]", value):
        return True
    if HUB_ID.match(value):
        local = Path(value) if base is None else base / value
        return not local.exists()
    return False


def resolve_path(value: str, role: FileRole, policy: PathPolicy) -> tuple[str, str | None]:
    """``(resolved path, problem or None)`` for one path-valued literal under a policy."""
    if role.hub_ok and _is_remote_source(value, policy.base_dir):
        return value, None
    raw = Path(value).expanduser()
    if role.access == "write":
        base = policy.write_roots[0] if policy.write_roots else policy.base_dir
    else:
        base = policy.base_dir
    if not raw.is_absolute() and base is not None:
        raw = base / raw
    resolved = Path(os.path.realpath(raw))  # ".." and symlinks, also through parts that do not exist yet
    if role.access == "write":
        if not policy.allow_outside_writes and not _inside(resolved, [Path(os.path.realpath(r))
                                                                      for r in policy.write_roots]):
            roots = ", ".join(str(r) for r in policy.write_roots) or "nowhere"
            return str(resolved), (f"writes to {resolved}, outside the output directory ({roots}); "
                                   "pass --allow-outside-writes to allow it")
    elif policy.read_roots is not None and not _inside(resolved, [Path(os.path.realpath(r))
                                                                  for r in policy.read_roots]):
        roots = ", ".join(str(r) for r in policy.read_roots) or "nowhere"
        return str(resolved), (f"reads {resolved}, outside the folders this workflow may read ({roots}); "
                               "a workflow taken from a PNG may read only beside it unless --trust-workflow")
    return str(resolved), None


def _apply_policy(node_id: str, spec: NodeSpec, literals: dict[str, Any], policy: PathPolicy,
                  issues: list[Issue]) -> None:
    for name, value in list(literals.items()):
        role = file_role_of(spec.inputs[name].annotation)
        if role is None or not isinstance(value, str):
            continue
        resolved, problem = resolve_path(value, role, policy)
        if problem is not None:
            issues.append(Issue(kind="path_not_allowed", node=node_id, input=name, message=problem,
                                found=value, expected=[str(r) for r in (policy.write_roots if role.access == "write"
                                                                        else policy.read_roots or ())]))
        else:
            literals[name] = resolved


def validate(graph: Graph, outputs: Iterable[str] | None = None, policy: PathPolicy | None = None) -> ValidGraph:
    """Check the whole graph and collect every problem; raise WorkflowError if there is any.

    ``policy``: which files the workflow may read and write; path-valued literals come back resolved.
    Without one (a trusted Python caller) paths are taken as they are.
    """
    registry = graph.registry
    issues: list[Issue] = []
    specs: dict[str, NodeSpec] = {}
    literals: dict[str, dict[str, Any]] = {}
    links: dict[str, dict[str, Link]] = {}
    dag = nx.DiGraph()
    for node_id, instance in graph.nodes.items():
        dag.add_node(node_id)
        spec = registry.get(instance.type)
        if spec is None:
            issues.append(unknown_type(node_id, instance.type, registry))
            continue
        specs[node_id] = spec
        issues_before = len(issues)
        node_literals: dict[str, Any] = {}
        node_links: dict[str, Link] = {}
        bad: set[str] = set()
        for name, value in instance.inputs.items():
            problems = check_input(graph, node_id, spec, name, value)
            if problems:
                issues.extend(problems)
                bad.add(name)
                continue
            if isinstance(value, Link):
                source_spec = registry.get(graph.nodes[value.node].type)
                if source_spec is None:  # the unknown source type is reported on that node
                    bad.add(name)
                    continue
                output = value.output if isinstance(value.output, str) else list(source_spec.outputs)[value.output]
                node_links[name] = Link(value.node, output)
                dag.add_edge(value.node, node_id)
            elif spec.inputs[name].is_link_only:
                continue  # an explicit None for an optional socket: same as unconnected
            else:
                node_literals[name] = spec.inputs[name].validate(value)
        for name, inp in spec.inputs.items():
            if name in node_literals or name in node_links or name in bad:
                continue
            if inp.required:
                what = f"a link to a {inp.socket} output" if inp.is_link_only else f"a value ({inp.describe()['type']})"
                issues.append(Issue(kind="missing_input", node=node_id, input=name,
                                    message=f"required input {name!r} is missing; expected {what}",
                                    expected=inp.socket))
            elif not inp.is_link_only:
                node_literals[name] = inp.default
        if policy is not None:
            _apply_policy(node_id, spec, node_literals, policy, issues)
        literals[node_id] = node_literals
        links[node_id] = node_links
        if spec.check is not None and len(issues) == issues_before:  # only once each value is valid
            for input_name, message in spec.check(**node_literals):
                issues.append(Issue(kind="unsupported_option", node=node_id, input=input_name, message=message,
                                    found={k: node_literals.get(k) for k in ([input_name] if input_name else [])}))

    for component in nx.strongly_connected_components(dag):
        if len(component) > 1 or any(dag.has_edge(n, n) for n in component):
            members = sorted(component)
            issues.append(Issue(kind="cycle", node=members[0], found=members,
                                message=f"cycle through nodes {members}: a node cannot depend on its own output"))
    if outputs is None:
        demanded = [n for n, s in specs.items() if s.is_output]
    else:
        demanded = list(outputs)
        for n in demanded:
            if n not in graph.nodes:
                issues.append(Issue(kind="missing_node", node=n, message=f"requested output node {n!r} does not exist"))
    if not demanded and not issues:
        issues.append(Issue(kind="no_output_node",
                            message="the workflow has no output node (SaveImage, SaveLatent, ...): nothing would run"))
    if issues:
        raise WorkflowError(issues)
    order = list(nx.topological_sort(dag))
    return ValidGraph(graph, specs, literals, links, order, demanded)
