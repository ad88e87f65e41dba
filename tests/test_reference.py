"""A graph wired like diffusers' StableDiffusionXLInpaintPipeline reproduces its images.

Reference = the pipeline on the same tiny model, VAE encoding switched to the posterior mode (our one
deliberate difference, DESIGN.md §4) and one generator per sample seeded seed + i.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionXLInpaintPipeline
from PIL import Image

from nodegraph import Engine
from nodes.schedulers import BUILTIN_SAMPLERS, COMPUTED_SCHEDULES, FLAG_SCHEDULES, combination_problem, make_scheduler
from nodes.schedules import computed_schedule, sigmas_to_timesteps
from tests.sdxl_graphs import DEMO_IMAGE, DEMO_MASK, inpaint_graph

pytestmark = pytest.mark.slow  # end-to-end runs of the tiny model

TOL = 1e-4


_PIPES: dict[int, tuple[StableDiffusionXLInpaintPipeline, dict]] = {}


def pipeline(tiny_models, channels: int) -> tuple[StableDiffusionXLInpaintPipeline, dict]:
    """The reference pipeline and the model's own scheduler config (each case swaps the scheduler)."""
    if channels not in _PIPES:
        pipe = StableDiffusionXLInpaintPipeline.from_pretrained(str(tiny_models[channels]))
        pipe.set_progress_bar_config(disable=True)
        _PIPES[channels] = (pipe, dict(pipe.scheduler.config))
    return _PIPES[channels]


def reference(tiny_models, channels: int, *, prompt="a red apple", prompt_2=None, negative=None, seed=0,
              batch_size=1, steps=6, guidance_scale=7.5, guidance_rescale=0.0, sampler="euler",
              scheduler="normal", strength=0.9999, denoising_start=None, denoising_end=None,
              image=None, output_type="np", masked_image_latents=None, sigmas=None, timesteps=None,
              beta_schedule="model"):
    pipe, scheduler_config = pipeline(tiny_models, channels)
    pipe.scheduler = make_scheduler(sampler, scheduler, scheduler_config, beta_schedule, seed=seed)
    init = Image.open(DEMO_IMAGE).convert("RGB")
    mask = Image.open(DEMO_MASK).convert("L")
    return pipe(prompt=prompt, prompt_2=prompt_2, negative_prompt=negative, image=init if image is None else image,
                mask_image=mask, height=init.height, width=init.width, num_inference_steps=steps,
                guidance_scale=guidance_scale, guidance_rescale=guidance_rescale, strength=strength,
                denoising_start=denoising_start, denoising_end=denoising_end, num_images_per_prompt=batch_size,
                generator=[torch.Generator().manual_seed(seed + i) for i in range(batch_size)],
                masked_image_latents=masked_image_latents, output_type=output_type, sigmas=sigmas,
                timesteps=timesteps).images


def graph_images(tiny_models, channels: int, tmp_path, engine: Engine | None = None, **kwargs) -> torch.Tensor:
    kwargs.setdefault("steps", 6)  # the same default as reference()
    graph_kwargs = {k: kwargs.pop(k) for k in ("prompt", "prompt_2", "negative") if k in kwargs}
    g = inpaint_graph(str(tiny_models[channels]), **graph_kwargs, **kwargs)
    result = (engine or Engine()).run(g, output_dir=tmp_path)
    return result["decode"]["image"]


CASES = [
    # channels, options
    pytest.param(9, {}, id="9ch-defaults-euler"),
    pytest.param(9, {"strength": 1.0, "sampler": "euler_ancestral", "batch_size": 2, "seed": 5}, id="9ch-s1.0-ancestral-b2"),
    pytest.param(9, {"strength": 0.6, "guidance_scale": 7.5, "guidance_rescale": 0.7, "sampler": "dpmpp_2m",
                     "scheduler": "karras", "negative": ""}, id="9ch-s0.6-rescale-dpmpp2m-karras-neg''"),
    pytest.param(9, {"guidance_scale": 1.0, "sampler": "ddim", "prompt_2": "a green pear"}, id="9ch-g1-ddim-prompt2"),
    pytest.param(9, {"sampler": "uni_pc", "negative": "blurry", "batch_size": 2}, id="9ch-unipc-neg-b2"),
    pytest.param(9, {"denoising_end": 0.7, "steps": 10}, id="9ch-denoising_end"),
    pytest.param(4, {}, id="4ch-defaults-euler"),
    pytest.param(4, {"strength": 1.0, "sampler": "euler_ancestral", "batch_size": 2}, id="4ch-s1.0-ancestral-b2"),
    pytest.param(4, {"strength": 0.6, "guidance_rescale": 0.7, "sampler": "dpmpp_2m", "scheduler": "karras",
                     "negative": ""}, id="4ch-s0.6-rescale-dpmpp2m-karras"),
    pytest.param(4, {"guidance_scale": 1.0, "sampler": "ddim", "prompt_2": "a green pear"}, id="4ch-g1-ddim-prompt2"),
    pytest.param(4, {"sampler": "uni_pc", "negative": "blurry"}, id="4ch-unipc-neg"),
    pytest.param(4, {"sampler": "heun", "scheduler": "sgm_uniform", "steps": 5}, id="4ch-heun-sgm"),
]


