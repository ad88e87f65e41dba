"""ComfyUI API-format import: ``{"<id>": {"class_type": T, "inputs": {...}}}`` with links ``[id, index]``.

Each ComfyUI class_type is mapped by a ``ComfyMapping`` that a node type declares; one ComfyUI node may
become a small sub-graph of ours (ids ``<comfy id>`` for the primary node, ``<comfy id>.<suffix>`` for
the rest).
"""

from __future__ import annotations

from typing import Any

from nodegraph.errors import Issue, WorkflowError
from nodegraph.graph import Graph, Link, NodeInstance
from nodegraph.node import ComfyMapping, Registry


def _our_id(comfy_id: str, suffix: str) -> str:
    return comfy_id if not suffix else f"{comfy_id}.{suffix}"


def graph_from_comfy(data: dict[str, Any], registry: Registry) -> Graph:
    issues: list[Issue] = []
    mappings: dict[str, ComfyMapping] = {}
    for comfy_id, entry in data.items():
        class_type = entry.get("class_type")
        if not isinstance(entry.get("inputs", {}), dict):
            issues.append(Issue(kind="invalid_file", node=comfy_id, input="inputs", message="'inputs' must be an object"))
            continue
        mapping = registry.comfy_mapping(class_type) if isinstance(class_type, str) else None
        if mapping is None:
            known = sorted(registry.comfy)
            issues.append(Issue(kind="unknown_comfy_type", node=comfy_id, found=class_type, expected=known,
                                message=f"ComfyUI class_type {class_type!r} has no mapping onto nodegraph nodes; "
                                        f"supported: {', '.join(known)}"))
            continue
        mappings[comfy_id] = mapping

    passing: set[tuple[str, str]] = set()

    def translate(value: Any, node_id: str, name: str) -> Any:
        is_link = isinstance(value, list) and len(value) == 2 and isinstance(value[1], int) and \
            isinstance(value[0], (str, int)) and not isinstance(value[0], bool)
        if not is_link:
            return value
        target = str(value[0])
        mapping = mappings.get(target)
        if mapping is None:
            if target not in data:
                issues.append(Issue(kind="missing_node", node=node_id, input=name, found=target,
                                    message=f"links to node {target!r}, which does not exist"))
            return None
        if not 0 <= value[1] < len(mapping.outputs):
            issues.append(Issue(kind="missing_output", node=node_id, input=name, found=value[1],
                                message=f"links to output {value[1]} of {mapping.class_type} node {target!r}, "
                                        f"which has {len(mapping.outputs)} outputs"))
            return None
        suffix, output = mapping.outputs[value[1]]
        if suffix.startswith("="):  # a pass-through output: whatever fed that input of the ComfyUI node
            if (target, suffix) in passing:
                issues.append(Issue(kind="cycle", node=target, message="pass-through outputs link in a loop"))
                return None
            passing.add((target, suffix))
            try:
                return translate(data[target].get("inputs", {}).get(suffix[1:]), target, suffix[1:])
            finally:
                passing.discard((target, suffix))
        return Link(_our_id(target, suffix), output)

    nodes: dict[str, NodeInstance] = {}
    for comfy_id, mapping in mappings.items():
        inputs = {k: translate(v, comfy_id, k) for k, v in data[comfy_id].get("inputs", {}).items()}
        try:
            expanded = mapping.expand(inputs)
        except (KeyError, TypeError, ValueError) as exc:
            issues.append(Issue(kind="invalid_value", node=comfy_id,
                                message=f"{mapping.class_type}: cannot translate inputs: {exc}"))
            continue
        for suffix, spec in expanded.items():
            resolved = {}
            for k, v in spec["inputs"].items():
                if isinstance(v, list) and len(v) == 2 and isinstance(v[0], str) and v[0].startswith("@"):
                    v = Link(_our_id(comfy_id, v[0][1:]), v[1])
                resolved[k] = v
            nodes[_our_id(comfy_id, suffix)] = NodeInstance(spec["type"], resolved)
    if issues:
        raise WorkflowError(issues)
    return Graph(nodes, metadata={"imported_from": "comfyui-api"}, registry=registry)
