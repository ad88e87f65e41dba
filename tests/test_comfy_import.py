"""ComfyUI API-format files load through the declared mappings."""

from __future__ import annotations

import pytest

from nodegraph import Engine, WorkflowError, validate
from nodegraph.graph import Link
from nodegraph.workflow import graph_from_data


def test_comfy_api_format_runs(tmp_path):
    data = {
        "1": {"class_type": "PrimitiveInt", "inputs": {"value": 9}, "_meta": {"title": "n"}},
        "2": {"class_type": "SaveText", "inputs": {"text": ["1", 0], "filename_prefix": "c"}},
    }
    # SaveText takes TEXT, PrimitiveInt gives INT: the mapping is honest, so this is a type error...
    with pytest.raises(WorkflowError) as info:
        validate(graph_from_data(data))
    assert info.value.issues[0].kind == "type_mismatch"


def test_comfy_links_are_translated_by_index():
    data = {"1": {"class_type": "PrimitiveInt", "inputs": {"value": 3}},
            "2": {"class_type": "PrimitiveInt", "inputs": {"value": ["1", 0]}}}
    g = graph_from_data(data)
    assert g.nodes["2"].inputs["value"] == Link("1", "value")
    assert g.nodes["1"].type == "Number"


def test_unknown_class_type_is_named():
    data = {"1": {"class_type": "FancyUpscaler", "inputs": {}},
            "2": {"class_type": "PrimitiveInt", "inputs": {"value": ["9", 0]}}}
    with pytest.raises(WorkflowError) as info:
        graph_from_data(data)
    kinds = {(i.kind, i.node) for i in info.value.issues}
    assert ("unknown_comfy_type", "1") in kinds and ("missing_node", "2") in kinds
    assert "FancyUpscaler" in str(info.value)


def test_comfy_graph_executes(tmp_path):
    data = {"1": {"class_type": "PrimitiveInt", "inputs": {"value": 3}},
            "2": {"class_type": "PrimitiveInt", "inputs": {"value": ["1", 0]}}}
    g = graph_from_data(data)
    f = g.add("Format", id="f", n=g["2"].value)
    g.add("WriteText", id="w", text=f.text, name="comfy")
    assert Engine().run(g, output_dir=tmp_path).ok
    assert (tmp_path / "comfy.txt").read_text() == "3"
