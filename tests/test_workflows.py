"""Every shipped workflow (native and ComfyUI-format examples) validates as it is."""

from __future__ import annotations

import pytest

from nodegraph import validate
from nodegraph.workflow import load_workflow
from tests.sdxl_graphs import ROOT

FILES = sorted((ROOT / "workflows").glob("*.json")) + sorted((ROOT / "tests" / "comfy").glob("*.json"))


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_shipped_workflow_validates(path):
    vg = validate(load_workflow(path))
    assert vg.outputs


def test_real_model_workflows_name_hub_ids():
    assert load_workflow(ROOT / "workflows" / "sdxl_inpaint.json").nodes["checkpoint"].inputs["source"] == \
        "diffusers/stable-diffusion-xl-1.0-inpainting-0.1"
    assert load_workflow(ROOT / "workflows" / "sdxl_inpaint_base.json").nodes["checkpoint"].inputs["source"] == \
        "stabilityai/stable-diffusion-xl-base-1.0"
