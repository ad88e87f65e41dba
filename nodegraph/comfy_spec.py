"""The ComfyUI face of a mapping: each class_type's input spec, declared once together with its mapping.

``ComfyClass`` is a ``ComfyMapping`` that also carries what ComfyUI's ``object_info`` says about the
class_type (input names in order, types, defaults, ranges, choices, outputs). Three readers use it:
the UI-format converter (which widget value belongs to which input), the API-format importer (values
checked against ranges before they reach a mapping) and the server (``comfy_object_info``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from nodegraph.node import ComfyMapping

if TYPE_CHECKING:
    from nodegraph.node import NodeSpec, Registry

WIDGET_TYPES = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"})
CONTROL_VALUES = frozenset({"fixed", "increment", "decrement", "randomize"})
MAX_RESOLUTION = 16384
SEED_MAX = 0xFFFFFFFFFFFFFFFF


class MappingError(ValueError):
    """A value a mapping cannot translate, naming the ComfyUI input it came from."""

    def __init__(self, input_name: str | None, message: str):
        super().__init__(message)
        self.input = input_name


@dataclass(frozen=True)
class ComfyInput:
    """One input as ComfyUI declares it.

    ``type`` is a widget type (INT, FLOAT, STRING, BOOLEAN, COMBO) or a socket type (IMAGE, MODEL, ...).
    ``choices_from`` names a list the server fills at request time (``checkpoints``, ``input_images``).
    ``control_after_generate`` and ``image_upload`` add an editor-only widget value right after this one.
    """

    name: str
    type: str
    default: Any = None
    min: float | None = None
    max: float | None = None
    step: float | None = None
    choices: tuple[str, ...] = ()
    choices_from: str | None = None
    optional: bool = False
    multiline: bool = False
    tooltip: str | None = None
    control_after_generate: bool = False
    image_upload: bool = False
    display: str | None = None
    force_input: bool = False  # a socket in the editor, never a widget ("unset unless linked")
    round: float | bool | None = None  # the editor rounds FLOAT widgets to ``step`` unless told otherwise

    @property
    def is_widget(self) -> bool:
        return self.type in WIDGET_TYPES

    def spec(self, files: Mapping[str, Sequence[str]]) -> list[Any]:
        """``[TYPE, {options}]`` (or ``[[choices], {options}]``) as object_info writes it."""
        opts: dict[str, Any] = {}
        if self.default is not None:
            opts["default"] = self.default
        for key in ("min", "max", "step"):
            value = getattr(self, key)
            if value is not None:
                opts[key] = value
        if self.multiline:
            opts["multiline"] = True
        if self.control_after_generate:
            opts["control_after_generate"] = True
        if self.image_upload:
            opts["image_upload"] = True
        if self.display:
            opts["display"] = self.display
        if self.round is not None:
            opts["round"] = self.round
        if self.force_input:
            opts["forceInput"] = True
        if self.tooltip:
            opts["tooltip"] = self.tooltip
        if self.type == "COMBO":
            choices = list(files.get(self.choices_from, ())) if self.choices_from else list(self.choices)
            return [choices, opts]
        return [self.type, opts] if opts or self.is_widget else [self.type]

    def check(self, value: Any) -> str | None:
        """Why a literal cannot be this input's value (None if it can). Links are not checked here."""
        if self.type in ("INT", "FLOAT"):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                return f"expects a number, got {value!r}"
            if not math.isfinite(value):
                return f"expects a finite number, got {value!r}"
            if self.type == "INT" and value != int(value):
                return f"expects a whole number, got {value!r}"
            if self.min is not None and value < self.min:
                return f"{value!r} is below the minimum {self.min!r}"
            if self.max is not None and value > self.max:
                return f"{value!r} is above the maximum {self.max!r}"
        elif self.type == "BOOLEAN" and not isinstance(value, bool):
            return f"expects true or false, got {value!r}"
        elif self.type == "STRING" and not isinstance(value, str):
            return f"expects a string, got {value!r}"
        elif self.type == "COMBO" and self.choices and value not in self.choices:
            return f"{value!r} is not one of {list(self.choices)}"
        return None


