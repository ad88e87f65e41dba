"""Noise schedules as explicit sigma lists (the ``SIGMAS`` socket) and the nodes that make and cut them.

A schedule is a descending list of noise levels sigma (the std of the noise relative to the signal, as
k-diffusion and ComfyUI count), ending with 0: ``steps + 1`` numbers for ``steps`` steps. Named schedules
that diffusers builds itself (normal, karras, exponential, beta, sgm_uniform) are read back from a
diffusers scheduler, so a named schedule and its explicit list run the same steps; the others are computed
here from the model's training noise levels with the published formulas (numpy only).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Annotated, Any, NamedTuple

import numpy as np
from pydantic import Field

from nodegraph import Socket, node
from nodes.models import UNetHandle  # a socket annotation: needed at run time to build the node's spec
from nodes.schedulers import COMPUTED_SCHEDULES, BetaSchedule, SamplerName, ScheduleName, combination_problem

NODE_DEPENDS = ("numpy", "diffusers")
# A link from a node below, or a list written out by hand.
Sigmas = Annotated[list[float], Socket("SIGMAS", literal=True)]
Steps = Annotated[int, Field(ge=1, le=1000)]
Positive = Annotated[float, Field(gt=0.0)]


def training_sigmas(config: Mapping[str, Any], beta_schedule: BetaSchedule = "model") -> np.ndarray:
    """sigma(t) for t = 0 .. num_train_timesteps-1 from the model's (or a chosen) beta schedule."""
    kind = config.get("beta_schedule", "scaled_linear") if beta_schedule == "model" else beta_schedule
    n = int(config.get("num_train_timesteps", 1000))
    start, end = float(config.get("beta_start", 0.00085)), float(config.get("beta_end", 0.012))
    if kind == "linear":
        betas = np.linspace(start, end, n, dtype=np.float64)
    elif kind == "scaled_linear":  # linear in sqrt(beta): quadratic in beta
        betas = np.linspace(start**0.5, end**0.5, n, dtype=np.float64) ** 2
    elif kind == "squaredcos_cap_v2":  # Nichol & Dhariwal's cosine alpha-bar, betas capped at 0.999
        bar = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
        betas = np.array([min(1 - bar((i + 1) / n) / bar(i / n), 0.999) for i in range(n)])
    else:
        raise ValueError(f"unknown beta_schedule {kind!r}")
    alphas_cumprod = np.cumprod(1.0 - betas)
    return np.sqrt((1 - alphas_cumprod) / alphas_cumprod)


