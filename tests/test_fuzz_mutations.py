"""Mutated example workflows (issue 16): load + validate raises nothing but a structured WorkflowError.

Both formats: the native v1 files in workflows/ (and a toy one), and the ComfyUI API-format and UI-format
files in tests/comfy/. Each example is mutated at a random place (a value replaced by a nasty one, a key dropped or renamed),
written out as JSON text (NaN/Infinity and lone surrogates included, as Python's json reads them) and read
back through the same path as a workflow file, with a path policy in force.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nodegraph import WorkflowError, validate
from nodegraph.settings import PathPolicy
from nodegraph.workflow import graph_from_data, parse_json_text

ROOT = Path(__file__).resolve().parent.parent
TOY = {"version": 1, "nodes": {
    "n": {"type": "Number", "inputs": {"value": 2}},
    "s": {"type": "Add", "inputs": {"a": ["n", "value"], "b": 3}},
    "f": {"type": "Format", "inputs": {"n": ["s", "sum"], "style": "plain", "pair": {"value": [1, 2]}}},
    "r": {"type": "ReadText", "inputs": {"path": "in.txt"}},
    "m": {"type": "SourceName", "inputs": {"source": "org/name"}},
    "w": {"type": "SaveTextAs", "inputs": {"text": ["f", "text"], "prefix": "out"}}}}
EXAMPLES = [TOY] + [json.loads(p.read_text()) for p in sorted((ROOT / "workflows").glob("*.json"))]
EXAMPLES = [e for e in EXAMPLES if isinstance(e, dict) and e.get("version") == 1]
# ComfyUI API-format ("prompt") and UI-format ("workflow") documents; their image names are relative to ROOT
COMFY_EXAMPLES = [json.loads(p.read_text()) for p in sorted((ROOT / "tests" / "comfy").glob("*.json"))]

nasty = st.one_of(
    st.sampled_from([float("nan"), float("inf"), float("-inf"), 10**400, -(10**30), 2**63, 1e308, -0.0, "\ud800",
                     "x\udfffy", "", "../../etc/passwd", "/etc/passwd", "builtin:nope", "a/b", None, True, [], {},
                     {"value": float("inf")}, ["n", "value"], ["n", 99], ["ghost", 0], [1, 2], [[[[[]]]]],
                     "\x00", "é" * 300]),
    st.integers(), st.floats(), st.text(max_size=12),
    st.recursive(st.integers() | st.text(max_size=4),
                 lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=4), c, max_size=3),
                 max_leaves=8),
)


def paths(doc: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out.extend(paths(v, (*prefix, k)))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out.extend(paths(v, (*prefix, i)))
    return out


def mutate(doc: Any, path: tuple, op: str, value: Any) -> Any:
    if not path:
        return value if op == "replace" else doc
    parent = doc
    for part in path[:-1]:
        parent = parent[part]
    last = path[-1]
    if op == "replace":
        parent[last] = value
    elif op == "delete":
        del parent[last]
    elif op == "rename" and isinstance(parent, dict):
        parent[str(value)[:20] if not isinstance(value, str) else value] = parent.pop(last)
    return doc


def mutated(data: st.DataObject, example: Any) -> str:
    doc = json.loads(json.dumps(example))
    for _ in range(data.draw(st.integers(1, 3))):
        where = data.draw(st.sampled_from(paths(doc)))
        op = data.draw(st.sampled_from(["replace", "replace", "delete", "rename"]))
        doc = mutate(doc, where, op, data.draw(nasty))
    return json.dumps(doc)  # NaN/Infinity written as Python's json writes (and reads) them


def load_and_validate(text: str, base: Path) -> None:
    policy = PathPolicy(write_roots=(base / "out",), read_roots=(base,), base_dir=base)
    try:
        validate(graph_from_data(parse_json_text(text)), policy=policy)
    except WorkflowError as err:
        assert err.issues and all(i.message for i in err.issues)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(st.sampled_from(range(len(EXAMPLES))), st.data())
def test_mutated_examples_give_structured_errors_only(index, data):
    load_and_validate(mutated(data, EXAMPLES[index]), Path("/nonexistent-base"))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(st.sampled_from(range(len(COMFY_EXAMPLES))), st.data())
def test_mutated_comfy_api_and_ui_files_give_structured_errors_only(index, data):
    load_and_validate(mutated(data, COMFY_EXAMPLES[index]), ROOT)


def test_the_unmutated_examples_are_valid():
    """The mutations start from valid workflows (else the fuzzer would only ever see one error)."""
    assert len(EXAMPLES) >= 4
    base = Path("/nonexistent-base")
    for doc in EXAMPLES:
        validate(graph_from_data(json.loads(json.dumps(doc))),
                 policy=PathPolicy(write_roots=(base / "out",), read_roots=(base,), base_dir=base))


def test_the_unmutated_comfy_files_are_valid_in_both_formats():
    from nodegraph.comfy_ui import is_ui_workflow

    assert {is_ui_workflow(doc) for doc in COMFY_EXAMPLES} == {True, False}
    for doc in COMFY_EXAMPLES:
        validate(graph_from_data(json.loads(json.dumps(doc))),
                 policy=PathPolicy(write_roots=(ROOT / "out",), read_roots=(ROOT,), base_dir=ROOT))
