"""Which files ``/view`` may read and ``/upload`` may write: confined to their folders, whatever the name.

A name is refused (400) when it could mean something else on some system: NUL bytes, backslashes,
absolute paths, ``..`` components, control characters. A name that passes is joined to its folder and
resolved with symlinks followed; if that lands outside the folder the answer is 403, never the file.
"""

from __future__ import annotations

import hashlib
import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from nodegraph.files import atomic_write_bytes

logger = logging.getLogger(__name__)

FolderType = Literal["input", "output", "temp"]


class FileAccessError(Exception):
    """A refused name or file; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str):
        self.status = status
        super().__init__(message)


@dataclass(frozen=True)
class Folders:
    input: Path
    output: Path
    temp: Path

    def root(self, kind: str) -> Path:
        if kind not in ("input", "output", "temp"):
            raise FileAccessError(400, f"type must be input, output or temp, not {kind!r}")
        return getattr(self, kind)


def _check_part(text: str, what: str) -> list[str]:
    if "\x00" in text or "\\" in text or any(ord(c) < 32 for c in text):
        raise FileAccessError(400, f"{what} contains a NUL byte, a backslash or a control character")
    if text.startswith("/") or (len(text) > 1 and text[1] == ":"):
        raise FileAccessError(400, f"{what} must be relative")
    parts = [p for p in text.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise FileAccessError(400, f"{what} must not contain '..'")
    return parts


def confined(root: Path, subfolder: str, filename: str) -> Path:
    """``root/subfolder/filename``, refused unless it stays inside ``root`` with symlinks resolved."""
    parts = _check_part(subfolder, "subfolder") + _check_part(filename, "filename")
    if not filename or not parts:
        raise FileAccessError(400, "filename is empty")
    base = root.resolve()
    target = base.joinpath(*parts)
    resolved = target.resolve()
    if not resolved.is_relative_to(base):
        raise FileAccessError(403, "that path leaves its folder")
    return resolved


def clean_upload_name(name: str) -> str:
    """The base name of an uploaded file, refused when it is not a plain file name."""
    parts = _check_part(name, "filename")
    if len(parts) != 1 or parts[0].startswith("."):
        raise FileAccessError(400, "an upload's filename must be a plain file name")
    return parts[0]


def verify_image(data: bytes, max_pixels: int) -> tuple[int, int]:
    """Decode the whole image (not only its header) under a pixel limit; decompression bombs fail early."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            if width * height > max_pixels:
                raise FileAccessError(400, f"image is {width}x{height}, over the {max_pixels}-pixel limit")
            img.load()
    except FileAccessError:
        raise
    except Exception as exc:  # Pillow raises many types for broken files; all mean "not an image"
        raise FileAccessError(400, f"not a readable image: {type(exc).__name__}") from None
    return width, height


def store_upload(folder: Path, name: str, data: bytes, overwrite: bool) -> str:
    """Write an upload; without ``overwrite`` a clash with other content becomes ``name (1).ext`` and so
    on (ComfyUI's renaming), while the same content already there is reused. Returns the stored name."""
    folder.mkdir(parents=True, exist_ok=True)
    stem, dot, ext = name.rpartition(".")
    if not dot:
        stem, ext = name, ""
    candidate, n = name, 1
    digest = hashlib.sha256(data).digest()
    while not overwrite:
        path = folder / candidate
        if not path.exists() and not path.is_symlink():
            break
        if path.is_file() and not path.is_symlink() and hashlib.sha256(path.read_bytes()).digest() == digest:
            return candidate
        candidate = f"{stem} ({n}){dot}{ext}"
        n += 1
    target = folder / candidate
    if target.is_symlink():  # never write through a link planted in the input folder
        target.unlink()
    atomic_write_bytes(target, data)
    return candidate


def mask_into_image(original: Path, mask_png: bytes, max_pixels: int) -> bytes:
    """The mask editor's upload: the original image with the uploaded image's alpha as its alpha (PNG)."""
    from PIL import Image

    verify_image(mask_png, max_pixels)
    try:
        with Image.open(original) as img:
            if img.width * img.height > max_pixels:
                raise FileAccessError(400, "the original image is over the pixel limit")
            base = img.convert("RGBA")
    except FileNotFoundError:
        raise FileAccessError(404, "original_ref names no file") from None
    with Image.open(io.BytesIO(mask_png)) as mask:
        alpha = mask.convert("RGBA").getchannel("A")
    if alpha.size != base.size:
        alpha = alpha.resize(base.size)
    base.putalpha(alpha)
    out = io.BytesIO()
    base.save(out, format="PNG")
    return out.getvalue()


def view_variant(path: Path, preview: str | None, channel: str | None, max_pixels: int) -> tuple[bytes, str] | None:
    """``/view``'s re-encodings, as ComfyUI offers them: ``preview=webp;90`` or ``jpeg;80`` (a smaller copy
    for thumbnails) and ``channel=rgb|a`` (the colour or the alpha plane as PNG). None: send the file."""
    channel = (channel or "").lower()
    if not preview and channel not in ("rgb", "a"):
        return None
    from PIL import Image

    with Image.open(path) as img:
        if img.width * img.height > max_pixels:
            raise FileAccessError(400, "image is over the pixel limit")
        if preview:
            fmt, _, quality = preview.partition(";")
            fmt = fmt.lower() if fmt.lower() in ("webp", "jpeg") and "a" not in channel else "webp"
            out = img.convert("RGB") if fmt == "jpeg" or channel == "rgb" else img.convert("RGBA")
            buffer = io.BytesIO()
            out.save(buffer, format=fmt.upper(), quality=int(quality) if quality.isdigit() else 90)
            return buffer.getvalue(), f"image/{fmt}"
        if channel == "rgb":
            out = img.convert("RGB")
        else:
            alpha = img.getchannel("A") if "A" in img.getbands() else Image.new("L", img.size, 255)
            out = Image.new("RGBA", img.size)
            out.putalpha(alpha)
        buffer = io.BytesIO()
        out.save(buffer, format="PNG")
        return buffer.getvalue(), "image/png"


def served_content_type(path: Path) -> str:
    """Images as themselves; anything else (an upload named ``x.html``, say) as a download, never a page."""
    import mimetypes

    kind = mimetypes.guess_type(path.name)[0] or ""
    return kind if kind.startswith("image/") and kind != "image/svg+xml" else "application/octet-stream"
