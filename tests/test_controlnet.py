"""ControlNet nodes: equal to StableDiffusionXLControlNetInpaintPipeline on a tiny ControlNet.

Reference = the pipeline on the same tiny model and ControlNet (VAE encoding switched to the posterior
mode, as in test_reference), the control image a Canny edge map of the demo image.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import ControlNetModel, StableDiffusionXLControlNetInpaintPipeline
from PIL import Image

from nodegraph import Engine, Graph
from nodegraph.workflow import graph_from_data
from nodes.payloads import Conditioning
from nodes.tiny import make_tiny_controlnet
from tests.sdxl_graphs import DEMO_IMAGE, DEMO_MASK, ROOT, inpaint_graph

pytestmark = pytest.mark.slow  # end-to-end runs of the tiny model

TOL = 1e-4
STEPS = 5
CANNY = {"low_threshold": 0.1, "high_threshold": 0.3}


@pytest.fixture(scope="module")
def controlnets(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("controlnets")
    return [make_tiny_controlnet(root / "cn1", seed=2), make_tiny_controlnet(root / "cn2", seed=3)]


@pytest.fixture(scope="module")
def edges() -> Image.Image:
    """The Canny node's edge map of the demo image, as the pipeline takes it (exactly 0 or 255)."""
    from nodegraph.node import REGISTRY
    from nodes.image import pil_to_tensor

    image = pil_to_tensor(Image.open(DEMO_IMAGE).convert("RGB"))
    image = image if image.ndim == 4 else image[None]
    out = REGISTRY.get("Canny").fn(image=image, **CANNY)[0]
    assert 0.0 < float(out.mean()) < 0.5
    return Image.fromarray((out.numpy() * 255).round().astype(np.uint8))


def reference(model: Path, controlnets: list[Path], edges: Image.Image, scales: list[float],
              starts: list[float], ends: list[float], seed: int = 0) -> np.ndarray:
    cns = [ControlNetModel.from_pretrained(str(c)) for c in controlnets]
    pipe = StableDiffusionXLControlNetInpaintPipeline.from_pretrained(
        str(model), controlnet=cns[0] if len(cns) == 1 else cns)
    pipe.set_progress_bar_config(disable=True)
    init, mask = Image.open(DEMO_IMAGE).convert("RGB"), Image.open(DEMO_MASK).convert("L")
    one = len(cns) == 1
    return pipe(prompt="a red apple", negative_prompt="", image=init, mask_image=mask,
                control_image=edges if one else [edges] * len(cns), height=init.height, width=init.width,
                num_inference_steps=STEPS, strength=0.9999, guidance_scale=7.5,  # this pipeline's default is 5
                generator=[torch.Generator().manual_seed(seed)], controlnet_conditioning_scale=scales[0] if one else scales,
                control_guidance_start=starts[0] if one else starts, control_guidance_end=ends[0] if one else ends,
                output_type="np").images


def control_graph(model: Path, controlnets: list[Path], scales: list[float], starts: list[float],
                  ends: list[float], seed: int = 0) -> Graph:
    g = inpaint_graph(str(model), negative="", seed=seed, steps=STEPS)
    canny = g.add("Canny", id="canny", image=g["image"].image, **CANNY)
    pos, neg = g["positive"].conditioning, g["negative"].conditioning
    for i, (path, scale, start, end) in enumerate(zip(controlnets, scales, starts, ends, strict=True)):
        cn = g.add("LoadControlNet", id=f"cn{i}", source=str(path), dtype="float32")
        apply = g.add("ApplyControlNet", id=f"apply{i}", positive=pos, negative=neg, control_net=cn.control_net,
                      image=canny.image, strength=scale, start_percent=start, end_percent=end)
        pos, neg = apply.positive, apply.negative
    g.set_input("sample", "positive", pos.link())
    g.set_input("sample", "negative", neg.link())
    return g


def images(g: Graph, tmp_path: Path, engine: Engine | None = None) -> np.ndarray:
    return (engine or Engine()).run(g, output_dir=tmp_path)["decode"]["image"].numpy()


