"""``GET /object_info``: ComfyUI-shaped node definitions generated from the one node declaration.

Native nodes come from their ``NodeSpec`` (inputs in declaration order, ranges and choices from the
pydantic schema, categories under ``nodegraph/``). Mapped ComfyUI class_types come from
``nodegraph.comfy_spec`` when it is installed: their inputs are ComfyUI's own, so a client that builds
prompts from ``object_info`` builds prompts this server accepts.
"""

from __future__ import annotations

import logging
from typing import Any

from nodegraph.node import InputSpec, NodeSpec, Registry

from .translate import native_name

logger = logging.getLogger(__name__)


def input_entry(spec: InputSpec) -> list[Any]:
    """``[TYPE, {options}]`` or ``[[choices], {options}]`` for one input."""
    info = spec.describe()
    options: dict[str, Any] = {}
    tooltip = getattr(spec, "description", None) or info.get("description")
    if not spec.required and spec.default is not None:
        options["default"] = spec.default
    if "choices" in info:
        if tooltip:
            options["tooltip"] = tooltip
        return [list(info["choices"]), options]
    socket = spec.socket or "*"
    if socket in ("INT", "FLOAT"):
        for ours, theirs in (("minimum", "min"), ("maximum", "max")):
            if ours in info:
                options[theirs] = info[ours]
        if socket == "INT":
            options["step"] = 1
        if socket == "FLOAT":  # without these the editor rounds to its 0.5 default step
            options.update(step=0.01, round=False)
    if spec.is_link_only:
        options.pop("default", None)
    elif not spec.required and spec.default is None and socket in ("INT", "FLOAT", "STRING", "BOOLEAN"):
        # "unset unless linked": as a widget the editor would always send 0 or "" in its place
        options["forceInput"] = True
    if tooltip:
        options["tooltip"] = tooltip
    return [socket, options]


def native_entry(spec: NodeSpec, registry: Registry) -> dict[str, Any]:
    required = {n: input_entry(s) for n, s in spec.inputs.items() if s.required}
    optional = {n: input_entry(s) for n, s in spec.inputs.items() if not s.required}
    name = native_name(spec.name, registry)
    first_line = spec.doc.split("\n\n")[0].replace("\n", " ") if spec.doc else ""
    return {
        "input": {"required": required, "optional": optional},
        "input_order": {"required": list(required), "optional": list(optional)},
        "output": list(spec.outputs.values()),
        "output_is_list": [False] * len(spec.outputs),
        "output_name": list(spec.outputs),
        "name": name,
        "display_name": spec.name,
        "description": first_line,
        "python_module": spec.fn.__module__,
        "category": f"nodegraph/{spec.category}",
        "output_node": spec.is_output,
    }


def object_info(registry: Registry) -> dict[str, dict[str, Any]]:
    """Every node a prompt may name: mapped ComfyUI class_types (when described) and native nodes."""
    out: dict[str, dict[str, Any]] = {}
    try:
        from nodegraph.comfy_spec import comfy_object_info  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        logger.debug("nodegraph.comfy_spec is not installed: object_info lists native nodes only")
    else:
        out.update(comfy_object_info(registry))
    for spec in registry.all().values():
        entry = native_entry(spec, registry)
        out[entry["name"]] = entry
    return out
