"""ComfyUI's core class_types: each one's input spec (as ComfyUI declares it) and its mapping onto our nodes.

One declaration per class_type (``ComfyClass``): the UI-format converter, the API-format importer and
the server's ``object_info`` all read it. Specs follow ComfyUI's ``nodes.py`` / ``comfy_extras``
(names, order, defaults, ranges); where we behave differently, docs/comfyui.md says so.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nodegraph.comfy_spec import MAX_RESOLUTION, SEED_MAX, ComfyClass, ComfyInput, MappingError, register_comfy
from nodegraph.node import REGISTRY
from nodes.schedulers import BUILTIN_SAMPLERS, sampler_info

Inputs = dict[str, Any]
Expanded = dict[str, dict[str, Any]]

# ComfyUI's KSampler lists (comfy/samplers.py).
COMFY_SAMPLERS = (
    "euler", "euler_cfg_pp", "euler_ancestral", "euler_ancestral_cfg_pp", "heun", "heunpp2", "dpm_2",
    "dpm_2_ancestral", "lms", "dpm_fast", "dpm_adaptive", "dpmpp_2s_ancestral", "dpmpp_2s_ancestral_cfg_pp",
    "dpmpp_sde", "dpmpp_sde_gpu", "dpmpp_2m", "dpmpp_2m_cfg_pp", "dpmpp_2m_sde", "dpmpp_2m_sde_gpu",
    "dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun_gpu", "dpmpp_3m_sde", "dpmpp_3m_sde_gpu", "ddpm", "lcm", "ipndm",
    "ipndm_v", "deis", "res_multistep", "res_multistep_cfg_pp", "res_multistep_ancestral",
    "res_multistep_ancestral_cfg_pp", "gradient_estimation", "gradient_estimation_cfg_pp", "er_sde", "seeds_2",
    "seeds_3", "sa_solver", "sa_solver_pece", "ddim", "uni_pc", "uni_pc_bh2",
)
COMFY_SCHEDULERS = ("simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta", "normal",
                    "linear_quadratic", "kl_optimal")
# The same algorithm under another name (ComfyUI's *_gpu variants only draw their noise on the GPU).
_SAMPLER_ALIASES = {"dpmpp_sde_gpu": "dpmpp_sde", "dpmpp_2m_sde_gpu": "dpmpp_2m_sde",
                    "dpmpp_3m_sde_gpu": "dpmpp_3m_sde", "dpmpp_2m_sde_heun_gpu": "dpmpp_2m_sde_heun"}
# What to use instead when ours has no implementation (tried in order; the first one we have wins).
_SAMPLER_INSTEAD = {
    "euler_cfg_pp": ("euler",), "euler_ancestral_cfg_pp": ("euler_ancestral",), "heunpp2": ("heun",),
    "dpm_fast": ("dpmpp_2m",), "dpm_adaptive": ("dpmpp_2m",), "dpmpp_2s_ancestral": ("euler_ancestral",),
    "dpmpp_2s_ancestral_cfg_pp": ("dpmpp_2s_ancestral", "euler_ancestral"), "dpmpp_2m_cfg_pp": ("dpmpp_2m",),
    "dpmpp_2m_sde_heun": ("dpmpp_2m_sde",), "dpmpp_3m_sde": ("dpmpp_2m_sde",), "ipndm": ("deis", "dpmpp_2m"),
    "ipndm_v": ("deis", "dpmpp_2m"), "res_multistep": ("dpmpp_2m",), "res_multistep_cfg_pp": ("dpmpp_2m",),
    "res_multistep_ancestral": ("euler_ancestral",), "res_multistep_ancestral_cfg_pp": ("euler_ancestral",),
    "gradient_estimation": ("dpmpp_2m",), "gradient_estimation_cfg_pp": ("dpmpp_2m",), "er_sde": ("dpmpp_2m_sde",),
    "seeds_2": ("dpmpp_sde",), "seeds_3": ("dpmpp_sde",), "sa_solver": ("dpmpp_2m_sde",),
    "sa_solver_pece": ("dpmpp_2m_sde",), "uni_pc_bh2": ("uni_pc",),
}
_SCHEDULER_INSTEAD = {"simple": ("simple", "sgm_uniform"), "ddim_uniform": ("ddim_uniform", "sgm_uniform"),
                      "linear_quadratic": ("linear_quadratic", "normal"), "kl_optimal": ("kl_optimal", "karras")}


_CHOICES: dict[tuple[str, str], tuple[str, ...]] = {}


def _choices(node_type: str, input_name: str) -> tuple[str, ...]:
    """The values our node accepts for a Literal input (remembered: describe() builds a JSON schema)."""
    if (node_type, input_name) not in _CHOICES:
        spec = REGISTRY.get(node_type)
        described = spec.inputs[input_name].describe() if spec and input_name in spec.inputs else {}
        if not described.get("choices"):
            return ()
        _CHOICES[node_type, input_name] = tuple(described["choices"])
    return _CHOICES[node_type, input_name]


def _translate_name(name: str, what: str, input_name: str, ours: tuple[str, ...],
                    instead: Mapping[str, tuple[str, ...]], aliases: Mapping[str, str]) -> str:
    """Our name for a ComfyUI sampler/scheduler name, or ValueError naming what to use instead."""
    name = aliases.get(name, name)
    if name in ours:
        return name
    options = [n for n in instead.get(name, ()) if n in ours]
    if options:
        raise MappingError(input_name, f"{what} {name!r} is not implemented here; use {options[0]!r} instead")
    raise MappingError(input_name, f"{what} {name!r} is not implemented here; choose one of {list(ours)}")


def comfy_sampler(name: str) -> str:
    return _translate_name(name, "sampler", "sampler_name", _choices("Sample", "sampler"), _SAMPLER_INSTEAD, _SAMPLER_ALIASES)


def comfy_scheduler(name: str) -> str:
    return _translate_name(name, "scheduler", "scheduler", _choices("Sample", "scheduler"), _SCHEDULER_INSTEAD, {})


# ---- spec helpers -------------------------------------------------------------------------------
def _int(name: str, default: int, lo: float, hi: float, step: int = 1, **kw: Any) -> ComfyInput:
    return ComfyInput(name, "INT", default, lo, hi, step, **kw)


def _float(name: str, default: float, lo: float, hi: float, step: float = 0.01, **kw: Any) -> ComfyInput:
    return ComfyInput(name, "FLOAT", default, lo, hi, step, **kw)


def _str(name: str, default: str = "", multiline: bool = False, **kw: Any) -> ComfyInput:
    return ComfyInput(name, "STRING", default, multiline=multiline, **kw)


def _bool(name: str, default: bool, **kw: Any) -> ComfyInput:
    return ComfyInput(name, "BOOLEAN", default, **kw)


def _combo(name: str, choices: tuple[str, ...], default: str | None = None, **kw: Any) -> ComfyInput:
    return ComfyInput(name, "COMBO", default if default is not None else (choices[0] if choices else None),
                      choices=choices, **kw)


def _link(name: str, socket: str, optional: bool = False) -> ComfyInput:
    return ComfyInput(name, socket, optional=optional)


def _one(node_type: str, **fixed: Any) -> Any:
    """An expand function for one node of ours: ``fixed`` maps our input name to ComfyUI's (``"<name>"``)
    or to a literal (any other value)."""

    def expand(inputs: Inputs) -> Expanded:
        ours: dict[str, Any] = {}
        for our_name, source in fixed.items():
            if isinstance(source, str) and source.startswith("<") and source.endswith(">"):
                if source[1:-1] in inputs and inputs[source[1:-1]] is not None:
                    ours[our_name] = inputs[source[1:-1]]
            else:
                ours[our_name] = source
        return {"": {"type": node_type, "inputs": ours}}

    return expand


def _cls(class_type: str, expand: Any, outputs: tuple[tuple[str, str], ...], inputs: tuple[ComfyInput, ...],
         types: tuple[str, ...], names: tuple[str, ...] = (), *, category: str, display: str = "",
         output_node: bool = False, description: str = "", hidden: dict[str, str] | None = None,
         notes: str = "") -> ComfyClass:
    return ComfyClass(class_type, expand, outputs, inputs, types, names, output_node, category, display, description,
                      hidden or {}, notes)


# ---- sampling -----------------------------------------------------------------------------------
def _sample(inputs: Inputs, seed: Any, **extra: Any) -> Expanded:
    ours = {"unet": inputs["model"], "seed": seed, "steps": inputs.get("steps", 20),
            "guidance_scale": inputs.get("cfg", 8.0), "sampler": comfy_sampler(inputs.get("sampler_name", "euler")),
            "scheduler": comfy_scheduler(inputs.get("scheduler", "normal")), "positive": inputs["positive"],
            "negative": inputs.get("negative"), "latent": inputs["latent_image"], **extra}
    return {"": {"type": "Sample", "inputs": {k: v for k, v in ours.items() if v is not None}}}


def _ksampler(inputs: Inputs) -> Expanded:
    return _sample(inputs, inputs.get("seed", 0), strength=inputs.get("denoise", 1.0))


def _sigma_samplers() -> str:
    return ", ".join(name for name, info in BUILTIN_SAMPLERS.items() if info.sigmas)


def _ksampler_advanced(inputs: Inputs) -> Expanded:
    steps = int(inputs.get("steps", 20))
    start, end = int(inputs.get("start_at_step", 0)), int(inputs.get("end_at_step", 10000))
    add_noise = inputs.get("add_noise", "enable") != "disable"
    leftover = inputs.get("return_with_leftover_noise", "disable") == "enable"
    seed = inputs.get("noise_seed", 0)
    if start == 0 and end >= steps:  # the whole schedule: KSampler with another name for its seed
        return _sample(inputs, seed, strength=1.0, add_noise=add_noise)
    if start >= min(end, steps):  # ComfyUI runs nothing and hands the latent on as it is
        return {"": {"type": "RepeatLatent", "inputs": {"latent": inputs["latent_image"], "amount": 1}}}
    sampler = comfy_sampler(inputs.get("sampler_name", "euler"))
    info = sampler_info(sampler)
    if info is not None and info.sigmas:
        # Cut by step index as ComfyUI cuts it (diffusers' denoising_start/end fractions round differently):
        # the sigmas of the whole schedule, the range, then Sample on them.
        expanded = _sample(inputs, seed, add_noise=add_noise, sigmas=["@range", "sigmas"],
                           **({"strength": 1.0} if start == 0 else {}))
        expanded["sched"] = {"type": "Schedule", "inputs": {
            "unet": inputs["model"], "sampler": sampler,
            "scheduler": comfy_scheduler(inputs.get("scheduler", "normal")), "steps": steps}}
        expanded["range"] = {"type": "StepRange", "inputs": {
            "sigmas": ["@sched", "sigmas"], "start": start, "end": end, "denoise_to_zero": not leftover}}
        return expanded
    # A sampler that follows only its own timesteps: diffusers' denoising_start/end fractions, which cover the
    # base + refiner split (leftover noise out of the first half, no new noise into the second).
    if start > 0 and add_noise:
        raise MappingError("add_noise", f"add_noise 'enable' from step {start} needs a sampler that follows explicit "
                                        f"sigmas ({_sigma_samplers()}); {sampler!r} can only continue a run "
                                        "without new noise (add_noise 'disable')")
    if end < steps and not leftover:
        raise MappingError("return_with_leftover_noise",
                           f"return_with_leftover_noise 'disable' with end_at_step {end} < steps needs a sampler "
                           f"that follows explicit sigmas ({_sigma_samplers()}); {sampler!r} can only stop "
                           "with the leftover noise (return_with_leftover_noise 'enable')")
    return _sample(inputs, seed, strength=1.0, add_noise=add_noise,
                   denoising_start=start / steps if start > 0 else None,
                   denoising_end=end / steps if end < steps else None)


_SAMPLER_INPUTS = (
    _combo("sampler_name", COMFY_SAMPLERS, "euler", tooltip="The sampling algorithm."),
    _combo("scheduler", COMFY_SCHEDULERS, "simple", tooltip="How the noise levels are spaced."),
)
KSAMPLER = _cls(
    "KSampler", _ksampler, (("", "latent"),),
    (_link("model", "MODEL"),
     _int("seed", 0, 0, SEED_MAX, control_after_generate=True, tooltip="The random seed of the noise."),
     _int("steps", 20, 1, 10000), _float("cfg", 8.0, 0.0, 100.0, 0.1), *_SAMPLER_INPUTS,
     _link("positive", "CONDITIONING"), _link("negative", "CONDITIONING"), _link("latent_image", "LATENT"),
     _float("denoise", 1.0, 0.0, 1.0)),
    ("LATENT",), category="sampling", display="KSampler",
    notes="Noise is drawn on the CPU, one generator per sample seeded seed+i (batch item i equals a single run with "
          "seed+i); ComfyUI draws one tensor for the batch, so images differ for the same seed. Samplers and "
          "schedules are diffusers' schedulers; `*_gpu` names run their CPU twin; a name without an implementation "
          "is an import error naming the one to use. `denoise` cuts the schedule as diffusers' `strength` does.")
KSAMPLER_ADVANCED = _cls(
    "KSamplerAdvanced", _ksampler_advanced, (("", "latent"),),
    (_link("model", "MODEL"), _combo("add_noise", ("enable", "disable")),
     _int("noise_seed", 0, 0, SEED_MAX, control_after_generate=True), _int("steps", 20, 1, 10000),
     _float("cfg", 8.0, 0.0, 100.0, 0.1), *_SAMPLER_INPUTS, _link("positive", "CONDITIONING"),
     _link("negative", "CONDITIONING"), _link("latent_image", "LATENT"), _int("start_at_step", 0, 0, 10000),
     _int("end_at_step", 10000, 0, 10000), _combo("return_with_leftover_noise", ("disable", "enable"))),
    ("LATENT",), category="sampling", display="KSampler (Advanced)",
    notes="With a sampler that follows explicit sigmas (euler; docs/sampling.md), start/end_at_step "
          "cut the schedule by step index as ComfyUI does (Schedule -> StepRange -> Sample), `add_noise` and "
          "`return_with_leftover_noise` as in ComfyUI; with another sampler they become diffusers' denoising_start/end "
          "fractions (the base + refiner split), and a flag that cannot be honoured is an import error. start >= end "
          "hands the latent on unchanged. Noise as KSampler.")


# ---- loaders and conditioning -------------------------------------------------------------------
def _sdxl_encode(inputs: Inputs) -> Expanded:
    # ComfyUI puts size conditioning here; ours belongs to Sample (original_size / target_size).
    return {"": {"type": "EncodePrompt", "inputs": {"clip": inputs["clip"], "prompt": inputs.get("text_l", ""),
                                                   "prompt_2": inputs.get("text_g", "")}}}


LOADERS = (
    _cls("CheckpointLoaderSimple", _one("LoadCheckpoint", source="<ckpt_name>"),
         (("", "unet"), ("", "clip"), ("", "vae")),
         (ComfyInput("ckpt_name", "COMBO", choices_from="checkpoints",
                     tooltip="The checkpoint: a file under the models folder, a hub id or builtin:tiny-sdxl-inpaint."),),
         ("MODEL", "CLIP", "VAE"), category="loaders", display="Load Checkpoint",
         notes="`ckpt_name` is a file (relative to the models directory), a diffusers folder, a hub id or "
               "`builtin:tiny-sdxl-inpaint`; weights load lazily when a node first needs them."),
    _cls("CLIPTextEncode", _one("EncodePrompt", prompt="<text>", clip="<clip>"), (("", "conditioning"),),
         (_str("text", multiline=True), _link("clip", "CLIP")), ("CONDITIONING",), category="conditioning",
         display="CLIP Text Encode (Prompt)"),
    _cls("CLIPTextEncodeSDXL", _sdxl_encode, (("", "conditioning"),),
         (_int("width", 1024, 0, MAX_RESOLUTION), _int("height", 1024, 0, MAX_RESOLUTION),
          _int("crop_w", 0, 0, MAX_RESOLUTION), _int("crop_h", 0, 0, MAX_RESOLUTION),
          _int("target_width", 1024, 0, MAX_RESOLUTION), _int("target_height", 1024, 0, MAX_RESOLUTION),
          _str("text_g", multiline=True), _link("clip", "CLIP"), _str("text_l", multiline=True)),
         ("CONDITIONING",), category="advanced/conditioning",
         notes="text_l feeds CLIP ViT-L, text_g OpenCLIP bigG; the size inputs are ignored: Sample derives the "
               "size conditioning from the latent (original_size/target_size on Sample)."),
)


# ---- latents ------------------------------------------------------------------------------------
def _encode_for_inpaint(inputs: Inputs, grow_mask_by: int | None = None) -> Expanded:
    grow = inputs.get("grow_mask_by", 6) if grow_mask_by is None else grow_mask_by
    return {
        "enc": {"type": "VAEEncode", "inputs": {"vae": inputs["vae"], "image": inputs["pixels"], "mask": inputs["mask"]}},
        "": {"type": "DownsampleMask", "inputs": {"latent": ["@enc", "latent"], "mask": inputs["mask"],
                                                 "mode": "max" if grow else "nearest"}},
    }


def _inpaint_conditioning(inputs: Inputs) -> Expanded:
    return _encode_for_inpaint(inputs, grow_mask_by=0)


def _noise_mask(inputs: Inputs) -> Expanded:
    # ComfyUI keeps the noise mask soft (resized to the latent when sampling): DifferentialDiffusion needs it
    return {"": {"type": "DownsampleMask", "inputs": {"latent": inputs["samples"], "mask": inputs["mask"],
                                                     "mode": "area"}}}


LATENTS = (
    _cls("VAEEncode", _one("VAEEncode", image="<pixels>", vae="<vae>"), (("", "latent"),),
         (_link("pixels", "IMAGE"), _link("vae", "VAE")), ("LATENT",), category="latent", display="VAE Encode",
         notes="Posterior mode (deterministic); sizes must be multiples of 8 (ComfyUI crops)."),
    _cls("VAEEncodeForInpaint", _encode_for_inpaint, (("", "latent"),),
         (_link("pixels", "IMAGE"), _link("vae", "VAE"), _link("mask", "MASK"), _int("grow_mask_by", 6, 0, 64)),
         ("LATENT",), category="latent/inpaint", display="VAE Encode (for Inpainting)",
         notes="Posterior mode, not a sample. `grow_mask_by` > 0 marks every latent cell a repainted pixel touches "
               "(max-pooling) instead of dilating the pixel mask by that many pixels."),
    _cls("InpaintModelConditioning", _inpaint_conditioning, (("=positive", ""), ("=negative", ""), ("", "latent")),
         (_link("positive", "CONDITIONING"), _link("negative", "CONDITIONING"), _link("vae", "VAE"),
          _link("pixels", "IMAGE"), _link("mask", "MASK"), _bool("noise_mask", True)),
         ("CONDITIONING", "CONDITIONING", "LATENT"), ("positive", "negative", "latent"),
         category="conditioning/inpaint",
         notes="The conditionings are handed on unchanged; the masked-image latents travel in the LATENT (as "
               "diffusers' inpainting pipeline builds them). The mask is binarised at 0.5."),
    _cls("SetLatentNoiseMask", _noise_mask, (("", "latent"),), (_link("samples", "LATENT"), _link("mask", "MASK")),
         ("LATENT",), category="latent/inpaint", display="Set Latent Noise Mask",
         notes="The mask stays soft: each latent cell takes the repainted fraction of its 8x8 pixels (ComfyUI "
               "resizes bilinearly); a binary mask with edges on the 8-pixel grid stays binary."),
    _cls("EmptyLatentImage", _one("EmptyLatent", width="<width>", height="<height>", batch_size="<batch_size>"),
         (("", "latent"),),
         (_int("width", 512, 16, MAX_RESOLUTION, 8), _int("height", 512, 16, MAX_RESOLUTION, 8),
          _int("batch_size", 1, 1, 4096)), ("LATENT",), category="latent", display="Empty Latent Image"),
    _cls("VAEDecode", _one("VAEDecode", latent="<samples>", vae="<vae>"), (("", "image"),),
         (_link("samples", "LATENT"), _link("vae", "VAE")), ("IMAGE",), category="latent", display="VAE Decode"),
)


# ---- images and masks ---------------------------------------------------------------------------
def _composite(inputs: Inputs) -> Expanded:
    if inputs.get("x", 0) or inputs.get("y", 0) or inputs.get("resize_source") or inputs.get("mask") is None:
        return _one("PasteImage", destination="<destination>", source="<source>", x="<x>", y="<y>",
                    resize_source="<resize_source>", mask="<mask>")(inputs)
    # The inpainting case: our CompositeMasked (the same arithmetic at 0, 0 with a same-size mask, and it
    # checks that the sizes agree instead of cutting).
    return {"": {"type": "CompositeMasked", "inputs": {"original": inputs["destination"],
                                                      "generated": inputs["source"], "mask": inputs["mask"]}}}


def input_file(name: Any) -> Any:
    """A LoadImage value as a path: ComfyUI's ``"name.png [input]"`` names a file of the input directory,
    which is where relative paths already point; other annotations are left for the path rules to judge."""
    if isinstance(name, str) and name.endswith(" [input]"):
        return name[: -len(" [input]")]
    return name


def _load_image(inputs: Inputs) -> Expanded:
    return {"": {"type": "LoadImage", "inputs": {"path": input_file(inputs["image"])}}}


def _constant(_inputs: Inputs) -> Expanded:
    return {}  # the value is handed on as a literal through the "=value" output


_MASK = (_link("mask", "MASK"),)
IMAGES = (
    _cls("LoadImage", _load_image, (("", "image"), ("", "mask")),
         (ComfyInput("image", "COMBO", choices_from="input_images", image_upload=True),),
         ("IMAGE", "MASK"), category="image", display="Load Image",
         notes="Sizes are rounded down to a multiple of 8 by a Lanczos resize (ComfyUI keeps the size and crops "
               "at encode time). The mask is 1 - alpha, as ComfyUI's."),
    _cls("SaveImage", _one("SaveImage", image="<images>", prefix="<filename_prefix>"), (),
         (_link("images", "IMAGE"), _str("filename_prefix", "ComfyUI")), (), category="image", display="Save Image",
         output_node=True, hidden={"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
         notes="Files are `{prefix}_{counter:05}.png` in the output directory; the PNG carries our workflow."),
    _cls("PreviewImage", _one("SaveImage", image="<images>", prefix="previews/ComfyUI"), (),
         (_link("images", "IMAGE"),), (), category="image", display="Preview Image", output_node=True,
         hidden={"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
         notes="Saved like SaveImage under `previews/` in the output directory (there is no temp directory)."),
    _cls("ImageCompositeMasked", _composite, (("", "image"),),
         (_link("destination", "IMAGE"), _link("source", "IMAGE"), _int("x", 0, 0, MAX_RESOLUTION),
          _int("y", 0, 0, MAX_RESOLUTION), _bool("resize_source", False), _link("mask", "MASK", optional=True)),
         ("IMAGE",), category="image",
         notes="At x = y = 0 with a mask: our CompositeMasked (sizes must agree; pixels outside the mask are "
               "exactly the destination's); otherwise ComfyUI's arithmetic (PasteImage)."),
    _cls("InvertMask", _one("InvertMask", mask="<mask>"), (("", "mask"),), _MASK, ("MASK",), category="mask"),
    _cls("ThresholdMask", _one("ThresholdMask", mask="<mask>", value="<value>"), (("", "mask"),),
         (*_MASK, _float("value", 0.5, 0.0, 1.0)), ("MASK",), category="mask"),
    _cls("SolidMask", _one("SolidMask", value="<value>", width="<width>", height="<height>"), (("", "mask"),),
         (_float("value", 1.0, 0.0, 1.0), _int("width", 512, 1, MAX_RESOLUTION),
          _int("height", 512, 1, MAX_RESOLUTION)), ("MASK",), category="mask"),
    _cls("MaskToImage", _one("MaskToImage", mask="<mask>"), (("", "image"),), _MASK, ("IMAGE",), category="mask",
         display="Convert Mask to Image"),
    _cls("ImageToMask", _one("ImageToMask", image="<image>", channel="<channel>"), (("", "mask"),),
         (_link("image", "IMAGE"), _combo("channel", ("red", "green", "blue", "alpha"))), ("MASK",),
         category="mask", display="Convert Image to Mask"),
    _cls("ImageInvert", _one("InvertImage", image="<image>"), (("", "image"),), (_link("image", "IMAGE"),),
         ("IMAGE",), category="image", display="Invert Image"),
    _cls("CropMask", _one("CropMask", mask="<mask>", x="<x>", y="<y>", width="<width>", height="<height>"),
         (("", "mask"),),
         (*_MASK, _int("x", 0, 0, MAX_RESOLUTION), _int("y", 0, 0, MAX_RESOLUTION),
          _int("width", 512, 1, MAX_RESOLUTION), _int("height", 512, 1, MAX_RESOLUTION)), ("MASK",), category="mask"),
    _cls("ImageCrop", _one("CropImage", image="<image>", width="<width>", height="<height>", x="<x>", y="<y>"),
         (("", "image"),),
         (_link("image", "IMAGE"), _int("width", 512, 1, MAX_RESOLUTION), _int("height", 512, 1, MAX_RESOLUTION),
          _int("x", 0, 0, MAX_RESOLUTION), _int("y", 0, 0, MAX_RESOLUTION)), ("IMAGE",), category="image/transform",
         display="Image Crop"),
    _cls("GrowMask", _one("GrowMask", mask="<mask>", expand="<expand>", tapered_corners="<tapered_corners>"),
         (("", "mask"),),
         (*_MASK, _int("expand", 0, -MAX_RESOLUTION, MAX_RESOLUTION), _bool("tapered_corners", True)),
         ("MASK",), category="mask"),
    _cls("FeatherMask", _one("FeatherMask", mask="<mask>", left="<left>", top="<top>", right="<right>",
                             bottom="<bottom>"), (("", "mask"),),
         (*_MASK, *(_int(side, 0, 0, MAX_RESOLUTION) for side in ("left", "top", "right", "bottom"))),
         ("MASK",), category="mask"),
    _cls("MaskComposite", _one("CompositeMask", destination="<destination>", source="<source>", x="<x>", y="<y>",
                               operation="<operation>"), (("", "mask"),),
         (_link("destination", "MASK"), _link("source", "MASK"), _int("x", 0, 0, MAX_RESOLUTION),
          _int("y", 0, 0, MAX_RESOLUTION), _combo("operation", ("multiply", "add", "subtract", "and", "or", "xor"))),
         ("MASK",), category="mask"),
)

_IMAGE_METHODS = ("nearest-exact", "bilinear", "area", "bicubic", "lanczos")
_LATENT_METHODS = ("nearest-exact", "bilinear", "area", "bicubic", "bislerp")


def _latent_method(inputs: Inputs) -> str:
    method = inputs.get("upscale_method", "nearest-exact")
    if method == "bislerp":
        raise MappingError("upscale_method", "upscale_method 'bislerp' is not implemented here; use 'bicubic' "
                                             "(or 'bilinear') instead")
    return str(method)


def _latent_upscale(inputs: Inputs) -> Expanded:
    return {"": {"type": "ScaleLatent", "inputs": {
        "latent": inputs["samples"], "method": _latent_method(inputs), "width": inputs.get("width", 512),
        "height": inputs.get("height", 512), "crop": inputs.get("crop", "disabled")}}}


def _latent_upscale_by(inputs: Inputs) -> Expanded:
    return {"": {"type": "ScaleLatent", "inputs": {"latent": inputs["samples"], "method": _latent_method(inputs),
                                                  "scale_by": inputs.get("scale_by", 1.5)}}}


def _load_image_mask(inputs: Inputs) -> Expanded:
    # ComfyUI's alpha mask is 1 - alpha (transparent = repaint); colour channels are taken as they are.
    channel = inputs.get("channel", "alpha")
    return {"": {"type": "LoadMask", "inputs": {"path": input_file(inputs["image"]), "channel": channel,
                                               "invert": channel == "alpha", "round_to": 1}}}


def _tiles(size_step: int) -> tuple[ComfyInput, ...]:
    """ComfyUI's tiled VAE settings (ignored here: see the notes)."""
    return (_int("tile_size", 512, 64, 4096, size_step), _int("overlap", 64, 0, 4096, 32),
            _int("temporal_size", 64, 8, 4096, 4), _int("temporal_overlap", 8, 4, 4096, 4))


