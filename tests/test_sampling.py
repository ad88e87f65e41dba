"""Samplers and schedules: the static capability table, named and explicit schedules, user samplers."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from nodegraph import Engine, Graph, WorkflowError, register_sampler, validate
from nodegraph.node import Registry
from nodes.schedulers import BUILTIN_SAMPLERS, COMPUTED_SCHEDULES, FLAG_SCHEDULES, combination_problem, describe_class
from nodes.schedules import computed_schedule, named_schedule, training_sigmas
from tests.sdxl_graphs import ROOT, inpaint_graph

TOL = 1e-4


def latent_of(graph: Graph, tmp_path, node: str = "sample") -> torch.Tensor:
    return Engine().run(graph, output_dir=tmp_path)[node]["latent"].samples


# ---- the static table --------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(BUILTIN_SAMPLERS))
def test_capability_table_matches_diffusers(name):
    import diffusers

    info = BUILTIN_SAMPLERS[name]
    cls = getattr(diffusers, info.class_name)
    assert describe_class(cls, dict(info.config), info.needs) == info
    cls.from_config(dict(info.config))  # the overrides are options the class really takes


def test_validation_does_not_import_diffusers():
    code = ("import sys; from nodes.schedulers import BUILTIN_SAMPLERS, FLAG_SCHEDULES, COMPUTED_SCHEDULES, "
            "combination_problem\n"
            "problems = [combination_problem(s, k) for s in BUILTIN_SAMPLERS for k in [*FLAG_SCHEDULES, "
            "*COMPUTED_SCHEDULES]]\n"
            "assert any(problems) and not all(problems)\n"
            "assert 'diffusers' not in sys.modules and 'torch' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_every_pair_the_table_allows_builds_a_scheduler():
    from nodes.schedulers import make_scheduler

    config = training_config()
    for sampler in BUILTIN_SAMPLERS:
        for schedule in [*FLAG_SCHEDULES, *COMPUTED_SCHEDULES]:
            if combination_problem(sampler, schedule) is None:
                sigmas = named_schedule(sampler, schedule, 5, config)
                steps_down = all(a >= b for a, b in zip(sigmas, sigmas[1:], strict=False))
                assert len(sigmas) == 6 and steps_down and sigmas[0] > sigmas[-1] >= 0, (sampler, schedule)
                make_scheduler(sampler, schedule if schedule in FLAG_SCHEDULES else "normal", config)


def training_config() -> dict:
    import json

    return json.loads((ROOT / "nodes" / "configs" / "sdxl" / "scheduler.json").read_text())


@pytest.mark.parametrize("sampler, scheduler", [("uni_pc", "kl_optimal"), ("lms", "simple"), ("ddim", "karras")])
def test_impossible_schedules_fail_validation(tiny_models, sampler, scheduler):
    with pytest.raises(WorkflowError) as info:
        validate(inpaint_graph(str(tiny_models[9]), sampler=sampler, scheduler=scheduler))
    (issue,) = info.value.issues
    assert issue.kind == "unsupported_option" and issue.input == "scheduler"


def test_explicit_sigmas_on_a_sampler_that_cannot_take_them_fail_validation(tiny_models):
    with pytest.raises(WorkflowError, match="takes neither custom sigmas nor timesteps"):
        validate(inpaint_graph(str(tiny_models[9]), sampler="lms", sigmas=[10.0, 1.0, 0.0]))
    with pytest.raises(WorkflowError, match="descending"):
        validate(inpaint_graph(str(tiny_models[9]), sigmas=[1.0, 10.0, 0.0]))


# ---- schedules ---------------------------------------------------------------------------------------

def test_schedule_formulas():
    train = training_sigmas(training_config())
    lo, hi = float(train[0]), float(train[-1])
    assert computed_schedule("kl_optimal", 4, training_config())[0] == pytest.approx(hi)
    assert computed_schedule("kl_optimal", 4, training_config())[3] == pytest.approx(lo)
    lq = computed_schedule("linear_quadratic", 8, training_config())
    assert lq[0] == pytest.approx(hi) and lq[-1] == 0 and all(a > b for a, b in zip(lq, lq[1:], strict=False))
    assert computed_schedule("simple", 10, training_config())[0] == pytest.approx(hi)
    ddim = computed_schedule("ddim_uniform", 10, training_config())
    assert len(ddim) == 11 and ddim[-2] == pytest.approx(float(train[1]))
    cosine = training_sigmas(training_config(), "squaredcos_cap_v2")
    assert cosine[-1] > 100 * hi  # the cosine schedule ends at (nearly) pure noise


def test_karras_node_equals_the_named_karras_schedule(tiny_models, tmp_path):
    """diffusers spaces Karras sigmas between the extremes of the model's inference-step sigmas."""
    g = Graph()
    ck = g.add("LoadCheckpoint", source=str(tiny_models[9]))
    g.add("Schedule", id="named", unet=ck.unet, scheduler="karras", steps=7)
    g.add("Schedule", id="normal", unet=ck.unet, scheduler="normal", steps=7)
    result = Engine().run(g, outputs=["named", "normal"], output_dir=tmp_path)
    normal = result["normal"]["sigmas"]
    g.add("KarrasSchedule", id="formula", steps=7, sigma_min=normal[-2], sigma_max=normal[0])
    split = g.add("SplitSchedule", id="split", sigmas=g["formula"].sigmas, step=3)
    g.add("FlipSchedule", id="flip", sigmas=split.low)
    result = Engine().run(g, outputs=["named", "formula", "split", "flip"], output_dir=tmp_path)
    assert result["named"]["sigmas"] == pytest.approx(result["formula"]["sigmas"], rel=1e-5)
    high, low = result["split"]["high"], result["split"]["low"]
    assert len(high) == 4 and len(low) == 5 and high[-1] == low[0]
    assert result["flip"]["sigmas"][0] == 1e-4 and result["flip"]["sigmas"][-1] == high[-1]


