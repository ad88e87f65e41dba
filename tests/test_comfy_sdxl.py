"""SDXL workflows exported from ComfyUI in API format (written here by hand in its shape) run unchanged."""

from __future__ import annotations

import json

import pytest
import torch

from nodegraph import Engine, WorkflowError
from nodegraph.workflow import graph_from_data, load_workflow
from tests.sdxl_graphs import ROOT

COMFY = ROOT / "tests" / "comfy"


@pytest.fixture
def at_root(monkeypatch):
    monkeypatch.chdir(ROOT)  # ComfyUI image names are relative paths


@pytest.mark.slow
def test_inpaint_model_conditioning_workflow(builtin_models_dir, at_root, tmp_path):
    graph = load_workflow(COMFY / "inpaint_api.json")
    assert graph.nodes["20"].type == "DownsampleMask" and graph.nodes["20.enc"].type == "VAEEncode"
    assert graph.nodes["3"].inputs["positive"].node == "6"  # passed through InpaintModelConditioning
    result = Engine().run(graph, output_dir=tmp_path)
    assert result.ok and result.outputs["9"] == [str(tmp_path / "ComfyUI_00001.png")]
    assert result.nodes["3"]["type"] == "Sample"
    # Same parameters as a native graph: the same image.
    from tests.sdxl_graphs import inpaint_graph

    native = inpaint_graph("builtin:tiny-sdxl-inpaint", prompt="a red apple on a wooden table", negative="blurry",
                           image=ROOT / "workflows" / "demo_image_alpha.png", seed=42, steps=4, strength=1.0,
                           guidance_scale=7.5, dtype="auto")  # CheckpointLoaderSimple's default
    native.set_input("mask", "path", str(ROOT / "workflows" / "demo_image_alpha.png"))
    native.set_input("mask", "channel", "alpha")
    native.set_input("mask", "invert", True)
    ours = Engine().run(native, output_dir=tmp_path)
    assert torch.equal(ours["decode"]["image"], result["8"]["image"])
    keep = result["10"]["mask"] == 0
    assert torch.equal(result["15"]["image"][keep], result["10"]["image"][keep])


@pytest.mark.slow
def test_vae_encode_for_inpaint_workflow(builtin_models_dir, at_root, tmp_path):
    graph = load_workflow(COMFY / "encode_for_inpaint_api.json")
    assert graph.nodes["5"].inputs["mode"] == "max"  # grow_mask_by > 0 keeps thin strokes
    result = Engine().run(graph, output_dir=tmp_path)
    assert result.ok and result["6"]["latent"].samples.shape == (1, 4, 12, 16)


@pytest.mark.slow
def test_sdxl_text_to_image_workflow(builtin_models_dir, at_root, tmp_path):
    graph = load_workflow(COMFY / "txt2img_sdxl_api.json")
    assert graph.nodes["6"].inputs["prompt_2"] == "a lighthouse at dusk"
    result = Engine().run(graph, output_dir=tmp_path)
    assert result["17"]["image"].shape == (2, 48, 64, 3)
    assert len(result.outputs["19"]) == 2


def test_unmapped_class_type_is_a_validation_error_naming_it():
    data = json.loads((COMFY / "inpaint_api.json").read_text())
    data["30"] = {"class_type": "UpscaleModelLoader", "inputs": {"model_name": "4x.pth"}}
    data["31"] = {"class_type": "KSampler", "inputs": {**data["3"]["inputs"], "sampler_name": "euler_cfg_pp"}}
    with pytest.raises(WorkflowError) as info:
        graph_from_data(data)
    assert [i.found for i in info.value.issues if i.kind == "unknown_comfy_type"] == ["UpscaleModelLoader"]
    del data["30"]
    with pytest.raises(WorkflowError) as info:
        from nodegraph import validate

        validate(graph_from_data(data))
    (issue,) = info.value.issues
    assert issue.node == "31" and issue.input == "sampler_name" and "euler_cfg_pp" in issue.message
