"""LoadVAE, LoadUNet, SetClipLastLayer, Canny, and ComfyUI workflows using the add-on class_types."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, StableDiffusionXLInpaintPipeline, StableDiffusionXLPipeline
from PIL import Image

from nodegraph import Engine, Graph
from nodegraph.workflow import graph_from_data
from nodes.tiny import make_tiny_lora, tiny_configs
from tests.sdxl_graphs import DEMO_IMAGE, DEMO_MASK, ROOT, inpaint_graph

TOL = 1e-4
STEPS = 4


@pytest.fixture(scope="module")
def other_vae(tmp_path_factory) -> Path:
    """A bare diffusers VAE folder (config.json + weights) with other random weights than the checkpoint's."""
    folder = tmp_path_factory.mktemp("vae") / "sdxl-vae"
    torch.manual_seed(7)
    vae = AutoencoderKL(**{**tiny_configs(9)["vae"], "force_upcast": False})
    vae.save_pretrained(folder, safe_serialization=True)
    return folder


def run_images(g: Graph, tmp_path: Path, engine: Engine | None = None) -> np.ndarray:
    return (engine or Engine()).run(g, output_dir=tmp_path)["decode"]["image"].numpy()


def with_vae(g: Graph, source: str) -> Graph:
    vae = g.add("LoadVAE", id="vae", source=source).vae
    g.set_input("encode", "vae", vae.link())
    g.set_input("decode", "vae", vae.link())
    return g


def reference(model: Path, seed: int = 0, **components) -> np.ndarray:
    pipe = StableDiffusionXLInpaintPipeline.from_pretrained(str(model), **components)
    pipe.set_progress_bar_config(disable=True)
    init, mask = Image.open(DEMO_IMAGE).convert("RGB"), Image.open(DEMO_MASK).convert("L")
    return pipe(prompt="a red apple", image=init, mask_image=mask, height=init.height, width=init.width,
                num_inference_steps=STEPS, strength=0.9999, generator=[torch.Generator().manual_seed(seed)],
                output_type="np").images


@pytest.mark.slow
def test_load_vae_equals_pipeline_built_with_that_vae(tiny_models, other_vae, tmp_path, posterior_mode):
    expected = reference(tiny_models[9], vae=AutoencoderKL.from_pretrained(str(other_vae)))
    got = run_images(with_vae(inpaint_graph(str(tiny_models[9]), steps=STEPS), str(other_vae)), tmp_path)
    assert float(np.abs(got - expected).max()) <= TOL
    plain = run_images(inpaint_graph(str(tiny_models[9]), steps=STEPS), tmp_path)
    assert float(np.abs(got - plain).max()) > 1e-2  # the VAE was really replaced


@pytest.mark.slow
def test_load_vae_from_another_pipeline(tiny_models, tmp_path, posterior_mode):
    expected = reference(tiny_models[9], vae=AutoencoderKL.from_pretrained(str(tiny_models[4]), subfolder="vae"))
    got = run_images(with_vae(inpaint_graph(str(tiny_models[9]), steps=STEPS), str(tiny_models[4])), tmp_path)
    assert float(np.abs(got - expected).max()) <= TOL


def test_load_vae_keys_by_content_and_fp16_safe_dtype(tiny_models, other_vae, tmp_path):
    from nodegraph.node import REGISTRY

    copy = tmp_path / "copy"
    copy.mkdir()
    for f in other_vae.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    engine = Engine()
    keys = [engine.plan(with_vae(inpaint_graph(str(tiny_models[9])), str(p))).nodes["decode"].key
            for p in (other_vae, copy)]
    assert keys[0] == keys[1]
    handle = REGISTRY.get("LoadVAE").fn(source=str(other_vae), dtype="float16", device="cpu")
    assert handle.ref.dtype == "float16" and not handle.force_upcast  # force_upcast false: kept in float16
    upcast = REGISTRY.get("LoadVAE").fn(source=str(tiny_models[4]), dtype="float16", device="cpu")
    assert upcast.ref.dtype == "float32"


