"""ComfyUI UI-format ("workflow") files -> API-format prompts, as ComfyUI's editor does before queueing.

A UI file stores the editor's view: nodes with positional ``widgets_values``, links as
``[id, origin, origin_slot, target, target_slot, type]``, editor-only nodes (Note, Reroute,
PrimitiveNode), muted and bypassed nodes, subgraphs (``definitions.subgraphs``) and legacy group nodes
(``extra.groupNodes``). ``ui_to_api`` turns that into ``{id: {class_type, inputs, _meta: {title}}}``:

- widget values are matched to inputs in the order of the class_type's spec (``ComfyClass.widgets``),
  skipping the editor-only control value after a seed; arrays one shorter or longer are tolerated;
- links through Reroutes, PrimitiveNodes, bypassed nodes (input of the same type handed on) and subgraph
  boundaries are followed iteratively, so chains of any length resolve without recursion;
- nodes inside a subgraph or group node get ComfyUI's ids ``<outer id>:<inner id>``.

Errors name the editor's node id and title.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any

from nodegraph.comfy_spec import CONTROL_VALUES, NATIVE_PREFIX, ComfyClass, native_class
from nodegraph.errors import Issue, WorkflowError, short_repr
from nodegraph.node import Registry

MUTED, BYPASSED = 2, 4
IGNORED_TYPES = frozenset({"Note", "MarkdownNote"})
MAX_NESTING = 32
SUBGRAPH_INPUT, SUBGRAPH_OUTPUT = -10, -20
GROUP_PREFIXES = ("workflow>", "workflow/")


def is_ui_workflow(data: Any) -> bool:
    """Whether a parsed JSON document has the shape of a ComfyUI UI-format file."""
    return isinstance(data, dict) and isinstance(data.get("nodes"), list) and "links" in data and "version" in data


@dataclass
class _Slot:
    name: str
    type: str
    link: str | None  # key into _Flat.links
    widget: str | None


@dataclass
class _Node:
    id: str
    type: str
    title: str | None
    mode: int
    inputs: list[_Slot]
    output_types: list[str]
    widgets_values: Any
    kind: str = "node"  # node | subgraph_in | subgraph_out
    widget_values_by_slot: dict[int, Any] = field(default_factory=dict)  # subgraph_in: promoted widget values


@dataclass
class _Flat:
    nodes: dict[str, _Node] = field(default_factory=dict)
    links: dict[str, tuple[str, int]] = field(default_factory=dict)  # key -> (origin node id, origin slot)
    issues: list[Issue] = field(default_factory=list)


def _label(node: _Node) -> str:
    return f"{node.type} #{node.id}" + (f" {node.title!r}" if node.title and node.title != node.type else "")


def _link_tuple(link: Any) -> tuple[Any, Any, Any, Any, Any] | None:
    """(id, origin, origin_slot, target, target_slot) from a list link or an object link."""
    if isinstance(link, list) and len(link) >= 5:
        return link[0], link[1], link[2], link[3], link[4]
    if isinstance(link, dict) and "id" in link:
        return link["id"], link.get("origin_id"), link.get("origin_slot"), link.get("target_id"), link.get("target_slot")
    return None


def _slot_index(value: Any) -> int:
    """A slot number; anything else (a malformed file) is -1, which no slot has."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return int(value) if isinstance(value, str) and value.isdigit() else -1


def _is_control(value: Any) -> bool:
    return isinstance(value, str) and value in CONTROL_VALUES


