"""Writing files so that nothing is lost: whole or not at all, and never over someone else's file.

Every file written here gets the mode an ordinary ``open()`` would give it (0666 less the umask):
``mkstemp`` alone would leave 0600, which hides outputs, reports and shared cache entries from the group.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


@functools.cache
def _umask() -> int:
    """The process umask, read without changing it where the system allows (os.umask sets it)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    current = os.umask(0o022)  # once per process, before any file is written
    os.umask(current)
    return current


def _temp_beside(target: Path, data: bytes) -> str:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o666 & ~_umask())
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


@contextlib.contextmanager
def atomic_folder(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Build a folder in a temp folder beside ``target``, then rename it into place.

    Readers see the whole folder or none. If another process finished the same folder first, ours is
    discarded and theirs kept (both were built from the same inputs). On an error nothing is left behind.
    """
    final = Path(target)
    final.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    os.chmod(work, 0o777 & ~_umask())
    try:
        yield work
        try:
            os.replace(work, final)
        except OSError:
            if not final.is_dir():  # not a lost race: a real failure
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)


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
