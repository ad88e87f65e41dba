"""ComfyUI's class_types for the add-on nodes (LoRA, ControlNet, separate VAE/UNet, CLIP skip, Canny).

Declared as nodes.comfyui declares the core ones (``ComfyClass``: ComfyUI's input spec, names and ranges
from its ``nodes.py`` / ``comfy_extras``, plus the mapping onto our nodes); kept in their own module
beside the nodes they map to.
"""

from __future__ import annotations

from nodegraph.comfy_spec import ComfyInput, register_comfy
from nodegraph.node import REGISTRY
from nodes.comfyui import Expanded, Inputs, _cls, _float, _int, _link, _one


def _lora_loader(inputs: Inputs) -> Expanded:
    # Two nodes, so a change of strength_model does not re-encode prompts (nor strength_clip re-run
    # anything that depends only on the UNet).
    return {"": {"type": "LoadLoraModelOnly",
                 "inputs": {"unet": inputs["model"], "source": inputs["lora_name"],
                            "strength_unet": inputs.get("strength_model", 1.0)}},
            "clip": {"type": "LoadLoraClipOnly",
                     "inputs": {"clip": inputs["clip"], "source": inputs["lora_name"],
                                "strength_clip": inputs.get("strength_clip", 1.0)}}}


_LORA_NOTE = ("`lora_name` is a .safetensors file (diffusers/PEFT or kohya layout), applied with diffusers' LoRA "
              "loader as a PEFT adapter; keyed by the file's content and the strengths it uses.")
_CONTROL_NOTE = ("start/end_percent are fractions of the model's noise schedule (timesteps), as in ComfyUI "
                 "(`range_by: timesteps`); the control image is resized to the latent's size.")

ADDONS = (
    _cls("LoraLoader", _lora_loader, (("", "unet"), ("clip", "clip")),
         (_link("model", "MODEL"), _link("clip", "CLIP"), ComfyInput("lora_name", "COMBO", choices_from="loras"),
          _float("strength_model", 1.0, -100.0, 100.0), _float("strength_clip", 1.0, -100.0, 100.0)),
         ("MODEL", "CLIP"), category="loaders", display="Load LoRA",
         notes=_LORA_NOTE + " Runs as LoadLoraModelOnly + LoadLoraClipOnly."),
    _cls("LoraLoaderModelOnly", _one("LoadLoraModelOnly", unet="<model>", source="<lora_name>",
                                     strength_unet="<strength_model>"), (("", "unet"),),
         (_link("model", "MODEL"), ComfyInput("lora_name", "COMBO", choices_from="loras"),
          _float("strength_model", 1.0, -100.0, 100.0)),
         ("MODEL",), category="loaders", display="LoraLoaderModelOnly", notes=_LORA_NOTE),
    _cls("VAELoader", _one("LoadVAE", source="<vae_name>"), (("", "vae"),),
         (ComfyInput("vae_name", "COMBO", choices_from="vae"),), ("VAE",), category="loaders", display="Load VAE",
         notes="`vae_name` is a .safetensors VAE (converted once with the SDXL VAE config), a diffusers VAE folder or "
               "hub repo, or a pipeline whose vae/ is used. A VAE whose config says force_upcast=false runs in "
               "float16 on GPUs."),
    _cls("UNETLoader", _one("LoadUNet", source="<unet_name>"), (("", "unet"),),
         (ComfyInput("unet_name", "COMBO", choices_from="diffusion_models"),
          ComfyInput("weight_dtype", "COMBO", "default", choices=("default", "fp8_e4m3fn", "fp8_e4m3fn_fast",
                                                                  "fp8_e5m2"))),
         ("MODEL",), category="advanced/loaders", display="Load Diffusion Model",
         notes="`unet_name` is a diffusers UNet folder or a pipeline whose unet/ is used; single files are not read "
               "yet. `weight_dtype` is ignored (fp8 storage is LoadCheckpoint's quantize option)."),
    _cls("CLIPSetLastLayer", _one("SetClipLastLayer", clip="<clip>", last_layer="<stop_at_clip_layer>"),
         (("", "clip"),), (_link("clip", "CLIP"), _int("stop_at_clip_layer", -1, -24, -1)), ("CLIP",),
         category="conditioning", display="CLIP Set Last Layer",
         notes="-k reads hidden_states[-k] of both text encoders (diffusers' clip_skip = k - 2); -2 is SDXL's "
               "default. The pooled embedding is unaffected."),
    _cls("ControlNetLoader", _one("LoadControlNet", source="<control_net_name>"), (("", "control_net"),),
         (ComfyInput("control_net_name", "COMBO", choices_from="controlnet"),), ("CONTROL_NET",),
         category="loaders", display="Load ControlNet Model",
         notes="An SDXL ControlNet: a .safetensors file (converted once; diffusers infers its config, fetched from "
               "the hub the first time), a diffusers folder or a hub repo."),
    _cls("ControlNetApply", _one("ControlConditioning", conditioning="<conditioning>", control_net="<control_net>",
                                 image="<image>", strength="<strength>", range_by="timesteps"),
         (("", "conditioning"),),
         (_link("conditioning", "CONDITIONING"), _link("control_net", "CONTROL_NET"), _link("image", "IMAGE"),
          _float("strength", 1.0, 0.0, 10.0)),
         ("CONDITIONING",), category="conditioning/controlnet", display="Apply ControlNet (OLD)",
         notes="Applies to this conditioning only (the other half of CFG runs without it), as in ComfyUI."),
    _cls("ControlNetApplyAdvanced", _one("ApplyControlNet", positive="<positive>", negative="<negative>",
                                         control_net="<control_net>", image="<image>", strength="<strength>",
                                         start_percent="<start_percent>", end_percent="<end_percent>",
                                         range_by="timesteps"),
         (("", "positive"), ("", "negative")),
         (_link("positive", "CONDITIONING"), _link("negative", "CONDITIONING"), _link("control_net", "CONTROL_NET"),
          _link("image", "IMAGE"), _float("strength", 1.0, 0.0, 10.0), _float("start_percent", 0.0, 0.0, 1.0, 0.001),
          _float("end_percent", 1.0, 0.0, 1.0, 0.001), _link("vae", "VAE", optional=True)),
         ("CONDITIONING", "CONDITIONING"), ("positive", "negative"), category="conditioning/controlnet",
         display="Apply ControlNet", notes=_CONTROL_NOTE + " The optional `vae` is not used (SDXL ControlNets take "
                                                           "the image, not its latent)."),
    _cls("Canny", _one("Canny", image="<image>", low_threshold="<low_threshold>", high_threshold="<high_threshold>"),
         (("", "image"),),
         (_link("image", "IMAGE"), _float("low_threshold", 0.4, 0.01, 0.99), _float("high_threshold", 0.8, 0.01, 0.99)),
         ("IMAGE",), category="image/preprocessors", notes="kornia's Canny, as ComfyUI's node."),
)
register_comfy(REGISTRY, *ADDONS)
