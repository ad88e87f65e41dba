"""ComfyUI's class_types for custom sampling (noise, guiders, samplers, sigmas) and for combining conditioning.

Declared as nodes.comfyui declares the core ones (``ComfyClass``: ComfyUI's input spec, names and ranges
from ``comfy_extras/nodes_custom_sampler.py`` and the Conditioning* classes of ``nodes.py``, plus the
mapping onto our nodes). The mappings are the ones these nodes were first declared with: the expand
functions stay beside the nodes they map to (nodes.sampling, nodes.schedules, nodes.conditioning).
"""

from __future__ import annotations

from typing import Any

from nodegraph.comfy_spec import MAX_RESOLUTION, SEED_MAX, ComfyInput, register_comfy
from nodegraph.node import REGISTRY
from nodes.comfyui import (
    COMFY_SAMPLERS,
    COMFY_SCHEDULERS,
    Expanded,
    Inputs,
    _cls,
    _combo,
    _float,
    _int,
    _link,
    _one,
    comfy_sampler,
)
from nodes.conditioning import _comfy_area
from nodes.sampling import _comfy_cfg_guider, _comfy_sampler_custom, _comfy_sampler_custom_advanced
from nodes.schedules import _comfy_basic, _comfy_turbo


def _sampler_select(inputs: Inputs) -> Expanded:
    name: Any = inputs.get("sampler_name", "euler")
    # A ComfyUI name as KSampler reads it (``*_gpu`` twins, an error naming what to use instead); a link is
    # handed on as it is.
    return {"": {"type": "SamplerSelect", "inputs": {"sampler": comfy_sampler(name) if isinstance(name, str) else name}}}


def _area(fractions: bool) -> Any:
    def expand(inputs: Inputs) -> Expanded:
        return _comfy_area(inputs, fractions)

    return expand


def _seed(name: str) -> ComfyInput:
    return _int(name, 0, 0, SEED_MAX, control_after_generate=True)


def _sigma(name: str, default: float, hi: float = 5000.0) -> ComfyInput:
    return _float(name, default, 0.0, hi, round=False)


_CFG = _float("cfg", 8.0, 0.0, 100.0, 0.1, round=0.01)
_SIGMAS = (("", "sigmas"),)
# ComfyUI's second output is the model's prediction of the clean latent; with a schedule that ends at 0
# that is the output itself, which is what we hand on for both.
_CUSTOM_OUTPUTS = (("", "latent"), ("", "latent"))
_NOISE_NOTE = ("Noise is drawn on the CPU, one generator per sample seeded noise_seed+i, as KSampler's (images "
               "differ from ComfyUI's for the same seed).")
_CUSTOM_NOTE = ("`denoised_output` is `output` itself (ComfyUI's is the model's last prediction of the clean latent: "
                "the same when the sigmas end at 0). A sampler that cannot follow explicit sigmas is an error.")
_COMPUTED_NOTE = "sigma_max, sigma_min must be above 0 (ComfyUI allows 0)."

