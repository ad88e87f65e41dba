"""ComfyUI's own workflow templates (PyPI ``comfyui-workflow-templates-json``, MIT; installed by the ``dev``
extra, nothing is downloaded at test time): those built from supported nodes convert, and the positional
widget mapping agrees with the ``widgets_values_named`` some templates carry."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from nodegraph import REGISTRY, WorkflowError
from nodegraph.comfy_spec import ComfyClass
from nodegraph.comfy_ui import IGNORED_TYPES, is_ui_workflow, positional_widgets, ui_to_api
from nodegraph.workflow import graph_from_data

templates_pkg = pytest.importorskip("comfyui_workflow_templates_json")
logger = logging.getLogger(__name__)
FRONTEND_ONLY = IGNORED_TYPES | {"Reroute", "PrimitiveNode"}


def _templates() -> dict[str, dict[str, Any]]:
    root = Path(templates_pkg.__file__).parent / "templates"
    out = {}
    for path in sorted(root.glob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        if is_ui_workflow(data):
            out[path.name] = data
    return out


def _all_nodes(data: dict[str, Any]) -> list[dict[str, Any]]:
    nodes = list(data["nodes"])
    for sub in (data.get("definitions") or {}).get("subgraphs") or []:
        nodes += sub.get("nodes") or []
    return nodes


@pytest.fixture(scope="module")
def templates() -> dict[str, dict[str, Any]]:
    found = _templates()
    assert len(found) >= 644
    return found


def test_every_template_built_from_supported_nodes_converts(templates):
    REGISTRY.load_entry_points()
    subgraph_ids = {s["id"] for d in templates.values() for s in (d.get("definitions") or {}).get("subgraphs") or []}
    supported, converted, loaded = [], [], []
    for name, data in templates.items():
        types = {n["type"] for n in _all_nodes(data) if n.get("mode", 0) not in (2, 4)}
        if all(t in FRONTEND_ONLY or t in subgraph_ids or REGISTRY.comfy_mapping(t) for t in types):
            supported.append(name)
        try:
            ui_to_api(data, REGISTRY)
        except WorkflowError:
            continue
        converted.append(name)
        try:
            graph_from_data(data)
            loaded.append(name)
        except WorkflowError as err:  # e.g. a scheduler name we do not implement: reported, with what to use
            assert all(i.kind == "invalid_value" for i in err.issues), (name, str(err))
    assert set(supported) <= set(converted)
    logger.warning("ComfyUI templates: %d of %d convert; %d also load as graphs", len(converted), len(templates),
                   len(loaded))
    assert len(converted) >= 3


def test_positional_widgets_agree_with_widgets_values_named(templates):
    REGISTRY.load_entry_points()
    with_named, checked, stale = 0, 0, 0
    for name, data in templates.items():
        nodes = _all_nodes(data)
        with_named += any("widgets_values_named" in n for n in nodes)
        for node in nodes:
            named = node.get("widgets_values_named")
            spec = REGISTRY.comfy_mapping(node["type"])
            if named is None or not isinstance(spec, ComfyClass):
                continue
            expected = {k: v for k, v in named.items() if spec.input(k) is not None}
            got = positional_widgets(spec, node.get("widgets_values"))
            checked += 1
            file_input = {"LoadImage": "image", "UNETLoader": "unet_name"}.get(node["type"])
            if file_input is not None and node["widgets_values"][0] != named.get(file_input):
                # The template's own two records disagree (its file was swapped after the names were written);
                # the positional value is what ComfyUI loads. Every other widget still agrees.
                stale += 1
                assert got[file_input] == node["widgets_values"][0]
                assert {k: v for k, v in got.items() if k != file_input} == \
                    {k: v for k, v in expected.items() if k != file_input}, (name, node["id"], node["type"])
                continue
            assert got == expected, (name, node["id"], node["type"])
    assert with_named >= 224 and checked >= 495 and stale <= 10  # 9 stale LoadImage/UNETLoader records in the package as tested
