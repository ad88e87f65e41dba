"""The in-memory graph and the Python builder (validation of a whole graph lives in ``nodegraph.validation``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from nodegraph.errors import Issue, WorkflowError
from nodegraph.node import REGISTRY, Registry


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
            from nodegraph.validation import unknown_type

            raise WorkflowError([unknown_type(id or "?", node_type, self.registry)])
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
        from nodegraph.validation import check_input  # the builder checks each input as it is set

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
            issues.extend(check_input(self, node_id, spec, name, value))
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
