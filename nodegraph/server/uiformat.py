"""A prompt (ComfyUI API format) or a native v1 workflow -> the editor's UI format ("workflow" JSON).

The editor only opens UI-format graphs (LiteGraph's serialisation: numbered nodes with positions, positional
``widgets_values`` and a link table). The template browser and the editor's default graph are made here
from nodegraph's own ``workflows/*.json``, laid out in columns by dependency depth. Which inputs are widgets,
and in which order, comes from ``object_info``, the same description the page builds its nodes from.
"""

from __future__ import annotations

import logging
from typing import Any

from nodegraph.node import Registry

logger = logging.getLogger(__name__)

WIDGET_TYPES = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"})
SEED_NAMES = frozenset({"seed", "noise_seed"})
COLUMN_WIDTH = 380
ROW_GAP = 40


def native_to_prompt(workflow: dict[str, Any], registry: Registry) -> dict[str, Any]:
    """A native v1 workflow as an API-format prompt of ``nodegraph.<Type>`` nodes (links by output index)."""
    from nodegraph.comfy import graph_to_comfy
    from nodegraph.workflow import graph_from_data

    return graph_to_comfy(graph_from_data(workflow, registry), registry)


def _is_prompt_link(value: Any, prompt: dict[str, Any]) -> bool:
    return (isinstance(value, list) and len(value) == 2 and str(value[0]) in prompt
            and isinstance(value[1], int) and not isinstance(value[1], bool))


def _kind(spec: list[Any]) -> str:
    kind = spec[0] if spec else "*"
    return "COMBO" if isinstance(kind, list) else str(kind)


def _is_widget(spec: list[Any]) -> bool:
    options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    return _kind(spec) in WIDGET_TYPES and not options.get("forceInput")


def _widget_default(spec: list[Any]) -> Any:
    options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if "default" in options:
        return options["default"]
    kind = _kind(spec)
    if kind == "COMBO":
        return spec[0][0] if spec[0] else ""
    return {"INT": 0, "FLOAT": 0.0, "STRING": "", "BOOLEAN": False}.get(kind)


def _depths(prompt: dict[str, Any]) -> dict[str, int]:
    """Longest distance from a source node: the column each node is drawn in."""
    depth: dict[str, int] = {}
    visiting: set[str] = set()

    def visit(node_id: str) -> int:
        if node_id in depth:
            return depth[node_id]
        if node_id in visiting:  # a cycle: validation reports it; the layout just stops here
            return 0
        visiting.add(node_id)
        sources = [str(v[0]) for v in prompt[node_id].get("inputs", {}).values() if _is_prompt_link(v, prompt)]
        depth[node_id] = max((visit(s) + 1 for s in sources), default=0)
        visiting.discard(node_id)
        return depth[node_id]

    for node_id in prompt:
        visit(node_id)
    return depth


def prompt_to_ui(prompt: dict[str, Any], object_info: dict[str, Any]) -> dict[str, Any]:
    """The editor's workflow for an API-format prompt, laid out left to right by dependency depth.

    Class types missing from ``object_info`` are kept (the editor shows them as missing nodes) with their
    literal inputs as widgets in prompt order.
    """
    ids = {node_id: i + 1 for i, node_id in enumerate(prompt)}
    depth = _depths(prompt)
    column_y: dict[int, float] = {}
    nodes: list[dict[str, Any]] = []
    links: list[list[Any]] = []
    out_links: dict[tuple[str, int], list[int]] = {}
    ordered = sorted(prompt, key=lambda n: (depth[n], ids[n]))
    for order, node_id in enumerate(ordered):
        entry = prompt[node_id]
        class_type = entry["class_type"]
        values: dict[str, Any] = entry.get("inputs", {})
        info = object_info.get(class_type)
        specs: dict[str, list[Any]] = {}
        if info is not None:
            for group in ("required", "optional"):
                for name in info.get("input_order", {}).get(group, list(info["input"].get(group, {}))):
                    specs[name] = info["input"][group][name]
        else:
            specs = {n: ["*" if _is_prompt_link(v, prompt) else "STRING", {}] for n, v in values.items()}
        inputs: list[dict[str, Any]] = []
        widgets: list[Any] = []
        for name, spec in specs.items():
            value = values.get(name)
            linked = _is_prompt_link(value, prompt)
            if _is_widget(spec):
                if linked:  # a widget converted to a socket: the link feeds it
                    inputs.append({"name": name, "type": _kind(spec), "link": None, "widget": {"name": name}})
                widgets.append(value if name in values and not linked else _widget_default(spec))
                options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
                if name in SEED_NAMES or options.get("control_after_generate"):
                    widgets.append("fixed")  # the editor-only control widget that follows a seed
                if options.get("image_upload"):
                    widgets.append("image")  # LoadImage's upload button
            else:
                inputs.append({"name": name, "type": _kind(spec), "link": None})
            if linked and isinstance(value, list):
                link_id = len(links) + 1
                source, slot = str(value[0]), int(value[1])
                source_info = object_info.get(prompt[source]["class_type"], {})
                types = source_info.get("output", [])
                link_type = types[slot] if slot < len(types) else "*"
                links.append([link_id, ids[source], slot, ids[node_id], len(inputs) - 1, link_type])
                inputs[-1]["link"] = link_id
                out_links.setdefault((source, slot), []).append(link_id)
        outputs = []
        if info is not None:
            for slot, (kind, name) in enumerate(zip(info.get("output", []), info.get("output_name", []), strict=False)):
                outputs.append({"name": name, "type": kind, "links": [], "slot_index": slot})
        column = depth[node_id]
        height = 60 + 26 * max(len(inputs), len(outputs)) + 28 * len(widgets)
        y = column_y.get(column, 60.0)
        column_y[column] = y + height + ROW_GAP
        title = entry.get("_meta", {}).get("title")
        node: dict[str, Any] = {
            "id": ids[node_id], "type": class_type, "pos": [60 + column * COLUMN_WIDTH, y], "size": [320, height],
            "flags": {}, "order": order, "mode": 0, "inputs": inputs, "outputs": outputs,
            "properties": {"Node name for S&R": class_type}, "widgets_values": widgets,
        }
        if title and title != (info or {}).get("display_name", class_type):
            node["title"] = title
        nodes.append(node)
    by_id = {n["id"]: n for n in nodes}
    for (source, slot), link_ids in out_links.items():
        outputs = by_id[ids[source]]["outputs"]
        if slot < len(outputs):
            outputs[slot]["links"] = link_ids
    return {
        "id": "00000000-0000-4000-8000-000000000000",
        "revision": 0,
        "last_node_id": len(nodes),
        "last_link_id": len(links),
        "nodes": sorted(nodes, key=lambda n: n["id"]),
        "links": links,
        "groups": [],
        "config": {},
        "extra": {},  # no saved view: the editor fits the graph to the window
        "version": 0.4,
    }


def workflow_to_ui(workflow: dict[str, Any], registry: Registry, object_info: dict[str, Any]) -> dict[str, Any]:
    """A native v1 workflow or an API prompt -> the editor's UI format."""
    if "version" in workflow and isinstance(workflow.get("nodes"), dict):
        prompt = native_to_prompt(workflow, registry)
    else:
        prompt = workflow
    return prompt_to_ui(prompt, object_info)
