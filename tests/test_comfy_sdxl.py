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


def _advanced(base: dict, node: str, latent: list, **inputs: object) -> dict:
    """ComfyUI's KSamplerAdvanced in place of the prompt's KSampler (same model, prompts, seed)."""
    ks = base["3"]["inputs"]
    base[node] = {"class_type": "KSamplerAdvanced", "inputs": {
        "add_noise": "enable", "noise_seed": ks.get("seed", ks.get("noise_seed")), "steps": ks["steps"], "cfg": ks["cfg"],
        "sampler_name": ks["sampler_name"], "scheduler": ks["scheduler"], "positive": ks["positive"],
        "negative": ks["negative"], "model": ks["model"], "latent_image": latent, "start_at_step": 0,
        "end_at_step": 10000, "return_with_leftover_noise": "disable", **inputs}}
    return base


def test_step_range_cuts_as_comfyui_does():
    from nodes.schedules import StepRange

    sigmas = [14.6, 7.0, 3.0, 1.0, 0.0]
    assert StepRange(sigmas, start=0, end=2) == [14.6, 7.0, 3.0]  # leftover noise: ends at sigma[2]
    assert StepRange(sigmas, start=0, end=2, denoise_to_zero=True) == [14.6, 7.0, 0.0]
    assert StepRange(sigmas, start=2, end=10000, denoise_to_zero=True) == [3.0, 1.0, 0.0]  # already ends at 0
    with pytest.raises(ValueError, match="leaves no step"):
        StepRange(sigmas, start=2, end=2)


@pytest.mark.slow
def test_ksampler_advanced_halves_equal_the_whole_run(builtin_models_dir, at_root, tmp_path):
    """Base 0-2 with leftover noise, then 2-end without new noise: Euler visits the same sigmas as one run."""
    prompt = json.loads((COMFY / "inpaint_api.json").read_text())
    whole = Engine().run(graph_from_data(json.loads(json.dumps(prompt))), output_dir=tmp_path)["3"]["latent"]
    split = _advanced(json.loads(json.dumps(prompt)), "3", ["20", 2], end_at_step=2,
                      return_with_leftover_noise="enable")
    split = _advanced(split, "30", ["3", 0], add_noise="disable", start_at_step=2)
    split["8"]["inputs"]["samples"] = ["30", 0]
    graph = graph_from_data(split)
    assert graph.nodes["3.range"].type == "StepRange" and graph.nodes["30"].inputs["add_noise"] is False
    result = Engine().run(graph, output_dir=tmp_path)
    assert float((result["30"]["latent"].samples - whole.samples).abs().max()) <= 1e-4


@pytest.mark.slow
def test_ksampler_advanced_honours_add_noise_and_leftover_noise(builtin_models_dir, at_root, tmp_path):
    prompt = json.loads((COMFY / "inpaint_api.json").read_text())

    def latent(**inputs: object) -> torch.Tensor:
        graph = graph_from_data(_advanced(json.loads(json.dumps(prompt)), "3", ["20", 2], **inputs))
        leftover = inputs.get("return_with_leftover_noise") == "enable"
        assert graph.nodes["3.range"].inputs["denoise_to_zero"] is not leftover
        assert graph.nodes["3"].inputs["add_noise"] is (inputs.get("add_noise") != "disable")
        return Engine().run(graph, output_dir=tmp_path, outputs=["3"])["3"]["latent"].samples

    noisy, clean = latent(end_at_step=2, return_with_leftover_noise="enable"), latent(end_at_step=2)
    assert float((noisy - clean).abs().max()) > 0.1  # stopped at sigma[2] vs taken on to sigma 0
    late_noise, late_none = latent(start_at_step=2), latent(start_at_step=2, add_noise="disable")
    assert float((late_noise - late_none).abs().max()) > 0.1  # enable adds noise at sigma[2]; disable does not


@pytest.mark.slow
def test_ksampler_advanced_with_a_timesteps_only_sampler(builtin_models_dir, at_root, tmp_path):
    """dpmpp_2m follows only its own timesteps: the base + refiner split maps onto denoising_start/end; a
    flag it cannot honour is an import error naming it; start >= end hands the latent on unchanged."""
    prompt = json.loads((COMFY / "inpaint_api.json").read_text())
    prompt["3"]["inputs"]["sampler_name"] = "dpmpp_2m"
    split = _advanced(json.loads(json.dumps(prompt)), "3", ["20", 2], end_at_step=2,
                      return_with_leftover_noise="enable")
    split = _advanced(split, "30", ["3", 0], add_noise="disable", start_at_step=2)
    split["8"]["inputs"]["samples"] = ["30", 0]
    graph = graph_from_data(split)
    assert graph.nodes["3"].inputs["denoising_end"] == 0.5 and graph.nodes["30"].inputs["denoising_start"] == 0.5
    result = Engine().run(graph, output_dir=tmp_path)
    assert torch.isfinite(result["30"]["latent"].samples).all()

    with pytest.raises(WorkflowError, match="return_with_leftover_noise 'disable' .* explicit sigmas"):
        graph_from_data(_advanced(json.loads(json.dumps(prompt)), "3", ["20", 2], end_at_step=2))
    with pytest.raises(WorkflowError, match="add_noise 'enable' from step 2"):
        graph_from_data(_advanced(json.loads(json.dumps(prompt)), "3", ["20", 2], start_at_step=2))

    nothing = graph_from_data(_advanced(json.loads(json.dumps(prompt)), "3", ["20", 2], start_at_step=3,
                                        end_at_step=3))
    ran = Engine().run(nothing, output_dir=tmp_path)
    assert torch.equal(ran["3"]["latent"].samples, ran["20"]["latent"].samples)
