"""JSON Schema of workflow files, generated from the registered node declarations."""

from __future__ import annotations

from typing import Any

from nodegraph.node import Registry
from nodegraph.workflow import FORMAT_VERSION

_LINK = {
    "type": "array",
    "description": "A link: [source node id, output name or index].",
    "prefixItems": [{"type": "string"}, {"type": ["string", "integer"]}],
    "minItems": 2,
    "maxItems": 2,
}


def workflow_schema(registry: Registry) -> dict[str, Any]:
    variants = []
    for name, spec in registry.all().items():
        props: dict[str, Any] = {}
        for input_name, inp in spec.inputs.items():
            if inp.is_link_only:
                props[input_name] = {**_LINK, "description": f"Link to a {inp.socket} output. {inp.description}".strip()}
            else:
                literal = inp.adapter.json_schema() if inp.adapter is not None else {}
                props[input_name] = {"anyOf": [literal, _LINK, {"type": "object", "properties": {"value": literal},
                                                                 "required": ["value"], "additionalProperties": False}]}
                if inp.description:
                    props[input_name]["description"] = inp.description
        variants.append({
            "type": "object",
            "title": name,
            "description": spec.doc.split("\n\n")[0] if spec.doc else name,
            "properties": {
                "type": {"const": name},
                "inputs": {"type": "object", "properties": props, "additionalProperties": False,
                           "required": [n for n, i in spec.inputs.items() if i.required]},
            },
            "required": ["type"],
            "additionalProperties": False,
        })
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "nodegraph workflow",
        "type": "object",
        "properties": {
            "version": {"const": FORMAT_VERSION},
            "name": {"type": "string"},
            "description": {"type": "string"},
            "metadata": {"type": "object"},
            "nodes": {"type": "object", "additionalProperties": {"oneOf": variants}},
        },
        "required": ["version", "nodes"],
        "additionalProperties": False,
    }