@pytest.mark.parametrize("channels, options", CASES)
def test_graph_matches_pipeline(tiny_models, tmp_path, posterior_mode, channels, options):
    expected = reference(tiny_models, channels, **options)
    got = graph_images(tiny_models, channels, tmp_path, **options)
    assert got.shape == expected.shape
    assert float(np.abs(got.numpy() - expected).max()) <= TOL


FLAG_CASES = [
    pytest.param(sampler, schedule, id=f"9ch-{sampler}-{schedule}")
    for schedule in FLAG_SCHEDULES for sampler in BUILTIN_SAMPLERS
    if combination_problem(sampler, schedule) is None and (sampler, schedule) != ("euler", "normal")
]


@pytest.mark.parametrize("sampler, schedule", FLAG_CASES)
def test_every_sampler_with_every_named_schedule_it_takes_matches_pipeline(tiny_models, tmp_path, posterior_mode,
                                                                           sampler, schedule):
    options = {"sampler": sampler, "scheduler": schedule, "steps": 4, "negative": "blurry"}
    expected = reference(tiny_models, 9, **options)
    got = graph_images(tiny_models, 9, tmp_path, **options)
    assert float(np.abs(got.numpy() - expected).max()) <= TOL


@pytest.mark.parametrize("beta_schedule", ["linear", "squaredcos_cap_v2"])
def test_beta_schedule_matches_pipeline_with_that_training_schedule(tiny_models, tmp_path, posterior_mode,
                                                                    beta_schedule):
    options = {"beta_schedule": beta_schedule, "sampler": "dpmpp_2m", "steps": 5}
    expected = reference(tiny_models, 4, **options)
    got = graph_images(tiny_models, 4, tmp_path, **options)
    default = graph_images(tiny_models, 4, tmp_path, sampler="dpmpp_2m", steps=5)
    assert float(np.abs(got.numpy() - expected).max()) <= TOL
    assert float((got - default).abs().max()) > 1e-3  # it does change the result


SCHEDULE_CASES = [
    pytest.param(channels, sampler, schedule, id=f"{channels}ch-{sampler}-{schedule}")
    for schedule in COMPUTED_SCHEDULES for sampler, channels in (("euler", 9), ("euler", 4), ("heun", 9),
                                                                  ("dpmpp_2m", 4), ("ddpm", 9))
]


@pytest.mark.parametrize("channels, sampler, schedule", SCHEDULE_CASES)
def test_named_schedule_matches_pipeline_given_the_explicit_schedule(tiny_models, tmp_path, posterior_mode,
                                                                     channels, sampler, schedule):
    """Schedules diffusers has no name for, against its pipeline given the same list (sigmas, or the
    timesteps of those sigmas for samplers that take only timesteps)."""
    config = pipeline(tiny_models, channels)[1]
    sigmas = computed_schedule(schedule, 6, config)
    explicit = {"sigmas": sigmas} if BUILTIN_SAMPLERS[sampler].sigmas else {
        "timesteps": sigmas_to_timesteps(sigmas, config)}
    if sampler == "ddpm":  # DDPM takes integer training timesteps only
        explicit["timesteps"] = [int(round(t)) for t in explicit["timesteps"]]
    expected = reference(tiny_models, channels, sampler=sampler, strength=1.0, **explicit)
    got = graph_images(tiny_models, channels, tmp_path, sampler=sampler, strength=1.0,
                       **(explicit if sampler == "ddpm" else {"scheduler": schedule}))
    assert got.shape == expected.shape
    assert float(np.abs(got.numpy() - expected).max()) <= TOL


def test_two_stage_denoising_start_matches_pipeline(tiny_models, tmp_path, posterior_mode):
    """Base run stopped at denoising_end, continued by a second Sample from denoising_start."""
    stage1 = reference(tiny_models, 4, denoising_end=0.5, steps=10, output_type="latent")
    expected = reference(tiny_models, 4, denoising_start=0.5, steps=10, image=stage1)
    g = inpaint_graph(str(tiny_models[4]), denoising_end=0.5, steps=10)
    g.add("Sample", id="stage2", unet=g["checkpoint"].unet, positive=g["positive"].conditioning,
          latent=g["sample"].latent, denoising_start=0.5, steps=10)
    g.set_input("decode", "latent", g["stage2"].latent.link())
    result = Engine().run(g, output_dir=tmp_path)
    assert float((result["sample"]["latent"].samples - stage1).abs().max()) <= TOL
    diff = float(np.abs(result["decode"]["image"].numpy() - expected).max())
    assert diff <= TOL, diff


def test_batch_sample_i_equals_single_run_with_seed_plus_i(tiny_models, tmp_path):
    engine = Engine()
    batch = graph_images(tiny_models, 9, tmp_path, engine, seed=10, batch_size=3, sampler="euler_ancestral")
    for i in range(3):
        single = graph_images(tiny_models, 9, tmp_path, engine, seed=10 + i, batch_size=1, sampler="euler_ancestral")
        assert float((batch[i] - single[0]).abs().max()) <= TOL


def test_cached_rerun_is_bit_identical(tiny_models, tmp_path):
    engine = Engine()
    first = graph_images(tiny_models, 9, tmp_path, engine, seed=3)
    again = graph_images(tiny_models, 9, tmp_path, engine, seed=3)  # every node from memory
    fresh = graph_images(tiny_models, 9, tmp_path, Engine(), seed=3)
    assert torch.equal(first, again) and torch.equal(first, fresh)