CUSTOM_SAMPLING = (
    _cls("KSamplerSelect", _sampler_select, (("", "sampler"),), (_combo("sampler_name", COMFY_SAMPLERS),),
         ("SAMPLER",), category="sampling/custom_sampling/samplers",
         notes="Samplers as KSampler's: diffusers' schedulers; `*_gpu` names run their CPU twin; a name without an "
               "implementation is an import error naming the one to use."),
    _cls("RandomNoise", _one("Noise", seed="<noise_seed>"), (("", "noise"),), (_seed("noise_seed"),), ("NOISE",),
         category="sampling/custom_sampling/noise", notes=_NOISE_NOTE),
    _cls("DisableNoise", _one("Noise", add=False), (("", "noise"),), (), ("NOISE",),
         category="sampling/custom_sampling/noise"),
    _cls("BasicGuider", _one("Guider", unet="<model>", positive="<conditioning>", guidance_scale=1.0),
         (("", "guider"),), (_link("model", "MODEL"), _link("conditioning", "CONDITIONING")), ("GUIDER",),
         category="sampling/custom_sampling/guiders", notes="Runs as a Guider with guidance_scale 1 (no negative)."),
    _cls("CFGGuider", _comfy_cfg_guider, (("", "guider"),),
         (_link("model", "MODEL"), _link("positive", "CONDITIONING"), _link("negative", "CONDITIONING"), _CFG),
         ("GUIDER",), category="sampling/custom_sampling/guiders",
         notes="Classifier-free guidance as Sample's (one scale for both text encoders)."),
    _cls("SamplerCustom", _comfy_sampler_custom, _CUSTOM_OUTPUTS,
         (_link("model", "MODEL"), ComfyInput("add_noise", "BOOLEAN", True), _seed("noise_seed"), _CFG,
          _link("positive", "CONDITIONING"), _link("negative", "CONDITIONING"), _link("sampler", "SAMPLER"),
          _link("sigmas", "SIGMAS"), _link("latent_image", "LATENT")),
         ("LATENT", "LATENT"), ("output", "denoised_output"), category="sampling/custom_sampling",
         notes="Runs as Sample with explicit sigmas. " + _CUSTOM_NOTE + " " + _NOISE_NOTE),
    _cls("SamplerCustomAdvanced", _comfy_sampler_custom_advanced, _CUSTOM_OUTPUTS,
         (_link("noise", "NOISE"), _link("guider", "GUIDER"), _link("sampler", "SAMPLER"), _link("sigmas", "SIGMAS"),
          _link("latent_image", "LATENT")),
         ("LATENT", "LATENT"), ("output", "denoised_output"), category="sampling/custom_sampling",
         notes=_CUSTOM_NOTE),
    _cls("DifferentialDiffusion", _one("DifferentialDiffusion", unet="<model>", strength="<strength>"),
         (("", "unet"),), (_link("model", "MODEL"), _float("strength", 1.0, 0.0, 1.0, 0.01, optional=True)),
         ("MODEL",), category="_for_testing", display="Differential Diffusion",
         notes="Acts on the mask blend of 4-channel UNets (SetLatentNoiseMask keeps the mask soft); a 9-channel "
               "inpainting UNet is an error. strength 0 keeps the soft mask (ComfyUI's treats 0 as 1)."),
)

SCHEDULES = (
    _cls("BasicScheduler", _comfy_basic, _SIGMAS,
         (_link("model", "MODEL"), _combo("scheduler", COMFY_SCHEDULERS), _int("steps", 20, 1, 10000),
          _float("denoise", 1.0, 0.0, 1.0)),
         ("SIGMAS",), category="sampling/custom_sampling/schedulers",
         notes="The sigmas diffusers' scheduler visits for this schedule (our Schedule). denoise < 1 keeps the last "
               "`steps` of a schedule steps/denoise long, as ComfyUI; denoise 0 (ComfyUI: no sigmas) is an error, "
               "and so are more than 1000 steps."),
    _cls("KarrasScheduler", _one("KarrasSchedule", steps="<steps>", sigma_max="<sigma_max>", sigma_min="<sigma_min>",
                                 rho="<rho>"), _SIGMAS,
         (_int("steps", 20, 1, 10000), _sigma("sigma_max", 14.614642), _sigma("sigma_min", 0.0291675),
          _sigma("rho", 7.0, 100.0)),
         ("SIGMAS",), category="sampling/custom_sampling/schedulers",
         notes=_COMPUTED_NOTE + " rho must be above 0; at most 1000 steps."),
    _cls("ExponentialScheduler", _one("ExponentialSchedule", steps="<steps>", sigma_max="<sigma_max>",
                                      sigma_min="<sigma_min>"), _SIGMAS,
         (_int("steps", 20, 1, 10000), _sigma("sigma_max", 14.614642), _sigma("sigma_min", 0.0291675)),
         ("SIGMAS",), category="sampling/custom_sampling/schedulers", notes=_COMPUTED_NOTE + " At most 1000 steps."),
    _cls("SDTurboScheduler", _comfy_turbo, _SIGMAS,
         (_link("model", "MODEL"), _int("steps", 1, 1, 10), _float("denoise", 1.0, 0.0, 1.0)),
         ("SIGMAS",), category="sampling/custom_sampling/schedulers",
         notes="The model's sigmas at timesteps 999, 899, ... (TimestepSchedule), as ComfyUI; a denoise that leaves "
               "fewer than `steps` timesteps (ComfyUI: fewer sigmas) is an error."),
    _cls("SplitSigmas", _one("SplitSchedule", sigmas="<sigmas>", step="<step>"), (("", "high"), ("", "low")),
         (_link("sigmas", "SIGMAS"), _int("step", 0, 0, 10000)), ("SIGMAS", "SIGMAS"), ("high_sigmas", "low_sigmas"),
         category="sampling/custom_sampling/sigmas"),
    _cls("FlipSigmas", _one("FlipSchedule", sigmas="<sigmas>"), _SIGMAS, (_link("sigmas", "SIGMAS"),), ("SIGMAS",),
         category="sampling/custom_sampling/sigmas"),
)

