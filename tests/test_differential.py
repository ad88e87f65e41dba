"""DifferentialDiffusion: soft-mask inpainting where each latent cell joins the repainting when the
timestep falls below its mask value (4-channel UNets), and ComfyUI's node mapped onto it."""

from __future__ import annotations

import json

import pytest
import torch

from nodegraph import Engine, NodeExecutionError
from nodegraph.workflow import graph_from_data
from nodes.sampling import _blend_callback, differential_mask
from tests.sdxl_graphs import ROOT, inpaint_graph


def test_the_threshold_falls_with_the_timestep():
    mask = torch.tensor([0.0, 0.3, 0.7, 1.0])
    assert differential_mask(mask, 999.0, 999.0).tolist() == [0, 0, 0, 1]  # the first step: only full repaint
    assert differential_mask(mask, 666.0, 999.0).tolist() == [0, 0, 1, 1]
    assert differential_mask(mask, 250.0, 999.0).tolist() == [0, 1, 1, 1]
    assert differential_mask(mask, 1.0, 999.0).tolist() == [0, 1, 1, 1]  # a cell of 0 never changes
    # a run that stops at timestep 500 (a first half) sweeps the whole threshold range within itself
    assert differential_mask(mask, 600.0, 950.0, t_end=500.0).tolist() == [0, 1, 1, 1]  # 100 / 450 = 0.22
    half = differential_mask(mask, 666.0, 999.0, strength=0.5)
    assert torch.allclose(half, torch.tensor([0.0, 0.15, 0.85, 1.0]))


def test_each_blend_uses_the_mask_of_the_step_it_prepares():
    """ComfyUI thresholds the input of step k at timestep t_k; our blend after step i prepares step i + 1's
    input, so it uses t_(i+1) (after the last step: the last step's own threshold)."""
    from diffusers import EulerDiscreteScheduler

    sched = EulerDiscreteScheduler(timestep_spacing="leading", steps_offset=1)  # SDXL's: 751, 501, 251, 1
    sched.set_timesteps(4)
    assert sched.timesteps.tolist() == [751, 501, 251, 1]
    image, noise = torch.zeros(1, 1, 1, 4), torch.ones(1, 1, 1, 4)
    mask = torch.tensor([0.0, 0.3, 0.7, 1.0]).reshape(1, 1, 1, 4)
    blend = _blend_callback(sched, image, noise, mask, sched.timesteps, 0.0, differential=1.0)
    free = [[bool(v == 123.0) for v in blend(i, torch.full((1, 1, 1, 4), 123.0)).flatten()] for i in range(4)]
    # thresholds 501/751 = 0.67, 251/751 = 0.33, 1/751, and 1/751 again after the last step
    assert free == [[False, False, True, True], [False, False, True, True], [False, True, True, True],
                    [False, True, True, True]]


def soft_mask_graph(model: str, differential: bool, mode: str = "area"):
    g = inpaint_graph(model, steps=4, strength=1.0, mask_mode=mode)
    feathered = g.add("FeatherMask", id="feather", mask=g["mask"].mask, left=24, top=24, right=24, bottom=24)
    g.set_input("latent_mask", "mask", feathered.mask.link())
    if differential:
        g.add("DifferentialDiffusion", id="dd", unet=g["checkpoint"].unet)
        g.set_input("sample", "unet", g["dd"].unet.link())
    return g


@pytest.mark.slow
def test_a_binary_mask_samples_as_without_it(tiny_models, tmp_path):
    plain = Engine().run(soft_mask_graph(str(tiny_models[4]), False, "nearest"), output_dir=tmp_path)
    dd = Engine().run(soft_mask_graph(str(tiny_models[4]), True, "nearest"), output_dir=tmp_path)
    assert torch.equal(plain["sample"]["latent"].samples, dd["sample"]["latent"].samples)


@pytest.mark.slow
def test_a_soft_mask_repaints_by_degree(tiny_models, tmp_path):
    plain = Engine().run(soft_mask_graph(str(tiny_models[4]), False), output_dir=tmp_path)
    dd = Engine().run(soft_mask_graph(str(tiny_models[4]), True), output_dir=tmp_path)
    mask = dd["latent_mask"]["latent"].mask
    original = dd["encode"]["latent"].samples
    got, soft = dd["sample"]["latent"].samples, plain["sample"]["latent"].samples
    partial = (mask > 0) & (mask < 1)
    assert bool(partial.any()) and bool((mask == 0).any())
    keep = (mask == 0).expand_as(got)
    assert torch.equal(got[keep], original[keep]) and torch.equal(soft[keep], original[keep])
    assert float((got - soft)[partial.expand_as(got)].abs().max()) > 1e-3  # thresholds, not a fixed mix


@pytest.mark.slow
def test_comfyui_differential_diffusion_workflow(builtin_models_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    prompt = json.loads((ROOT / "tests" / "comfy" / "inpaint_api.json").read_text())
    prompt["4"]["inputs"]["ckpt_name"] = "builtin:tiny-sdxl"  # a 4-channel base model
    prompt["30"] = {"class_type": "DifferentialDiffusion", "inputs": {"model": ["4", 0]}}
    prompt["31"] = {"class_type": "SetLatentNoiseMask", "inputs": {"samples": ["20", 2], "mask": ["10", 1]}}
    prompt["3"]["inputs"].update(model=["30", 0], latent_image=["31", 0])
    graph = graph_from_data(prompt)
    assert graph.nodes["30"].type == "DifferentialDiffusion" and graph.nodes["31"].inputs["mode"] == "area"
    assert Engine().run(graph, output_dir=tmp_path).ok

    prompt["4"]["inputs"]["ckpt_name"] = "builtin:tiny-sdxl-inpaint"  # 9 channels: the mask is an input there
    with pytest.raises(NodeExecutionError, match="9-channel inpainting UNet"):
        Engine().run(graph_from_data(prompt), output_dir=tmp_path)
