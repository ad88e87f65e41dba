"""LoadCheckpoint, the lazy model handles it returns, and the model manager that loads components.

Handles are small frozen values (a source, a dtype, a device and a few config facts read from JSON), so
LoadCheckpoint costs nothing; each component (unet, text_encoder, text_encoder_2, tokenizer, tokenizer_2,
vae_encoder, vae_decoder) is read from disk the first time a node that needs it actually runs, and kept by
the engine's ModelManager for later runs in the same process.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from nodegraph import RunContext, node, rename_mapping
from nodes.sources import ModelSource, SourceError, resolve

logger = logging.getLogger(__name__)

DType = Literal["auto", "float32", "float16", "bfloat16"]
Device = Literal["auto", "cpu", "cuda", "mps"]
TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class ModelRef:
    """What every handle shares: where the weights are, and how to place them."""

    source: ModelSource
    dtype: str  # resolved: float32 | float16 | bfloat16
    device: str  # resolved: cpu | cuda | cuda:N | mps

    @property
    def torch_dtype(self) -> torch.dtype:
        return TORCH_DTYPES[self.dtype]


@dataclass(frozen=True)
class UNetHandle:
    __socket__ = "UNET"
    ref: ModelRef
    in_channels: int
    vae_scale_factor: int
    force_zeros_for_empty_prompt: bool
    requires_aesthetics_score: bool
    time_cond_proj_dim: int | None
    addition_time_embed_dim: int
    scheduler_config: str  # JSON text (frozen and hashable)


@dataclass(frozen=True)
class ClipHandle:
    __socket__ = "CLIP"
    ref: ModelRef


@dataclass(frozen=True)
class VaeHandle:
    __socket__ = "VAE"
    ref: ModelRef
    scaling_factor: float
    vae_scale_factor: int
    force_upcast: bool


class ModelManager:
    """Loaded components by (content fingerprint, component, dtype, device): one copy per process."""

    def __init__(self) -> None:
        self._loaded: dict[tuple[str, str, str, str], Any] = {}

    def __len__(self) -> int:
        return len(self._loaded)

    def get(self, ref: ModelRef, component: str, ctx: RunContext | None = None) -> Any:
        key = (ref.source.fingerprint, component, ref.dtype, ref.device)
        model = self._loaded.get(key)
        if model is None:
            model = load_component(ref, component)
            self._loaded[key] = model
            if ctx is not None:
                ctx.record_loaded(component)
        return model

    def unload_all(self) -> None:
        self._loaded.clear()


def manager(ctx: RunContext) -> ModelManager:
    return ctx.resource(ModelManager)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise SourceError(f"{path}: missing (is this a complete diffusers SDXL folder?)") from None
    except ValueError as exc:
        raise SourceError(f"{path}: corrupt JSON: {exc}") from None


def _weights_file(folder: Path, variant: str | None) -> Path:
    name = "diffusion_pytorch_model" + (f".{variant}" if variant else "") + ".safetensors"
    return folder / name


def _load_vae_half(ref: ModelRef, half: Literal["encoder", "decoder"]) -> Any:
    """Only the encoder (or decoder) half of the VAE: a run that only decodes never reads the encoder.

    diffusers' from_pretrained always reads the whole VAE; we build it on the meta device and fill just
    the half we need from the safetensors file. Checkpoints with legacy key names fall back to the
    whole-model loader.
    """
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL
    from safetensors import safe_open

    folder = Path(ref.source.path) / "vae"
    weights = _weights_file(folder, ref.source.variant)
    parts = ("encoder", "quant_conv") if half == "encoder" else ("decoder", "post_quant_conv")
    if weights.is_file():
        with init_empty_weights():
            vae = AutoencoderKL.from_config(AutoencoderKL.load_config(folder))
        with safe_open(weights, framework="pt") as f:
            state = {k: f.get_tensor(k) for k in f.keys() if k.split(".")[0] in parts}
        vae.load_state_dict(state, strict=False, assign=True)
        wanted = [m for name, m in vae.named_children() if name in parts]
        if all(p.device.type != "meta" for m in wanted for p in m.parameters()):
            for m in wanted:
                m.to(device=ref.device, dtype=ref.torch_dtype)
            return vae.eval().requires_grad_(False)
        logger.debug("VAE weights use legacy names; loading the whole VAE")
    vae = AutoencoderKL.from_pretrained(ref.source.path, subfolder="vae", torch_dtype=ref.torch_dtype,
                                        variant=ref.source.variant, use_safetensors=True)
    return vae.to(ref.device).eval().requires_grad_(False)


def load_component(ref: ModelRef, component: str) -> Any:
    """Read one component from disk (safetensors only) and place it."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    if ref.source.kind != "diffusers":
        raise SourceError(f"{ref.source.path}: single-file checkpoints must be converted first")
    path, variant = ref.source.path, ref.source.variant
    try:
        if component in ("tokenizer", "tokenizer_2"):
            return CLIPTokenizer.from_pretrained(path, subfolder=component)
        if component == "unet":
            model = UNet2DConditionModel.from_pretrained(path, subfolder="unet", torch_dtype=ref.torch_dtype,
                                                         variant=variant, use_safetensors=True)
        elif component == "text_encoder":
            model = CLIPTextModel.from_pretrained(path, subfolder=component, dtype=ref.torch_dtype,
                                                  variant=variant, use_safetensors=True)
        elif component == "text_encoder_2":
            model = CLIPTextModelWithProjection.from_pretrained(path, subfolder=component, dtype=ref.torch_dtype,
                                                                variant=variant, use_safetensors=True)
        elif component in ("vae_encoder", "vae_decoder"):
            return _load_vae_half(ref, "encoder" if component == "vae_encoder" else "decoder")
        else:
            raise ValueError(f"unknown model component {component!r}")
    except OSError as exc:
        raise SourceError(f"{path}: cannot load {component}: {exc}") from exc
    return model.to(ref.device).eval().requires_grad_(False)