# (sgm_uniform is left out: diffusers scales the first noise by sigma_max for trailing spacing but by
# sqrt(sigma_max^2 + 1) for the model's leading spacing, and an explicit list runs with the model's.)
@pytest.mark.parametrize("scheduler", ["normal", "karras", "exponential", "kl_optimal"])
def test_explicit_list_equals_named_schedule(tiny_models, tmp_path, scheduler):
    g = inpaint_graph(str(tiny_models[9]), scheduler=scheduler, steps=5, strength=1.0)
    g.add("Schedule", id="schedule", unet=g["checkpoint"].unet, scheduler=scheduler, steps=5)
    g.add("Sample", id="explicit", unet=g["checkpoint"].unet, positive=g["positive"].conditioning,
          latent=g["latent_mask"].latent, strength=1.0, sigmas=g["schedule"].sigmas)
    result = Engine().run(g, outputs=["sample", "explicit"], output_dir=tmp_path)
    named, explicit = result["sample"]["latent"].samples, result["explicit"]["latent"].samples
    assert float((named - explicit).abs().max()) <= TOL


@pytest.mark.parametrize("channels", [9, 4])
def test_two_stage_split_equals_one_run(tiny_models, tmp_path, channels):
    """First sigmas on one Sample, the rest on another (no new noise): the same as one run (Euler).

    9 channels: inpainting; 4 channels: text to image (with a 4-channel mask blend the second stage
    would blend towards its own input, which is not the same as one run)."""
    g = inpaint_graph(str(tiny_models[channels]))  # 'sample' is unused below
    ck, pos = g["checkpoint"], g["positive"]
    lat = g["latent_mask"].latent if channels == 9 else g.add("EmptyLatent", width=64, height=64).latent
    sched = g.add("KarrasSchedule", steps=6, sigma_max=3.0, sigma_min=0.05)
    split = g.add("SplitSchedule", sigmas=sched.sigmas, step=2)
    common = {"unet": ck.unet, "positive": pos.conditioning, "seed": 7}
    g.add("Sample", id="whole", latent=lat, sigmas=sched.sigmas, **common)
    first = g.add("Sample", id="first", latent=lat, sigmas=split.high, **common)
    g.add("Sample", id="second", latent=first.latent, sigmas=split.low, add_noise=False, **common)
    result = Engine().run(g, outputs=["whole", "second"], output_dir=tmp_path)
    whole, second = result["whole"]["latent"].samples, result["second"]["latent"].samples
    assert float((whole - second).abs().max()) <= 1e-5


