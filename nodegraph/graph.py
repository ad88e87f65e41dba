"""The in-memory graph, the Python builder, and validation of a whole graph before it runs."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import networkx as nx

from nodegraph.errors import Issue, WorkflowError, short_repr
from nodegraph.node import REGISTRY, NodeSpec, Registry
from nodegraph.types import can_connect

MAX_LITERAL_DEPTH = 32


@dataclass(frozen=True)
class Link:
    """An input fed by another node's output (by name, or by index as ComfyUI writes it)."""

    node: str
    output: str | int


@dataclass
class NodeInstance:
    type: str
    inputs: dict[str, Any] = field(default_factory=dict)  # literal values and Links


@dataclass(frozen=True)
class OutputRef:
    """A handle on one output of a node being built; pass it as another node's input."""

    graph: Graph
    node: str
    output: str
    socket: str

    def link(self) -> Link:
        return Link(self.node, self.output)


class NodeRef:
    """A node in a graph under construction. ``ref.image`` or ``ref["image"]`` names an output."""

    def __init__(self, graph: Graph, node_id: str):
        self._graph = graph
        self.id = node_id

    @property
    def type(self) -> str:
        return self._graph.nodes[self.id].type

    def __getitem__(self, output: str | int) -> OutputRef:
        spec = self._graph.registry.get(self.type)
        if spec is None:
            raise KeyError(f"node {self.id!r} has unknown type {self.type!r}")
        names = list(spec.outputs)
        if isinstance(output, int):
            if not 0 <= output < len(names):
                raise IndexError(f"node {self.id!r} ({self.type}) has {len(names)} outputs, not index {output}")
            output = names[output]
        if output not in spec.outputs:
            raise AttributeError(f"node {self.id!r} ({self.type}) has no output {output!r}; outputs: {names}")
        return OutputRef(self._graph, self.id, output, spec.outputs[output])

    def __getattr__(self, output: str) -> OutputRef:
        if output.startswith("_"):
            raise AttributeError(output)
        return self[output]

    def set(self, **inputs: Any) -> NodeRef:
        """Set or replace inputs, checked as in ``Graph.add``."""
        self._graph._set_inputs(self.id, inputs)
        return self

    def __repr__(self) -> str:
        return f"NodeRef({self.id!r}, {self.type})"


class Graph:
    """A workflow in memory: node instances by id. Build it in Python or load it from JSON."""

    def __init__(
        self,
        nodes: dict[str, NodeInstance] | None = None,
        *,
        name: str | None = None,
        description: str | None = None,
        metadata: dict[str, Any] | None = None,
        registry: Registry | None = None,
    ):
        self.nodes: dict[str, NodeInstance] = nodes or {}
        self.name = name
        self.description = description
        self.metadata = metadata or {}
        self.registry = registry or REGISTRY

    # ---- builder -------------------------------------------------------------------------------
    def add(self, node_type: str, id: str | None = None, **inputs: Any) -> NodeRef:
        """Add a node; a wrong type, input name or socket type raises here, at build time."""
        spec = self.registry.get(node_type)
        if spec is None:
            raise WorkflowError([_unknown_type(id or "?", node_type, self.registry)])
        if id is None:
            n = len(self.nodes) + 1
            while str(n) in self.nodes:
                n += 1
            id = str(n)
        if id in self.nodes:
            raise WorkflowError([Issue(kind="duplicate_id", node=id, message=f"node id {id!r} is already used")])
        self.nodes[id] = NodeInstance(node_type)
        try:
            self._set_inputs(id, inputs)
        except WorkflowError:
            del self.nodes[id]
            raise
        return NodeRef(self, id)

    def __getitem__(self, node_id: str) -> NodeRef:
        if node_id not in self.nodes:
            raise KeyError(f"no node {node_id!r} in this graph")
        return NodeRef(self, node_id)

    def _set_inputs(self, node_id: str, inputs: dict[str, Any]) -> None:
        instance = self.nodes[node_id]
        spec = self.registry.get(instance.type)
        assert spec is not None
        issues: list[Issue] = []
        converted: dict[str, Any] = {}
        for name, value in inputs.items():
            if isinstance(value, NodeRef):
                raise WorkflowError([Issue(kind="invalid_link", node=node_id, input=name,
                                           message=f"pass an output of node {value.id!r} (e.g. ref.<output>), not the node")])
            if isinstance(value, OutputRef):
                if value.graph is not self:
                    issues.append(Issue(kind="invalid_link", node=node_id, input=name,
                                        message="the linked output belongs to another graph"))
                    continue
                value = value.link()
            converted[name] = value
            issues.extend(_check_input(self, node_id, spec, name, value))
        if issues:
            raise WorkflowError(issues)
        instance.inputs.update(converted)

    # ---- comparison ------------------------------------------------------------------------------
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Graph):
            return NotImplemented
        return (self.nodes, self.name, self.description, self.metadata) == (
            other.nodes, other.name, other.description, other.metadata)

    def set_input(self, node_id: str, input_name: str, value: Any) -> None:
        """Override one input (the CLI's ``--set``); validated later with the rest of the graph."""
        if node_id not in self.nodes:
            raise WorkflowError([Issue(kind="missing_node", node=node_id, input=input_name,
                                       message=f"--set names node {node_id!r}, which is not in the workflow",
                                       expected=sorted(self.nodes), found=node_id)])
        self.nodes[node_id].inputs[input_name] = value

    # ---- files ---------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        from nodegraph.workflow import graph_to_dict

        return graph_to_dict(self)

    def to_json(self, indent: int | None = 2) -> str:
        import json

        return json.dumps(self.to_dict(), indent=indent)

    def save(self, path: str) -> None:
        from nodegraph.workflow import save_workflow

        save_workflow(self, path)

    # ---- running -------------------------------------------------------------------------------
    def run(self, **kwargs: Any) -> Any:
        """Validate and run in-process with a fresh engine; see ``Engine.run`` for the options."""
        from nodegraph.executor import Engine

        return Engine(registry=self.registry).run(self, **kwargs)


