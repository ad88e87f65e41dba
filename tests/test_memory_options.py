"""Memory options: each runs the tiny model end to end where this machine can, and matches the plain run
(exactly where the option is exact, within a stated bound where it is not); the CUDA-only ones fail
validation here with a message that says why, and run for real only where CUDA exists."""

from __future__ import annotations

import logging

import pytest
import torch
from PIL import Image

from nodegraph import Engine, WorkflowError, validate
from nodes.models import ModelManager
from tests.sdxl_graphs import DEMO_IMAGE, DEMO_MASK, inpaint_graph

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")


def images(tiny_models, tmp_path, engine=None, **options):
    ckpt_options = {k: options.pop(k) for k in ("offload", "attention", "vae_tiling", "vae_slicing", "quantize",
                                                 "device", "dtype") if k in options}
    g = inpaint_graph(str(tiny_models[9]), steps=4, **options)
    for k, v in ckpt_options.items():
        g.set_input("checkpoint", k, v)
    return (engine or Engine()).run(g, output_dir=tmp_path)["decode"]["image"]


@pytest.fixture
def plain(tiny_models, tmp_path):
    return images(tiny_models, tmp_path)


@pytest.mark.slow
def test_sliced_attention_matches(tiny_models, tmp_path, plain, caplog):
    with caplog.at_level(logging.WARNING):
        sliced = images(tiny_models, tmp_path, attention="sliced")
    assert float((sliced - plain).abs().max()) <= 1e-5
    assert "mostly costs time" in caplog.text


@pytest.mark.slow
def test_vae_slicing_is_exact(tiny_models, tmp_path):
    assert torch.equal(images(tiny_models, tmp_path, batch_size=2, vae_slicing=True),
                       images(tiny_models, tmp_path, batch_size=2))


@pytest.mark.slow
def test_vae_tiling_is_exact_within_one_tile_and_bounded_beyond(tiny_models, tmp_path):
    small_image, small_mask = tmp_path / "img64.png", tmp_path / "mask64.png"
    Image.open(DEMO_IMAGE).resize((64, 64)).save(small_image)
    Image.open(DEMO_MASK).resize((64, 64)).save(small_mask)
    one_tile = dict(image=small_image, mask=small_mask)  # the tiny VAE's tile is 64 px
    assert torch.equal(images(tiny_models, tmp_path, vae_tiling=True, **one_tile),
                       images(tiny_models, tmp_path, **one_tile))
    tiled = images(tiny_models, tmp_path, vae_tiling=True)  # 128x96: several blended tiles
    plain = images(tiny_models, tmp_path)
    # Seams of blended tiles, in both the encoder and the decoder of a random-weight VAE.
    assert 0 < float((tiled - plain).abs().mean()) <= 0.05  # measured 0.029 here


@pytest.mark.slow
@pytest.mark.parametrize("how, bound", [("int8", 0.02), ("fp8", 0.05)])
def test_weight_quantization_runs_on_cpu_within_bounds(tiny_models, tmp_path, plain, how, bound):
    pytest.importorskip("optimum.quanto")
    engine = Engine()
    quantized = images(tiny_models, tmp_path, engine, quantize=how)
    diff = float((quantized - plain).abs().mean())
    assert 0 < diff <= bound, diff  # mean abs pixel difference, on a 0..1 scale
    manager = engine.resources[ModelManager]
    unet = next(m for k, (m, _, _) in manager._loaded.items() if k[1] == "unet")
    assert type(unet.conv_in).__name__ == "QConv2d"


@pytest.mark.skipif(CUDA, reason="checks the error shown where there is no CUDA device")
@pytest.mark.parametrize("option, value, fragment", [
    ("offload", "model", "no CUDA device"), ("offload", "sequential", "no CUDA device"),
    ("offload", "group", "no CUDA device"), ("quantize", "nf4", "needs a CUDA device"),
    ("device", "cuda", "no CUDA device"),
])
def test_cuda_only_options_fail_validation_without_cuda(tiny_models, option, value, fragment):
    g = inpaint_graph(str(tiny_models[9]))
    g.set_input("checkpoint", option, value)
    with pytest.raises(WorkflowError) as info:
        validate(g)
    (issue,) = info.value.issues
    assert issue.node == "checkpoint" and issue.input == option and fragment in issue.message


