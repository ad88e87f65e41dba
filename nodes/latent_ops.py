"""Latent batches, upscales and composites with ComfyUI's arithmetic (latents [B, 4, h, w], 8 pixels a cell).

A latent's mask and masked-image latents (inpainting) follow its samples: sliced and repeated with the
batch; an upscale or composite changes the picture, so they are dropped there (the result is plain).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field

from nodegraph import node
from nodegraph.node import PERSIST
from nodes.payloads import Latent, Mask
from nodes.transform import paste_channels_first, repeat_to, scale_channels_first

if TYPE_CHECKING:
    import torch

LatentScaleMethod = Literal["nearest-exact", "bilinear", "area", "bicubic"]
Pixels = Annotated[int, Field(ge=0, le=16384)]


def _batch_of(x: torch.Tensor | None, batch: int) -> torch.Tensor | None:
    return None if x is None else repeat_to(x, batch)


@node(category="latent/batch", version=1, cache=PERSIST)
def RepeatLatent(latent: Latent, amount: Annotated[int, Field(ge=1, le=64)] = 1) -> Latent:
    """The batch repeated `amount` times (ComfyUI's RepeatLatentBatch)."""
    b = latent.samples.shape[0]

    def rep(x: torch.Tensor | None) -> torch.Tensor | None:
        x = _batch_of(x, b)
        return None if x is None else x.repeat(amount, *([1] * (x.ndim - 1)))

    return latent.replace(samples=rep(latent.samples), masked=rep(latent.masked), mask=rep(latent.mask))


@node(category="latent/batch", version=1, cache=PERSIST)
def LatentFromBatch(latent: Latent, batch_index: Annotated[int, Field(ge=0, le=63)] = 0,
                    length: Annotated[int, Field(ge=1, le=64)] = 1) -> Latent:
    """Items batch_index .. batch_index+length-1, both moved inside the batch first (as ComfyUI does)."""
    b = latent.samples.shape[0]
    start = min(b - 1, batch_index)
    stop = start + min(b - start, length)

    def cut(x: torch.Tensor | None) -> torch.Tensor | None:
        x = _batch_of(x, b)
        return None if x is None else x[start:stop].clone()

    return latent.replace(samples=cut(latent.samples), masked=cut(latent.masked), mask=cut(latent.mask))


@node(category="latent", version=1, cache=PERSIST)
def ScaleLatent(latent: Latent, method: LatentScaleMethod = "nearest-exact", width: Pixels = 512,
                height: Pixels = 512, crop: Literal["disabled", "center"] = "disabled",
                scale_by: Annotated[float, Field(ge=0.01, le=8.0)] | None = None) -> Latent:
    """Resize the latent to width x height pixels (ComfyUI's LatentUpscale: each at least 64, a 0 follows
    the aspect ratio, both 0 = unchanged), or by scale_by cells (LatentUpscaleBy) when given."""
    h, w = latent.samples.shape[-2:]
    if scale_by is not None:
        cells_w, cells_h = round(w * scale_by), round(h * scale_by)
        crop = "disabled"
    elif width == 0 and height == 0:
        return latent
    else:
        if width == 0:
            height = max(64, height)
            width = max(64, round(w * height / h))
        elif height == 0:
            width = max(64, width)
            height = max(64, round(h * width / w))
        else:
            width, height = max(64, width), max(64, height)
        cells_w, cells_h = width // 8, height // 8
    samples = scale_channels_first(latent.samples, cells_w, cells_h, method, crop)
    return Latent(samples, empty=latent.empty)


@node(category="latent", version=1, cache=PERSIST)
def CompositeLatent(destination: Latent, source: Latent, x: Pixels = 0, y: Pixels = 0, feather: Pixels = 0,
                    mask: Mask | None = None, resize_source: bool = False) -> Latent:
    """Paste source into destination with its corner at (x, y) pixels (cut to cells of 8).

    Without a mask this is ComfyUI's LatentComposite: feather (pixels, in cells of 8) fades the pasted
    edges that lie inside the destination linearly. With a mask (or resize_source) it is
    LatentCompositeMasked: the mask, resized bilinearly to the source, weighs source against destination.
    """
    out = paste_channels_first(destination.samples, source.samples, x // 8, y // 8, mask, resize_source, feather // 8)
    return Latent(out, empty=False)