@dataclass(frozen=True)
class ComfyClass(ComfyMapping):
    """A mapping plus ComfyUI's declaration of the class_type (what ``object_info`` lists)."""

    inputs: tuple[ComfyInput, ...] = ()
    output_types: tuple[str, ...] = ()
    output_names: tuple[str, ...] = ()
    output_node: bool = False
    category: str = ""
    display_name: str = ""
    description: str = ""
    hidden: Mapping[str, str] = field(default_factory=dict)
    notes: str = ""  # where we deliberately differ from ComfyUI (docs/comfyui.md's table)

    def input(self, name: str) -> ComfyInput | None:
        for spec in self.inputs:
            if spec.name == name:
                return spec
        return None

    def widgets(self) -> list[ComfyInput]:
        """Widget inputs in the order the editor stores their values (required first, then optional)."""
        ordered = [i for i in self.inputs if not i.optional] + [i for i in self.inputs if i.optional]
        return [i for i in ordered if i.is_widget]

    def object_info(self, files: Mapping[str, Sequence[str]], module: str) -> dict[str, Any]:
        required = {i.name: i.spec(files) for i in self.inputs if not i.optional}
        optional = {i.name: i.spec(files) for i in self.inputs if i.optional}
        entry_input: dict[str, Any] = {"required": required}
        if optional:
            entry_input["optional"] = optional
        if self.hidden:
            entry_input["hidden"] = dict(self.hidden)
        order: dict[str, list[str]] = {"required": list(required)}
        if optional:
            order["optional"] = list(optional)
        return {
            "input": entry_input,
            "input_order": order,
            "output": list(self.output_types),
            "output_is_list": [False] * len(self.output_types),
            "output_name": list(self.output_names or self.output_types),
            "name": self.class_type,
            "display_name": self.display_name or self.class_type,
            "description": self.description,
            "python_module": module,
            "category": self.category,
            "output_node": self.output_node,
        }


def register_comfy(registry: Registry, *classes: ComfyClass) -> None:
    """Make class_types importable (a later declaration of the same class_type replaces the earlier)."""
    for cls in classes:
        if len(cls.outputs) != len(cls.output_types):
            raise TypeError(f"{cls.class_type}: {len(cls.outputs)} mapped outputs for "
                            f"{len(cls.output_types)} declared output types")
        registry.comfy[cls.class_type] = cls


NATIVE_PREFIX = "nodegraph."
_PRIMITIVES = {"int": "INT", "float": "FLOAT", "str": "STRING", "bool": "BOOLEAN"}


def native_class(spec: NodeSpec) -> ComfyClass:
    """Our node ``<Name>`` as the ComfyUI class_type ``nodegraph.<Name>``: its own inputs, declared in
    ComfyUI's terms (links by socket type, literals as widgets; an INT named like a seed gets the editor's
    control value)."""
    inputs = []
    for name, ins in spec.inputs.items():
        described = ins.describe()
        optional = not ins.required
        if ins.is_link_only:
            inputs.append(ComfyInput(name, str(ins.socket), optional=optional))
            continue
        choices = tuple(str(c) for c in described.get("choices", ()))
        kind = "COMBO" if choices else _PRIMITIVES.get(str(described.get("type")), str(described.get("type")).upper())
        # An optional literal without a default means "unset unless linked": as a widget the editor would
        # always send 0 or "" in its place, so it is offered as a socket.
        unset_unless_linked = optional and ins.default is None and kind in WIDGET_TYPES
        inputs.append(ComfyInput(name, kind, ins.default if optional else None, described.get("minimum"),
                                 described.get("maximum"), step={"INT": 1, "FLOAT": 0.01}.get(kind),
                                 choices=choices, optional=optional, tooltip=ins.description,
                                 control_after_generate=kind == "INT" and "seed" in name,
                                 force_input=unset_unless_linked, round=False if kind == "FLOAT" else None))
    node_type = spec.name

    def expand(values: dict[str, Any]) -> dict[str, dict[str, Any]]:
        return {"": {"type": node_type, "inputs": values}}

    return ComfyClass(NATIVE_PREFIX + spec.name, expand, tuple(("", o) for o in spec.outputs), tuple(inputs),
                      tuple(spec.outputs.values()), tuple(spec.outputs), spec.is_output,
                      f"nodegraph/{spec.category}", spec.name, spec.doc)


