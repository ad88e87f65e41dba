"""Images and masks: load, save, resize, composite, crop to the mask and paste back."""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image as PILImage
from PIL import PngImagePlugin
from pydantic import Field

from nodegraph import RunContext, node, payload
from nodegraph.files import atomic_write_bytes, write_numbered
from nodegraph.keys import file_fingerprint
from nodegraph.workflow import PNG_TEXT_KEY
from nodes.payloads import Image, Mask

logger = logging.getLogger(__name__)

Size = Annotated[int, Field(ge=8, le=16384)]
ResizeMode = Literal["lanczos", "bicubic", "bilinear", "nearest", "area"]
_PIL_FILTERS = {"lanczos": PILImage.LANCZOS, "bicubic": PILImage.BICUBIC, "bilinear": PILImage.BILINEAR,
                "nearest": PILImage.NEAREST, "area": PILImage.BOX}


# ---- conversions -------------------------------------------------------------------------------
def pil_to_tensor(img: PILImage.Image) -> torch.Tensor:
    """[H, W, C] float32 in [0, 1] -- the same arithmetic as diffusers' image processor."""
    return torch.from_numpy(np.asarray(img).astype(np.float32) / 255.0)


def tensor_to_pil(image: torch.Tensor) -> PILImage.Image:
    """One [H, W, C] image -> 8-bit PIL (rounded, as diffusers' numpy_to_pil does)."""
    arr = (image.detach().float().cpu().clamp(0, 1).numpy() * 255).round().astype(np.uint8)
    return PILImage.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)


def rounded_size(width: int, height: int, multiple: int) -> tuple[int, int]:
    """Sizes are rounded *down* to a multiple (8 for SDXL's VAE), never below one multiple."""
    if multiple <= 1:
        return width, height
    return max(multiple, width - width % multiple), max(multiple, height - height % multiple)


def _open(path: str) -> PILImage.Image:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such image file")
    try:
        img = PILImage.open(p)
        img.load()
    except Exception as exc:
        raise ValueError(f"{p}: not a readable image ({exc})") from None
    return img


def _path_fingerprint(path: str, **_: Any) -> str:
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such file")
    return file_fingerprint(path)


def _resize_pil(img: PILImage.Image, size: tuple[int, int], mode: str = "lanczos") -> PILImage.Image:
    return img if img.size == size else img.resize(size, resample=_PIL_FILTERS[mode])


@node(category="image", version=1, outputs={"image": Image, "mask": Mask}, fingerprint=_path_fingerprint,
      content_inputs=("path",))
