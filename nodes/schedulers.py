"""Sampler and schedule names (ComfyUI's), mapped onto diffusers schedulers by a static table.

Validation must know which sampler/schedule pairs exist without importing diffusers (that costs ~2 s), so
each built-in sampler is described here by its diffusers class *name*, its config overrides and what the
class can take: custom ``sigmas`` / ``timesteps`` in ``set_timesteps``, a ``generator`` in ``step`` (it
draws fresh noise per step) and which sigma-spacing options its constructor accepts. A test compares
this table with diffusers' classes (``describe_class``), so it cannot drift.

Samplers registered at run time (``nodegraph.register_sampler`` or the ``nodegraph.samplers`` entry point)
live in the node registry; they are described by introspecting their class when they are looked up.

A scheduler is stateful, so a fresh one is built from the model's scheduler config for every run.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic_core import core_schema

from nodegraph.node import REGISTRY, Registry

if TYPE_CHECKING:
    from pydantic import GetCoreSchemaHandler, GetJsonSchemaHandler
    from pydantic.json_schema import JsonSchemaValue

SIGMA_OPTIONS = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "timestep_spacing")


@dataclass(frozen=True)
class SamplerInfo:
    """What validation needs to know about one sampler, without importing its class."""

    class_name: str  # a diffusers scheduler class (built-ins) or a user's class' qualified name
    config: tuple[tuple[str, Any], ...] = ()  # overrides of the model's scheduler config
    sigmas: bool = False  # set_timesteps(sigmas=...): takes an explicit sigma schedule
    timesteps: bool = False  # set_timesteps(timesteps=...): takes explicit timesteps
    noise: bool = False  # step(generator=...): may draw fresh noise every step (ancestral, SDE, DDPM)
    options: frozenset[str] = frozenset()  # which of SIGMA_OPTIONS its constructor accepts
    needs: str | None = None  # a package it imports lazily


def describe_class(cls: type, config: Mapping[str, Any] | None = None, needs: str | None = None) -> SamplerInfo:
    """The capabilities of a diffusers-style scheduler class, read from its signatures."""
    init = inspect.signature(cls.__init__).parameters  # type: ignore[misc]
    set_t = inspect.signature(cls.set_timesteps).parameters  # type: ignore[attr-defined]
    step = inspect.signature(cls.step).parameters  # type: ignore[attr-defined]
    # UniPC's set_timesteps has `sigmas` but refuses them unless the model is a flow-matching one.
    sigmas = "sigmas" in set_t and "use_flow_sigmas" not in init
    return SamplerInfo(cls.__name__, tuple(sorted((config or {}).items())), sigmas, "timesteps" in set_t,
                       "generator" in step, frozenset(o for o in SIGMA_OPTIONS if o in init), needs)


_ALL = frozenset(SIGMA_OPTIONS)
_NO_SIGMA_FLAGS = frozenset({"timestep_spacing"})
_DPM = {"algorithm_type": "dpmsolver++", "solver_order": 2}
_SDE = {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}
_SDE3 = {"algorithm_type": "sde-dpmsolver++", "solver_order": 3}


def _info(class_name: str, config: Mapping[str, Any] | None = None, *, sigmas: bool = False, timesteps: bool = False,
          noise: bool = False, options: frozenset[str] = _ALL, needs: str | None = None) -> SamplerInfo:
    return SamplerInfo(class_name, tuple(sorted((config or {}).items())), sigmas, timesteps, noise, options, needs)


BUILTIN_SAMPLERS: dict[str, SamplerInfo] = {
    "euler": _info("EulerDiscreteScheduler", sigmas=True, timesteps=True, noise=True),
    "euler_ancestral": _info("EulerAncestralDiscreteScheduler", noise=True, options=_NO_SIGMA_FLAGS),
    "heun": _info("HeunDiscreteScheduler", timesteps=True),
    "dpm_2": _info("KDPM2DiscreteScheduler"),
    "dpm_2_ancestral": _info("KDPM2AncestralDiscreteScheduler", noise=True),
    "lms": _info("LMSDiscreteScheduler"),
    "dpmpp_2m": _info("DPMSolverMultistepScheduler", _DPM, timesteps=True, noise=True),
    "dpmpp_2m_sde": _info("DPMSolverMultistepScheduler", _SDE, timesteps=True, noise=True),
    # ComfyUI's *_gpu variants draw their noise on the GPU; ours always comes from seeded CPU generators.
    "dpmpp_2m_sde_gpu": _info("DPMSolverMultistepScheduler", _SDE, timesteps=True, noise=True),
    "dpmpp_3m_sde": _info("DPMSolverMultistepScheduler", _SDE3, timesteps=True, noise=True),
    "dpmpp_3m_sde_gpu": _info("DPMSolverMultistepScheduler", _SDE3, timesteps=True, noise=True),
    "dpmpp_sde": _info("DPMSolverSDEScheduler", needs="torchsde"),
    "dpmpp_sde_gpu": _info("DPMSolverSDEScheduler", needs="torchsde"),
    "ddim": _info("DDIMScheduler", noise=True, options=_NO_SIGMA_FLAGS),
    "ddpm": _info("DDPMScheduler", timesteps=True, noise=True, options=_NO_SIGMA_FLAGS),
    "uni_pc": _info("UniPCMultistepScheduler"),
    "uni_pc_bh2": _info("UniPCMultistepScheduler", {"solver_type": "bh2"}),
    "deis": _info("DEISMultistepScheduler"),
    "lcm": _info("LCMScheduler", timesteps=True, noise=True, options=_NO_SIGMA_FLAGS),
}

ScheduleName = Literal["normal", "karras", "exponential", "sgm_uniform", "simple", "ddim_uniform", "beta",
                       "linear_quadratic", "kl_optimal"]
BetaSchedule = Literal["model", "linear", "scaled_linear", "squaredcos_cap_v2"]

# Schedules diffusers builds itself from a constructor option (exactly as its pipelines do).
FLAG_SCHEDULES: dict[str, dict[str, Any]] = {
    "normal": {},
    "karras": {"use_karras_sigmas": True},
    "exponential": {"use_exponential_sigmas": True},
    "beta": {"use_beta_sigmas": True},
    "sgm_uniform": {"timestep_spacing": "trailing"},
}
# Schedules we compute (nodes.schedules) and hand over as explicit sigmas.
COMPUTED_SCHEDULES = ("simple", "ddim_uniform", "linear_quadratic", "kl_optimal")
_SIGMA_FLAGS = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")
_SCHEDULE_NEEDS = {"beta": "scipy"}


def sampler_info(name: str, registry: Registry | None = None) -> SamplerInfo | None:
    """The built-in or registered sampler of this name (None if there is none)."""
    if name in BUILTIN_SAMPLERS:
        return BUILTIN_SAMPLERS[name]
    entry = (registry or REGISTRY).sampler(name)
    return None if entry is None else describe_class(entry.cls, entry.config)


def sampler_names(registry: Registry | None = None) -> list[str]:
    return [*BUILTIN_SAMPLERS, *sorted(n for n in (registry or REGISTRY).sampler_names() if n not in BUILTIN_SAMPLERS)]


def _validate_sampler(name: str) -> str:
    if sampler_info(name) is None:
        raise ValueError(f"unknown sampler {name!r}; choose one of {sampler_names()} "
                         "(or register your own with nodegraph.register_sampler)")
    return name


class SamplerChoice:
    """Annotation marker: a sampler name, checked against the built-ins and the registered samplers
    when the value is validated (so registrations after import count) and listed as the schema's enum."""

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(_validate_sampler, core_schema.str_schema())

    def __get_pydantic_json_schema__(self, schema: core_schema.CoreSchema,
                                     handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        out = handler(schema)
        out["enum"] = sampler_names()
        return out


SamplerName = Annotated[str, SamplerChoice()]


def combination_problem(sampler: str, schedule: str, *, custom: bool = False) -> str | None:
    """Why this sampler cannot run this schedule (or an explicit sigma list, ``custom``), or None if it can."""
    info = sampler_info(sampler)
    if info is None:
        return f"unknown sampler {sampler!r}"
    for what, module in ((sampler, info.needs), (schedule, _SCHEDULE_NEEDS.get(schedule))):
        if module and importlib.util.find_spec(module) is None:
            return f"{what} needs the '{module}' package (pip install {module})"
    if custom or schedule in COMPUTED_SCHEDULES:
        if info.sigmas or info.timesteps:
            return None
        what = "an explicit schedule (sigmas/timesteps)" if custom else f"scheduler {schedule!r}"
        return (f"diffusers' {info.class_name} (sampler {sampler!r}) takes neither custom sigmas nor timesteps, "
                f"so {what} cannot be used with it; try sampler 'euler', 'heun' or 'dpmpp_2m'")
    for option in FLAG_SCHEDULES[schedule]:
        if option not in info.options:
            return (f"diffusers' {info.class_name} (sampler {sampler!r}) has no {option!r}, so scheduler "
                    f"{schedule!r} cannot be used with it; try scheduler 'normal' or 'sgm_uniform'")
    return None


def sampler_class(name: str) -> tuple[type, dict[str, Any]]:
    """The scheduler class of a sampler and its config overrides (imports diffusers for built-ins)."""
    if name in BUILTIN_SAMPLERS:
        import diffusers

        info = BUILTIN_SAMPLERS[name]
        return getattr(diffusers, info.class_name), dict(info.config)
    entry = REGISTRY.sampler(name)
    if entry is None:
        raise ValueError(f"unknown sampler {name!r}")
    return entry.cls, dict(entry.config)


def make_scheduler(sampler: str, schedule: str, base_config: str | Mapping[str, Any],
                   beta_schedule: BetaSchedule = "model", seed: int | None = None) -> Any:
    """A fresh scheduler for one run, from the model's config with the sampler's and schedule's options.

    seed: for schedulers that draw their own noise from a seed (DPMSolverSDE's Brownian tree: one tree for
    the whole batch) -- without it they are not reproducible. Computed schedules (``COMPUTED_SCHEDULES``)
    need explicit sigmas on top: see ``nodes.schedules``.
    """
    problem = combination_problem(sampler, schedule)
    if problem:
        raise ValueError(problem)
    cls, overrides = sampler_class(sampler)
    config = json.loads(base_config) if isinstance(base_config, str) else dict(base_config)
    accepted = inspect.signature(cls.__init__).parameters  # type: ignore[misc]
    for flag in _SIGMA_FLAGS:  # "normal" means normal, whatever the checkpoint's config says
        if flag in accepted:
            overrides[flag] = False
    overrides.update(FLAG_SCHEDULES.get(schedule, {}))
    if seed is not None and "noise_sampler_seed" in accepted:
        overrides["noise_sampler_seed"] = seed
    if beta_schedule != "model":
        overrides["beta_schedule"] = beta_schedule
    return cls.from_config(config, **overrides)  # type: ignore[attr-defined]