def resolve_device(device: str) -> str:
    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        return "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was requested but torch sees no CUDA device; use device='auto' or 'cpu'")
    if device == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device 'mps' was requested but is not available here")
    return device


def resolve_dtypes(dtype: str, device: str) -> tuple[str, str]:
    """(model dtype, VAE dtype). ``auto``: float16 on accelerators with the VAE in float32, else float32."""
    if dtype == "auto":
        return ("float16", "float32") if device != "cpu" else ("float32", "float32")
    return dtype, dtype


def _source_fingerprint(source: str, variant: str | None = None, **_: Any) -> str:
    return resolve(source, variant).fingerprint


@node(category="loaders", version=1, outputs={"unet": UNetHandle, "clip": ClipHandle, "vae": VaeHandle},
      fingerprint=_source_fingerprint, content_inputs=("source",), always_run=True,
      comfy=rename_mapping("CheckpointLoaderSimple", "LoadCheckpoint", {"ckpt_name": "source"},
                           ("unet", "clip", "vae")))
def LoadCheckpoint(
    source: str,
    dtype: DType = "auto",
    device: Device = "auto",
    variant: str | None = None,
) -> tuple[UNetHandle, ClipHandle, VaeHandle]:
    """Load an SDXL checkpoint lazily: returns handles; weights are read when a node first needs them.

    source: a diffusers folder, a .safetensors file, a hub id (e.g. diffusers/stable-diffusion-xl-1.0-inpainting-0.1),
    or builtin:tiny-sdxl-inpaint / builtin:tiny-sdxl (random weights, for tests and demos).
    dtype auto: float16 on CUDA with the VAE kept in float32 (it overflows in float16); float32 on CPU.
    """
    src = resolve(source, variant)
    if src.kind == "single_file":
        from nodes.single_file import convert_single_file

        src = convert_single_file(src)
    folder = Path(src.path)
    index = _read_json(folder / "model_index.json") if (folder / "model_index.json").is_file() else {}
    unet_cfg = _read_json(folder / "unet" / "config.json")
    vae_cfg = _read_json(folder / "vae" / "config.json")
    sched_cfg = _read_json(folder / "scheduler" / "scheduler_config.json")
    in_channels = int(unet_cfg.get("in_channels", 4))
    if in_channels not in (4, 9):
        raise SourceError(f"{folder}: UNet has {in_channels} input channels; SDXL inpainting needs 4 (base model, "
                          "blended) or 9 (inpainting model)")
    dev = resolve_device(device)
    model_dtype, vae_dtype = resolve_dtypes(dtype, dev)
    if vae_dtype == "float16" and vae_cfg.get("force_upcast", True):
        vae_dtype = "float32"  # SDXL's VAE overflows in float16; diffusers upcasts it for the same reason
    vae_scale = 2 ** (len(vae_cfg.get("block_out_channels", [0, 0, 0, 0])) - 1)
    unet = UNetHandle(
        ModelRef(src, model_dtype, dev), in_channels, vae_scale,
        bool(index.get("force_zeros_for_empty_prompt", True)), bool(index.get("requires_aesthetics_score", False)),
        unet_cfg.get("time_cond_proj_dim"), int(unet_cfg.get("addition_time_embed_dim") or 256),
        json.dumps(sched_cfg, sort_keys=True))
    clip = ClipHandle(ModelRef(src, model_dtype, dev))
    vae = VaeHandle(ModelRef(src, vae_dtype, dev), float(vae_cfg.get("scaling_factor", 0.13025)), vae_scale,
                    bool(vae_cfg.get("force_upcast", True)))
    return unet, clip, vae
