"""Cheap previews of a sampler's latents: a linear map from SDXL's 4 latent channels to RGB (no VAE).

The factors are the approximate least-squares projection from SDXL latents (as the UNet sees them, i.e.
scaled by the VAE's scaling factor) to RGB in [-1, 1] that InvokeAI publishes for its progress images.
Good enough to watch composition and colour emerge; the real image comes from VAEDecode.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

from nodegraph.events import PreviewImage

if TYPE_CHECKING:
    import torch

SDXL_LATENT_RGB = (
    (0.3816, 0.4930, 0.5320),
    (-0.3753, 0.1631, 0.1739),
    (0.1770, 0.3588, -0.2048),
    (-0.4350, -0.2644, -0.4289),
)
LATENT_TO_PIXELS = 8  # SDXL's VAE downsamples by 8


def latent_rgb(latents: torch.Tensor) -> torch.Tensor:
    """[B, 4, h, w] latents -> [h, w, 3] uint8 RGB of the first sample."""
    import torch

    factors = torch.tensor(SDXL_LATENT_RGB, dtype=torch.float32)
    rgb = torch.einsum("chw,cr->hwr", latents[0].detach().float().cpu(), factors)
    return ((rgb + 1) * 127.5).clamp(0, 255).round().to(torch.uint8)


def latent_preview(latents: torch.Tensor, max_size: int = 512, quality: int = 85) -> PreviewImage:
    """A JPEG of the projected latents at pixel size, shrunk so that its longest side is at most max_size."""
    from PIL import Image

    rgb = latent_rgb(latents)
    h, w = rgb.shape[:2]
    scale = min(float(LATENT_TO_PIXELS), max_size / max(h, w))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    image = Image.fromarray(rgb.numpy(), "RGB").resize(size, Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return PreviewImage("JPEG", buffer.getvalue())
