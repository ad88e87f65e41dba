"""Image scaling, outpaint padding and image batches with ComfyUI's arithmetic (images [B, H, W, C])."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field

from nodegraph import node
from nodegraph.node import PERSIST
from nodes.image import ImageAndMask
from nodes.payloads import Image, Mask

if TYPE_CHECKING:
    import torch

ScaleMethod = Literal["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]
Crop = Literal["disabled", "center"]
Pixels = Annotated[int, Field(ge=0, le=16384)]
Extent = Annotated[int, Field(ge=1, le=16384)]


def center_crop(x: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Cut [.., H, W] to the aspect ratio of width x height, keeping the middle."""
    old_h, old_w = x.shape[-2:]
    old_aspect, new_aspect = old_w / old_h, width / height
    dx = round((old_w - old_w * (new_aspect / old_aspect)) / 2) if old_aspect > new_aspect else 0
    dy = round((old_h - old_h * (old_aspect / new_aspect)) / 2) if old_aspect < new_aspect else 0
    return x[..., dy:old_h - dy, dx:old_w - dx]


def scale_channels_first(x: torch.Tensor, width: int, height: int, method: str, crop: str = "disabled") -> torch.Tensor:
    """Resize [B, C, H, W] as ComfyUI does: torch interpolation without antialiasing, or 8-bit Lanczos."""
    import torch
    import torch.nn.functional as F

    if crop == "center":
        x = center_crop(x, width, height)
    if method != "lanczos":
        return F.interpolate(x, size=(height, width), mode=method)
    import numpy as np
    from PIL import Image as PILImage

    out = []
    for item in x.movedim(1, -1).float().cpu().numpy():  # [H, W, C]; 8 bits truncated, as ComfyUI does
        arr = np.clip(255.0 * item, 0, 255).astype(np.uint8)
        img = PILImage.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)
        resized = np.asarray(img.resize((width, height), resample=PILImage.Resampling.LANCZOS), dtype=np.float32)
        out.append(torch.from_numpy(resized / 255.0).reshape(height, width, -1))
    return torch.stack(out).movedim(-1, 1).to(x.dtype)


def repeat_to(x: torch.Tensor, batch: int) -> torch.Tensor:
    """x repeated (or cut) to batch items, as ComfyUI's repeat_to_batch_size."""
    if x.shape[0] == batch:
        return x
    return x.repeat(math.ceil(batch / x.shape[0]), *([1] * (x.ndim - 1)))[:batch]


def paste_channels_first(destination: torch.Tensor, source: torch.Tensor, left: int, top: int,
                         mask: torch.Tensor | None = None, resize_source: bool = False, feather: int = 0) -> torch.Tensor:
    """source [B, C, h, w] pasted into a copy of destination [B, C, H, W] with its corner at (left, top), cut at
    the destination's edges (ComfyUI's composite). A mask [B, h', w'] is resized bilinearly to the source and
    weighs source against destination; without one, ``feather`` rows/columns fade the edges that lie inside."""
    import torch
    import torch.nn.functional as F

    out = destination.clone()
    src = source.to(out)
    if resize_source:
        src = F.interpolate(src, size=out.shape[-2:], mode="bilinear")
    src = repeat_to(src, out.shape[0])
    piece = src[..., :max(0, out.shape[-2] - top), :max(0, out.shape[-1] - left)]
    ph, pw = piece.shape[-2:]
    if mask is not None:
        weight = F.interpolate(mask.float().reshape(-1, 1, *mask.shape[-2:]), size=src.shape[-2:], mode="bilinear")
        weight = repeat_to(weight, src.shape[0])[..., :ph, :pw]
    else:
        weight = torch.ones_like(piece[:, :1])
        for t in range(feather):
            ramp = (t + 1) / feather
            if top != 0:
                weight[:, :, t] *= ramp
            if top + ph < out.shape[-2]:
                weight[:, :, ph - 1 - t] *= ramp
            if left != 0:
                weight[:, :, :, t] *= ramp
            if left + pw < out.shape[-1]:
                weight[:, :, :, pw - 1 - t] *= ramp
    region = out[..., top:top + ph, left:left + pw]
    out[..., top:top + ph, left:left + pw] = piece * weight + region * (1 - weight)
    return out


def _scale(image: torch.Tensor, width: int, height: int, method: str, crop: str = "disabled") -> torch.Tensor:
    return scale_channels_first(image.movedim(-1, 1), width, height, method, crop).movedim(1, -1).contiguous()