def karras(steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> Sigmas:
    """Karras et al. 2022 (eq. 5): evenly spaced in sigma^(1/rho)."""
    ramp = np.linspace(0, 1, steps)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return [*((hi + ramp * (lo - hi)) ** rho).tolist(), 0.0]


def exponential(steps: int, sigma_min: float, sigma_max: float) -> Sigmas:
    """Evenly spaced in log sigma."""
    return [*np.exp(np.linspace(math.log(sigma_max), math.log(sigma_min), steps)).tolist(), 0.0]


def simple(train: np.ndarray, steps: int) -> Sigmas:
    """Every (len/steps)-th training sigma, from the top."""
    stride = len(train) / steps
    return [float(train[-(1 + int(i * stride))]) for i in range(steps)] + [0.0]


def ddim_uniform(train: np.ndarray, steps: int) -> Sigmas:
    """DDIM's uniform timestep stride over the training sigmas, from t = 1 upwards, then reversed."""
    stride = max(len(train) // steps, 1)
    picked = [float(train[t]) for t in range(1, len(train), stride)]
    return picked[::-1] + [0.0]


def linear_quadratic(steps: int, sigma_max: float, threshold: float = 0.025, linear_steps: int | None = None
                     ) -> Sigmas:
    """Mochi's schedule: noise falls linearly to ``threshold`` for the first half, then quadratically."""
    if steps == 1:
        return [sigma_max, 0.0]
    lin = steps // 2 if linear_steps is None else linear_steps
    quad = steps - lin
    linear_part = [i * threshold / lin for i in range(lin)]
    gap = lin - threshold * steps
    a = gap / (lin * quad**2)
    b = threshold / lin - 2 * gap / quad**2
    c = a * lin**2
    quadratic_part = [a * i**2 + b * i + c for i in range(lin, steps)]
    return [(1.0 - x) * sigma_max for x in [*linear_part, *quadratic_part, 1.0]]


def kl_optimal(steps: int, sigma_min: float, sigma_max: float) -> Sigmas:
    """Align Your Steps' KL-optimal schedule: evenly spaced in arctan(sigma)."""
    frac = np.arange(steps, dtype=np.float64) / max(steps - 1, 1)
    return [*np.tan(frac * math.atan(sigma_min) + (1 - frac) * math.atan(sigma_max)).tolist(), 0.0]


def computed_schedule(name: str, steps: int, config: Mapping[str, Any], beta_schedule: BetaSchedule = "model"
                      ) -> Sigmas:
    """One of ``COMPUTED_SCHEDULES`` for a model's scheduler config."""
    train = training_sigmas(config, beta_schedule)
    lo, hi = float(train[0]), float(train[-1])
    if name == "simple":
        return simple(train, steps)
    if name == "ddim_uniform":
        return ddim_uniform(train, steps)
    if name == "linear_quadratic":
        return linear_quadratic(steps, hi)
    if name == "kl_optimal":
        return kl_optimal(steps, lo, hi)
    raise ValueError(f"{name!r} is not a computed schedule")


def named_schedule(sampler: str, schedule: str, steps: int, config: str | Mapping[str, Any],
                   beta_schedule: BetaSchedule = "model") -> Sigmas:
    """The sigmas a sampler would visit for a named schedule (trailing 0 included)."""
    from nodes.schedulers import make_scheduler

    cfg = json.loads(config) if isinstance(config, str) else dict(config)
    if schedule in COMPUTED_SCHEDULES:
        return computed_schedule(schedule, steps, cfg, beta_schedule)
    sched = make_scheduler(sampler, schedule, cfg, beta_schedule)
    sched.set_timesteps(steps)
    sigmas = getattr(sched, "sigmas", None)
    if sigmas is not None and len(sigmas) == steps + 1:
        return [float(s) for s in sigmas]
    if schedule == "normal" and sigmas is None:  # DDIM-style: only timesteps, read sigma(t) off the table
        train = training_sigmas(cfg, beta_schedule)
        t = sched.timesteps.double().numpy()
        return [*np.interp(t, np.arange(len(train)), train).tolist(), 0.0]
    # Second-order samplers interleave inner sigmas: the spacing itself is Euler's.
    return named_schedule("euler", schedule, steps, cfg, beta_schedule)


def sigmas_to_timesteps(sigmas: list[float], config: Mapping[str, Any], beta_schedule: BetaSchedule = "model"
                        ) -> Sigmas:
    """Timesteps (fractional) of each sigma but the last, by interpolation in log sigma (as diffusers does)."""
    train = training_sigmas(config, beta_schedule)
    logs = np.log(train)
    values = np.log(np.maximum(np.asarray(sigmas[:-1] if sigmas[-1] == 0 else sigmas, dtype=np.float64), 1e-10))
    return np.interp(values, logs, np.arange(len(train), dtype=np.float64)).tolist()


def percent_timestep(percent: float, train_steps: int = 1000) -> float:
    """The training timestep at ``percent`` of the way from pure noise to clean (ComfyUI's percent_to_sigma,
    in timesteps): 0 lies above every timestep, 1 at 0, anything between at (1 - percent) * (train_steps - 1)."""
    if percent <= 0.0:
        return float("inf")
    if percent >= 1.0:
        return 0.0
    return (1.0 - percent) * (train_steps - 1)


def _check_schedule(sampler: str, scheduler: str, **_: Any) -> list[tuple[str | None, str]]:
    why = combination_problem(sampler, scheduler)
    return [("scheduler", why)] if why else []


def _comfy_basic(inputs: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {"": {"type": "Schedule", "inputs": {"unet": inputs["model"], "scheduler": inputs.get("scheduler", "normal"),
                                                 "steps": inputs.get("steps", 20), "denoise": inputs.get("denoise", 1.0)}}}


def _comfy_turbo(inputs: dict[str, Any]) -> dict[str, dict[str, Any]]:
    # SD-Turbo: timesteps 999, 899, ... (one per step, 100 apart), read off the model's sigmas.
    steps = int(inputs.get("steps", 1))
    start = 10 - int(10 * float(inputs.get("denoise", 1.0)))
    return {"": {"type": "TimestepSchedule", "inputs": {"unet": inputs["model"],
                                                        "timesteps": [999 - 100 * i for i in range(start, start + steps)]}}}


@node(category="sampling/schedules", version=1, check=_check_schedule)
def Schedule(unet: UNetHandle, sampler: SamplerName = "euler", scheduler: ScheduleName = "normal", steps: Steps = 20,
             denoise: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0, beta_schedule: BetaSchedule = "model"
             ) -> Sigmas:
    """The sigmas a named schedule visits for this model. denoise < 1 keeps the last ``steps`` of a
    schedule ``steps / denoise`` long (ComfyUI's BasicScheduler)."""
    total = steps if denoise >= 1.0 else int(steps / denoise)
    return named_schedule(sampler, scheduler, total, unet.scheduler_config, beta_schedule)[-(steps + 1):]


@node(category="sampling/schedules", version=1)
def KarrasSchedule(steps: Steps = 20, sigma_max: Positive = 14.614642, sigma_min: Positive = 0.0291675,
                   rho: Positive = 7.0) -> Sigmas:
    """Karras et al.'s schedule: evenly spaced in sigma^(1/rho) from sigma_max to sigma_min, then 0."""
    return karras(steps, sigma_min, sigma_max, rho)


@node(category="sampling/schedules", version=1)
def ExponentialSchedule(steps: Steps = 20, sigma_max: Positive = 14.614642, sigma_min: Positive = 0.0291675
                        ) -> Sigmas:
    """Evenly spaced in log sigma from sigma_max to sigma_min, then 0."""
    return exponential(steps, sigma_min, sigma_max)


@node(category="sampling/schedules", version=1)
def TimestepSchedule(unet: UNetHandle, timesteps: list[Annotated[float, Field(ge=0)]]) -> Sigmas:
    """The model's sigmas at these (descending) training timesteps, then 0."""
    train = training_sigmas(json.loads(unet.scheduler_config))
    return [*np.interp(timesteps, np.arange(len(train)), train).tolist(), 0.0]


class SplitSigmas(NamedTuple):
    high: Sigmas
    low: Sigmas


@node(category="sampling/schedules", version=1)
def SplitSchedule(sigmas: Sigmas, step: Annotated[int, Field(ge=0)] = 0) -> SplitSigmas:
    """Cut a schedule at a step: ``high`` runs steps 0..step-1, ``low`` the rest (they share sigma[step])."""
    return SplitSigmas(list(sigmas[: step + 1]), list(sigmas[step:]))


@node(category="sampling/schedules", version=1)
def StepRange(sigmas: Sigmas, start: Annotated[int, Field(ge=0)] = 0, end: Annotated[int, Field(ge=0)] = 10000,
              denoise_to_zero: bool = False) -> Sigmas:
    """Steps start..end-1 of a schedule (ComfyUI's KSamplerAdvanced start_at_step / end_at_step).

    denoise_to_zero: when ``end`` stops the schedule early, its last sigma becomes 0, so the run ends on a
    clean latent instead of at that step's noise level (return_with_leftover_noise=disable)."""
    cut = list(sigmas)
    if end < len(cut) - 1:
        cut = cut[: end + 1]
        if denoise_to_zero:
            cut[-1] = 0.0
    if start >= len(cut) - 1:
        raise ValueError(f"start {start} leaves no step of this {len(cut) - 1}-step range (end {end}, "
                         f"{len(sigmas) - 1} steps in all)")
    return cut[start:]


@node(category="sampling/schedules", version=1)
def FlipSchedule(sigmas: Sigmas) -> Sigmas:
    """Reverse a schedule (for unsampling); a leading 0 becomes a tiny positive sigma, as in ComfyUI."""
    flipped = list(reversed(sigmas))
    if flipped and flipped[0] == 0:
        flipped[0] = 1e-4
    return flipped
