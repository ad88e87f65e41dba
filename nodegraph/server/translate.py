"""A POSTed prompt -> a Graph of ours, and our validation issues -> ComfyUI's ``node_errors``.

One API-format prompt may mix ComfyUI class_types (through their ``ComfyMapping``) and our own node
types (``Name`` or ``nodegraph.Name``; outputs by index in declaration order). Both kinds go through the
same importer: a native node is seen as a ComfyUI class_type that maps onto itself. A ComfyUI name wins
over a native one with the same name, which is why such natives are addressed as ``nodegraph.<Name>``.
"""

from __future__ import annotations

from typing import Any

from nodegraph.errors import Issue, WorkflowError
from nodegraph.graph import Graph
from nodegraph.node import ComfyMapping, Registry

from .protocol import ErrorDetail, NodeErrors, PromptRejected

NATIVE_PREFIX = "nodegraph."

# Our issue kinds in ComfyUI's error-type vocabulary, where ComfyUI has a word for it.
_COMFY_ERROR_TYPES = {
    "missing_input": "required_input_missing",
    "type_mismatch": "return_type_mismatch",
    "unknown_comfy_type": "invalid_prompt",
    "unknown_node_type": "invalid_prompt",
    "missing_node": "bad_linked_input",
    "missing_output": "bad_linked_input",
    "invalid_link": "bad_linked_input",
    "invalid_value": "value_not_valid",
}


def native_name(spec_name: str, registry: Registry) -> str:
    """The shortest name a prompt may use for a native node type: bare unless ComfyUI owns that name
    (``object_info`` always lists the prefixed ``nodegraph.<Name>``)."""
    registry.load_entry_points()
    return f"{NATIVE_PREFIX}{spec_name}" if spec_name in registry.comfy else spec_name


class _PromptTypes(Registry):
    """The registry seen by the importer: ComfyUI's class_types first, then our own node types."""

    def __init__(self, base: Registry):
        super().__init__()
        base.load_entry_points()
        self._entry_points_loaded = True
        self.nodes, self.comfy, self.payloads = base.nodes, base.comfy, base.payloads
        self._native: dict[str, ComfyMapping] = {}

    def comfy_mapping(self, class_type: str) -> ComfyMapping | None:
        mapping = self.comfy.get(class_type)
        if mapping is not None:
            return mapping
        name = class_type.removeprefix(NATIVE_PREFIX)
        spec = self.nodes.get(name)
        if spec is None:
            return None
        if name not in self._native:
            # Every input passes through as given, so validation reports unknown ones (no silent drop).
            def expand(inputs: dict[str, Any], node_type: str = name) -> dict[str, dict[str, Any]]:
                return {"": {"type": node_type, "inputs": dict(inputs)}}

            self._native[name] = ComfyMapping(class_type, expand, tuple(("", o) for o in spec.outputs))
        return self._native[name]


def graph_from_prompt(prompt: dict[str, Any], registry: Registry) -> Graph:
    """The graph a ComfyUI API-format prompt describes (raises WorkflowError with every problem)."""
    from nodegraph.comfy import graph_from_comfy

    bad = [Issue(kind="invalid_file", node=str(k), message="a prompt entry must be an object with a 'class_type'")
           for k, v in prompt.items() if not isinstance(v, dict) or not isinstance(v.get("class_type"), str)]
    if bad:
        raise WorkflowError(bad)
    graph = graph_from_comfy(prompt, _PromptTypes(registry))
    graph.registry = registry
    return graph


def comfy_id_of(our_id: str, prompt_ids: set[str], metadata: dict[str, Any]) -> str:
    """The prompt's node id an expanded node of ours came from (``<id>`` or ``<id>.<suffix>``)."""
    mapped = metadata.get("comfy_ids", {}).get(our_id)
    if isinstance(mapped, str):
        return mapped
    if our_id in prompt_ids:
        return our_id
    best = ""
    for pid in prompt_ids:
        if our_id.startswith(pid + ".") and len(pid) > len(best):
            best = pid
    return best or our_id


def rejection(issues: list[Issue], prompt: dict[str, Any] | None, metadata: dict[str, Any]) -> PromptRejected:
    """ComfyUI's 400 body: every issue, grouped by the prompt's node id; issues without a node on top."""
    ids = set(prompt or {})
    node_errors: dict[str, NodeErrors] = {}
    general: list[Issue] = []
    for issue in issues:
        if issue.node is None:
            general.append(issue)
            continue
        cid = comfy_id_of(issue.node, ids, metadata)
        entry = node_errors.get(cid)
        if entry is None:
            class_type = (prompt or {}).get(cid, {}).get("class_type") if isinstance((prompt or {}).get(cid), dict) else None
            entry = node_errors[cid] = NodeErrors(errors=[], class_type=class_type)
        extra: dict[str, Any] = {}
        if issue.input is not None:
            extra["input_name"] = issue.input
        if issue.found is not None:
            extra["received_value"] = issue.found
        entry.errors.append(ErrorDetail(type=_COMFY_ERROR_TYPES.get(issue.kind, issue.kind), message=issue.message,
                                        details=str(issue), extra_info=extra))
    if general:
        top = ErrorDetail(type=_COMFY_ERROR_TYPES.get(general[0].kind, general[0].kind), message=general[0].message,
                          details="\n".join(str(i) for i in general),
                          extra_info={"issues": [i.model_dump(mode="json") for i in general]})
    else:
        top = ErrorDetail(type="prompt_outputs_failed_validation", message="Prompt outputs failed validation")
    return PromptRejected(error=top, node_errors=node_errors)