@node(category="image/transform", version=1, cache=PERSIST)
def ScaleImage(image: Image, method: ScaleMethod = "nearest-exact", width: Pixels = 512, height: Pixels = 512,
               crop: Crop = "disabled") -> Image:
    """Resize to width x height (ComfyUI's ImageScale). A size of 0 follows the other's aspect ratio; both 0
    leave the image as it is. crop=center cuts to the new aspect ratio first."""
    if width == 0 and height == 0:
        return image
    h, w = image.shape[1:3]
    if width == 0:
        width = max(1, round(w * height / h))
    elif height == 0:
        height = max(1, round(h * width / w))
    return _scale(image, width, height, method, crop)


@node(category="image/transform", version=1, cache=PERSIST)
def ScaleImageBy(image: Image, method: ScaleMethod = "nearest-exact",
                 scale_by: Annotated[float, Field(ge=0.01, le=8.0)] | None = 1.0,
                 megapixels: Annotated[float, Field(ge=0.01, le=16.0)] | None = None) -> Image:
    """Resize by a factor (ComfyUI's ImageScaleBy), or to about that many megapixels (1 MP = 1024 * 1024
    pixels, ImageScaleToTotalPixels) keeping the aspect ratio. Sizes are rounded to whole pixels."""
    h, w = image.shape[1:3]
    if megapixels is not None:
        scale_by = math.sqrt(int(megapixels * 1024 * 1024) / (w * h))
    factor = 1.0 if scale_by is None else scale_by
    return _scale(image, round(w * factor), round(h * factor), method)


@node(category="image/transform", version=1, cache=PERSIST)
def PadForOutpaint(image: Image, left: Pixels = 0, top: Pixels = 0, right: Pixels = 0, bottom: Pixels = 0,
                   feathering: Pixels = 40) -> ImageAndMask:
    """Add grey (0.5) borders and a mask of them to repaint (ComfyUI's ImagePadForOutpaint).

    Inside the original, pixels closer than `feathering` to a padded side get mask ((f - d) / f)^2, so
    the repaint fades in; feathering is skipped when it is over half the image's width or height.
    """
    import torch

    b, h, w, c = image.shape
    out = torch.full((b, h + top + bottom, w + left + right, c), 0.5, dtype=torch.float32)
    out[:, top:top + h, left:left + w] = image
    mask = torch.ones((h + top + bottom, w + left + right), dtype=torch.float32)
    inner = torch.zeros((h, w), dtype=torch.float32)
    if feathering > 0 and feathering * 2 < h and feathering * 2 < w:
        i = torch.arange(h, dtype=torch.float32)[:, None].expand(h, w)
        j = torch.arange(w, dtype=torch.float32)[None, :].expand(h, w)
        far_h, far_w = torch.full_like(i, float(h)), torch.full_like(j, float(w))
        d = torch.stack([i if top else far_h, h - i if bottom else far_h,
                         j if left else far_w, w - j if right else far_w]).amin(dim=0)
        inner = torch.where(d < feathering, ((feathering - d) / feathering) ** 2, inner)
    mask[top:top + h, left:left + w] = inner
    return ImageAndMask(out, mask[None])


@node(category="image", version=1, cache=PERSIST)
def SolidImage(width: Extent = 512, height: Extent = 512, batch_size: Annotated[int, Field(ge=1, le=4096)] = 1,
               color: Annotated[int, Field(ge=0, le=0xFFFFFF)] = 0) -> Image:
    """An image batch of one colour, given as 0xRRGGBB (ComfyUI's EmptyImage)."""
    import torch

    rgb = torch.tensor([(color >> 16) & 0xFF, (color >> 8) & 0xFF, color & 0xFF], dtype=torch.float32) / 255.0
    return rgb.expand(batch_size, height, width, 3).contiguous()


@node(category="image", version=1, cache=PERSIST)
def BatchImages(image1: Image, image2: Image) -> Image:
    """image1 then image2 in one batch; image2 is first resized (bilinear, centre crop) to image1's size."""
    import torch

    if image1.shape[1:] != image2.shape[1:]:
        image2 = _scale(image2, image1.shape[2], image1.shape[1], "bilinear", "center")
    return torch.cat((image1, image2), dim=0)


@node(category="image", version=1, cache=PERSIST)
def PasteImage(destination: Image, source: Image, x: Pixels = 0, y: Pixels = 0, resize_source: bool = False,
               mask: Mask | None = None) -> Image:
    """Paste source into destination with its corner at (x, y) (ComfyUI's ImageCompositeMasked): the mask,
    resized bilinearly to the source, weighs source against destination; no mask pastes all of it."""
    out = paste_channels_first(destination.movedim(-1, 1), source.movedim(-1, 1), x, y, mask, resize_source)
    return out.movedim(1, -1).contiguous()
