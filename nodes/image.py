"""Images and masks: load, save, resize, composite, crop to the mask and paste back."""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, NamedTuple

from PIL import Image as PILImage
from PIL import PngImagePlugin
from pydantic import Field

from nodegraph import RunContext, node, payload
from nodegraph.files import atomic_write_bytes, write_numbered
from nodegraph.keys import file_fingerprint
from nodegraph.node import PERSIST, CachePolicy
from nodegraph.settings import DEFAULT_MAX_PIXELS, active_settings
from nodegraph.types import READ_PATH, WRITE_PATH
from nodegraph.workflow import PNG_TEXT_KEY
from nodes.payloads import Image, Mask

if TYPE_CHECKING:
    import numpy as np
    import torch

logger = logging.getLogger(__name__)

NODE_DEPENDS = ("torch", "pillow")
Size = Annotated[int, Field(ge=8, le=16384)]
RoundTo = Annotated[int, Field(ge=1, le=64, description="round width and height down to a multiple of this "
                                                         "(8 suits SDXL's VAE; 1 keeps the size)")]
ResizeMode = Literal["lanczos", "bicubic", "bilinear", "nearest", "area"]
ImagePath = Annotated[str, READ_PATH, Field(description="the image file to read")]
_PIL_FILTERS = {"lanczos": PILImage.Resampling.LANCZOS, "bicubic": PILImage.Resampling.BICUBIC,
                "bilinear": PILImage.Resampling.BILINEAR, "nearest": PILImage.Resampling.NEAREST,
                "area": PILImage.Resampling.BOX}
# Single-band modes with more than 8 bits: read as numbers and scaled, because Pillow's convert("L") clips
# them (a 0..65535 gradient would read as almost all white). "I" holds 16-bit PNGs in older Pillows.
_WIDE_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I", "F"}


# ---- conversions -------------------------------------------------------------------------------
def pil_to_tensor(img: PILImage.Image) -> torch.Tensor:
    """[H, W, C] float32 in [0, 1] -- the same arithmetic as diffusers' image processor."""
    import numpy as np
    import torch

    return torch.from_numpy(np.asarray(img).astype(np.float32) / 255.0)


def tensor_to_pil(image: torch.Tensor) -> PILImage.Image:
    """One [H, W, C] image -> 8-bit PIL (rounded, as diffusers' numpy_to_pil does)."""
    import numpy as np

    arr = (image.detach().float().cpu().clamp(0, 1).numpy() * 255).round().astype(np.uint8)
    return PILImage.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)


def rounded_size(width: int, height: int, multiple: int) -> tuple[int, int]:
    """Sizes are rounded *down* to a multiple (8 for SDXL's VAE), never below one multiple."""
    if multiple <= 1:
        return width, height
    return max(multiple, width - width % multiple), max(multiple, height - height % multiple)


def max_input_pixels(ctx: RunContext | None) -> int:
    """The engine's input pixel limit (``EngineSettings.max_input_pixels``)."""
    return (ctx.settings if ctx is not None else active_settings()).max_input_pixels


def regular_file(path: str, what: str, max_bytes: int | None = None) -> Path:
    """The path of an existing regular file; a directory, a device such as /dev/zero, a pipe or (with
    ``max_bytes``) an oversized file is refused with a message that says which."""
    p = Path(path)
    if p.is_dir():
        raise IsADirectoryError(f"{p}: is a directory, not {what}")
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such file ({what})")
    if not p.is_file():
        raise ValueError(f"{p}: not a regular file (a device, pipe or socket cannot be read as {what})")
    if max_bytes is not None and p.stat().st_size > max_bytes:
        raise ValueError(f"{p}: {p.stat().st_size} bytes is over the {max_bytes}-byte limit for {what}")
    return p


