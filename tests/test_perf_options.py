"""Speed options of LoadCheckpoint: dtype=auto per device and CPU capability, attention backends, compile.

Each option's output is compared with the float32 / eager reference within the tolerance docs/memory.md
states; the CPU capability check is simulated by the flags it reads.
"""

from __future__ import annotations

import logging

import pytest
import torch

from nodegraph import REGISTRY, Engine
from nodes import memory
from nodes.compile import CompiledForward, compile_component
from nodes.memory import MeasuredAttention, choose_dtypes, fastest_backend, native_bf16
from nodes.models import LoadCheckpoint
from tests.sdxl_graphs import inpaint_graph

BF16_TOL = 0.1  # max abs pixel difference (images in 0..1) of bf16 against fp32 on the tiny model; measured 0.033 (mean 0.0037)
BF16_LATENT_TOL = 0.05  # max abs latent difference, relative to the largest latent; measured 0.022


def images(tiny_models, tmp_path, **checkpoint):
    g = inpaint_graph(str(tiny_models[9]), steps=4)
    for k, v in checkpoint.items():
        g.set_input("checkpoint", k, v)
    return Engine().run(g, output_dir=tmp_path)["decode"]["image"]


def test_native_bf16_reads_the_cpu_flags():
    assert native_bf16({"fpu", "avx512f", "avx512_bf16"})
    assert native_bf16({"amx_tile", "amx_bf16"})
    assert native_bf16({"fp", "asimd", "bf16"})  # aarch64
    assert not native_bf16({"fpu", "avx2", "avx512f"})
    assert not native_bf16(set())


def test_auto_dtype_per_device_and_cpu():
    assert choose_dtypes("auto", "cpu", bf16=True) == ("bfloat16", "float32")
    assert choose_dtypes("auto", "cpu", bf16=False) == ("float32", "float32")
    assert choose_dtypes("auto", "cuda", bf16=False) == ("float16", "float32")
    assert choose_dtypes("float32", "cpu", bf16=True) == ("float32", "float32")
    assert choose_dtypes("bfloat16", "cpu", bf16=False) == ("bfloat16", "bfloat16")


@pytest.mark.parametrize(("flags", "expected"), [({"avx2", "amx_bf16"}, "bfloat16"), ({"avx512_bf16"}, "bfloat16"),
                                               ({"avx2"}, "float32"), (set(), "float32")])
def test_load_checkpoint_auto_picks_bf16_only_on_cpus_with_native_bf16(tiny_models, monkeypatch, flags, expected):
    monkeypatch.setattr(memory, "cpu_flags", lambda: frozenset(flags))
    unet, clip, vae = LoadCheckpoint(source=str(tiny_models[9]), device="cpu")
    assert (unet.ref.dtype, clip.ref.dtype, vae.ref.dtype) == (expected, expected, "float32")
    reference = LoadCheckpoint(source=str(tiny_models[9]), device="cpu", dtype="float32")
    assert (reference.unet.ref.dtype, reference.clip.ref.dtype, reference.vae.ref.dtype) == ("float32",) * 3
    assert REGISTRY.get("LoadVAE").fn(source=str(tiny_models[9]), device="cpu").ref.dtype == "float32"


def test_a_bf16_unet_samples_float32_latents(tiny_models, tmp_path, monkeypatch):
    # The scheduler and guidance arithmetic stay float32 around a bf16 UNet: the scheduler sees float32
    # latents and predictions at every step, and only the UNet's own rounding separates the results.
    import nodes.sampling

    seen: list[tuple[torch.dtype, torch.dtype]] = []
    make = nodes.sampling.make_scheduler

    def spying_scheduler(*args, **kwargs):
        sched = make(*args, **kwargs)
        step = sched.step

        def recorded(model_output, timestep, sample, *rest, **kw):
            seen.append((model_output.dtype, sample.dtype))
            return step(model_output, timestep, sample, *rest, **kw)

        sched.step = recorded
        return sched

    monkeypatch.setattr(nodes.sampling, "make_scheduler", spying_scheduler)

    def latents(dtype: str) -> torch.Tensor:
        g = inpaint_graph(str(tiny_models[4]), steps=4, dtype=dtype)
        return Engine().run(g, output_dir=tmp_path, outputs=["sample"])["sample"]["latent"].samples

    reference = latents("float32")
    seen.clear()
    bf16 = latents("bfloat16")
    assert len(seen) == 3 and set(seen) == {(torch.float32, torch.float32)}  # strength 0.9999 of 4 steps: 3 run
    assert bf16.dtype == torch.float32
    diff = float((bf16 - reference).abs().max())
    assert 0 < diff <= BF16_LATENT_TOL * float(reference.abs().max())