def comfy_object_info(registry: Registry, files: Mapping[str, Sequence[str]] | None = None) -> dict[str, Any]:
    """``GET /object_info`` for this registry: every ComfyUI class_type we map, then every native node as
    ``nodegraph.<Name>`` (DESIGN.md §7 "Names"). ``files`` fills file-name combos: ``{"checkpoints": [...],
    "input_images": [...]}``."""
    files = files or {}
    registry.load_entry_points()
    out: dict[str, Any] = {}
    for class_type in sorted(registry.comfy):
        mapping = registry.comfy[class_type]
        if isinstance(mapping, ComfyClass):
            out[class_type] = mapping.object_info(files, "nodes")  # ComfyUI core nodes (not "an extension")
    for spec in registry.all().values():
        out[NATIVE_PREFIX + spec.name] = native_class(spec).object_info(files, spec.fn.__module__)
    return out


DOCS_BEGIN = "<!-- BEGIN GENERATED: supported class_types (python3 -m nodegraph.comfy_spec docs/comfyui.md) -->"
DOCS_END = "<!-- END GENERATED -->"


class _Placeholder(dict):  # type: ignore[type-arg]
    """Inputs for calling an expand function only to learn which node types it produces."""

    def __missing__(self, key: str) -> list[Any]:
        return ["?", 0]


def mapped_types(mapping: ComfyMapping) -> list[str]:
    """Our node types a ComfyUI class_type becomes (empty: its value or input is handed on as it is)."""
    try:
        expanded = mapping.expand(_Placeholder())
    except (KeyError, TypeError, ValueError):
        return []
    return sorted({str(spec["type"]) for spec in expanded.values()})


def comfy_docs_table(registry: Registry) -> str:
    """The Markdown table of supported class_types (docs/comfyui.md), generated so it cannot drift."""
    registry.load_entry_points()
    rows = ["| ComfyUI class_type | runs as | widget inputs (in order) | differences from ComfyUI |",
            "|---|---|---|---|"]
    for class_type in sorted(registry.comfy, key=str.lower):
        mapping = registry.comfy[class_type]
        if not isinstance(mapping, ComfyClass):
            continue
        ours = ", ".join(f"`{t}`" for t in mapped_types(mapping)) or "(value handed on)"
        widgets = ", ".join(w.name for w in mapping.widgets()) or "-"
        notes = mapping.notes.replace("|", "\\|").replace("\n", " ") or "-"
        rows.append(f"| `{class_type}` | {ours} | {widgets} | {notes} |")
    return "\n".join(rows)


def render_docs(text: str, registry: Registry) -> str:
    """``text`` with the generated section between the markers replaced by the current table."""
    head, sep, rest = text.partition(DOCS_BEGIN)
    if not sep or DOCS_END not in rest:
        raise ValueError(f"the document has no {DOCS_BEGIN!r} ... {DOCS_END!r} section")
    tail = rest.split(DOCS_END, 1)[1]
    return f"{head}{DOCS_BEGIN}\n{comfy_docs_table(registry)}\n{DOCS_END}{tail}"


if __name__ == "__main__":  # regenerate the table: python3 -m nodegraph.comfy_spec docs/comfyui.md
    import sys
    from pathlib import Path

    from nodegraph import comfy_spec  # not this __main__ copy: its ComfyClass is not the one nodes declare with
    from nodegraph.node import REGISTRY

    target = Path(sys.argv[1])
    target.write_text(comfy_spec.render_docs(target.read_text(), REGISTRY))
