"""Sampler and schedule choices, checked at validation and run on the tiny model."""

from __future__ import annotations

import pytest
import torch

from nodegraph import Engine, WorkflowError, validate
from tests.sdxl_graphs import inpaint_graph


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


@pytest.mark.slow
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