def test_fastest_backend_is_measured_once_per_shape():
    from torch.nn.attention import SDPBackend

    args = (2, 4, 64, 77, 16, torch.float32, torch.device("cpu"))
    chosen = fastest_backend(*args)
    assert chosen in (SDPBackend.FLASH_ATTENTION, SDPBackend.MATH)
    key = ("cpu", None, torch.float32, 2, 4, 64, 77, 16)
    assert memory._FASTEST[key] is chosen
    memory._FASTEST[key] = SDPBackend.MATH  # a remembered choice is used as it is, not measured again
    assert fastest_backend(*args) is SDPBackend.MATH


@pytest.mark.parametrize("backend", [None, "math"])
def test_measured_attention_equals_sdpa(backend):
    from diffusers.models.attention_processor import Attention, AttnProcessor2_0

    torch.manual_seed(0)
    own = Attention(query_dim=32, heads=4, dim_head=8).eval()
    cross = Attention(query_dim=32, cross_attention_dim=24, heads=4, dim_head=8).eval()
    x, context = torch.randn(2, 50, 32), torch.randn(2, 7, 24)
    with torch.no_grad():
        for attn in (own, cross):
            attn.set_processor(AttnProcessor2_0())
        expected = (own(x), cross(x, encoder_hidden_states=context))
        for attn in (own, cross):
            attn.set_processor(MeasuredAttention(backend))
        got = (own(x), cross(x, encoder_hidden_states=context))
    for e, g in zip(expected, got, strict=True):
        assert torch.allclose(e, g, atol=1e-5)


@pytest.mark.slow
def test_attention_options_match_sdpa(tiny_models, tmp_path):
    sdpa = images(tiny_models, tmp_path, attention="sdpa")
    for option in ("auto", "math"):
        assert float((images(tiny_models, tmp_path, attention=option) - sdpa).abs().max()) <= 1e-5, option


@pytest.mark.slow
def test_bf16_is_close_to_float32(tiny_models, tmp_path):
    reference = images(tiny_models, tmp_path, dtype="float32")
    bf16 = images(tiny_models, tmp_path, dtype="bfloat16", device="cpu")
    diff = float((bf16 - reference).abs().max())
    assert 0 < diff <= BF16_TOL  # not the same computation, but close


class Small(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.gelu(self.lin(x)) * 2


def test_compile_failure_falls_back_to_eager_with_a_warning(caplog):
    def broken_backend(gm, example_inputs):
        raise RuntimeError("this backend cannot compile anything")

    torch.manual_seed(0)
    model, x = Small().eval(), torch.randn(3, 8)
    with torch.no_grad():
        expected = model(x)
        compile_component(model, "unet", "unet", "cpu", backend=broken_backend)
        assert isinstance(model.forward, CompiledForward)
        with caplog.at_level(logging.WARNING):
            got = model(x)
            again = model(x)
    assert torch.equal(got, expected) and torch.equal(again, expected)
    assert "first call is slow" in caplog.text
    assert "running it eagerly" in caplog.text
    assert model.forward.failed


def test_compile_is_skipped_where_torch_compile_cannot_run(monkeypatch, caplog):
    import nodes.compile

    monkeypatch.setattr(nodes.compile.shutil, "which", lambda name: None)  # a CPU machine without a C++ compiler
    model = Small()
    with caplog.at_level(logging.WARNING):
        assert compile_component(model, "unet", "all", "cpu") is model
    assert not isinstance(model.forward, CompiledForward)
    assert "needs a C++ compiler" in caplog.text
    assert compile_component(model, "vae_decoder", "unet", "cpu") is model  # not covered by compile='unet'
    assert not isinstance(model.forward, CompiledForward)


@pytest.mark.slow
def test_compiled_unet_matches_eager(tiny_models, tmp_path, caplog):
    eager = images(tiny_models, tmp_path, compile="none")
    with caplog.at_level(logging.WARNING):
        compiled = images(tiny_models, tmp_path, compile="unet")
    assert "compiling the unet" in caplog.text
    assert "running it eagerly" not in caplog.text  # it really ran compiled
    assert float((compiled - eager).abs().max()) <= 1e-4