@pytest.mark.slow
@needs_cuda
@pytest.mark.parametrize("offload", ["model", "sequential", "group"])
def test_offload_matches_on_cuda(tiny_models, tmp_path, offload):
    base = images(tiny_models, tmp_path, device="cuda", dtype="float32")
    moved = images(tiny_models, tmp_path, device="cuda", dtype="float32", offload=offload)
    assert float((moved - base).abs().max()) <= 1e-3


@pytest.mark.slow
@needs_cuda
def test_nf4_runs_on_cuda(tiny_models, tmp_path):
    pytest.importorskip("bitsandbytes")
    assert torch.isfinite(images(tiny_models, tmp_path, device="cuda", quantize="nf4")).all()


@pytest.mark.slow
def test_decode_out_of_memory_falls_back_to_tiles(tiny_models, tmp_path, monkeypatch, caplog):
    from diffusers import AutoencoderKL

    real_decode = AutoencoderKL.decode
    calls = {"untiled": 0, "tiled": 0}

    def decode_or_oom(self, z, *args, **kwargs):
        if not self.use_tiling:
            calls["untiled"] += 1
            raise torch.OutOfMemoryError("injected: CUDA out of memory")
        calls["tiled"] += 1
        return real_decode(self, z, *args, **kwargs)

    g = inpaint_graph(str(tiny_models[9]), steps=4)
    monkeypatch.setattr(AutoencoderKL, "decode", decode_or_oom)
    with caplog.at_level(logging.WARNING):
        result = Engine().run(g, output_dir=tmp_path)
    monkeypatch.setattr(AutoencoderKL, "decode", real_decode)
    assert calls == {"untiled": 1, "tiled": 1} and "retrying with tiled decoding" in caplog.text
    vae = AutoencoderKL.from_pretrained(str(tiny_models[9]), subfolder="vae")
    vae.enable_tiling()
    with torch.no_grad():
        z = result["sample"]["latent"].samples / vae.config.scaling_factor
        expected = (vae.decode(z).sample / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1)
    assert float((result["decode"]["image"] - expected).abs().max()) <= 1e-5


@pytest.mark.slow
def test_model_budget_unloads_least_recently_used(tiny_models, tmp_path, plain):
    engine = Engine()
    unet_bytes = (tiny_models[9] / "unet" / "diffusion_pytorch_model.safetensors").stat().st_size
    manager = ModelManager(budget_bytes=int(unet_bytes * 1.02))  # room for the UNet, not for everything at once
    engine.resources[ModelManager] = manager
    budgeted = images(tiny_models, tmp_path, engine)
    assert torch.equal(budgeted, plain)
    assert {"text_encoder", "text_encoder_2"} <= set(manager.unloaded)
    assert manager.bytes <= manager.budget_bytes
    assert manager.loaded_components()[-1] == "vae_decoder"  # the most recently used stays


@pytest.mark.slow
def test_quantized_unet_is_kept_and_reloaded_without_full_precision(tiny_models, tmp_path, monkeypatch,
                                                                     _isolated_cache):
    pytest.importorskip("optimum.quanto")
    from diffusers import UNet2DConditionModel

    first = images(tiny_models, tmp_path, quantize="int8")
    (kept,) = (_isolated_cache / "quantized").iterdir()
    assert kept.name.endswith("-unet-float32-int8") and (kept / "quantization_map.json").is_file()

    def no_full_precision(*args, **kwargs):
        raise AssertionError("the full-precision UNet was read although quantized weights are kept")

    monkeypatch.setattr(UNet2DConditionModel, "from_pretrained", no_full_precision)
    again = images(tiny_models, tmp_path, quantize="int8")
    assert torch.equal(first, again)
    (kept / "weights.safetensors").write_bytes(b"garbage")  # a bad entry is ignored, not trusted
    monkeypatch.undo()
    assert torch.equal(images(tiny_models, tmp_path, quantize="int8"), first)