def test_linked_and_literal_sigmas_are_the_same_input(tiny_models, tmp_path):
    literal = [3.0, 1.0, 0.3, 0.0]
    a = latent_of(inpaint_graph(str(tiny_models[9]), sigmas=literal, steps=2), tmp_path)
    g = inpaint_graph(str(tiny_models[9]))
    g.add("KarrasSchedule", id="k", steps=3, sigma_max=3.0, sigma_min=0.3, rho=1.0)  # linear: 3, 1.65, 0.3
    g.set_input("sample", "sigmas", g["k"].sigmas.link())
    b = latent_of(g, tmp_path)
    assert a.shape == b.shape and not torch.equal(a, b)  # a different list...
    c = latent_of(inpaint_graph(str(tiny_models[9]), sigmas=[3.0, 1.65, 0.3, 0.0]), tmp_path)
    assert float((b - c).abs().max()) <= 1e-5  # ...and the same list, linked or written out


# ---- user samplers -----------------------------------------------------------------------------------

def test_registered_user_sampler_runs_and_equals_builtin_euler(tiny_models, tmp_path):
    from tests.user_sampler import PlainEuler

    register_sampler("plain_euler", PlainEuler)
    spec_choices = validate_choices()
    assert "plain_euler" in spec_choices and "euler" in spec_choices
    mine = latent_of(inpaint_graph(str(tiny_models[4]), sampler="plain_euler", steps=6), tmp_path)
    builtin = latent_of(inpaint_graph(str(tiny_models[4]), sampler="euler", steps=6), tmp_path)
    assert float((mine - builtin).abs().max()) <= TOL
    with pytest.raises(WorkflowError, match="unknown sampler 'nope'"):
        validate(inpaint_graph(str(tiny_models[4]), sampler="nope"))
    with pytest.raises(WorkflowError, match="takes neither custom sigmas"):  # capability read from the class
        validate(inpaint_graph(str(tiny_models[4]), sampler="plain_euler", scheduler="kl_optimal"))


def validate_choices() -> list[str]:
    from nodegraph import REGISTRY

    return REGISTRY.get("Sample").describe()["inputs"]["sampler"]["choices"]


def test_register_sampler_refuses_what_is_not_a_scheduler():
    with pytest.raises(TypeError, match="not a diffusers scheduler"):
        register_sampler("bad", int, registry=Registry())


# ---- ComfyUI's custom sampling -----------------------------------------------------------------------

def test_comfy_custom_sampling_workflow(builtin_models_dir, monkeypatch, tmp_path):
    """KSamplerSelect + BasicScheduler + SplitSigmas: SamplerCustom on the first sigmas, then
    SamplerCustomAdvanced (DisableNoise, CFGGuider) on the rest equals one SamplerCustom on all of them."""
    from nodegraph.workflow import load_workflow
    from tests.sdxl_graphs import ROOT

    monkeypatch.chdir(ROOT)
    graph = load_workflow(ROOT / "tests" / "comfy" / "custom_sampling_api.json")
    assert graph.nodes["23"].type == "Sample" and graph.nodes["26"].type == "SampleCustom"
    result = Engine().run(graph, outputs=["26", "27", "35", "36", "37", "41"], output_dir=tmp_path)
    assert result.ok and len(result.outputs["41"]) == 1
    split, whole = result["26"]["latent"].samples, result["27"]["latent"].samples
    assert float((split - whole).abs().max()) <= 1e-5
    for node in ("35", "36", "37"):
        assert torch.isfinite(result[node]["latent"].samples).all()
    assert len(result["34"]["sigmas"]) == 3  # SDTurboScheduler: timesteps 999, 899, then 0