class _Converter:
    def __init__(self, data: dict[str, Any], registry: Registry):
        self.data = data
        self.registry = registry
        self.subgraphs = {sg["id"]: sg for sg in (data.get("definitions") or {}).get("subgraphs", []) or []
                          if isinstance(sg, dict) and "id" in sg}
        self.groups = ((data.get("extra") or {}).get("groupNodes") or {}) if isinstance(data.get("extra"), dict) else {}
        self.flat = _Flat()

    # ---- flattening ----------------------------------------------------------------------------
    def add_scope(self, prefix: str, nodes: list[Any], links: list[Any], depth: int, inherited_mode: int) -> None:
        for link in links or []:
            parsed = _link_tuple(link)
            if parsed is None:
                continue
            link_id, origin, origin_slot, _, _ = parsed
            self.flat.links[f"{prefix}{link_id}"] = (f"{prefix}{origin}", _slot_index(origin_slot))
        for raw in nodes:
            if not isinstance(raw, dict) or "id" not in raw:
                self.flat.issues.append(Issue(kind="invalid_file", message="a node without an id"))
                continue
            node = self.make_node(prefix, raw, inherited_mode)
            if node.id in self.flat.nodes:
                self.flat.issues.append(Issue(kind="duplicate_id", node=node.id, found=node.id,
                                              message=f"{_label(node)}: node id {node.id!r} is used twice"))
                continue
            node_type = node.type
            if node_type in self.subgraphs:
                self.add_subgraph(node, self.subgraphs[node_type], depth)
            elif self.group_of(node_type) is not None:
                self.add_group(node, self.group_of(node_type) or {}, depth)
            else:
                self.flat.nodes[node.id] = node

    def group_of(self, node_type: str) -> dict[str, Any] | None:
        for prefix in GROUP_PREFIXES:
            if node_type.startswith(prefix) and isinstance(self.groups.get(node_type[len(prefix):]), dict):
                return self.groups[node_type[len(prefix):]]
        return None

    def make_node(self, prefix: str, raw: dict[str, Any], inherited_mode: int) -> _Node:
        inputs = []
        for slot in raw.get("inputs") or []:
            if not isinstance(slot, dict):
                continue
            link = slot.get("link")
            widget = slot.get("widget")
            inputs.append(_Slot(str(slot.get("name", "")), str(slot.get("type", "*")),
                                None if link is None else f"{prefix}{link}",
                                widget.get("name") if isinstance(widget, dict) else None))
        outputs = [str(o.get("type", "*")) for o in raw.get("outputs") or [] if isinstance(o, dict)]
        mode = raw.get("mode", 0)
        mode = mode if isinstance(mode, int) else 0
        if mode == 0 and inherited_mode in (MUTED, BYPASSED):
            mode = inherited_mode
        title = raw.get("title")
        return _Node(f"{prefix}{raw['id']}", str(raw.get("type", "")), title if isinstance(title, str) else None,
                     mode, inputs, outputs, raw.get("widgets_values"))

    def add_subgraph(self, node: _Node, definition: dict[str, Any], depth: int) -> None:
        if depth >= MAX_NESTING:
            self.flat.issues.append(Issue(kind="invalid_file", node=node.id,
                                          message=f"{_label(node)}: subgraphs nested more than {MAX_NESTING} deep"))
            return
        inner = f"{node.id}:"
        # The instance itself hands each of its outputs on from the inner link into the output node.
        outputs: list[_Slot] = [_Slot(str(o.get("name", "")), str(o.get("type", "*")), None, None)
                                for o in definition.get("outputs") or []]
        for link in definition.get("links") or []:
            parsed = _link_tuple(link)
            if parsed and parsed[3] == SUBGRAPH_OUTPUT:
                slot = _slot_index(parsed[4])
                if 0 <= slot < len(outputs):
                    outputs[slot].link = f"{inner}{parsed[0]}"
        self.flat.nodes[node.id] = _Node(node.id, node.type, node.title, node.mode, outputs,
                                         [s.type for s in outputs], None, kind="subgraph_out")
        # Its input node hands on whatever feeds the instance's inputs (or their promoted widget values).
        values = node.widgets_values if isinstance(node.widgets_values, list) else []
        promoted: dict[int, Any] = {}
        widget_slots = [i for i, s in enumerate(node.inputs) if s.widget is not None]
        for index, slot in enumerate(widget_slots):
            if index < len(values):
                promoted[slot] = values[index]
        self.flat.nodes[f"{inner}{SUBGRAPH_INPUT}"] = _Node(
            f"{inner}{SUBGRAPH_INPUT}", "SubgraphInput", node.title, 0, node.inputs, [s.type for s in node.inputs],
            None, kind="subgraph_in", widget_values_by_slot=promoted)
        self.add_scope(inner, definition.get("nodes") or [], definition.get("links") or [], depth + 1, node.mode)

    def add_group(self, node: _Node, definition: dict[str, Any], depth: int) -> None:
        """A legacy group node: its inner nodes become ``<id>:<index>``; the group's socket inputs, widget
        values and outputs are matched in order to the inner nodes' free inputs, widgets and outputs."""
        inner_nodes = [n for n in definition.get("nodes") or [] if isinstance(n, dict)]
        prefix = f"{node.id}:"
        internal: dict[tuple[int, int], str] = {}
        used_inside: set[tuple[int, int]] = set()
        for number, link in enumerate(definition.get("links") or []):
            if isinstance(link, list) and len(link) >= 4 and all(isinstance(x, int) for x in link[:4]):
                src, src_slot, dst, dst_slot = link[:4]
                link_key = f"{prefix}g{number}"
                self.flat.links[link_key] = (f"{prefix}{src}", src_slot)
                internal[(dst, dst_slot)] = link_key
                used_inside.add((src, src_slot))
        external = {(e[0], e[1]) for e in definition.get("external") or [] if isinstance(e, list) and len(e) >= 2}
        free_links = [s for s in node.inputs if s.widget is None]
        widget_links = {s.widget: s for s in node.inputs if s.widget is not None}
        group_values = list(node.widgets_values) if isinstance(node.widgets_values, list) else []
        for index, inner in enumerate(inner_nodes):
            made = self.make_node(prefix, {**inner, "id": index, "inputs": []}, node.mode)
            title = inner.get("title") or inner.get("type")
            for slot_no, slot in enumerate(inner.get("inputs") or []):
                if not isinstance(slot, dict):
                    continue
                widget = slot["widget"].get("name") if isinstance(slot.get("widget"), dict) else None
                key: str | None = internal.get((index, slot_no))
                if key is None and widget is None:
                    key = free_links.pop(0).link if free_links else None
                elif key is None and widget is not None:
                    source = widget_links.get(widget) or widget_links.get(f"{title} {widget}")
                    key = source.link if source is not None else None
                made.inputs.append(_Slot(str(slot.get("name", "")), str(slot.get("type", "*")), key, widget))
            spec = self.spec(made.type)
            if spec is not None and group_values:
                own = list(made.widgets_values) if isinstance(made.widgets_values, list) else []
                taken = widget_value_count(spec, group_values)
                made.widgets_values = group_values[:taken] + own[taken:]
                del group_values[:taken]
            if made.type in self.subgraphs:
                self.add_subgraph(made, self.subgraphs[made.type], depth + 1)
            else:
                self.flat.nodes[made.id] = made
        # The group's outputs in order: each inner output that is not only used inside the group.
        out_slots: list[_Slot] = []
        for index, inner in enumerate(inner_nodes):
            for slot_no, output in enumerate(inner.get("outputs") or []):
                if (index, slot_no) in used_inside and (index, slot_no) not in external:
                    continue
                key = f"{prefix}out{len(out_slots)}"
                self.flat.links[key] = (f"{prefix}{index}", slot_no)
                out_type = output.get("type", "*") if isinstance(output, dict) else "*"
                out_slots.append(_Slot(str(len(out_slots)), str(out_type), key, None))
        self.flat.nodes[node.id] = _Node(node.id, node.type, node.title, node.mode, out_slots,
                                         [s.type for s in out_slots], None, kind="subgraph_out")

    # ---- resolution ----------------------------------------------------------------------------
    def spec(self, class_type: str) -> ComfyClass | None:
        mapping = self.registry.comfy_mapping(class_type)
        if mapping is None and class_type.startswith(NATIVE_PREFIX):
            native = self.registry.get(class_type[len(NATIVE_PREFIX):])
            return native_class(native) if native is not None else None
        return mapping if isinstance(mapping, ComfyClass) else None

    def resolve(self, key: str | None, where: _Node) -> tuple[str, Any]:
        """Follow a link to the node output that really feeds it: ("link", [id, slot]), ("value", v) from a
        PrimitiveNode or promoted widget, or ("none", None) when nothing does (muted, unconnected)."""
        seen: set[str] = set()
        while key is not None:
            if key in seen:
                self.flat.issues.append(Issue(kind="cycle", node=where.id,
                                              message=f"{_label(where)}: its input links through a loop of "
                                                      "Reroute/bypassed nodes"))
                return "none", None
            seen.add(key)
            target = self.flat.links.get(key)
            if target is None:
                return "none", None
            origin_id, slot = target
            origin = self.flat.nodes.get(origin_id)
            if origin is None:
                return "none", None
            if origin.kind == "subgraph_out":
                key = origin.inputs[slot].link if 0 <= slot < len(origin.inputs) else None
                continue
            if origin.kind == "subgraph_in":
                if 0 <= slot < len(origin.inputs) and origin.inputs[slot].link is not None:
                    key = origin.inputs[slot].link
                    continue
                if slot in origin.widget_values_by_slot:
                    return "value", origin.widget_values_by_slot[slot]
                return "none", None
            if origin.type == "Reroute":
                key = origin.inputs[0].link if origin.inputs else None
                continue
            if origin.type == "PrimitiveNode":
                values = origin.widgets_values
                return ("value", values[0]) if isinstance(values, list) and values else ("none", None)
            if origin.mode == MUTED:
                return "none", None
            if origin.mode == BYPASSED:
                key = self.bypass_input(origin, slot)
                continue
            return "link", [origin.id, slot]
        return "none", None

    @staticmethod
    def bypass_input(node: _Node, slot: int) -> str | None:
        """A bypassed node hands on the input of its output's type: the one at the same slot when that
        matches, else the first linked one of that type."""
        out_type = node.output_types[slot] if 0 <= slot < len(node.output_types) else "*"
        candidates = [s for s in node.inputs if s.link is not None and (s.type == out_type or "*" in (s.type, out_type))]
        if 0 <= slot < len(node.inputs) and node.inputs[slot] in candidates:
            return node.inputs[slot].link
        return candidates[0].link if candidates else None

    # ---- conversion ----------------------------------------------------------------------------
    def convert(self) -> dict[str, Any]:
        self.add_scope("", self.data.get("nodes") or [], self.data.get("links") or [], 0, 0)
        prompt: dict[str, Any] = {}
        unknown: list[Issue] = []
        for node in self.flat.nodes.values():
            if node.kind != "node" or node.type in IGNORED_TYPES or node.type in ("Reroute", "PrimitiveNode"):
                continue
            if node.mode in (MUTED, BYPASSED):
                continue
            spec = self.spec(node.type)
            if spec is None:
                close = difflib.get_close_matches(node.type, list(self.registry.comfy), n=1, cutoff=0.6)
                hint = f"; the nearest supported one is {close[0]!r}" if close else ""
                unknown.append(Issue(kind="unknown_comfy_type", node=node.id, found=node.type,
                                     expected=close[0] if close else None,
                                     message=f"{_label(node)}: ComfyUI class_type {node.type!r} has no mapping onto "
                                             f"nodegraph nodes{hint} (docs/comfyui.md lists those supported)"))
                continue
            values = positional_widgets(spec, node.widgets_values)
            inputs: dict[str, Any] = dict(values)
            for slot in node.inputs:
                if slot.link is None:
                    continue
                kind, value = self.resolve(slot.link, node)
                name = slot.widget or slot.name
                if kind == "link":
                    inputs[name] = value
                elif kind == "value":
                    inputs[name] = {"__value__": value} if isinstance(value, list) else value
            title = node.title or spec.display_name or node.type
            prompt[node.id] = {"class_type": node.type, "inputs": inputs, "_meta": {"title": title}}
        issues = self.flat.issues + unknown
        if issues:
            raise WorkflowError(issues)
        return prompt