def open_image(path: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> PILImage.Image:
    """Open and decode an image file, refusing directories, special files and images over ``max_pixels``
    (checked from the header, before the pixels are decoded). Multi-frame files give their first frame."""
    img = _open_header(path, max_pixels)
    frames = getattr(img, "n_frames", 1)
    if frames > 1:
        logger.info("%s: has %d frames; using the first", path, frames)
    try:
        img.seek(0)
        img.load()
    except Exception as exc:
        raise ValueError(f"{path}: not a readable image ({exc})") from None
    return img


def _open_header(path: str, max_pixels: int) -> PILImage.Image:
    """The image with only its header read, refused (ValueError / OSError) when it is no regular file,
    unreadable, or over ``max_pixels``."""
    p = regular_file(path, "an image file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PILImage.DecompressionBombWarning)  # our own limit applies below
            img = PILImage.open(p)
    except PILImage.DecompressionBombError:
        raise ValueError(f"{p}: the image has more pixels than the input limit of {max_pixels} pixels") from None
    except Exception as exc:
        raise ValueError(f"{p}: not a readable image ({exc})") from None
    width, height = img.size
    if width * height > max_pixels:
        img.close()
        raise ValueError(f"{p}: {width}x{height} = {width * height} pixels is over the input limit of "
                         f"{max_pixels} pixels (EngineSettings.max_input_pixels)")
    return img


def existing_file_problems(path: str, check: Callable[[str], object]) -> list[tuple[str | None, str]]:
    """A check hook's answer for a file input: ``check(path)``'s refusal (ValueError / OSError) as the
    ``path`` problem. A file that does not exist yet is left to the run (an earlier node may write it)."""
    if not Path(path).exists():
        return []
    try:
        check(path)
    except (ValueError, OSError) as exc:
        return [("path", str(exc))]
    return []


def check_image_file(path: str, **_: Any) -> list[tuple[str | None, str]]:
    """Refused at validation, from the header only: a directory, device, pipe, unreadable or over-limit
    image (the engine's ``max_input_pixels``)."""
    return existing_file_problems(path, lambda p: _open_header(p, active_settings().max_input_pixels).close())


def _path_fingerprint(path: str, **_: Any) -> str:
    return file_fingerprint(regular_file(path, "an image file"))


def _resize_pil(img: PILImage.Image, size: tuple[int, int], mode: str = "lanczos") -> PILImage.Image:
    return img if img.size == size else img.resize(size, resample=_PIL_FILTERS[mode])


def has_alpha(img: PILImage.Image) -> bool:
    """An alpha channel, or a transparent colour (palette, greyscale and RGB PNGs can have one)."""
    return "A" in img.getbands() or "transparency" in img.info


def _wide_band(img: PILImage.Image, size: tuple[int, int]) -> np.ndarray:
    """A single >8-bit band as float32 in [0, 1]: integers over 0..65535, floats as they are (clipped)."""
    import numpy as np

    arr = np.asarray(img).astype(np.float32)
    if img.mode != "F":
        arr = arr / 65535.0
    arr = np.clip(np.nan_to_num(arr, nan=0.0), 0.0, 1.0)
    if (arr.shape[1], arr.shape[0]) != size:
        arr = np.asarray(PILImage.fromarray(arr).resize(size, resample=PILImage.Resampling.LANCZOS)).clip(0.0, 1.0)
    return arr


def read_rgb(img: PILImage.Image, size: tuple[int, int]) -> torch.Tensor:
    """[H, W, 3] float32 in [0, 1] from any mode, resized (Lanczos) to ``size``."""
    import numpy as np
    import torch

    if img.mode in _WIDE_MODES:
        return torch.from_numpy(np.repeat(_wide_band(img, size)[..., None], 3, axis=-1))
    return pil_to_tensor(_resize_pil(img.convert("RGB"), size))


def read_band(img: PILImage.Image, band: Literal["L", "A", "R", "G", "B"], size: tuple[int, int]) -> torch.Tensor:
    """[H, W] float32 in [0, 1]: luminance, alpha or one colour channel of any mode, resized to ``size``."""
    import torch

    if img.mode in _WIDE_MODES and band != "A":
        return torch.from_numpy(_wide_band(img, size))
    if band == "L":
        pil = img.convert("L")
    elif band == "A":
        if not has_alpha(img):
            raise ValueError(f"{img.filename or 'image'}: has no alpha channel (mode {img.mode}); "  # type: ignore[attr-defined]
                             "use channel='luminance'")
        pil = img.convert("RGBA").getchannel("A")
    else:
        pil = img.convert("RGB").getchannel(band)
    return pil_to_tensor(_resize_pil(pil, size))


def _rounded(path: str, img: PILImage.Image, round_to: int) -> tuple[int, int]:
    size = rounded_size(*img.size, round_to)
    if size != img.size:
        logger.warning("%s: %dx%d resized to %dx%d (a multiple of %d)", path, *img.size, *size, round_to)
    return size


class ImageAndMask(NamedTuple):
    image: Image
    mask: Mask


@node(category="image", version=2, cache=CachePolicy.reads(_path_fingerprint, "path"), check=check_image_file)
def LoadImage(path: ImagePath, ctx: RunContext, round_to: RoundTo = 8) -> ImageAndMask:
    """Load an image file as RGB; its alpha channel (if any) becomes the mask: transparent = repaint.

    Every Pillow mode is read: 16-bit and float greyscale are scaled to [0, 1] (not clipped), palettes with
    a transparent colour give a mask, multi-frame files (GIF, TIFF, WebP) give their first frame. Images over
    the input pixel limit are refused before they are decoded. Width and height are rounded down to a
    multiple of round_to by a Lanczos resize, as diffusers does; a warning says when that happens.
    """
    import torch

    img = open_image(path, max_input_pixels(ctx))
    size = _rounded(path, img, round_to)
    image = read_rgb(img, size)[None]
    if has_alpha(img):
        mask = (1.0 - read_band(img, "A", size))[None]
    else:
        mask = torch.zeros(image.shape[:3])
    return ImageAndMask(image, mask)


MaskChannel = Literal["luminance", "alpha", "red", "green", "blue"]


@node(category="image", version=2, cache=CachePolicy.reads(_path_fingerprint, "path"), check=check_image_file)
def LoadMask(path: ImagePath, ctx: RunContext,
             channel: Annotated[MaskChannel, Field(description="which channel holds the mask")] = "luminance",
             invert: Annotated[bool, Field(description="swap repaint and keep")] = False,
             round_to: RoundTo = 8) -> Mask:
    """Load a mask image: white (1) = repaint, black (0) = keep; `invert` swaps them.

    `luminance` is what diffusers uses (the image converted to greyscale); 16-bit masks keep their full
    range. Sizes are rounded as LoadImage's, with the same warning.
    """
    img = open_image(path, max_input_pixels(ctx))
    size = _rounded(path, img, round_to)
    band = {"luminance": "L", "alpha": "A", "red": "R", "green": "G", "blue": "B"}[channel]
    mask = read_band(img, band, size)[None]  # type: ignore[arg-type]
    return 1.0 - mask if invert else mask


@node(category="image", version=1, output=True)
def SaveImage(
    image: Image,
    ctx: RunContext,
    prefix: Annotated[str, WRITE_PATH, Field(description="file name prefix under the output directory (may "
                                                        "name a sub-folder)")] = "nodegraph",
    path: Annotated[str, WRITE_PATH, Field(description="an explicit file to write instead")] | None = None,
    format: Literal["png", "jpeg", "webp"] = "png",
    quality: Annotated[int, Field(ge=1, le=100, description="JPEG/WebP quality")] = 95,
    embed_workflow: Annotated[bool, Field(description="store the workflow in PNG text")] = True,
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
            if embed_workflow:  # e.g. ComfyUI's "prompt" and "workflow", so its editor restores the graph
                for key, text in ctx.png_text.items():
                    if key != PNG_TEXT_KEY:
                        info.add_text(key, text)
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
    import torch
    import torch.nn.functional as F
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


@node(category="image", version=1, cache=PERSIST)
def ResizeImage(image: Image, width: Size, height: Size, mode: ResizeMode = "lanczos", round_to: RoundTo = 8) -> Image:
    """Resize to width x height, each rounded down to a multiple of round_to."""
    size = rounded_size(width, height, round_to)
    return _resize_tensor(image.permute(0, 3, 1, 2), size, mode).permute(0, 2, 3, 1).contiguous()


@node(category="image", version=1, cache=PERSIST)
def ResizeMask(mask: Mask, width: Size, height: Size, mode: ResizeMode = "nearest", round_to: RoundTo = 8) -> Mask:
    """Resize a mask to width x height, each rounded down to a multiple of round_to."""
    size = rounded_size(width, height, round_to)
    return _resize_tensor(mask[:, None], size, mode)[:, 0].contiguous()


def check_same_size(image: torch.Tensor, mask: torch.Tensor, what: str) -> None:
    if image.shape[1:3] != mask.shape[1:3]:
        raise ValueError(f"{what}: image is {image.shape[2]}x{image.shape[1]} but mask is "
                         f"{mask.shape[2]}x{mask.shape[1]} (width x height); add a ResizeMask node")


def _gaussian_blur(mask: torch.Tensor, radius: int) -> torch.Tensor:
    import torch
    import torch.nn.functional as F

    sigma = max(radius / 2.0, 0.5)
    xs = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-(xs**2) / (2 * sigma**2))
    k = (k / k.sum()).to(mask)
    m = mask[:, None]
    m = F.conv2d(F.pad(m, (radius, radius, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    m = F.conv2d(F.pad(m, (0, 0, radius, radius), mode="replicate"), k.view(1, 1, -1, 1))
    return m[:, 0]


Feather = Annotated[int, Field(ge=0, le=256, description="soften the seam inward over this many pixels")]


@node(category="image", version=1, cache=PERSIST)
def CompositeMasked(original: Image, generated: Image, mask: Mask, feather: Feather = 0) -> Image:
    """Paste the generated pixels into the original only where the mask is set.

    Every pixel where the mask is 0 is exactly the original (this fixes the colour shift a VAE round trip
    causes outside the mask). feather > 0 softens the seam inward over that many pixels, never outward.
    """
    import torch

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


class Crop(NamedTuple):
    image: Image
    mask: Mask
    region: CropRegion


@node(category="image", version=1, cache=PERSIST, depends=("torch", "pillow", "diffusers"))
def CropToMask(image: Image, mask: Mask,
               padding: Annotated[int, Field(ge=0, le=4096, description="pixels kept around the mask")] = 32,
               width: Size = 1024, height: Size = 1024) -> Crop:
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
    return Crop(out_img, out_mask, CropRegion(box, image.shape[2], image.shape[1]))  # type: ignore[arg-type]


@node(category="image", version=1, cache=PERSIST)
def UncropToMask(original: Image, generated: Image, mask: Mask, region: CropRegion, feather: Feather = 0) -> Image:
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
