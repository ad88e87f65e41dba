"""ComfyUI API-format import: ``{"<id>": {"class_type": T, "inputs": {...}}}`` with links ``[id, index]``.

Each ComfyUI class_type is mapped by a ``ComfyMapping`` (usually a ``ComfyClass`` that also carries
ComfyUI's input spec, see ``nodegraph.comfy_spec``); one ComfyUI node may become a small sub-graph of
ours (id ``<comfy id>`` for the primary node, ``<comfy id>.<suffix>`` for the rest). A class_type
``nodegraph.<Name>`` addresses our node ``<Name>`` with its own inputs (DESIGN.md §7 "Names").
``graph.metadata["comfy_ids"]`` maps each of our node ids back to the ComfyUI id it came from.
"""

from __future__ import annotations

import difflib
from typing import Any

from nodegraph.comfy_spec import NATIVE_PREFIX, ComfyClass, native_class
from nodegraph.errors import Issue, WorkflowError, short_repr
from nodegraph.graph import Graph, Link, NodeInstance
from nodegraph.node import ComfyMapping, Registry


def _our_id(comfy_id: str, suffix: str) -> str:
    return comfy_id if not suffix else f"{comfy_id}.{suffix}"


def _is_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[1], int) and \
        not isinstance(value[1], bool) and isinstance(value[0], (str, int)) and not isinstance(value[0], bool)


def describe_node(comfy_id: str, entry: Any) -> str:
    """``KSampler #3 "Sampler"``: how error messages name a ComfyUI node (its editor title when it has one)."""
    class_type = entry.get("class_type") if isinstance(entry, dict) else None
    meta = entry.get("_meta") if isinstance(entry, dict) else None
    title = meta.get("title") if isinstance(meta, dict) else None
    text = f"{class_type or 'node'} #{comfy_id}"
    return f"{text} {title!r}" if title and title != class_type else text


def _native_mapping(node_type: str, registry: Registry) -> ComfyMapping | None:
    spec = registry.get(node_type)
    return native_class(spec) if spec is not None else None


def suggest_class_type(class_type: str, registry: Registry) -> str | None:
    """The supported class_type whose name is closest, if any is close."""
    known = list(registry.comfy) + [NATIVE_PREFIX + n for n in registry.all()]
    close = difflib.get_close_matches(class_type, known, n=1, cutoff=0.6)
    return close[0] if close else None


