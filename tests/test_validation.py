"""Every validation problem is found before anything runs, with node, input, expected and found."""

from __future__ import annotations

import json

import pytest

from nodegraph import Graph, WorkflowError, validate
from nodegraph.graph import Link, NodeInstance
from nodegraph.workflow import graph_from_data, load_workflow


def wf(nodes: dict) -> dict:
    return {"version": 1, "nodes": nodes}


def issues_of(data) -> list:
    with pytest.raises(WorkflowError) as info:
        validate(graph_from_data(data))
    return info.value.issues


def test_valid_workflow_passes():
    vg = validate(graph_from_data(wf({
        "n": {"type": "Number", "inputs": {"value": 2}},
        "f": {"type": "Format", "inputs": {"n": ["n", "value"]}},
        "w": {"type": "WriteText", "inputs": {"text": ["f", 0]}},
    })))
    assert vg.order.index("n") < vg.order.index("f") < vg.order.index("w")
    assert vg.links["w"]["text"] == Link("f", "text")  # index resolved to the output name
    assert vg.outputs == ["w"]


def test_collects_every_problem_at_once():
    issues = issues_of(wf({
        "a": {"type": "Nope", "inputs": {}},
        "b": {"type": "Number", "inputs": {"value": 5000, "extra": 1}},
        "c": {"type": "Format", "inputs": {"style": "fancy"}},
        "d": {"type": "WriteText", "inputs": {"text": ["b", "value"]}},
        "e": {"type": "WriteText", "inputs": {"text": ["zz", "text"]}},
        "f": {"type": "WriteText", "inputs": {"text": ["c", "nothing"]}},
    }))
    by = {(i.kind, i.node, i.input) for i in issues}
    assert ("unknown_node_type", "a", None) in by
    assert ("invalid_value", "b", "value") in by
    assert ("unknown_input", "b", "extra") in by
    assert ("invalid_value", "c", "style") in by
    assert ("missing_input", "c", "n") in by
    assert ("type_mismatch", "d", "text") in by
    assert ("missing_node", "e", "text") in by
    assert ("missing_output", "f", "text") in by


def test_type_mismatch_names_both_ends_and_types():
    (issue,) = issues_of(wf({
        "b": {"type": "Number", "inputs": {"value": 1}},
        "d": {"type": "WriteText", "inputs": {"text": ["b", "value"]}},
    }))
    assert issue.expected == "TEXT" and issue.found == "INT"
    assert "WriteText.text" in issue.message and "Number.value" in issue.message and "'b'" in issue.message


def test_range_error_says_expected_and_found():
    (issue,) = issues_of(wf({"b": {"type": "Number", "inputs": {"value": 5000}},
                             "f": {"type": "Format", "inputs": {"n": ["b", "value"]}},
                             "w": {"type": "WriteText", "inputs": {"text": ["f", "text"]}}}))
    assert issue.node == "b" and issue.input == "value" and issue.found == "5000"
    assert issue.expected["maximum"] == 1000


def test_cycle_lists_its_nodes():
    issues = issues_of(wf({
        "x": {"type": "Add", "inputs": {"a": ["z", "sum"]}},
        "y": {"type": "Add", "inputs": {"a": ["x", "sum"]}},
        "z": {"type": "Add", "inputs": {"a": ["y", "sum"]}},
        "f": {"type": "Format", "inputs": {"n": ["z", "sum"]}},
        "w": {"type": "WriteText", "inputs": {"text": ["f", "text"]}},
    }))
    (cycle,) = [i for i in issues if i.kind == "cycle"]
    assert cycle.found == ["x", "y", "z"]


def test_no_output_node():
    (issue,) = issues_of(wf({"n": {"type": "Number", "inputs": {"value": 1}}}))
    assert issue.kind == "no_output_node"


def test_escaped_literal_that_looks_like_a_link():
    g = graph_from_data(wf({
        "n": {"type": "Number", "inputs": {"value": 1}},
        "f": {"type": "Format", "inputs": {"n": ["n", "value"], "pair": {"value": [1, 2]}}},
        "w": {"type": "WriteText", "inputs": {"text": ["f", "text"]}},
    }))
    assert g.nodes["f"].inputs["pair"] == [1, 2]


@pytest.mark.parametrize("text, kind", [
    ('{"version": 1, "nodes": {', "invalid_json"),
    ('[1, 2, 3]', "invalid_file"),
    ('{"version": 2, "nodes": {}}', "unsupported_version"),
    ('{"version": 1, "nodes": {"a": {"type": "Number"}, "a": {"type": "Number"}}}', "duplicate_id"),
    ('{"version": 1, "nodes": {"a": {"type": "WriteText", "inputs": {"text": [3, "text"]}}}}', "invalid_id"),
    ('{"version": 1, "nodes": {"a": {"kind": "Number"}}}', "invalid_file"),
    ('[' * 100000 + ']' * 100000, "invalid_json"),
])
def test_bad_files_give_structured_errors(tmp_path, text, kind):
    path = tmp_path / "w.json"
    path.write_text(text)
    with pytest.raises(WorkflowError) as info:
        validate(load_workflow(path))
    assert info.value.issues[0].kind == kind


def test_invalid_json_reports_line_and_column(tmp_path):
    path = tmp_path / "w.json"
    path.write_text('{\n  "version": 1,\n  "nodes": {,}\n}')
    with pytest.raises(WorkflowError) as info:
        load_workflow(path)
    assert "line 3, column 13" in str(info.value)


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(WorkflowError, match="nope.json: no such file"):
        load_workflow(tmp_path / "nope.json")


def test_deeply_nested_literal_is_rejected():
    deep: object = 1
    for _ in range(100):
        deep = [deep]
    issues = issues_of(wf({"f": {"type": "Format", "inputs": {"n": 1, "pair": {"value": deep}}},
                           "w": {"type": "WriteText", "inputs": {"text": ["f", "text"]}}}))
    assert issues[0].kind == "invalid_value" and "nested" in issues[0].message


def test_builder_errors_at_build_time():
    g = Graph()
    n = g.add("Number", value=1)
    with pytest.raises(WorkflowError, match="no input 'nope'"):
        g.add("Format", n=n.value, nope=1)
    with pytest.raises(WorkflowError) as info:
        g.add("WriteText", text=n.value)
    assert info.value.issues[0].kind == "type_mismatch"
    with pytest.raises(AttributeError, match="no output 'bogus'"):
        n.bogus  # noqa: B018
    assert list(g.nodes) == ["1"]  # failed adds leave nothing behind


def test_builder_round_trip(tmp_path):
    g = Graph(name="demo", description="round trip")
    n = g.add("Number", value=7)
    f = g.add("Format", n=n.value, style="brackets", pair=["3", "4"])
    g.add("WriteText", text=f.text, name="r")
    path = tmp_path / "g.json"
    g.save(str(path))
    loaded = load_workflow(path)
    assert loaded == g
    assert json.loads(path.read_text())["nodes"]["2"]["inputs"]["pair"] == {"value": ["3", "4"]}
    assert loaded.nodes["2"].inputs["n"] == Link("1", "value")
    assert isinstance(loaded.nodes["1"], NodeInstance)
