"""Latent space: VAE encode/decode, the latent-size mask, empty latents, latents on disk."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field

from nodegraph import RunContext, node
from nodegraph.files import atomic_write_bytes
from nodegraph.keys import file_fingerprint
from nodegraph.node import PERSIST, CachePolicy
from nodegraph.types import READ_PATH, WRITE_PATH
from nodes.image import Size, check_same_size, existing_file_problems, regular_file
from nodes.models import VaeHandle, manager
from nodes.payloads import Image, Latent, Mask, require_finite

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

NODE_DEPENDS = ("torch", "diffusers")
# A latent file is a few MB (a 4096x4096 image is 4x512x512 float32 = 4 MiB); anything far bigger is not one.
MAX_LATENT_FILE_BYTES = 1024**3


def binarize(mask: torch.Tensor) -> torch.Tensor:
    """diffusers' mask processor: >= 0.5 -> 1, else 0."""
    return (mask >= 0.5).to(mask.dtype)


def _encode(model: Any, vae: VaeHandle, pixels: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] in [-1, 1] -> scaled latents, using the posterior mode (DESIGN.md §4)."""
    dist = model.encode(pixels.to(vae.ref.device, vae.ref.torch_dtype)).latent_dist
    return dist.mode() * vae.scaling_factor


@node(category="latent", version=1, cache=PERSIST)
def VAEEncode(vae: VaeHandle, image: Image, ctx: RunContext, mask: Mask | None = None) -> Latent:
    """Encode an image to latents (the posterior mode, so the result does not depend on any seed).

    With a mask, also encodes the masked image (pixels to repaint set to grey: `image * (mask < 0.5)`),
    which a 9-channel inpainting UNet takes as input. Width and height must be multiples of 8.
    """
    import torch

    factor = vae.vae_scale_factor
    h, w = image.shape[1:3]
    if h % factor or w % factor:
        raise ValueError(f"VAEEncode: image is {w}x{h}; width and height must be multiples of {factor} "
                         "(LoadImage rounds them with round_to=8, or add a ResizeImage node)")
    model = manager(ctx).get(vae.ref, "vae_encoder", ctx)
    pixels = image.permute(0, 3, 1, 2).float() * 2.0 - 1.0
    with torch.no_grad():
        samples = _encode(model, vae, pixels)
        masked = None
        if mask is not None:
            check_same_size(image, mask, "VAEEncode")
            keep = (binarize(mask.float()) < 0.5)[:, None].to(pixels)
            masked = _encode(model, vae, pixels * keep)
    require_finite("VAEEncode", latents=samples, masked_image_latents=masked)
    return Latent(samples.float(), masked.float() if masked is not None else None)


@node(category="latent", version=1, cache=PERSIST)
def DownsampleMask(latent: Latent, mask: Mask, mode: Literal["nearest", "max", "area"] = "nearest") -> Latent:
    """Attach the mask at latent size (1 = repaint).

    nearest: what diffusers does (a stroke thinner than 8 pixels can vanish); max: any repainted pixel
    marks its latent cell (thin strokes survive); area: the fraction of each cell that is repainted.
    An all-zero mask changes nothing; an all-ones mask repaints everything (plain img2img).
    """
    import torch.nn.functional as F

    h, w = latent.samples.shape[-2:]
    m = mask.float()[:, None]
    if mode == "nearest":
        small = F.interpolate(binarize(m), size=(h, w))
    elif mode == "max":
        small = F.adaptive_max_pool2d(binarize(m), (h, w))
    else:
        small = F.interpolate(m, size=(h, w), mode="area")
    return latent.replace(mask=small)


@node(category="latent", version=1, cache=PERSIST)
def EmptyLatent(width: Size = 1024, height: Size = 1024,
                batch_size: Annotated[int, Field(ge=1, le=64, description="images per run")] = 1) -> Latent:
    """An empty latent for text-to-image (SDXL's 8x VAE factor; sizes rounded down to multiples of 8).
    Sampling from it always starts from pure noise."""
    import torch

    return Latent(torch.zeros(batch_size, 4, height // 8, width // 8), empty=True)


@node(category="latent", version=1, cache=PERSIST)
def VAEDecode(vae: VaeHandle, latent: Latent, ctx: RunContext) -> Image:
    """Decode latents to an image batch [B, H, W, C] in [0, 1]."""
    import torch

    model = manager(ctx).get(vae.ref, "vae_decoder", ctx)
    dtype = vae.ref.torch_dtype
    images = []
    with torch.no_grad():
        for i in range(latent.samples.shape[0]):  # one at a time: peak memory of one image
            ctx.check_cancelled()
            z = latent.samples[i: i + 1].to(vae.ref.device, dtype) / vae.scaling_factor
            x = decode_with_fallback(model, z)
            require_finite("VAEDecode", pixels=x)
            images.append((x / 2 + 0.5).clamp(0, 1).float().cpu())
    return torch.cat(images).permute(0, 2, 3, 1).contiguous()


def decode_with_fallback(model: Any, z: torch.Tensor) -> torch.Tensor:
    """Decode; if that runs out of memory, decode again in tiles (slower, a little different at seams)."""
    import torch

    try:
        return model.decode(z, return_dict=False)[0]
    except torch.OutOfMemoryError:
        if getattr(model, "use_tiling", False):
            raise
        logger.warning("VAE decode of a %dx%d latent ran out of memory; retrying with tiled decoding",
                       z.shape[-1], z.shape[-2])
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        model.enable_tiling()
        try:
            return model.decode(z, return_dict=False)[0]
        finally:
            model.disable_tiling()


@node(category="latent", version=1, output=True)
def SaveLatent(latent: Latent,
               path: Annotated[str, WRITE_PATH, Field(description="the .safetensors file to write")]) -> list[str]:
    """Write latents (and their mask and masked-image latents, if any) to a .safetensors file."""
    from safetensors.torch import save

    tensors = {"samples": latent.samples.detach().cpu().contiguous()}
    if latent.masked is not None:
        tensors["masked"] = latent.masked.detach().cpu().contiguous()
    if latent.mask is not None:
        tensors["mask"] = latent.mask.detach().cpu().contiguous()
    target = Path(path) if Path(path).suffix else Path(path).with_suffix(".safetensors")
    atomic_write_bytes(target, save(tensors, metadata={"format": "nodegraph-latent",
                                                       "empty": json.dumps(latent.empty)}))
    return [str(target)]


def _latent_file(path: str) -> Path:
    return regular_file(path, "a latent file", MAX_LATENT_FILE_BYTES)


def _latent_fingerprint(path: str, **_: Any) -> str:
    return file_fingerprint(_latent_file(path))


def _check_latent_file(path: str, **_: Any) -> list[tuple[str | None, str]]:
    """A directory, device, pipe or over-1-GiB file is refused at validation."""
    return existing_file_problems(path, _latent_file)


@node(category="latent", version=2, cache=CachePolicy.reads(_latent_fingerprint, "path"), check=_check_latent_file)
def LoadLatent(path: Annotated[str, READ_PATH, Field(description="a .safetensors file written by SaveLatent")]
               ) -> Latent:
    """Read latents written by SaveLatent (safetensors only; regular files up to 1 GiB)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    p = _latent_file(path)
    try:
        tensors = load_file(p)
    except (SafetensorError, OSError) as exc:
        raise ValueError(f"{p}: not a readable safetensors file ({exc})") from None
    if "samples" not in tensors:
        raise ValueError(f"{p}: not a nodegraph latent file (no 'samples' tensor)")
    require_finite(f"LoadLatent {p}", latents=tensors["samples"], masked_image_latents=tensors.get("masked"),
                   mask=tensors.get("mask"))
    return Latent(tensors["samples"], tensors.get("masked"), tensors.get("mask"))
