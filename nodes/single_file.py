"""Single-file SDXL checkpoints (the original Stability layout, one .safetensors file).

They are converted once, with diffusers' own converter (``from_single_file``) against the SDXL configs
shipped in this package (so nothing is fetched), into a diffusers folder in the cache directory named by
the file's content fingerprint. Every later run loads components lazily from that folder.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

from nodegraph.files import atomic_folder
from nodegraph.settings import active_settings
from nodes.sources import ModelSource, SourceError

logger = logging.getLogger(__name__)

UNET_IN = "model.diffusion_model.input_blocks.0.0.weight"
CLIP_L_TOKENS = "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight"
CLIP_G_MARKER = "conditioner.embedders.1.model.token_embedding.weight"


VAE_OUT = "first_stage_model.decoder.conv_out.weight"
DTYPES = {"F16": "float16", "BF16": "bfloat16", "F32": "float32"}


def inspect_checkpoint(path: Path) -> tuple[int, str, str]:
    """(UNet input channels, UNet weight dtype, VAE weight dtype) of an original-layout SDXL file, read
    from its header alone."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            keys = set(f.keys())
            if UNET_IN not in keys:
                raise SourceError(f"{path}: not an SDXL checkpoint in the original layout (no {UNET_IN!r}); "
                                  "for a diffusers folder pass the folder instead")
            if CLIP_G_MARKER not in keys:
                raise SourceError(f"{path}: has no second text encoder (OpenCLIP ViT-bigG), so it is not SDXL "
                                  "(Stable Diffusion 1.x/2.x checkpoints are not supported)")
            weight = f.get_slice(UNET_IN)
            shape, dtype = weight.get_shape(), weight.get_dtype()
            vae_dtype = f.get_slice(VAE_OUT).get_dtype() if VAE_OUT in keys else dtype
    except SourceError:
        raise
    except Exception as exc:
        raise SourceError(f"{path}: cannot read the safetensors header ({exc}); the file is corrupt or truncated") \
            from None
    channels = int(shape[1])
    if channels not in (4, 9):
        raise SourceError(f"{path}: UNet has {channels} input channels; SDXL inpainting needs 4 (base model, "
                          "blended) or 9 (inpainting model)")
    return channels, DTYPES.get(dtype, "float32"), DTYPES.get(vae_dtype, "float32")


def _config_folder(folder: Path, in_channels: int) -> None:
    """A diffusers-layout folder of configs and tokenizers for from_single_file(config=...)."""
    from nodes.tiny import sdxl_configs
    from nodes.vocab import write_clip_tokenizer

    configs = sdxl_configs(in_channels)
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        (folder / name).mkdir(parents=True)
        (folder / name / "config.json").write_text(json.dumps(configs[name], indent=2))
    (folder / "scheduler").mkdir()
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(configs["scheduler"], indent=2))
    write_clip_tokenizer(folder / "tokenizer")
    write_clip_tokenizer(folder / "tokenizer_2", pad_token="!")
    pipeline = "StableDiffusionXLInpaintPipeline" if in_channels == 9 else "StableDiffusionXLPipeline"
    (folder / "model_index.json").write_text(json.dumps({
        "_class_name": pipeline, "force_zeros_for_empty_prompt": True, "requires_aesthetics_score": False,
        "text_encoder": ["transformers", "CLIPTextModel"],
        "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "tokenizer_2": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
        "scheduler": ["diffusers", "EulerDiscreteScheduler"]}, indent=2))


def convert_single_file(src: ModelSource, config: ModelSource | None = None) -> ModelSource:
    """The diffusers folder for a single-file checkpoint, converting it on first use.

    config: a diffusers folder whose configs and tokenizers describe the file's architecture; by default
    the SDXL 1.0 configs shipped in this package, with the real CLIP tokenizers (nodes.vocab).
    """
    import torch
    from diffusers import AutoencoderKL, StableDiffusionXLInpaintPipeline, StableDiffusionXLPipeline

    name = src.fingerprint if config is None else f"{src.fingerprint}-{config.fingerprint[:16]}"
    target = active_settings().state_root / "converted" / name
    fingerprint = src.fingerprint if config is None else name
    if (target / "model_index.json").is_file():
        return ModelSource(str(target), "diffusers", fingerprint)
    path = Path(src.path)
    in_channels, dtype, vae_dtype = inspect_checkpoint(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory(prefix=".config-", dir=target.parent) as scratch, \
                atomic_folder(target) as work:
            if config is None:
                _config_folder(Path(scratch) / "config", in_channels)
            config_dir = str(Path(scratch) / "config") if config is None else config.path
            logger.warning("converting %s to diffusers format once (cached in %s)", path, target)
            cls = StableDiffusionXLInpaintPipeline if in_channels == 9 else StableDiffusionXLPipeline
            components = {}
            if vae_dtype != dtype:  # many files keep the VAE in float32 (it overflows in float16): keep it so
                components["vae"] = AutoencoderKL.from_single_file(str(path), config=config_dir, subfolder="vae",
                                                                   torch_dtype=getattr(torch, vae_dtype),
                                                                   local_files_only=True)
            pipe = cls.from_single_file(str(path), config=config_dir, local_files_only=True,
                                        torch_dtype=getattr(torch, dtype), **components)
            pipe.save_pretrained(work, safe_serialization=True)
            del pipe
            (work / "SOURCE.txt").write_text(f"converted from {path} (content {src.fingerprint}) with configs "
                                             f"from {config_dir if config else 'the shipped SDXL 1.0'}\n")
    except SourceError:
        raise
    except FileNotFoundError as exc:
        raise SourceError(str(exc)) from None
    except Exception as exc:
        raise SourceError(f"{path}: could not convert this single-file checkpoint: {exc}") from exc
    return ModelSource(str(target), "diffusers", fingerprint)
