"""Writing files so that nothing is lost: whole or not at all, and never over someone else's file."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def _temp_beside(target: Path, data: bytes) -> str:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        os.unlink(tmp)
        raise
    return tmp


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write to a temp file beside the target, then rename: readers never see half a file."""
    target = Path(path)
    tmp = _temp_beside(target, data)
    try:
        os.replace(tmp, target)
    except BaseException:
        os.unlink(tmp)
        raise


def write_numbered(folder: Path, prefix: str, suffix: str, data: bytes, start: int = 1) -> Path:
    """Write ``folder/prefix_NNNNN.suffix`` under the first free number, atomically.

    A hard link claims the name only if nobody has it, so concurrent processes saving with the same prefix
    each get their own file instead of overwriting one another.
    """
    tmp = _temp_beside(folder / f"{prefix}{suffix}", data)
    try:
        number = start
        while True:
            target = folder / f"{prefix}_{number:05d}{suffix}"
            try:
                os.link(tmp, target)
                return target
            except FileExistsError:
                number += 1
    finally:
        os.unlink(tmp)