def _ldm_vae_file(folder: Path, path: Path, blocks: int = 4) -> Path:
    """The VAE in ``folder`` saved as one file with the original (ldm) key names, as ComfyUI's VAE files are."""
    from safetensors.torch import load_file, save_file

    out = {}
    for key, value in load_file(str(folder / "diffusion_pytorch_model.safetensors")).items():
        name = key
        for i in range(blocks):
            name = name.replace(f"encoder.down_blocks.{i}.resnets.", f"encoder.down.{i}.block.")
            name = name.replace(f"encoder.down_blocks.{i}.downsamplers.0.", f"encoder.down.{i}.downsample.")
            name = name.replace(f"decoder.up_blocks.{i}.resnets.", f"decoder.up.{blocks - 1 - i}.block.")
            name = name.replace(f"decoder.up_blocks.{i}.upsamplers.0.", f"decoder.up.{blocks - 1 - i}.upsample.")
        name = name.replace("mid_block.resnets.0.", "mid.block_1.").replace("mid_block.resnets.1.", "mid.block_2.")
        name = name.replace("mid_block.attentions.0.group_norm.", "mid.attn_1.norm.")
        for ours, theirs in (("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out")):
            name = name.replace(f"mid_block.attentions.0.{ours}.", f"mid.attn_1.{theirs}.")
        name = name.replace("conv_shortcut", "nin_shortcut").replace("conv_norm_out", "norm_out")
        if ".attn_1." in name and name.endswith(".weight") and value.ndim == 2:
            value = value[:, :, None, None]  # ldm's attention projections are 1x1 convolutions
        out[name] = value.contiguous()
    assert not any("_blocks." in k or "mid_block" in k for k in out)
    save_file(out, str(path))
    return path


@pytest.mark.slow
def test_load_vae_from_a_single_ldm_file(tiny_models, other_vae, tmp_path):
    """A single-file VAE in the original key layout is converted once and decodes as the folder it came from."""
    single = _ldm_vae_file(other_vae, tmp_path / "sdxl_vae.safetensors")
    g = inpaint_graph(str(tiny_models[9]), steps=STEPS)
    vae = g.add("LoadVAE", id="vae", source=str(single), config=str(other_vae)).vae
    g.set_input("encode", "vae", vae.link())
    g.set_input("decode", "vae", vae.link())
    folder = run_images(with_vae(inpaint_graph(str(tiny_models[9]), steps=STEPS), str(other_vae)), tmp_path)
    assert float(np.abs(run_images(g, tmp_path) - folder).max()) <= TOL
    assert np.array_equal(run_images(g, tmp_path), run_images(g, tmp_path))  # the second time from the converted copy


def _fake_hub_repo(cache: Path, repo_id: str, files: dict[str, Path]) -> None:
    """A repo as huggingface_hub's cache holds it after a download (refs/main -> snapshots/<commit>/)."""
    commit = "0" * 40
    root = cache / ("models--" + repo_id.replace("/", "--"))
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
    for name, src in files.items():
        target = root / "snapshots" / commit / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(src.read_bytes())


@pytest.mark.slow
def test_load_vae_from_a_bare_hub_repo_offline(tiny_models, other_vae, tmp_path, monkeypatch):
    """A hub id naming a bare VAE repo (as the fp16-fix SDXL VAE is published) resolves from the local hub
    cache (HF_HUB_OFFLINE is set in tests) and keys and decodes as the same VAE in a local folder."""
    import huggingface_hub.constants

    cache = tmp_path / "hub"
    _fake_hub_repo(cache, "tiny/sdxl-vae", {f.name: f for f in other_vae.iterdir()})
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    engine = Engine()
    graphs = [with_vae(inpaint_graph(str(tiny_models[9]), steps=STEPS), src) for src in ("tiny/sdxl-vae",
                                                                                          str(other_vae))]
    assert engine.plan(graphs[0]).nodes["decode"].key == engine.plan(graphs[1]).nodes["decode"].key
    assert np.array_equal(run_images(graphs[0], tmp_path, Engine()), run_images(graphs[1], tmp_path, Engine()))


@pytest.mark.slow
@pytest.mark.parametrize("bare", [False, True], ids=["pipeline", "bare-unet-folder"])
def test_load_unet_equals_checkpoint_unet(tiny_models, tmp_path, bare):
    source = tiny_models[9] / "unet" if bare else tiny_models[9]
    g = inpaint_graph(str(tiny_models[9]), steps=STEPS)
    g.set_input("sample", "unet", g.add("LoadUNet", id="unet", source=str(source), dtype="float32").unet.link())
    assert np.array_equal(run_images(g, tmp_path), run_images(inpaint_graph(str(tiny_models[9]), steps=STEPS),
                                                               tmp_path))


@pytest.mark.slow
@pytest.mark.parametrize("last_layer, clip_skip", [(-1, -1), (-2, None), (-3, 1)])
def test_set_clip_last_layer_matches_diffusers_clip_skip(tiny_models, tmp_path, last_layer, clip_skip):
    g = Graph()
    ckpt = g.add("LoadCheckpoint", id="ckpt", source=str(tiny_models[4]), dtype="float32")
    clip = g.add("SetClipLastLayer", id="skip", clip=ckpt.clip, last_layer=last_layer).clip
    g.add("EncodePrompt", id="enc", clip=clip, prompt="a red apple", weighting=False)
    got = Engine().run(g, output_dir=tmp_path, outputs=["enc"])["enc"]["conditioning"]
    pipe = StableDiffusionXLPipeline.from_pretrained(str(tiny_models[4]))
    with torch.no_grad():
        embeds, _, pooled, _ = pipe.encode_prompt("a red apple", do_classifier_free_guidance=False,
                                                  clip_skip=clip_skip)
    assert float((got.embeds - embeds).abs().max()) <= TOL and float((got.pooled - pooled).abs().max()) <= TOL


