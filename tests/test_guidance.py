"""Per-encoder guidance (DESIGN.md §10): guidance_scale_g weighs (bigG-only mix - uncond), guidance_scale_l
weighs (full - mix). Checked against a hand-written loop of diffusers' UNet and scheduler calls."""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch
from diffusers import EulerDiscreteScheduler, UNet2DConditionModel

from nodegraph import Engine
from nodes.sampling import rescale_guidance
from tests.sdxl_graphs import inpaint_graph


@contextmanager
def count_unet_rows():
    """Count UNet calls and the rows (batch entries) they evaluate, through a real forward hook."""
    seen = {"calls": 0, "rows": 0}

    def hook(module, args, kwargs):
        if isinstance(module, UNet2DConditionModel):
            seen["calls"] += 1
            seen["rows"] += int(args[0].shape[0])

    handle = torch.nn.modules.module.register_module_forward_pre_hook(lambda m, a: hook(m, a, {}))
    try:
        yield seen
    finally:
        handle.remove()


def run(tiny_models, channels, tmp_path, engine=None, **options):
    options.setdefault("steps", 6)
    g = inpaint_graph(str(tiny_models[channels]), negative="blurry", **options)
    return (engine or Engine()).run(g, outputs=["sample", "positive", "negative", "latent_mask", "checkpoint"],
                                    output_dir=tmp_path)


def hand_loop(model_dir, result, *, scale_g, scale_l, steps=6, seed=0, batch_size=1, rescale=0.0,
              denoising_end=None, l_width=32) -> torch.Tensor:
    """Three UNet evaluations per step (uncond, bigG-only mix, full), combined by the formula in docs/sampling.md; strength 1."""
    unet = UNet2DConditionModel.from_pretrained(model_dir, subfolder="unet")
    sched = EulerDiscreteScheduler.from_pretrained(model_dir, subfolder="scheduler")
    sched.set_timesteps(steps)
    timesteps = sched.timesteps
    if denoising_end is not None:
        timesteps = timesteps[: int((timesteps >= round(1000 * (1 - denoising_end))).sum())]
    pos, neg, lat = result["positive"]["conditioning"], result["negative"]["conditioning"], result["latent_mask"]["latent"]
    handle = result["checkpoint"]["unet"]
    rows = lambda t: t.repeat(batch_size, *([1] * (t.ndim - 1)))  # noqa: E731
    image = rows(lat.samples)
    h, w = image.shape[-2:]
    size = (h * handle.vae_scale_factor, w * handle.vae_scale_factor)
    ids = rows(torch.tensor([[*size, 0, 0, *size]], dtype=torch.float32))
    mixed = torch.cat([neg.embeds[..., :l_width], pos.embeds[..., l_width:]], dim=-1)
    conds = [(rows(neg.embeds), rows(neg.pooled)), (rows(mixed), rows(pos.pooled)), (rows(pos.embeds), rows(pos.pooled))]
    noise = torch.cat([torch.randn((1, 4, h, w), generator=torch.Generator().manual_seed(seed + i))
                       for i in range(batch_size)])
    latents = noise * sched.init_noise_sigma
    mask = rows(lat.mask)
    with torch.no_grad():
        for i, t in enumerate(timesteps):
            x = sched.scale_model_input(latents, t)
            if handle.in_channels == 9:
                x = torch.cat([x, mask, rows(lat.masked)], dim=1)
            # One call for the three rows, as Sample makes: separate calls differ in the last float bits, and
            # the tiny random UNet at these scales amplifies that over the steps.
            u, m, c = unet(x.repeat(3, 1, 1, 1), t, encoder_hidden_states=torch.cat([e for e, _ in conds]),
                           added_cond_kwargs={"text_embeds": torch.cat([p for _, p in conds]),
                                              "time_ids": ids.repeat(3, 1)}).sample.chunk(3)
            pred = u + scale_g * (m - u) + scale_l * (c - m)
            if rescale:
                pred = rescale_guidance(pred, c, rescale)
            latents = sched.step(pred, t, latents).prev_sample
            if handle.in_channels == 4:
                init = sched.add_noise(image, noise, timesteps[i + 1:i + 2]) if i < len(timesteps) - 1 else image
                latents = (1 - mask) * init + mask * latents
    return latents


@pytest.mark.parametrize("channels", [9, 4])
def test_equal_scales_are_bit_identical_to_standard_cfg(tiny_models, tmp_path, channels):
    standard = run(tiny_models, channels, tmp_path, guidance_scale=6.0)["sample"]["latent"].samples
    with count_unet_rows() as seen:
        same = run(tiny_models, channels, tmp_path, guidance_scale=2.0, guidance_scale_g=6.0, guidance_scale_l=6.0)
    assert torch.equal(same["sample"]["latent"].samples, standard)
    assert seen["rows"] == 2 * seen["calls"]  # the 2-row path


CASES = [
    pytest.param(9, {}, id="9ch"),
    pytest.param(4, {}, id="4ch"),
    pytest.param(9, {"batch_size": 2, "seed": 4, "guidance_rescale": 0.7}, id="9ch-b2-rescale"),
    pytest.param(4, {"batch_size": 2, "seed": 9, "denoising_end": 0.6, "steps": 8}, id="4ch-b2-denoising_end"),
]


@pytest.mark.parametrize("channels, options", CASES)
def test_differing_scales_match_a_hand_written_loop(tiny_models, tmp_path, channels, options):
    scales = {"guidance_scale_g": 5.0, "guidance_scale_l": 2.0}
    result = run(tiny_models, channels, tmp_path, strength=1.0, **scales, **options)
    expected = hand_loop(str(tiny_models[channels]), result, scale_g=5.0, scale_l=2.0, steps=options.get("steps", 6),
                         seed=options.get("seed", 0), batch_size=options.get("batch_size", 1),
                         rescale=options.get("guidance_rescale", 0.0), denoising_end=options.get("denoising_end"))
    got = result["sample"]["latent"].samples
    assert got.shape == expected.shape
    assert float((got - expected).abs().max()) <= 1e-5


def test_guidance_scale_is_the_default_for_the_missing_one(tiny_models, tmp_path):
    a = run(tiny_models, 9, tmp_path, guidance_scale=4.0, guidance_scale_g=8.0)["sample"]["latent"].samples
    b = run(tiny_models, 9, tmp_path, guidance_scale=1.0, guidance_scale_g=8.0, guidance_scale_l=4.0)
    assert torch.equal(a, b["sample"]["latent"].samples)


def test_per_encoder_guidance_costs_one_and_a_half_times_the_unet_work(tiny_models, tmp_path):
    with count_unet_rows() as standard:
        run(tiny_models, 9, tmp_path, steps=5, batch_size=2)
    with count_unet_rows() as split:
        run(tiny_models, 9, tmp_path, steps=5, batch_size=2, guidance_scale_g=9.0, guidance_scale_l=3.0)
    assert standard["calls"] == split["calls"] == 4  # strength 0.9999 of 5 steps: 4 steps, one call each
    assert standard["rows"] == 4 * 2 * 2 and split["rows"] == 4 * 3 * 2  # 1.5x the evaluations


def test_changing_scales_reuses_cached_encodings(tiny_models, tmp_path):
    engine = Engine()
    run(tiny_models, 9, tmp_path, engine, guidance_scale_g=9.0, guidance_scale_l=3.0)
    again = run(tiny_models, 9, tmp_path, engine, guidance_scale_g=5.0, guidance_scale_l=3.0)
    assert again.status("positive") == "cached" and again.status("negative") == "cached"
    assert again.status("sample") == "executed"
