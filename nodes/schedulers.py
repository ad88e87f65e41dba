"""ComfyUI's sampler and scheduler names, mapped onto diffusers schedulers.

A scheduler is stateful, so a fresh one is built from the model's scheduler config for every run. The
"scheduler" name picks the noise schedule (sigma spacing); a pair diffusers cannot express is refused at
validation time with a message that says why.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
from typing import Any, Literal

import diffusers

SamplerName = Literal["euler", "euler_ancestral", "heun", "dpm_2", "dpm_2_ancestral", "lms", "dpmpp_2m",
                      "dpmpp_2m_sde", "dpmpp_sde", "ddim", "ddpm", "uni_pc", "deis", "lcm"]
ScheduleName = Literal["normal", "karras", "exponential", "beta", "sgm_uniform"]

SAMPLERS: dict[str, tuple[str, dict[str, Any]]] = {
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_ancestral": ("EulerAncestralDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "dpm_2": ("KDPM2DiscreteScheduler", {}),
    "dpm_2_ancestral": ("KDPM2AncestralDiscreteScheduler", {}),
    "lms": ("LMSDiscreteScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "dpmpp_2m_sde": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}),
    "dpmpp_sde": ("DPMSolverSDEScheduler", {}),
    "ddim": ("DDIMScheduler", {}),
    "ddpm": ("DDPMScheduler", {}),
    "uni_pc": ("UniPCMultistepScheduler", {}),
    "deis": ("DEISMultistepScheduler", {}),
    "lcm": ("LCMScheduler", {}),
}
_SIGMA_FLAGS = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")
SCHEDULES: dict[str, dict[str, Any]] = {
    "normal": {},
    "karras": {"use_karras_sigmas": True},
    "exponential": {"use_exponential_sigmas": True},
    "beta": {"use_beta_sigmas": True},
    "sgm_uniform": {"timestep_spacing": "trailing"},
}
_NEEDS = {"DPMSolverSDEScheduler": "torchsde", "beta": "scipy"}


def _accepts(cls: type, name: str) -> bool:
    return name in inspect.signature(cls.__init__).parameters


def combination_problem(sampler: str, schedule: str) -> str | None:
    """Why diffusers cannot run this sampler with this schedule, or None if it can."""
    class_name, _ = SAMPLERS[sampler]
    for what, module in ((class_name, _NEEDS.get(class_name)), (schedule, _NEEDS.get(schedule))):
        if module and importlib.util.find_spec(module) is None:
            return f"{what} needs the '{module}' package (pip install {module})"
    cls = getattr(diffusers, class_name)
    for option in SCHEDULES[schedule]:
        if not _accepts(cls, option):
            return (f"diffusers' {class_name} (sampler {sampler!r}) has no {option!r}, so scheduler "
                    f"{schedule!r} cannot be used with it; try scheduler 'normal' or 'sgm_uniform'")
    return None


def make_scheduler(sampler: str, schedule: str, base_config: str | dict[str, Any]) -> Any:
    """A fresh scheduler for one run, from the model's config with the sampler's and schedule's options."""
    problem = combination_problem(sampler, schedule)
    if problem:
        raise ValueError(problem)
    class_name, options = SAMPLERS[sampler]
    cls = getattr(diffusers, class_name)
    config = json.loads(base_config) if isinstance(base_config, str) else dict(base_config)
    overrides = dict(options)
    for flag in _SIGMA_FLAGS:  # "normal" means normal, whatever the checkpoint's config says
        if _accepts(cls, flag):
            overrides[flag] = False
    overrides.update(SCHEDULES[schedule])
    return cls.from_config(config, **overrides)