def test_canny_finds_the_edges_of_a_square():
    from nodegraph.node import REGISTRY

    image = torch.zeros(1, 64, 64, 3)
    image[:, 16:48, 16:48] = 1.0
    edges = REGISTRY.get("Canny").fn(image=image, low_threshold=0.2, high_threshold=0.5)
    assert edges.shape == (1, 64, 64, 3) and set(edges.unique().tolist()) <= {0.0, 1.0}
    on = edges[0, :, :, 0] > 0
    assert on[14:18, 20:44].any() and on[46:50, 20:44].any()  # top and bottom sides
    assert not on[22:42, 22:42].any() and not on[:8].any()  # nothing inside the square or far outside


def test_canny_refuses_low_above_high(tiny_models):
    from nodegraph import validate
    from nodegraph.errors import WorkflowError

    g = Graph()
    img = g.add("LoadImage", id="img", path=str(DEMO_IMAGE))
    g.add("Canny", id="canny", image=img.image, low_threshold=0.9, high_threshold=0.2)
    g.add("SaveImage", id="save", image=g["canny"].image, prefix="x")
    with pytest.raises(WorkflowError, match="low_threshold"):
        validate(g)


@pytest.mark.slow
def test_comfy_workflow_with_lora_vae_unet_clip_skip_and_canny(tiny_models, other_vae, tmp_path):
    """An API-format graph using LoraLoader, LoraLoaderModelOnly, VAELoader, UNETLoader, CLIPSetLastLayer
    and Canny runs unchanged, and equals the same graph written natively."""
    lora = make_tiny_lora(tmp_path / "style.safetensors", "kohya", seed=5)
    lora2 = make_tiny_lora(tmp_path / "detail.safetensors", "peft", seed=6, components=("unet",))
    data = {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": str(tiny_models[9])}},
        "30": {"class_type": "UNETLoader", "inputs": {"unet_name": str(tiny_models[9] / "unet"),
                                                      "weight_dtype": "default"}},
        "31": {"class_type": "VAELoader", "inputs": {"vae_name": str(other_vae)}},
        "32": {"class_type": "LoraLoader", "inputs": {"model": ["30", 0], "clip": ["4", 1], "lora_name": str(lora),
                                                      "strength_model": 0.8, "strength_clip": 0.6}},
        "33": {"class_type": "LoraLoaderModelOnly", "inputs": {"model": ["32", 0], "lora_name": str(lora2),
                                                               "strength_model": 0.5}},
        "34": {"class_type": "CLIPSetLastLayer", "inputs": {"clip": ["32", 1], "stop_at_clip_layer": -1}},
        "10": {"class_type": "LoadImage", "inputs": {"image": str(ROOT / "workflows" / "demo_image_alpha.png")}},
        "35": {"class_type": "Canny", "inputs": {"image": ["10", 0], "low_threshold": 0.1, "high_threshold": 0.3}},
        "36": {"class_type": "SaveImage", "inputs": {"images": ["35", 0], "filename_prefix": "edges"}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red apple", "clip": ["34", 0]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["34", 0]}},
        "20": {"class_type": "InpaintModelConditioning",
               "inputs": {"positive": ["6", 0], "negative": ["7", 0], "vae": ["31", 0], "pixels": ["10", 0],
                          "mask": ["10", 1], "noise_mask": True}},
        "3": {"class_type": "KSampler", "inputs": {"seed": 3, "steps": 3, "cfg": 7.0, "sampler_name": "euler",
                                                   "scheduler": "normal", "denoise": 1.0, "model": ["33", 0],
                                                   "positive": ["20", 0], "negative": ["20", 1],
                                                   "latent_image": ["20", 2]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["31", 0]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]}},
    }
    graph = graph_from_data(data)
    assert {graph.nodes[n].type for n in ("30", "31", "32", "32.clip", "33", "34", "35")} == {
        "LoadUNet", "LoadVAE", "LoadLoraModelOnly", "LoadLoraClipOnly", "SetClipLastLayer", "Canny"}
    engine = Engine()
    result = engine.run(graph, output_dir=tmp_path)
    assert result.ok and len(result.outputs["9"]) == 1 and len(result.outputs["36"]) == 1
    assert result["35"]["image"].shape[-1] == 3
    # Without the second LoRA the image differs: the chain really reaches the sampler.
    data["3"]["inputs"]["model"] = ["32", 0]
    other = engine.run(graph_from_data(data), output_dir=tmp_path)
    assert float((other["8"]["image"] - result["8"]["image"]).abs().max()) > 1e-3
