"""Conditioning of several entries (areas, masks, time ranges) and the ConditioningX nodes."""

from __future__ import annotations

import json

import torch
from diffusers import EulerDiscreteScheduler, UNet2DConditionModel

from nodegraph import Engine
from nodes.payloads import Conditioning
from tests.sdxl_graphs import ROOT, inpaint_graph

COMFY_DIR = ROOT / "tests" / "comfy"


def regional_graph(model: str, left: dict, right: dict | None = None, **sample):
    """inpaint_graph with 'positive' = 'a red apple' set by `left`, combined with 'a green pear' set by `right`."""
    g = inpaint_graph(model, negative="blurry", strength=1.0, steps=4, **sample)
    ck = g["checkpoint"]
    kind, args = left["type"], {k: v for k, v in left.items() if k != "type"}
    a = g.add(kind, id="a", conditioning=g["positive"].conditioning, **args)
    combined = a.conditioning
    if right is not None:
        pear = g.add("EncodePrompt", id="pear", clip=ck.clip, prompt="a green pear")
        kind, args = right["type"], {k: v for k, v in right.items() if k != "type"}
        b = g.add(kind, id="b", conditioning=pear.conditioning, **args)
        combined = g.add("ConditioningCombine", id="both", a=a.conditioning, b=b.conditioning).conditioning
    g.set_input("sample", "positive", combined.link())
    return g


def hand_loop(model_dir, result, entries, scale=7.5, steps=4):
    """Euler, strength 1, 9-channel: each entry evaluated on the whole latent, weighted, averaged; then CFG."""
    unet = UNet2DConditionModel.from_pretrained(model_dir, subfolder="unet")
    sched = EulerDiscreteScheduler.from_pretrained(model_dir, subfolder="scheduler")
    sched.set_timesteps(steps)
    neg, lat = result["negative"]["conditioning"], result["latent_mask"]["latent"]
    h, w = lat.samples.shape[-2:]
    size = (h * 8, w * 8)
    conds = [(neg, None), *entries]
    ids = torch.tensor([[*size, 0, 0, *size]], dtype=torch.float32).repeat(len(conds), 1)
    embeds = torch.cat([c.embeds for c, _ in conds])
    pooled = torch.cat([c.pooled for c, _ in conds])
    latents = torch.randn((1, 4, h, w), generator=torch.Generator().manual_seed(0)) * sched.init_noise_sigma
    with torch.no_grad():
        for t in sched.timesteps:
            x = torch.cat([sched.scale_model_input(latents, t), lat.mask, lat.masked], dim=1)
            preds = unet(x.repeat(len(conds), 1, 1, 1), t, encoder_hidden_states=embeds,
                         added_cond_kwargs={"text_embeds": pooled, "time_ids": ids}).sample.chunk(len(conds))
            uncond = preds[0]
            total = sum(p * wt for p, (_, wt) in zip(preds[1:], entries, strict=True))
            cond = total / (sum(wt for _, wt in entries) + 1e-37)
            latents = sched.step(uncond + scale * (cond - uncond), t, latents).prev_sample
    return latents


def outputs(g, tmp_path):
    return Engine().run(g, outputs=["sample", "positive", "negative", "latent_mask", *(
        ["pear"] if "pear" in g.nodes else [])], output_dir=tmp_path)


def test_plain_entry_is_bit_identical_and_full_area_equal(tiny_models, tmp_path):
    model = str(tiny_models[9])
    standard = outputs(inpaint_graph(model, negative="blurry", strength=1.0, steps=4), tmp_path)["sample"]
    ranged = outputs(regional_graph(model, {"type": "ConditioningSetTimestepRange", "start": 0.0, "end": 1.0}),
                     tmp_path)["sample"]
    assert torch.equal(ranged["latent"].samples, standard["latent"].samples)  # still one plain entry
    full = outputs(regional_graph(model, {"type": "ConditioningSetAreaPercentage"}), tmp_path)["sample"]
    assert float((full["latent"].samples - standard["latent"].samples).abs().max()) <= 1e-5


