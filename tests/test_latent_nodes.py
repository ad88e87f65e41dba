"""Latent nodes end to end on the tiny model: files, empty latents, the UNet/latent contract."""

from __future__ import annotations

import pytest
import torch

from nodegraph import Graph, NodeExecutionError
from tests.sdxl_graphs import FAST, inpaint_graph, run

pytestmark = pytest.mark.slow  # every test here runs the tiny model end to end


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