TRANSFORMS = (
    _cls("ImageScale", _one("ScaleImage", image="<image>", method="<upscale_method>", width="<width>",
                            height="<height>", crop="<crop>"), (("", "image"),),
         (_link("image", "IMAGE"), _combo("upscale_method", _IMAGE_METHODS), _int("width", 512, 0, MAX_RESOLUTION),
          _int("height", 512, 0, MAX_RESOLUTION), _combo("crop", ("disabled", "center"))), ("IMAGE",),
         category="image/upscaling", display="Upscale Image"),
    _cls("ImageScaleBy", _one("ScaleImageBy", image="<image>", method="<upscale_method>", scale_by="<scale_by>"),
         (("", "image"),),
         (_link("image", "IMAGE"), _combo("upscale_method", _IMAGE_METHODS), _float("scale_by", 1.0, 0.01, 8.0)),
         ("IMAGE",), category="image/upscaling", display="Upscale Image By"),
    _cls("ImageScaleToTotalPixels", _one("ScaleImageBy", image="<image>", method="<upscale_method>",
                                         megapixels="<megapixels>", scale_by=None), (("", "image"),),
         (_link("image", "IMAGE"), _combo("upscale_method", _IMAGE_METHODS), _float("megapixels", 1.0, 0.01, 16.0)),
         ("IMAGE",), category="image/upscaling", display="Scale Image to Total Pixels",
         notes="Newer ComfyUI versions add a `resolution_steps` widget; its value is ignored."),
    _cls("ImagePadForOutpaint", _one("PadForOutpaint", image="<image>", left="<left>", top="<top>", right="<right>",
                                     bottom="<bottom>", feathering="<feathering>"), (("", "image"), ("", "mask")),
         (_link("image", "IMAGE"), *(_int(side, 0, 0, MAX_RESOLUTION, 8) for side in ("left", "top", "right", "bottom")),
          _int("feathering", 40, 0, MAX_RESOLUTION)), ("IMAGE", "MASK"), category="image",
         display="Pad Image for Outpainting"),
    _cls("EmptyImage", _one("SolidImage", width="<width>", height="<height>", batch_size="<batch_size>",
                            color="<color>"), (("", "image"),),
         (_int("width", 512, 1, MAX_RESOLUTION), _int("height", 512, 1, MAX_RESOLUTION), _int("batch_size", 1, 1, 4096),
          _int("color", 0, 0, 0xFFFFFF, display="color")), ("IMAGE",), category="image"),
    _cls("ImageBatch", _one("BatchImages", image1="<image1>", image2="<image2>"), (("", "image"),),
         (_link("image1", "IMAGE"), _link("image2", "IMAGE")), ("IMAGE",), category="image", display="Batch Images"),
    _cls("LoadImageMask", _load_image_mask, (("", "mask"),),
         (ComfyInput("image", "COMBO", choices_from="input_images", image_upload=True),
          _combo("channel", ("alpha", "red", "green", "blue"))), ("MASK",), category="mask",
         display="Load Image (as Mask)",
         notes="Not resized. `alpha` of an image without an alpha channel is an error (ComfyUI: an all-zero mask)."),
    _cls("RepeatLatentBatch", _one("RepeatLatent", latent="<samples>", amount="<amount>"), (("", "latent"),),
         (_link("samples", "LATENT"), _int("amount", 1, 1, 64)), ("LATENT",), category="latent/batch",
         display="Repeat Latent Batch"),
    _cls("LatentFromBatch", _one("LatentFromBatch", latent="<samples>", batch_index="<batch_index>",
                                 length="<length>"), (("", "latent"),),
         (_link("samples", "LATENT"), _int("batch_index", 0, 0, 63), _int("length", 1, 1, 64)), ("LATENT",),
         category="latent/batch", display="Latent From Batch"),
    _cls("LatentUpscale", _latent_upscale, (("", "latent"),),
         (_link("samples", "LATENT"), _combo("upscale_method", _LATENT_METHODS),
          _int("width", 512, 0, MAX_RESOLUTION, 8), _int("height", 512, 0, MAX_RESOLUTION, 8),
          _combo("crop", ("disabled", "center"))), ("LATENT",), category="latent", display="Upscale Latent",
         notes="`bislerp` is not implemented (import error suggesting bicubic). An inpainting mask on the latent is "
               "dropped."),
    _cls("LatentUpscaleBy", _latent_upscale_by, (("", "latent"),),
         (_link("samples", "LATENT"), _combo("upscale_method", _LATENT_METHODS), _float("scale_by", 1.5, 0.01, 8.0)),
         ("LATENT",), category="latent", display="Upscale Latent By",
         notes="As LatentUpscale."),
    _cls("LatentComposite", _one("CompositeLatent", destination="<samples_to>", source="<samples_from>", x="<x>",
                                 y="<y>", feather="<feather>"), (("", "latent"),),
         (_link("samples_to", "LATENT"), _link("samples_from", "LATENT"), _int("x", 0, 0, MAX_RESOLUTION, 8),
          _int("y", 0, 0, MAX_RESOLUTION, 8), _int("feather", 0, 0, MAX_RESOLUTION, 8)), ("LATENT",),
         category="latent"),
    _cls("LatentCompositeMasked", _one("CompositeLatent", destination="<destination>", source="<source>", x="<x>",
                                       y="<y>", resize_source="<resize_source>", mask="<mask>"), (("", "latent"),),
         (_link("destination", "LATENT"), _link("source", "LATENT"), _int("x", 0, 0, MAX_RESOLUTION, 8),
          _int("y", 0, 0, MAX_RESOLUTION, 8), _bool("resize_source", False), _link("mask", "MASK", optional=True)),
         ("LATENT",), category="latent"),
    # Tiles only bound peak memory; our VAEDecode already falls back to tiles when memory runs out.
    _cls("VAEDecodeTiled", _one("VAEDecode", latent="<samples>", vae="<vae>"), (("", "image"),),
         (_link("samples", "LATENT"), _link("vae", "VAE"), *_tiles(32)), ("IMAGE",), category="_for_testing",
         display="VAE Decode (Tiled)",
         notes="Tile settings are ignored: the latent is decoded whole, in tiles only if memory runs out."),
    _cls("VAEEncodeTiled", _one("VAEEncode", image="<pixels>", vae="<vae>"), (("", "latent"),),
         (_link("pixels", "IMAGE"), _link("vae", "VAE"), *_tiles(64)), ("LATENT",), category="_for_testing",
         display="VAE Encode (Tiled)",
         notes="Tile settings are ignored: encoded whole (posterior mode)."),
)

PRIMITIVES = (
    _cls("PrimitiveInt", _constant, (("=value", ""),),
         (_int("value", 0, -(2**63 - 1), 2**63 - 1, control_after_generate=True),), ("INT",),
         category="utils/primitive", display="Int"),
    _cls("PrimitiveFloat", _constant, (("=value", ""),), (_float("value", 0.0, -(2**63 - 1), 2**63 - 1),),
         ("FLOAT",), category="utils/primitive", display="Float"),
    _cls("PrimitiveString", _constant, (("=value", ""),), (_str("value"),), ("STRING",),
         category="utils/primitive", display="String"),
    _cls("PrimitiveStringMultiline", _constant, (("=value", ""),), (_str("value", multiline=True),), ("STRING",),
         category="utils/primitive", display="String (Multiline)"),
    _cls("PrimitiveBoolean", _constant, (("=value", ""),), (_bool("value", False),), ("BOOLEAN",),
         category="utils/primitive", display="Boolean"),
)

ALL = (KSAMPLER, KSAMPLER_ADVANCED, *LOADERS, *LATENTS, *IMAGES, *TRANSFORMS, *PRIMITIVES)
register_comfy(REGISTRY, *ALL)