def widget_value_count(spec: ComfyClass, values: list[Any]) -> int:
    """How many entries of ``values`` the spec's widgets take (control values included)."""
    i = 0
    for widget in spec.widgets():
        if i >= len(values):
            break
        i += 1
        if widget.control_after_generate and i < len(values) and _is_control(values[i]):
            i += 1
    return i


def positional_widgets(spec: ComfyClass, values: Any) -> dict[str, Any]:
    """Widget values by input name, from the editor's positional list (or a name -> value object).

    The control value after a seed is skipped when present (older files lack it); values missing at the
    end keep the input's default; extra values at the end (a newer ComfyUI's widgets) are ignored.
    """
    widgets = spec.widgets()
    if isinstance(values, dict):
        return {w.name: values[w.name] for w in widgets if w.name in values}
    if not isinstance(values, list):
        return {}
    out: dict[str, Any] = {}
    i = 0
    for widget in widgets:
        if i >= len(values):
            break
        out[widget.name] = values[i]
        i += 1
        if widget.control_after_generate and i < len(values) and _is_control(values[i]):
            i += 1
    return out


def ui_to_api(data: dict[str, Any], registry: Registry) -> dict[str, Any]:
    """The API-format prompt ComfyUI's editor would queue for this UI-format workflow."""
    if not is_ui_workflow(data):
        raise WorkflowError([Issue(kind="invalid_file", message="not a ComfyUI UI-format workflow "
                                                                "(expected 'nodes', 'links' and 'version')")])
    registry.load_entry_points()
    try:
        return _Converter(data, registry).convert()
    except (TypeError, ValueError, AttributeError, KeyError, IndexError) as exc:  # a malformed file, not our bug
        raise WorkflowError([Issue(kind="invalid_file", found=short_repr(exc),
                                   message=f"malformed ComfyUI UI-format file: {exc!r}")]) from None


def convert_workflow(data: Any, to: str, registry: Registry, source: str = "<workflow>") -> dict[str, Any]:
    """Any workflow document we read, as a native v1 document (``to="native"``) or an API-format prompt
    (``to="api"``); everything is checked on the way, so a file that converts also loads."""
    from nodegraph.comfy import graph_to_comfy
    from nodegraph.workflow import graph_from_data, graph_to_dict

    graph = graph_from_data(data, registry, source)
    if to == "native":
        return graph_to_dict(graph)
    if to != "api":
        raise ValueError(f"cannot convert to {to!r}: choose 'native' or 'api'")
    if is_ui_workflow(data):
        return ui_to_api(data, registry)
    if graph.metadata.get("imported_from") == "comfyui-api":
        return dict(data)
    return graph_to_comfy(graph, registry)