CASES = [
    pytest.param(9, [1.0], [0.0], [1.0], id="9ch-full"),
    pytest.param(9, [0.5], [0.2], [0.7], id="9ch-scale0.5-range0.2-0.7"),
    pytest.param(4, [0.8], [0.0], [0.6], id="4ch-scale0.8-end0.6"),
    pytest.param(4, [1.5], [0.4], [1.0], id="4ch-scale1.5-start0.4"),
]


@pytest.mark.parametrize("channels, scales, starts, ends", CASES)
def test_controlnet_matches_pipeline(tiny_models, controlnets, edges, tmp_path, posterior_mode, channels, scales,
                                     starts, ends):
    expected = reference(tiny_models[channels], controlnets[:1], edges, scales, starts, ends)
    got = images(control_graph(tiny_models[channels], controlnets[:1], scales, starts, ends), tmp_path)
    assert float(np.abs(got - expected).max()) <= TOL
    plain = images(inpaint_graph(str(tiny_models[channels]), negative="", steps=STEPS), tmp_path)
    assert float(np.abs(got - plain).max()) > 1e-3  # the ControlNet really guides


def test_two_stacked_controlnets_match_multicontrolnet(tiny_models, controlnets, edges, tmp_path, posterior_mode):
    args = ([0.7, 1.2], [0.0, 0.2], [0.8, 1.0])
    expected = reference(tiny_models[9], controlnets, edges, *args)
    got = images(control_graph(tiny_models[9], controlnets, *args), tmp_path)
    assert float(np.abs(got - expected).max()) <= TOL


@pytest.mark.parametrize("controlnet_dtype", ["auto", "float32"])
def test_controlnet_under_auto_bf16_is_close_to_float32(tiny_models, controlnets, tmp_path, monkeypatch,
                                                        controlnet_dtype):
    """On a CPU with native bf16, ``auto`` gives a bf16 UNet; its ControlNet may be bf16 too or float32
    (loaded with its own dtype): inputs and residuals are cast at the boundary either way."""
    from nodes import memory

    reference_image = images(control_graph(tiny_models[9], controlnets[:1], [1.0], [0.0], [1.0]), tmp_path)
    monkeypatch.setattr(memory, "cpu_flags", lambda: frozenset({"amx_bf16"}))
    g = control_graph(tiny_models[9], controlnets[:1], [1.0], [0.0], [1.0])
    g.set_input("checkpoint", "dtype", "auto")
    g.set_input("cn0", "dtype", controlnet_dtype)
    got = images(g, tmp_path)
    assert 0 < float(np.abs(got - reference_image).max()) <= 0.1  # bf16 rounding, as tests/test_perf_options.py


def test_controlled_and_plain_graphs_share_one_engine(tiny_models, controlnets, tmp_path):
    model = tiny_models[9]
    alone = images(control_graph(model, controlnets[:1], [1.0], [0.0], [1.0], seed=4), tmp_path)
    plain_alone = images(inpaint_graph(str(model), negative="", steps=STEPS, seed=4), tmp_path)
    engine = Engine()
    assert np.array_equal(images(inpaint_graph(str(model), negative="", steps=STEPS, seed=4), tmp_path, engine),
                          plain_alone)
    assert np.array_equal(images(control_graph(model, controlnets[:1], [1.0], [0.0], [1.0], seed=4), tmp_path,
                                 engine), alone)
    # Only the strength changed: prompts, image encoding and edges come from memory; sampling reruns.
    again = engine.run(control_graph(model, controlnets[:1], [0.5], [0.0], [1.0], seed=4), output_dir=tmp_path)
    status = {n: v["status"] for n, v in again.report()["nodes"].items()}
    assert {status[n] for n in ("positive", "negative", "encode", "canny")} == {"cached"}
    assert status["sample"] == "executed"