def graph_from_comfy(data: dict[str, Any], registry: Registry) -> Graph:
    issues: list[Issue] = []
    mappings: dict[str, ComfyMapping] = {}
    for comfy_id, entry in data.items():
        if not isinstance(entry, dict):
            issues.append(Issue(kind="invalid_file", node=comfy_id, message=f"node #{comfy_id} must be an object"))
            continue
        class_type = entry.get("class_type")
        if not isinstance(entry.get("inputs", {}), dict):
            issues.append(Issue(kind="invalid_file", node=comfy_id, input="inputs",
                                message=f"{describe_node(comfy_id, entry)}: 'inputs' must be an object"))
            continue
        mapping = None
        if isinstance(class_type, str):
            mapping = registry.comfy_mapping(class_type)
            if mapping is None and class_type.startswith(NATIVE_PREFIX):
                mapping = _native_mapping(class_type[len(NATIVE_PREFIX):], registry)
        if mapping is None:
            nearest = suggest_class_type(class_type, registry) if isinstance(class_type, str) else None
            hint = f"; the nearest supported one is {nearest!r}" if nearest else ""
            issues.append(Issue(kind="unknown_comfy_type", node=comfy_id, found=class_type, expected=nearest,
                                message=f"{describe_node(comfy_id, entry)}: ComfyUI class_type {class_type!r} has no "
                                        f"mapping onto nodegraph nodes{hint} (docs/comfyui.md lists those supported)"))
            continue
        mappings[comfy_id] = mapping

    def translate(value: Any, node_id: str, name: str) -> Any:
        """A literal as is, or the Link a ComfyUI link becomes: pass-through outputs are followed in a loop
        (not recursion), so a chain of any length resolves."""
        followed: set[tuple[str, str]] = set()
        while True:
            if isinstance(value, dict) and set(value) == {"__value__"}:
                return value["__value__"]
            if not _is_link(value):
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
                                    message=f"links to output {value[1]} of {describe_node(target, data[target])}, "
                                            f"which has {len(mapping.outputs)} outputs"))
                return None
            suffix, output = mapping.outputs[value[1]]
            if not suffix.startswith("="):
                return Link(_our_id(target, suffix), output)
            # A pass-through output: whatever fed that input of the ComfyUI node.
            if (target, suffix) in followed:
                issues.append(Issue(kind="cycle", node=target, message="pass-through outputs link in a loop"))
                return None
            followed.add((target, suffix))
            node_id, name = target, suffix[1:]
            value = data[target].get("inputs", {}).get(name)

    nodes: dict[str, NodeInstance] = {}
    comfy_ids: dict[str, str] = {}
    for comfy_id, mapping in mappings.items():
        entry = data[comfy_id]
        raw = entry.get("inputs", {})
        if isinstance(mapping, ComfyClass):
            bad = False
            for name, value in raw.items():
                spec = mapping.input(name)
                if spec is None or _is_link(value) or value is None:
                    continue
                why = spec.check(value)
                if why:
                    bad = True
                    issues.append(Issue(kind="invalid_value", node=comfy_id, input=name, found=short_repr(value),
                                        message=f"{describe_node(comfy_id, entry)}: input {name!r}: {why}"))
            if bad:
                continue
        inputs = {k: translate(v, comfy_id, k) for k, v in raw.items()}
        try:
            expanded = mapping.expand(inputs)
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            missing = f"required input {exc} is missing" if isinstance(exc, KeyError) else str(exc)
            issues.append(Issue(kind="invalid_value", node=comfy_id, input=getattr(exc, "input", None),
                                message=f"{describe_node(comfy_id, entry)}: {missing}"))
            continue
        for suffix, spec_out in expanded.items():
            our_id = _our_id(comfy_id, suffix)
            if suffix and our_id in data:
                issues.append(Issue(kind="duplicate_id", node=comfy_id, found=our_id,
                                    message=f"{describe_node(comfy_id, entry)} expands into a node {our_id!r}, but "
                                            f"the file has its own node {our_id!r}; rename that node"))
                continue
            resolved = {}
            for k, v in spec_out["inputs"].items():
                if isinstance(v, list) and len(v) == 2 and isinstance(v[0], str) and v[0].startswith("@"):
                    v = Link(_our_id(comfy_id, v[0][1:]), v[1])
                resolved[k] = v
            nodes[our_id] = NodeInstance(spec_out["type"], resolved)
            comfy_ids[our_id] = comfy_id
    if issues:
        raise WorkflowError(issues)
    titles = {cid: e["_meta"]["title"] for cid, e in data.items()
              if isinstance(e.get("_meta"), dict) and isinstance(e["_meta"].get("title"), str)}
    metadata: dict[str, Any] = {"imported_from": "comfyui-api", "comfy_ids": comfy_ids}
    if titles:
        metadata["comfy_titles"] = titles
    return Graph(nodes, metadata=metadata, registry=registry)


def graph_to_comfy(graph: Graph, registry: Registry) -> dict[str, Any]:
    """A native graph as an API-format prompt of ``nodegraph.<Type>`` nodes (links by output index)."""
    out: dict[str, Any] = {}
    for node_id, inst in graph.nodes.items():
        inputs: dict[str, Any] = {}
        for name, value in inst.inputs.items():
            if isinstance(value, Link):
                target = graph.nodes.get(value.node)
                spec = registry.get(target.type) if target is not None else None
                index = value.output if isinstance(value.output, int) or spec is None else \
                    list(spec.outputs).index(value.output) if value.output in spec.outputs else value.output
                inputs[name] = [value.node, index]
            else:
                inputs[name] = {"__value__": list(value)} if isinstance(value, (list, tuple)) else value
        out[node_id] = {"class_type": NATIVE_PREFIX + inst.type, "inputs": inputs, "_meta": {"title": node_id}}
    return out