_COND = _link("conditioning", "CONDITIONING")
_STRENGTH = _float("strength", 1.0, 0.0, 10.0)
_OUT = (("", "conditioning"),)
_AREA_NOTE = ("The prompt is evaluated on the whole latent and weighted inside the area (ComfyUI evaluates it on a "
              "crop of the latent); overlapping entries are averaged by weight, as ComfyUI.")

CONDITIONING = (
    _cls("ConditioningCombine", _one("ConditioningCombine", a="<conditioning_1>", b="<conditioning_2>"), _OUT,
         (_link("conditioning_1", "CONDITIONING"), _link("conditioning_2", "CONDITIONING")), ("CONDITIONING",),
         category="conditioning", display="Conditioning (Combine)",
         notes="Every entry is evaluated and the predictions averaged by weight, as ComfyUI."),
    _cls("ConditioningAverage", _one("ConditioningAverage", to="<conditioning_to>", source="<conditioning_from>",
                                     to_strength="<conditioning_to_strength>"), _OUT,
         (_link("conditioning_to", "CONDITIONING"), _link("conditioning_from", "CONDITIONING"),
          _float("conditioning_to_strength", 1.0, 0.0, 1.0)), ("CONDITIONING",), category="conditioning",
         notes="conditioning_from's tokens are repeated to conditioning_to's length (ComfyUI pads them with zeros)."),
    _cls("ConditioningConcat", _one("ConditioningConcat", to="<conditioning_to>", source="<conditioning_from>"),
         _OUT, (_link("conditioning_to", "CONDITIONING"), _link("conditioning_from", "CONDITIONING")),
         ("CONDITIONING",), category="conditioning", display="Conditioning (Concat)"),
    _cls("ConditioningSetArea", _area(False), _OUT,
         (_COND, _int("width", 64, 64, MAX_RESOLUTION, 8), _int("height", 64, 64, MAX_RESOLUTION, 8),
          _int("x", 0, 0, MAX_RESOLUTION, 8), _int("y", 0, 0, MAX_RESOLUTION, 8), _STRENGTH),
         ("CONDITIONING",), category="conditioning", display="Conditioning (Set Area)",
         notes="Pixels are rounded to whole latent cells. " + _AREA_NOTE),
    _cls("ConditioningSetAreaPercentage", _area(True), _OUT,
         (_COND, _float("width", 1.0, 0.0, 1.0), _float("height", 1.0, 0.0, 1.0), _float("x", 0.0, 0.0, 1.0),
          _float("y", 0.0, 0.0, 1.0), _STRENGTH),
         ("CONDITIONING",), category="conditioning", display="Conditioning (Set Area with Percentage)",
         notes=_AREA_NOTE),
    _cls("ConditioningSetMask", _one("ConditioningSetMask", conditioning="<conditioning>", mask="<mask>",
                                     strength="<strength>"), _OUT,
         (_COND, _link("mask", "MASK"), _STRENGTH, _combo("set_cond_area", ("default", "mask bounds"))),
         ("CONDITIONING",), category="conditioning", display="Conditioning (Set Mask)",
         notes="`set_cond_area` is ignored: the prompt is always evaluated on the whole latent and weighted by the "
               "mask (as ComfyUI's `default`)."),
    _cls("ConditioningSetTimestepRange", _one("ConditioningSetTimestepRange", conditioning="<conditioning>",
                                              start="<start>", end="<end>"), _OUT,
         (_COND, _float("start", 0.0, 0.0, 1.0, 0.001), _float("end", 1.0, 0.0, 1.0, 0.001)),
         ("CONDITIONING",), category="advanced/conditioning",
         notes="start/end are fractions of the model's training timesteps (0 = the noisy end), as ComfyUI."),
    _cls("ConditioningZeroOut", _one("ConditioningZeroOut", conditioning="<conditioning>"), _OUT, (_COND,),
         ("CONDITIONING",), category="advanced/conditioning"),
)

ALL = (*CUSTOM_SAMPLING, *SCHEDULES, *CONDITIONING)
register_comfy(REGISTRY, *ALL)