def test_controlnet_with_per_encoder_guidance(tiny_models, controlnets, tmp_path):
    """Three rows per step (uncond, bigG-only mix, cond): the ControlNet guides every row, as under CFG."""
    from nodes.sampling import GuidanceRows, control_sides

    rows = GuidanceRows(torch.zeros(3, 1, 1), torch.zeros(3, 1), torch.zeros(3, 6), 3, (7.0, 3.0))
    hint = object()
    assert control_sides(rows, Conditioning(torch.zeros(1), torch.zeros(1), control=(hint,)), None, 1) == [
        ((hint,), 1)] * 3
    g = control_graph(tiny_models[9], controlnets[:1], [1.0], [0.0], [1.0])
    g.set_input("sample", "guidance_scale_g", 9.0)
    g.set_input("sample", "guidance_scale_l", 3.0)
    controlled = images(g, tmp_path)
    g.set_input("apply0", "strength", 0.0)
    assert float(np.abs(controlled - images(g, tmp_path)).max()) > 1e-3


def test_single_file_controlnet_equals_its_folder(tiny_models, controlnets, tmp_path):
    """One .safetensors ControlNet (as ComfyUI's models/controlnet files) is converted once and guides as the
    folder it came from; its key is its content."""
    single = tmp_path / "controlnet-canny-sdxl.safetensors"
    single.write_bytes((controlnets[0] / "diffusion_pytorch_model.safetensors").read_bytes())
    folder_graph = control_graph(tiny_models[9], controlnets[:1], [1.0], [0.0], [1.0])
    file_graph = control_graph(tiny_models[9], controlnets[:1], [1.0], [0.0], [1.0])
    file_graph.set_input("cn0", "source", str(single))
    file_graph.set_input("cn0", "config", str(controlnets[0]))
    assert np.array_equal(images(file_graph, tmp_path), images(folder_graph, tmp_path))


def test_comfy_controlnet_workflow_runs(tiny_models, controlnets, tmp_path):
    """ControlNetLoader, ControlNetApplyAdvanced, ControlNetApply and Canny in an API-format graph."""
    data = {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": str(tiny_models[9])}},
        "10": {"class_type": "LoadImage", "inputs": {"image": str(DEMO_IMAGE.parent / "demo_image_alpha.png")}},
        "40": {"class_type": "Canny", "inputs": {"image": ["10", 0], **CANNY}},
        "41": {"class_type": "ControlNetLoader", "inputs": {"control_net_name": str(controlnets[0])}},
        "42": {"class_type": "ControlNetLoader", "inputs": {"control_net_name": str(controlnets[1])}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red apple", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["4", 1]}},
        "43": {"class_type": "ControlNetApplyAdvanced",
               "inputs": {"positive": ["6", 0], "negative": ["7", 0], "control_net": ["41", 0], "image": ["40", 0],
                          "strength": 0.9, "start_percent": 0.0, "end_percent": 0.8}},
        "44": {"class_type": "ControlNetApply", "inputs": {"conditioning": ["43", 0], "control_net": ["42", 0],
                                                           "image": ["40", 0], "strength": 0.5}},
        "20": {"class_type": "InpaintModelConditioning",
               "inputs": {"positive": ["44", 0], "negative": ["43", 1], "vae": ["4", 2], "pixels": ["10", 0],
                          "mask": ["10", 1], "noise_mask": True}},
        "3": {"class_type": "KSampler", "inputs": {"seed": 1, "steps": 3, "cfg": 7.0, "sampler_name": "euler",
                                                   "scheduler": "normal", "denoise": 1.0, "model": ["4", 0],
                                                   "positive": ["20", 0], "negative": ["20", 1],
                                                   "latent_image": ["20", 2]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]}},
    }
    graph = graph_from_data(data)
    assert [graph.nodes[n].type for n in ("40", "41", "43", "44")] == [
        "Canny", "LoadControlNet", "ApplyControlNet", "ControlConditioning"]
    engine = Engine()
    result = engine.run(graph, output_dir=tmp_path)
    assert result.ok and len(result.outputs["9"]) == 1
    # The positive-only ControlNet (ControlNetApply) changes the image: it reaches the sampler.
    data["20"]["inputs"]["positive"] = ["43", 0]
    other = engine.run(graph_from_data(data), output_dir=tmp_path)
    assert float((other["8"]["image"] - result["8"]["image"]).abs().max()) > 1e-4