def test_two_prompts_on_two_halves_match_a_hand_written_loop(tiny_models, tmp_path):
    model = str(tiny_models[9])
    g = regional_graph(model, {"type": "ConditioningSetArea", "x": 0, "y": 0, "width": 64, "height": 96},
                       {"type": "ConditioningSetArea", "x": 64, "y": 0, "width": 64, "height": 96, "strength": 0.8})
    result = outputs(g, tmp_path)
    h, w = result["latent_mask"]["latent"].samples.shape[-2:]
    assert (h, w) == (12, 16)  # the demo image is 128 x 96
    left, right = torch.zeros(1, 1, h, w), torch.zeros(1, 1, h, w)
    left[..., :8] = 1.0
    right[..., 8:] = 0.8
    expected = hand_loop(model, result, [(result["positive"]["conditioning"], left),
                                         (result["pear"]["conditioning"], right)])
    assert float((result["sample"]["latent"].samples - expected).abs().max()) <= 1e-5


def test_masked_prompt_over_a_base_prompt_matches_a_hand_written_loop(tiny_models, tmp_path):
    model = str(tiny_models[9])
    g = regional_graph(model, {"type": "ConditioningSetTimestepRange"},
                       {"type": "ConditioningSetMask", "strength": 0.5})
    g.set_input("b", "mask", g["mask"].mask.link())
    result = outputs(g, tmp_path)
    h, w = result["latent_mask"]["latent"].samples.shape[-2:]
    mask = Engine().run(g, outputs=["mask"])["mask"]["mask"]
    resized = torch.nn.functional.interpolate(mask[:1, None], size=(h, w), mode="bilinear") * 0.5
    expected = hand_loop(model, result, [(result["positive"]["conditioning"], torch.ones(1, 1, h, w)),
                                         (result["pear"]["conditioning"], resized)])
    assert float((result["sample"]["latent"].samples - expected).abs().max()) <= 1e-5


def test_timestep_range_switches_prompts(tiny_models, tmp_path):
    """apple for the first half of the schedule, pear for the second: differs from either alone."""
    model = str(tiny_models[9])
    g = regional_graph(model, {"type": "ConditioningSetTimestepRange", "start": 0.0, "end": 0.5},
                       {"type": "ConditioningSetTimestepRange", "start": 0.5, "end": 1.0})
    switched = outputs(g, tmp_path)["sample"]["latent"].samples
    apple = outputs(inpaint_graph(model, negative="blurry", strength=1.0, steps=4), tmp_path)["sample"]
    assert torch.isfinite(switched).all() and not torch.equal(switched, apple["latent"].samples)


def test_average_concat_zero_out():
    from nodes.conditioning import ConditioningAverage, ConditioningConcat, ConditioningZeroOut

    a = Conditioning(torch.ones(1, 77, 8), torch.ones(1, 4))
    b = Conditioning(torch.zeros(1, 154, 8), torch.full((1, 4), 3.0))
    avg = ConditioningAverage(a, b, 0.25)
    assert avg.embeds.shape == (1, 77, 8) and torch.allclose(avg.embeds, torch.full((1, 77, 8), 0.25))
    assert torch.allclose(avg.pooled, torch.full((1, 4), 0.25 + 0.75 * 3))
    cat = ConditioningConcat(a, b)
    assert cat.embeds.shape == (1, 231, 8) and torch.equal(cat.pooled, a.pooled)
    zero = ConditioningZeroOut(a)
    assert not zero.embeds.any() and not zero.pooled.any() and zero.plain


def test_comfy_regional_workflow_runs(builtin_models_dir, monkeypatch, tmp_path):
    from nodegraph.workflow import load_workflow

    monkeypatch.chdir(ROOT)
    graph = load_workflow(COMFY_DIR / "regional_api.json")
    result = Engine().run(graph, output_dir=tmp_path)
    assert result.ok and len(result.outputs["9"]) == 1
    assert result.nodes["3"]["type"] == "Sample"
    types = {graph.nodes[n].type for n in graph.nodes}
    assert {"ConditioningCombine", "ConditioningSetArea", "ConditioningSetAreaPercentage", "ConditioningSetMask",
            "ConditioningSetTimestepRange", "ConditioningAverage", "ConditioningConcat",
            "ConditioningZeroOut"} <= types
    json.dumps(result.report())