def LoadImage(path: str, round_to: Annotated[int, Field(ge=1, le=64)] = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Load an image file as RGB; its alpha channel (if any) becomes the mask: transparent = repaint.

    Width and height are rounded down to a multiple of round_to (8 suits SDXL's VAE) by a Lanczos resize,
    as diffusers does; a warning says when that happens. Set round_to=1 to keep the size.
    """
    img = _open(path)
    size = rounded_size(*img.size, round_to)
    if size != img.size:
        logger.warning("%s: %dx%d resized to %dx%d (a multiple of %d)", path, *img.size, *size, round_to)
    has_alpha = img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info)
    rgba = img.convert("RGBA") if has_alpha else None
    image = pil_to_tensor(_resize_pil(img.convert("RGB"), size))[None]
    if rgba is not None:
        alpha = pil_to_tensor(_resize_pil(rgba.getchannel("A"), size))
        mask = (1.0 - alpha)[None]
    else:
        mask = torch.zeros(image.shape[:3])
    return image, mask


MaskChannel = Literal["luminance", "alpha", "red", "green", "blue"]


@node(category="image", version=1, outputs={"mask": Mask}, fingerprint=_path_fingerprint,
      content_inputs=("path",))
def LoadMask(path: str, channel: MaskChannel = "luminance", invert: bool = False,
             round_to: Annotated[int, Field(ge=1, le=64)] = 8) -> torch.Tensor:
    """Load a mask image: white (1) = repaint, black (0) = keep; `invert` swaps them.

    `luminance` is what diffusers uses (the image converted to greyscale). Sizes are rounded as LoadImage's.
    """
    img = _open(path)
    size = rounded_size(*img.size, round_to)
    if channel == "luminance":
        band = img.convert("L")
    elif channel == "alpha":
        if "A" not in img.getbands() and not (img.mode == "P" and "transparency" in img.info):
            raise ValueError(f"{path}: has no alpha channel (mode {img.mode}); use channel='luminance'")
        band = img.convert("RGBA").getchannel("A")
    else:
        band = img.convert("RGB").getchannel(channel[0].upper())
    mask = pil_to_tensor(_resize_pil(band, size))[None]
    return 1.0 - mask if invert else mask


@node(category="image", version=1, output=True)
def SaveImage(
    image: Image,
    ctx: RunContext,
    prefix: str = "nodegraph",
    path: str | None = None,
    format: Literal["png", "jpeg", "webp"] = "png",
    quality: Annotated[int, Field(ge=1, le=100)] = 95,
    embed_workflow: bool = True,
) -> list[str]:
    """Save each image of the batch: to `path` if given (batch items get _1, _2, ...), else to
    OUTPUT_DIR/PREFIX_NNNNN.FORMAT under the first free number (never over an existing file, even with
    other processes saving at once). PNGs carry the workflow so `nodegraph run result.png` reruns it.
    Files are written whole or not at all."""
    suffix = ".jpg" if format == "jpeg" else f".{format}"
    written: list[str] = []
    numbered = Path(ctx.output_dir) / prefix  # the prefix may name a sub-folder
    for i in range(image.shape[0]):
        ctx.check_cancelled()
        buf = io.BytesIO()
        pil = tensor_to_pil(image[i])
        if format == "png":
            info = PngImagePlugin.PngInfo()
            if embed_workflow and ctx.workflow_json:
                info.add_text(PNG_TEXT_KEY, ctx.workflow_json)
            pil.save(buf, format="PNG", pnginfo=info)
        else:
            pil.save(buf, format=format.upper(), quality=quality)
        if path is None:
            target = write_numbered(numbered.parent, numbered.name, suffix, buf.getvalue())
        else:  # an explicit path is the user's to overwrite
            target = Path(path)
            if image.shape[0] > 1:
                target = target.with_name(f"{target.stem}_{i + 1}{target.suffix or suffix}")
            elif not target.suffix:
                target = target.with_suffix(suffix)
            atomic_write_bytes(target, buf.getvalue())
        written.append(str(target))
    return written


def _resize_tensor(x: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """x: [B, C, H, W]; size: (width, height)."""
    w, h = size
    if x.shape[-2:] == (h, w):
        return x
    if mode == "lanczos":  # torch has no Lanczos; PIL's matches diffusers' resize
        out = []
        for img in x:
            channels = [pil_to_tensor(_resize_pil(PILImage.fromarray(c.cpu().numpy(), mode="F"), size, mode))
                        for c in img.float()]
            out.append(torch.stack(channels))
        return torch.stack(out).clamp(0, 1).to(x)
    kwargs = {"antialias": True} if mode in ("bilinear", "bicubic") else {}
    torch_mode = {"nearest": "nearest-exact"}.get(mode, mode)
    return F.interpolate(x, size=(h, w), mode=torch_mode, **kwargs).clamp(0, 1)


@node(category="image", version=1, outputs={"image": Image}, persist=True)
def ResizeImage(image: Image, width: Size, height: Size, mode: ResizeMode = "lanczos",
                round_to: Annotated[int, Field(ge=1, le=64)] = 8) -> torch.Tensor:
    """Resize to width x height, each rounded down to a multiple of round_to."""
    size = rounded_size(width, height, round_to)
    return _resize_tensor(image.permute(0, 3, 1, 2), size, mode).permute(0, 2, 3, 1).contiguous()


@node(category="image", version=1, outputs={"mask": Mask}, persist=True)
def ResizeMask(mask: Mask, width: Size, height: Size, mode: ResizeMode = "nearest",
               round_to: Annotated[int, Field(ge=1, le=64)] = 8) -> torch.Tensor:
    """Resize a mask to width x height, each rounded down to a multiple of round_to."""
    size = rounded_size(width, height, round_to)
    return _resize_tensor(mask[:, None], size, mode)[:, 0].contiguous()


def check_same_size(image: torch.Tensor, mask: torch.Tensor, what: str) -> None:
    if image.shape[1:3] != mask.shape[1:3]:
        raise ValueError(f"{what}: image is {image.shape[2]}x{image.shape[1]} but mask is "
                         f"{mask.shape[2]}x{mask.shape[1]} (width x height); add a ResizeMask node")


def _gaussian_blur(mask: torch.Tensor, radius: int) -> torch.Tensor:
    sigma = max(radius / 2.0, 0.5)
    xs = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-(xs**2) / (2 * sigma**2))
    k = (k / k.sum()).to(mask)
    m = mask[:, None]
    m = F.conv2d(F.pad(m, (radius, radius, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    m = F.conv2d(F.pad(m, (0, 0, radius, radius), mode="replicate"), k.view(1, 1, -1, 1))
    return m[:, 0]


@node(category="image", version=1, outputs={"image": Image}, persist=True)
def CompositeMasked(original: Image, generated: Image, mask: Mask,
                    feather: Annotated[int, Field(ge=0, le=256)] = 0) -> torch.Tensor:
    """Paste the generated pixels into the original only where the mask is set.

    Every pixel where the mask is 0 is exactly the original (this fixes the colour shift a VAE round trip
    causes outside the mask). feather > 0 softens the seam inward over that many pixels, never outward.
    """
    check_same_size(original, mask, "CompositeMasked")
    if original.shape[1:3] != generated.shape[1:3]:
        raise ValueError(f"CompositeMasked: original is {original.shape[2]}x{original.shape[1]} but generated is "
                         f"{generated.shape[2]}x{generated.shape[1]}")
    weight = mask.to(generated)
    if feather > 0:
        weight = torch.where(weight > 0, _gaussian_blur(weight, feather).clamp(0, 1) * weight.clamp(0, 1), 0)
    weight = weight[..., None]
    blended = original.to(generated) * (1 - weight) + generated * weight
    return torch.where(weight > 0, blended, original.to(generated))


@payload
@dataclass(frozen=True)
class CropRegion:
    """Where CropToMask cut from: box (x0, y0, x1, y1) in the original image of size (width, height)."""

    __socket__ = "CROP"
    box: tuple[int, int, int, int]
    width: int
    height: int


@node(category="image", version=1, outputs={"image": Image, "mask": Mask, "region": CropRegion}, persist=True)
def CropToMask(image: Image, mask: Mask, padding: Annotated[int, Field(ge=0, le=4096)] = 32,
               width: Size = 1024, height: Size = 1024) -> tuple[torch.Tensor, torch.Tensor, CropRegion]:
    """Cut the region around the mask (plus padding, widened to width:height) and scale it to
    width x height, so a small masked area is inpainted at full model resolution (diffusers'
    padding_mask_crop). Paste the result back with UncropToMask."""
    from diffusers.image_processor import VaeImageProcessor

    check_same_size(image, mask, "CropToMask")
    if not bool((mask > 0.5).any()):
        raise ValueError("CropToMask: the mask is empty, there is no region to crop to")
    size = rounded_size(width, height, 8)
    mask_pil = tensor_to_pil(mask[0][..., None].clamp(0, 1))
    box = tuple(int(v) for v in VaeImageProcessor.get_crop_region(mask_pil, size[0], size[1], pad=padding))
    x0, y0, x1, y1 = box
    crop_img = image[:, y0:y1, x0:x1].permute(0, 3, 1, 2)
    crop_mask = mask[:, y0:y1, x0:x1][:, None]
    out_img = _resize_tensor(crop_img, size, "lanczos").permute(0, 2, 3, 1).contiguous()
    out_mask = _resize_tensor(crop_mask, size, "lanczos")[:, 0].contiguous()
    return out_img, out_mask, CropRegion(box, image.shape[2], image.shape[1])  # type: ignore[arg-type]


@node(category="image", version=1, outputs={"image": Image}, persist=True)
def UncropToMask(original: Image, generated: Image, mask: Mask, region: CropRegion,
                 feather: Annotated[int, Field(ge=0, le=256)] = 0) -> torch.Tensor:
    """Scale the generated crop back to its box, put it into the original, and keep it only where the
    (full-size) mask is set: every unmasked pixel stays exactly the original."""
    x0, y0, x1, y1 = region.box
    if original.shape[1:3] != (region.height, region.width):
        raise ValueError(f"UncropToMask: original is {original.shape[2]}x{original.shape[1]} but the crop was made "
                         f"from a {region.width}x{region.height} image")
    patch = _resize_tensor(generated.permute(0, 3, 1, 2), (x1 - x0, y1 - y0), "lanczos").permute(0, 2, 3, 1)
    canvas = original.to(patch).repeat(patch.shape[0] // original.shape[0] or 1, 1, 1, 1)
    canvas[:, y0:y1, x0:x1] = patch
    return CompositeMasked(original, canvas, mask, feather)