def test_make_tiny_model_writes_lora_and_controlnet(tmp_path):
    from nodes.commands import _make_tiny_model
    from nodes.lora import lora_components

    args = argparse.Namespace(dir=str(tmp_path / "tiny"), full_size=False, in_channels=9, seed=0, dtype="float16")
    assert _make_tiny_model(args) == 0
    addons = tmp_path / "tiny" / "addons"
    for layout in ("peft", "kohya"):
        assert lora_components(str(addons / f"lora-{layout}.safetensors")) == {"unet", "text_encoder",
                                                                               "text_encoder_2"}
    assert (addons / "controlnet" / "config.json").is_file()
    g = control_graph(tmp_path / "tiny", [addons / "controlnet"], [1.0], [0.0], [1.0])
    unet = g.add("LoadLora", id="lora", unet=g["checkpoint"].unet, clip=g["checkpoint"].clip,
                 source=str(addons / "lora-kohya.safetensors"))
    g.set_input("sample", "unet", unet.unet.link())
    assert Engine().run(g, output_dir=tmp_path).ok


def test_ranges_by_steps_and_by_timesteps():
    """diffusers counts the steps run; ComfyUI counts the model's timesteps (percent 0.3 = timestep 699.3)."""
    from nodes.controlnet import ControlHint

    timesteps = [801, 601, 401, 201, 1]  # SDXL's leading spacing, 5 steps
    for range_by, expected in (("steps", [False, False, True, True, True]),
                               ("timesteps", [False, True, True, True, True])):
        hint = ControlHint(None, None, 1.0, 0.3, 1.0, range_by)  # type: ignore[arg-type]
        assert [hint.active(i, 5, t) for i, t in enumerate(timesteps)] == expected, range_by
    late = ControlHint(None, None, 1.0, 0.0, 0.5, "timesteps")  # type: ignore[arg-type]
    assert [late.active(i, 5, t) for i, t in enumerate(timesteps)] == [True, True, False, False, False]


def test_comfyui_controlnet_ranges_count_timesteps(tiny_models, controlnets, tmp_path):
    """ControlNetApplyAdvanced maps with range_by=timesteps and runs through Sample."""
    prompt = json.loads((ROOT / "tests" / "comfy" / "inpaint_api.json").read_text())
    prompt["4"]["inputs"]["ckpt_name"] = str(tiny_models[9])
    prompt["10"]["inputs"]["image"] = str(ROOT / "workflows" / "demo_image_alpha.png")
    prompt["40"] = {"class_type": "ControlNetLoader", "inputs": {"control_net_name": str(controlnets[0])}}
    prompt["41"] = {"class_type": "ControlNetApplyAdvanced", "inputs": {
        "positive": ["6", 0], "negative": ["7", 0], "control_net": ["40", 0], "image": ["10", 0],
        "strength": 1.0, "start_percent": 0.3, "end_percent": 0.9}}
    prompt["20"]["inputs"].update(positive=["41", 0], negative=["41", 1])
    graph = graph_from_data(prompt)
    assert graph.nodes["41"].inputs["range_by"] == "timesteps"
    engine = Engine()
    by_timesteps = engine.run(graph, output_dir=tmp_path)["3"]["latent"].samples
    # 4 steps at timesteps 751, 501, 251, 1: by timesteps it applies at 501 and 251 (699.3 >= t >= 99.9),
    # by steps only at the third (i / 4 >= 0.3 and (i + 1) / 4 <= 0.9)
    graph.set_input("41", "range_by", "steps")
    by_steps = engine.run(graph, output_dir=tmp_path)["3"]["latent"].samples
    assert float((by_timesteps - by_steps).abs().max()) > 1e-3
