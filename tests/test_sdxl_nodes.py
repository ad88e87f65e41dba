"""Behaviour of the SDXL nodes beyond the reference: composites, masks, crops, files, bad input."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nodegraph import Engine, Graph, NodeExecutionError, WorkflowError, validate
from nodegraph.cli import main
from nodegraph.workflow import PNG_TEXT_KEY
from tests.sdxl_graphs import DEMO_IMAGE, DEMO_MASK, ROOT, inpaint_graph

FAST = {"steps": 3}


def run(graph: Graph, tmp_path, **kwargs):
    return Engine().run(graph, output_dir=tmp_path, **kwargs)


def with_composite(g: Graph, feather: int = 0) -> Graph:
    comp = g.add("CompositeMasked", id="composite", original=g["image"].image, generated=g["decode"].image,
                 mask=g["mask"].mask, feather=feather)
    g.set_input("save", "image", comp.image.link())
    return g


@pytest.mark.parametrize("feather", [0, 3])
def test_composite_leaves_every_unmasked_pixel_equal(tiny_models, tmp_path, feather):
    result = run(with_composite(inpaint_graph(str(tiny_models[9]), **FAST), feather), tmp_path)
    original, out = result["image"]["image"], result["composite"]["image"]
    keep = result["mask"]["mask"] == 0
    assert torch.equal(out[keep], original[keep])
    repaint = result["mask"]["mask"] >= 0.999
    inner = repaint.clone()
    if feather:  # well inside the mask, far from the feathered seam
        inner = torch.nn.functional.max_pool2d((~repaint).float()[None], 2 * feather + 3, 1, feather + 1)[0] == 0
    assert torch.allclose(out[inner], result["decode"]["image"][inner], atol=1e-6)


def test_saved_png_carries_the_workflow_and_reruns(builtin_models_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    out = tmp_path / "out"
    assert main(["run", "workflows/demo_tiny.json", "--output-dir", str(out), "--quiet",
                 "--set", "sample.steps=2"]) == 0
    (png,) = out.glob("demo_*.png")
    embedded = json.loads(Image.open(png).text[PNG_TEXT_KEY])
    assert embedded["nodes"]["sample"]["inputs"]["steps"] == 2
    assert main(["run", str(png), "--output-dir", str(out), "--quiet", "--report", str(tmp_path / "r.json")]) == 0
    assert len(list(out.glob("demo_*.png"))) == 2
    nodes = json.loads((tmp_path / "r.json").read_text())["nodes"]
    assert nodes["composite"]["cache"] == "disk" and nodes["sample"] | {"seconds": 0} == {
        "type": "Sample", "status": "cached", "cache": "disk", "read": False, "seconds": 0}


def test_image_and_mask_of_different_sizes(tiny_models, tmp_path):
    small = tmp_path / "small_mask.png"
    Image.new("L", (64, 64), 255).save(small)
    with pytest.raises(NodeExecutionError) as info:
        run(inpaint_graph(str(tiny_models[9]), mask=small, **FAST), tmp_path)
    assert info.value.node_id == "encode"
    assert "image is 128x96 but mask is 64x64" in str(info.value)


def test_sizes_not_multiple_of_8_are_rounded_down_with_a_warning(tiny_models, tmp_path, caplog):
    odd_image, odd_mask = tmp_path / "odd.png", tmp_path / "odd_mask.png"
    Image.open(DEMO_IMAGE).resize((101, 75)).save(odd_image)
    Image.open(DEMO_MASK).resize((101, 75)).save(odd_mask)
    with caplog.at_level(logging.WARNING):
        result = run(inpaint_graph(str(tiny_models[9]), image=odd_image, mask=odd_mask, **FAST), tmp_path)
    assert result["decode"]["image"].shape == (1, 72, 96, 3)
    assert "101x75 resized to 96x72" in caplog.text
    g = inpaint_graph(str(tiny_models[9]), image=odd_image, mask=odd_mask, **FAST)
    g.set_input("image", "round_to", 1)
    with pytest.raises(NodeExecutionError, match="must be multiples of 8"):
        run(g, tmp_path)


@pytest.mark.parametrize("fill", [0, 255])
def test_empty_and_full_masks_still_work(tiny_models, tmp_path, fill):
    mask = tmp_path / "m.png"
    Image.new("L", (128, 96), fill).save(mask)
    result = run(with_composite(inpaint_graph(str(tiny_models[9]), mask=mask, **FAST)), tmp_path)
    out, original, generated = result["composite"]["image"], result["image"]["image"], result["decode"]["image"]
    assert torch.equal(out, original) if fill == 0 else torch.equal(out, generated)


def test_thin_strokes_survive_max_downsampling(tiny_models, tmp_path):
    stroke = tmp_path / "stroke.png"
    arr = np.zeros((96, 128), dtype=np.uint8)
    arr[:, 61:63] = 255  # 2 pixels wide, thinner than one latent cell
    Image.fromarray(arr).save(stroke)
    masks = {}
    for mode in ("nearest", "max", "area"):
        result = run(inpaint_graph(str(tiny_models[9]), mask=stroke, mask_mode=mode, **FAST), tmp_path)
        masks[mode] = result["latent_mask"]["latent"].mask
    assert masks["nearest"].sum() == 0
    assert masks["max"][0, 0, :, 7].eq(1).all() and masks["max"].sum() == 12
    assert torch.allclose(masks["area"][0, 0, :, 7], torch.full((12,), 0.25))


def test_crop_to_mask_and_back(tiny_models, tmp_path):
    g = Graph()
    ckpt = g.add("LoadCheckpoint", id="checkpoint", source=str(tiny_models[9]))
    img = g.add("LoadImage", id="image", path=str(DEMO_IMAGE))
    msk = g.add("LoadMask", id="mask", path=str(DEMO_MASK))
    crop = g.add("CropToMask", id="crop", image=img.image, mask=msk.mask, padding=4, width=64, height=64)
    pos = g.add("EncodePrompt", clip=ckpt.clip, prompt="an apple")
    enc = g.add("VAEEncode", vae=ckpt.vae, image=crop.image, mask=crop.mask)
    lat = g.add("DownsampleMask", latent=enc.latent, mask=crop.mask)
    smp = g.add("Sample", unet=ckpt.unet, positive=pos.conditioning, latent=lat.latent, steps=2)
    dec = g.add("VAEDecode", vae=ckpt.vae, latent=smp.latent)
    back = g.add("UncropToMask", id="uncrop", original=img.image, generated=dec.image, mask=msk.mask,
                 region=crop.region)
    g.add("SaveImage", image=back.image)
    result = run(g, tmp_path)
    x0, y0, x1, y1 = result["crop"]["region"].box
    m = result["mask"]["mask"][0]
    ys, xs = torch.nonzero(m > 0.5, as_tuple=True)
    assert x0 <= int(xs.min()) and int(xs.max()) < x1 and y0 <= int(ys.min()) and int(ys.max()) < y1
    assert abs((x1 - x0) / (y1 - y0) - 1.0) < 0.1  # widened to the 64x64 aspect
    assert result["crop"]["image"].shape == (1, 64, 64, 3)
    out, original = result["uncrop"]["image"], result["image"]["image"]
    assert torch.equal(out[0][m == 0], original[0][m == 0])
    assert not torch.equal(out, original)


def test_latents_round_trip_through_a_file(tiny_models, tmp_path):
    g = inpaint_graph(str(tiny_models[9]), **FAST)
    g.add("SaveLatent", id="save_latent", latent=g["sample"].latent, path=str(tmp_path / "lat"))
    first = run(g, tmp_path)
    assert first.outputs["save_latent"] == [str(tmp_path / "lat.safetensors")]
    g2 = Graph()
    ckpt = g2.add("LoadCheckpoint", source=str(tiny_models[9]))
    lat = g2.add("LoadLatent", id="load", path=str(tmp_path / "lat.safetensors"))
    g2.add("SaveImage", image=g2.add("VAEDecode", id="decode", vae=ckpt.vae, latent=lat.latent).image)
    second = run(g2, tmp_path)
    assert torch.equal(second["load"]["latent"].samples, first["sample"]["latent"].samples)
    assert torch.equal(second["load"]["latent"].mask, first["sample"]["latent"].mask)
    assert torch.equal(second["decode"]["image"], first["decode"]["image"])


def test_text_to_image_with_empty_latent(tiny_models, tmp_path):
    g = Graph()
    ckpt = g.add("LoadCheckpoint", source=str(tiny_models[4]))
    pos = g.add("EncodePrompt", clip=ckpt.clip, prompt="a lighthouse")
    empty = g.add("EmptyLatent", width=64, height=48, batch_size=2)
    smp = g.add("Sample", id="sample", unet=ckpt.unet, positive=pos.conditioning, latent=empty.latent, steps=3)
    g.add("SaveImage", image=g.add("VAEDecode", id="decode", vae=ckpt.vae, latent=smp.latent).image)
    result = run(g, tmp_path)
    assert result["decode"]["image"].shape == (2, 48, 64, 3)
    assert not torch.equal(result["decode"]["image"][0], result["decode"]["image"][1])


def test_nine_channel_unet_refuses_an_empty_latent(tiny_models, tmp_path):
    g = Graph()
    ckpt = g.add("LoadCheckpoint", source=str(tiny_models[9]))
    pos = g.add("EncodePrompt", clip=ckpt.clip, prompt="x")
    smp = g.add("Sample", id="sample", unet=ckpt.unet, positive=pos.conditioning,
                latent=g.add("EmptyLatent", width=64, height=64).latent, steps=2)
    g.add("SaveLatent", latent=smp.latent, path=str(tmp_path / "x"))
    with pytest.raises(NodeExecutionError, match="9-channel inpainting UNet"):
        run(g, tmp_path)


@pytest.mark.parametrize("sampler, scheduler, fragment", [
    ("ddim", "karras", "has no 'use_karras_sigmas'"),
    ("euler_ancestral", "exponential", "has no 'use_exponential_sigmas'"),
    ("lcm", "beta", "has no 'use_beta_sigmas'"),
])
def test_impossible_sampler_schedule_pairs_fail_validation(tiny_models, sampler, scheduler, fragment):
    g = inpaint_graph(str(tiny_models[9]), sampler=sampler, scheduler=scheduler)
    with pytest.raises(WorkflowError) as info:
        validate(g)
    (issue,) = info.value.issues
    assert issue.kind == "unsupported_option" and issue.node == "sample" and fragment in issue.message


def test_every_listed_sampler_runs(tiny_models, tmp_path):
    from nodes.schedulers import BUILTIN_SAMPLERS as SAMPLERS

    engine = Engine()
    for sampler in SAMPLERS:
        g = inpaint_graph(str(tiny_models[4]), sampler=sampler, steps=3, strength=1.0)
        image = engine.run(g, output_dir=tmp_path)["decode"]["image"]
        assert torch.isfinite(image).all(), sampler


def test_denoising_start_must_be_below_end(tiny_models):
    with pytest.raises(WorkflowError, match="denoising_start 0.7 must be below denoising_end 0.5"):
        validate(inpaint_graph(str(tiny_models[9]), denoising_start=0.7, denoising_end=0.5))


# ---- prompts ---------------------------------------------------------------------------------------
def encode(tiny_models, tmp_path, prompt: str, **kwargs):
    """Run just an EncodePrompt (any node can be demanded as an output)."""
    g = Graph()
    ckpt = g.add("LoadCheckpoint", source=str(tiny_models[9]))
    g.add("EncodePrompt", id="enc", clip=ckpt.clip, prompt=prompt, **kwargs)
    return Engine().run(g, output_dir=tmp_path, outputs=["enc"])["enc"]["conditioning"]


LONG = ", ".join(["a very detailed painting of a red apple on a wooden table"] * 8)


def test_long_prompt_without_weighting_is_truncated_with_a_warning(tiny_models, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        cond = encode(tiny_models, tmp_path, LONG, weighting=False)
    assert cond.embeds.shape[1] == 77 and "prompt truncated" in caplog.text


def test_long_prompt_with_weighting_is_chunked(tiny_models, tmp_path):
    cond = encode(tiny_models, tmp_path, LONG)
    assert cond.embeds.shape[1] % 77 == 0 and cond.embeds.shape[1] > 77
    short = encode(tiny_models, tmp_path, "an apple")
    assert cond.pooled.shape == short.pooled.shape == (1, 32)


def test_weights_change_the_encoding_and_plain_prompts_do_not(tiny_models, tmp_path):
    plain = encode(tiny_models, tmp_path, "a red apple")
    off = encode(tiny_models, tmp_path, "a red apple", weighting=False)
    weighted = encode(tiny_models, tmp_path, "a (red:1.5) apple")
    assert torch.equal(plain.embeds, off.embeds)
    assert weighted.embeds.shape == plain.embeds.shape
    assert not torch.allclose(weighted.embeds, plain.embeds)


def test_prompt_2_feeds_only_the_second_encoder(tiny_models, tmp_path):
    same = encode(tiny_models, tmp_path, "an apple")
    other = encode(tiny_models, tmp_path, "an apple", prompt_2="a pear")
    width_1 = 32  # hidden size of the tiny text encoder 1: its half of the 64-wide embedding
    assert torch.equal(same.embeds[..., :width_1], other.embeds[..., :width_1])
    assert not torch.equal(same.embeds[..., width_1:], other.embeds[..., width_1:])


# ---- checkpoints -----------------------------------------------------------------------------------
def ckpt_graph(source: str, out: str = "/nonexistent/never-written") -> Graph:
    """checkpoint -> prompt -> Sample(EmptyLatent) -> SaveLatent: touches the text encoders and the UNet."""
    g = Graph()
    ckpt = g.add("LoadCheckpoint", id="checkpoint", source=source)
    pos = g.add("EncodePrompt", id="positive", clip=ckpt.clip, prompt="x")
    empty = g.add("EmptyLatent", width=64, height=64)
    smp = g.add("Sample", id="sample", unet=ckpt.unet, positive=pos.conditioning, latent=empty.latent, steps=2)
    g.add("SaveLatent", id="out", latent=smp.latent, path=out)
    return g


def test_missing_checkpoint_names_the_path(tmp_path):
    with pytest.raises(NodeExecutionError) as info:
        run(ckpt_graph(str(tmp_path / "nowhere" / "model")), tmp_path)
    assert info.value.node_id == "checkpoint" and "nowhere/model: no such file or directory" in str(info.value)


@pytest.mark.parametrize("suffix", [".ckpt", ".pt", ".bin"])
def test_pickle_checkpoints_are_refused(tmp_path, suffix):
    bad = tmp_path / f"model{suffix}"
    bad.write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(NodeExecutionError, match="pickle files"):
        run(ckpt_graph(str(bad)), tmp_path)


def test_corrupt_weights_give_a_clear_error(tiny_models, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_models[9], broken)
    weights = broken / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(NodeExecutionError) as info:
        run(ckpt_graph(str(broken)), tmp_path)
    assert info.value.node_id == "sample" and "cannot load unet" in str(info.value)


def test_unet_with_other_channel_counts_is_refused(tiny_models, tmp_path):
    odd = tmp_path / "odd"
    shutil.copytree(tiny_models[9], odd)
    cfg = json.loads((odd / "unet" / "config.json").read_text())
    cfg["in_channels"] = 5
    (odd / "unet" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(NodeExecutionError, match="UNet has 5 input channels"):
        run(ckpt_graph(str(odd)), tmp_path)


def test_hub_id_offline_names_the_id(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(NodeExecutionError) as info:
        run(ckpt_graph("diffusers/stable-diffusion-xl-1.0-inpainting-0.1"), tmp_path)
    assert "diffusers/stable-diffusion-xl-1.0-inpainting-0.1" in str(info.value) and "HF_HUB_OFFLINE" in str(info.value)


def test_builtin_model_is_built_on_first_use(tmp_path, monkeypatch):
    monkeypatch.setenv("NODEGRAPH_CACHE_DIR", str(tmp_path / "fresh-cache"))
    result = run(ckpt_graph("builtin:tiny-sdxl", str(tmp_path / "lat")), tmp_path)
    assert result.ok
    folder = next((tmp_path / "fresh-cache" / "models").iterdir())
    assert "RANDOM WEIGHTS" in (folder / "README.md").read_text()
    assert sorted(result.loaded) == sorted(["tokenizer", "text_encoder", "tokenizer_2", "text_encoder_2", "unet"])


def test_make_tiny_model_command_is_deterministic(tmp_path, capsys):
    assert main(["make-tiny-model", str(tmp_path / "a"), "--in-channels", "4"]) == 0
    assert "4-channel UNet" in capsys.readouterr().out
    assert main(["make-tiny-model", str(tmp_path / "b"), "--in-channels", "4"]) == 0
    for f in (tmp_path / "a").rglob("*.safetensors"):
        assert f.read_bytes() == (tmp_path / "b" / f.relative_to(tmp_path / "a")).read_bytes()
    assert json.loads((tmp_path / "a" / "unet" / "config.json").read_text())["in_channels"] == 4
    assert main(["make-tiny-model", str(tmp_path / "a")]) == 2  # never overwrites


# ---- single-file checkpoints -----------------------------------------------------------------------
def _fake_single_file(path, tensors):
    from safetensors.torch import save_file

    save_file({k: torch.zeros(shape, dtype=torch.float16) for k, shape in tensors.items()}, str(path))
    return path


@pytest.mark.parametrize("tensors, message", [
    ({"some.other.weight": (2, 2)}, "not an SDXL checkpoint in the original layout"),
    ({"model.diffusion_model.input_blocks.0.0.weight": (8, 9, 3, 3)}, "no second text encoder"),
    ({"model.diffusion_model.input_blocks.0.0.weight": (8, 5, 3, 3),
      "conditioner.embedders.1.model.token_embedding.weight": (4, 4)}, "UNet has 5 input channels"),
])
def test_single_file_checkpoints_are_checked_from_the_header(tmp_path, tensors, message):
    path = _fake_single_file(tmp_path / "model.safetensors", tensors)
    with pytest.raises(NodeExecutionError, match=message) as info:
        run(ckpt_graph(str(path)), tmp_path)
    assert info.value.node_id == "checkpoint"


def test_truncated_single_file_is_reported(tmp_path):
    path = _fake_single_file(tmp_path / "model.safetensors", {"model.diffusion_model.input_blocks.0.0.weight": (8, 9, 3, 3)})
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(NodeExecutionError, match="corrupt or truncated"):
        run(ckpt_graph(str(path)), tmp_path)


def test_header_inspection_reads_channels_and_dtype(tmp_path):
    from nodes.single_file import inspect_checkpoint

    path = _fake_single_file(tmp_path / "m.safetensors", {
        "model.diffusion_model.input_blocks.0.0.weight": (8, 9, 3, 3),
        "conditioner.embedders.1.model.token_embedding.weight": (4, 4)})
    assert inspect_checkpoint(path) == (9, "float16", "float16")


def test_real_clip_vocabulary_gives_clips_token_ids(tmp_path):
    from transformers import CLIPTokenizer

    from nodes.vocab import find_clip_bpe, write_clip_tokenizer

    assert find_clip_bpe() is not None, "install the vocabulary: pip install --no-deps open-clip-torch"
    write_clip_tokenizer(tmp_path / "tok")
    tokenizer = CLIPTokenizer.from_pretrained(str(tmp_path / "tok"))
    assert len(tokenizer) == 49408
    # OpenAI CLIP's ids for this sentence: <start> a photo of a cat <end>
    assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]


def test_single_file_checkpoint_gives_the_same_images_as_its_folder(tiny_models, tmp_path):
    """A tiny model written in the original single-file layout, converted with diffusers' converter (once,
    then from the conversion cache), produces exactly the images of the diffusers folder it came from."""
    from tests.original_layout import write_original_layout

    single = write_original_layout(tiny_models[9], tmp_path / "tiny-inpaint.safetensors")
    folder = run(inpaint_graph(str(tiny_models[9]), **FAST), tmp_path)["decode"]["image"]

    def from_file() -> tuple[torch.Tensor, list[str]]:
        g = inpaint_graph(str(single), **FAST)
        g.set_input("checkpoint", "config", str(tiny_models[9]))  # the tiny architecture, not SDXL 1.0's
        result = run(g, tmp_path)
        return result["decode"]["image"], result.loaded

    image, loaded = from_file()
    assert torch.equal(image, folder)
    assert "unet" in loaded
    again, _ = from_file()  # from the converted folder kept in the cache
    assert torch.equal(again, folder)


def test_config_only_applies_to_single_files(tiny_models, tmp_path):
    g = inpaint_graph(str(tiny_models[9]), **FAST)
    g.set_input("checkpoint", "config", str(tiny_models[9]))
    with pytest.raises(NodeExecutionError, match="only applies to single-file checkpoints"):
        run(g, tmp_path)


def test_single_file_keeps_a_float32_vae_beside_a_float16_model(tiny_models, tmp_path):
    from safetensors.torch import load_file

    from nodes.single_file import inspect_checkpoint
    from tests.original_layout import write_original_layout

    single = write_original_layout(tiny_models[9], tmp_path / "mixed.safetensors", dtype=torch.float16)
    assert inspect_checkpoint(single) == (9, "float16", "float32")
    g = inpaint_graph(str(single), **FAST)
    g.set_input("checkpoint", "config", str(tiny_models[9]))
    result = run(g, tmp_path)
    converted = Path(result["checkpoint"]["vae"].ref.source.path)
    original = load_file(str(tiny_models[9] / "vae" / "diffusion_pytorch_model.safetensors"))
    kept = load_file(str(next((converted / "vae").glob("*.safetensors"))))
    assert all(kept[k].dtype == torch.float32 and torch.equal(kept[k], v) for k, v in original.items())
    unet = load_file(str(next((converted / "unet").glob("*.safetensors"))))
    assert unet["conv_in.weight"].dtype == torch.float16


@pytest.mark.parametrize("variant, expected", [
    (None, ["unet/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.safetensors.index.json",
            "unet/diffusion_pytorch_model-00001-of-00002.safetensors", "text_encoder/model.safetensors"]),
    ("fp16", ["unet/diffusion_pytorch_model.fp16.safetensors", "unet/diffusion_pytorch_model.fp16.safetensors.index.json",
              "unet/diffusion_pytorch_model.fp16-00001-of-00002.safetensors", "text_encoder/model.fp16.safetensors"]),
])
def test_hub_download_fetches_one_set_of_weights(variant, expected):
    """A hub repo holds weights twice (full and fp16) plus extras: only what will be loaded is fetched."""
    from fnmatch import fnmatch

    from nodes.sources import hub_patterns

    weights = ["unet/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.fp16.safetensors",
               "unet/diffusion_pytorch_model.safetensors.index.json",
               "unet/diffusion_pytorch_model.fp16.safetensors.index.json",
               "unet/diffusion_pytorch_model-00001-of-00002.safetensors",
               "unet/diffusion_pytorch_model.fp16-00001-of-00002.safetensors", "unet/diffusion_pytorch_model.bin",
               "text_encoder/model.safetensors", "text_encoder/model.fp16.safetensors", "text_encoder/flax_model.msgpack",
               "vae_1_0/diffusion_pytorch_model.fp16.safetensors", "sd_xl_base_1.0.safetensors"]
    configs = ["model_index.json", "unet/config.json", "vae/config.json", "scheduler/scheduler_config.json",
               "tokenizer/vocab.json", "tokenizer_2/merges.txt"]
    allow, ignore = hub_patterns(variant)
    fetched = [f for f in weights + configs if any(fnmatch(f, a) for a in allow) and not any(fnmatch(f, i) for i in ignore)]
    assert fetched == expected + configs
