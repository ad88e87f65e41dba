"""Write a diffusers-format SDXL folder as one original-layout (Stability) .safetensors checkpoint.

The inverse of the renames diffusers' single-file converter applies (diffusers ships only that direction),
used by the tests to produce a single-file checkpoint from a generated tiny model. The fixed-layer names
come from diffusers' own table; the block renames mirror its converter's rules.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING
from safetensors.torch import load_file, save_file

UNET, VAE = "model.diffusion_model.", "first_stage_model."
CLIP_L, CLIP_G = "conditioner.embedders.0.transformer.", "conditioner.embedders.1.model."
RESNET = [("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"), ("conv2", "out_layers.3"),
          ("time_emb_proj", "emb_layers.1"), ("conv_shortcut", "skip_connection")]


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    (file,) = [f for f in folder.glob("*.safetensors")]
    return load_file(str(file))


def _resnet(rest: str) -> str:
    head, _, tail = rest.partition(".")
    return dict(RESNET).get(head, head) + "." + tail


def unet_keys(sd: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    per = config["layers_per_block"] + 1
    fixed = {**DIFFUSERS_TO_LDM_MAPPING["unet"]["layers"], **DIFFUSERS_TO_LDM_MAPPING["unet"]["addition_embed_type"]}
    up_has_attention = ["CrossAttn" in t for t in config["up_block_types"]]
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        parts = key.split(".")
        if key in fixed:
            ldm = fixed[key]
        elif parts[0] == "down_blocks":
            b, kind, j, rest = int(parts[1]), parts[2], int(parts[3]), ".".join(parts[4:])
            if kind == "resnets":
                ldm = f"input_blocks.{1 + b * per + j}.0.{_resnet(rest)}"
            elif kind == "attentions":
                ldm = f"input_blocks.{1 + b * per + j}.1.{rest}"
            else:  # downsamplers.0.conv.*
                ldm = f"input_blocks.{1 + b * per + per - 1}.0.op.{parts[-1]}"
        elif parts[0] == "mid_block":
            j, rest = int(parts[2]), ".".join(parts[3:])
            ldm = f"middle_block.{2 * j}.{_resnet(rest)}" if parts[1] == "resnets" else f"middle_block.1.{rest}"
        elif parts[0] == "up_blocks":
            b, kind = int(parts[1]), parts[2]
            if kind == "resnets":
                ldm = f"output_blocks.{b * per + int(parts[3])}.0.{_resnet('.'.join(parts[4:]))}"
            elif kind == "attentions":
                ldm = f"output_blocks.{b * per + int(parts[3])}.1.{'.'.join(parts[4:])}"
            else:  # upsamplers.0.conv.*: after the attention when the block has one
                ldm = f"output_blocks.{b * per + per - 1}.{2 if up_has_attention[b] else 1}.conv.{parts[-1]}"
        else:
            raise KeyError(f"no original-layout name for UNet key {key}")
        out[UNET + ldm] = value
    return out


def vae_keys(sd: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    fixed = DIFFUSERS_TO_LDM_MAPPING["vae"]
    n = len(config["up_block_types"])
    attention = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out": "proj_out"}
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        side, parts = key.split(".")[0], key.split(".")[1:]
        if key in fixed:
            ldm = fixed[key]
        elif parts[0] in ("down_blocks", "up_blocks"):
            i = int(parts[1])
            block = f"down.{i}" if parts[0] == "down_blocks" else f"up.{n - 1 - i}"
            if parts[2] == "resnets":
                ldm = f"{side}.{block}.block.{parts[3]}.{'.'.join(parts[4:]).replace('conv_shortcut', 'nin_shortcut')}"
            else:
                ldm = f"{side}.{block}.{'downsample' if parts[0] == 'down_blocks' else 'upsample'}.conv.{parts[-1]}"
        elif parts[0] == "mid_block" and parts[1] == "resnets":
            ldm = f"{side}.mid.block_{int(parts[2]) + 1}.{'.'.join(parts[3:]).replace('conv_shortcut', 'nin_shortcut')}"
        elif parts[0] == "mid_block":
            ldm = f"{side}.mid.attn_1.{attention[parts[3]]}.{parts[-1]}"
            if value.ndim == 2:  # the original attention uses 1x1 convolutions
                value = value[:, :, None, None]
        else:
            raise KeyError(f"no original-layout name for VAE key {key}")
        out[VAE + ldm] = value
    return out


def open_clip_keys(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    fixed = DIFFUSERS_TO_LDM_MAPPING["openclip"]["layers"]
    renames = [("layer_norm1", "ln_1"), ("layer_norm2", "ln_2"), ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj"),
               ("self_attn.out_proj", "attn.out_proj")]
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if key in fixed:
            out[CLIP_G + fixed[key]] = value.T.contiguous() if key == "text_projection.weight" else value
        elif key.startswith("text_model.encoder.layers."):
            n, rest = key.split(".")[3], ".".join(key.split(".")[4:])
            if rest.startswith("self_attn.") and rest.split(".")[1] in ("q_proj", "k_proj", "v_proj"):
                if rest.split(".")[1] == "q_proj":  # fused [q; k; v] in the original
                    kind = rest.split(".")[-1]
                    fused = torch.cat([sd[f"text_model.encoder.layers.{n}.self_attn.{p}.{kind}"]
                                       for p in ("q_proj", "k_proj", "v_proj")])
                    out[f"{CLIP_G}transformer.resblocks.{n}.attn.in_proj_{kind}"] = fused
                continue
            for new, old in renames:
                rest = rest.replace(new, old)
            out[f"{CLIP_G}transformer.resblocks.{n}.{rest}"] = value
    return out


def write_original_layout(model: Path, target: Path, dtype: torch.dtype | None = None) -> Path:
    """dtype: cast everything but the VAE (files often hold a float16 model with a float32 VAE)."""
    state: dict[str, torch.Tensor] = {}
    state.update(unet_keys(_weights(model / "unet"), json.loads((model / "unet" / "config.json").read_text())))
    # The original layout names CLIP-L as transformers 4 did (text_model.*); transformers 5 saves without it.
    state.update({CLIP_L + (k if k.startswith("text_model.") else "text_model." + k): v
                  for k, v in _weights(model / "text_encoder").items()})
    state.update(open_clip_keys(_weights(model / "text_encoder_2")))
    if dtype is not None:
        state = {k: v.to(dtype) for k, v in state.items()}
    state.update(vae_keys(_weights(model / "vae"), json.loads((model / "vae" / "config.json").read_text())))
    save_file({k: v.contiguous() for k, v in state.items()}, str(target))
    return target
