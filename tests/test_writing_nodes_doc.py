"""docs/writing-nodes.md's node pack registers and runs exactly as written."""

from __future__ import annotations

import importlib
import json
import re
import sys
from pathlib import Path

from nodegraph import REGISTRY, Engine
from nodegraph.workflow import graph_from_data

DOC = Path(__file__).resolve().parent.parent / "docs" / "writing-nodes.md"


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOC.read_text(), re.S)


def test_the_doc_node_pack_registers_and_runs(tmp_path, monkeypatch):
    (pack,) = blocks("python")
    assert len([line for line in pack.splitlines() if line.strip()]) <= 30
    (tmp_path / "wordpack.py").write_text(pack)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("wordpack", None)
    importlib.import_module("wordpack")

    greet = REGISTRY.get("Greet")
    assert greet is not None and greet.outputs == {"words": "WORDS", "length": "INT"} and greet.persist
    assert greet.inputs["name"].description == "who to greet"
    assert REGISTRY.get("SaveWords").is_output

    (workflow,) = blocks("json")
    result = Engine().run(graph_from_data(json.loads(workflow)), output_dir=tmp_path / "out")
    assert result.ok and result["hi"]["length"] == len("hello world hello world")
    assert (tmp_path / "out" / "words.txt").read_text() == "hello world hello world"