@dataclass
class ValidGraph:
    """A graph that passed validation: literals normalised, links resolved to output names, sorted."""

    graph: Graph
    specs: dict[str, NodeSpec]
    literals: dict[str, dict[str, Any]]
    links: dict[str, dict[str, Link]]
    order: list[str]
    outputs: list[str]


def _unknown_type(node_id: str, node_type: str, registry: Registry) -> Issue:
    import difflib

    close = difflib.get_close_matches(str(node_type), list(registry.all()), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return Issue(kind="unknown_node_type", node=node_id, message=f"unknown node type {node_type!r}{hint}",
                 found=node_type, expected=close or None)


def _depth(value: Any, limit: int) -> int:
    """Nesting depth of a literal, stopping early once past ``limit`` (no recursion)."""
    stack = [(value, 1)]
    deepest = 0
    while stack:
        item, d = stack.pop()
        deepest = max(deepest, d)
        if deepest > limit:
            return deepest
        if isinstance(item, dict):
            stack.extend((v, d + 1) for v in item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend((v, d + 1) for v in item)
    return deepest


def _check_input(graph: Graph, node_id: str, spec: NodeSpec, name: str, value: Any) -> list[Issue]:
    """Problems with one input of one node; links are checked against their source's declared type."""
    if name not in spec.inputs:
        return [Issue(kind="unknown_input", node=node_id, input=name,
                      message=f"{spec.name} has no input {name!r}; inputs: {sorted(spec.inputs)}",
                      expected=sorted(spec.inputs), found=name)]
    inp = spec.inputs[name]
    if isinstance(value, Link):
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
    if inp.is_link_only:
        if value is None and not inp.required:
            return []
        return [Issue(kind="invalid_value", node=node_id, input=name,
                      message=f"expects a link to a {inp.socket} output, got a literal {short_repr(value)}",
                      expected=inp.socket, found=short_repr(value))]
    if _depth(value, MAX_LITERAL_DEPTH) > MAX_LITERAL_DEPTH:
        return [Issue(kind="invalid_value", node=node_id, input=name,
                      message=f"value is nested deeper than {MAX_LITERAL_DEPTH} levels")]
    try:
        inp.validate(value)
    except ValueError as exc:
        return [Issue(kind="invalid_value", node=node_id, input=name, message=f"invalid value {short_repr(value)}: {exc}",
                      expected=inp.describe(), found=short_repr(value))]
    return []


def validate(graph: Graph, output_nodes: Iterable[str] | None = None) -> ValidGraph:
    """Check the whole graph and collect every problem; raise WorkflowError if there is any."""
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
            issues.append(_unknown_type(node_id, instance.type, registry))
            continue
        specs[node_id] = spec
        issues_before = len(issues)
        node_literals: dict[str, Any] = {}
        node_links: dict[str, Link] = {}
        bad: set[str] = set()
        for name, value in instance.inputs.items():
            problems = _check_input(graph, node_id, spec, name, value)
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
    if output_nodes is None:
        outputs = [n for n, s in specs.items() if s.is_output]
    else:
        outputs = list(output_nodes)
        for n in outputs:
            if n not in graph.nodes:
                issues.append(Issue(kind="missing_node", node=n, message=f"requested output node {n!r} does not exist"))
    if not outputs and not issues:
        issues.append(Issue(kind="no_output_node",
                            message="the workflow has no output node (SaveImage, SaveLatent, ...): nothing would run"))
    if issues:
        raise WorkflowError(issues)
    order = list(nx.topological_sort(dag))
    return ValidGraph(graph, specs, literals, links, order, outputs)
