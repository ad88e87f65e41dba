"""The two cache tiers: memory (LRU bounded in bytes) and disk (content-addressed, checksummed files).

Both are a ``Store``: ``get(key) -> (found, value)``, ``put(key, value)``, ``contains(key)``.

Disk entries are written to a temp file and renamed, so a crash or SIGKILL mid-write never leaves an
entry that reads as valid, and two processes writing the same key both leave a whole file (last rename
wins; the contents are identical by construction). Reads verify a checksum; a bad entry is deleted,
reported once, and treated as a miss.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from nodegraph.codec import CorruptEntry, NotEncodable, decode_entry, encode_entry
from nodegraph.files import atomic_write_bytes
from nodegraph.node import Registry
from nodegraph.settings import DEFAULT_DISK_BYTES, DEFAULT_MEMORY_BYTES

logger = logging.getLogger(__name__)

ENTRY_SUFFIX = ".ngc"


def sizeof(value: Any) -> int:
    """Approximate bytes held by a node output (tensors by storage, containers recursively)."""
    torch = sys.modules.get("torch")
    stack = [value]
    total = 0
    seen: set[int] = set()
    while stack:
        item = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if torch is not None and isinstance(item, torch.Tensor):
            total += item.element_size() * item.nelement()
        elif isinstance(item, (list, tuple, set, frozenset)):
            stack.extend(item)
            total += 8 * len(item) + 56
        elif isinstance(item, dict):
            stack.extend(item.values())
            total += 100 * len(item) + 64
        elif hasattr(item, "__dataclass_fields__"):
            stack.extend(getattr(item, f) for f in item.__dataclass_fields__)
            total += 64
        else:
            total += sys.getsizeof(item)
    return total


class Store(Protocol):
    """A cache tier."""

    def get(self, key: str) -> tuple[bool, Any]:
        """``(True, value)`` on a hit, ``(False, None)`` on a miss."""
        ...

    def put(self, key: str, value: Any) -> bool:
        """Store an entry; False when it was not stored (too large, not storable, not writable)."""
        ...

    def contains(self, key: str) -> bool: ...


class MemoryCache:
    """Least-recently-used entries bounded by their total size in bytes."""

    def __init__(self, max_bytes: int = DEFAULT_MEMORY_BYTES):
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, tuple[Any, int]] = OrderedDict()
        self.bytes = 0

    def contains(self, key: str) -> bool:
        return key in self._entries

    def __contains__(self, key: str) -> bool:
        return self.contains(key)

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> tuple[bool, Any]:
        entry = self._entries.get(key)
        if entry is None:
            return False, None
        self._entries.move_to_end(key)
        return True, entry[0]

    def put(self, key: str, value: Any) -> bool:
        size = sizeof(value)
        if size > self.max_bytes:
            return False
        old = self._entries.pop(key, None)
        if old is not None:
            self.bytes -= old[1]
        self._entries[key] = (value, size)
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, (_, evicted) = self._entries.popitem(last=False)
            self.bytes -= evicted
        return True

    def clear(self) -> None:
        self._entries.clear()
        self.bytes = 0


@dataclass
class DiskStats:
    path: str
    entries: int
    bytes: int
    max_bytes: int


def parse_size(text: str) -> int:
    """``"10GiB"``, ``"500M"``, ``"1024"`` -> bytes."""
    units = {"": 1, "B": 1, "K": 1024, "KB": 1000, "KIB": 1024, "M": 1024**2, "MB": 1000**2, "MIB": 1024**2,
             "G": 1024**3, "GB": 1000**3, "GIB": 1024**3, "T": 1024**4, "TB": 1000**4, "TIB": 1024**4}
    s = text.strip().upper().replace(" ", "")
    num = s.rstrip("KMGTIB")
    unit = s[len(num):]
    try:
        value = float(num) * units[unit] if num and unit in units else math.nan
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"cannot read size {text!r}; write e.g. 500MiB, 10GiB or a number of bytes")
    return int(value)


class DiskCache:
    """Content-addressed entries under ``root/entries/<2 hex>/<key>.ngc``."""

    def __init__(self, root: str | os.PathLike[str], max_bytes: int = DEFAULT_DISK_BYTES,
                 registry: Registry | None = None):
        self.root = Path(root)
        self.registry = registry  # which @payload classes entries may rebuild (None: the global registry)
        self.max_bytes = max_bytes
        self.enabled = True
        self.wrote = False  # since the last prune: a cache nothing was added to needs no pruning
        self._warned: set[str] = set()

    @property
    def entries_dir(self) -> Path:
        return self.root / "entries"

    def path(self, key: str) -> Path:
        return self.entries_dir / key[:2] / (key + ENTRY_SUFFIX)

    def contains(self, key: str) -> bool:
        return self.enabled and self.path(key).is_file()

    def _warn_once(self, tag: str, message: str, *args: Any) -> None:
        if tag not in self._warned:
            self._warned.add(tag)
            logger.warning(message, *args)

    def get(self, key: str) -> tuple[bool, Any]:
        """``(True, value)`` on a hit; ``(False, None)`` on a miss or a bad entry (which is deleted)."""
        if not self.enabled:
            return False, None
        path = self.path(key)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return False, None
        except OSError as exc:
            self._warn_once("read:" + key, "disk cache: cannot read %s (%s); recomputing", path, exc)
            return False, None
        try:
            value = decode_entry(data, self.registry, key)
        except CorruptEntry as exc:
            self._warn_once("bad:" + key, "disk cache: dropping bad entry %s (%s); recomputing", path.name, exc)
            try:
                path.unlink()
            except OSError:
                pass
            return False, None
        try:
            os.utime(path)  # recency for LRU pruning
        except OSError:
            pass
        return True, value

    def put(self, key: str, value: Any) -> bool:
        """Store an entry; False (and a one-time warning) when it cannot be stored."""
        if not self.enabled:
            return False
        try:
            data = encode_entry(value, self.registry, key)
        except NotEncodable as exc:
            self._warn_once("enc:" + str(exc), "disk cache: not storing an output: %s", exc)
            return False
        try:
            atomic_write_bytes(self.path(key), data)
        except OSError as exc:
            self.enabled = False
            self._warn_once("write", "disk cache at %s is not writable (%s); continuing without disk caching",
                            self.root, exc)
            return False
        self.wrote = True
        return True

    def _files(self) -> list[tuple[Path, os.stat_result]]:
        out: list[tuple[Path, os.stat_result]] = []
        if not self.entries_dir.is_dir():
            return out
        for sub in self.entries_dir.iterdir():
            if not sub.is_dir():
                continue
            for f in sub.iterdir():
                try:
                    out.append((f, f.stat()))
                except FileNotFoundError:
                    continue
        return out

    def stats(self) -> DiskStats:
        files = [(f, st) for f, st in self._files() if f.name.endswith(ENTRY_SUFFIX)]
        return DiskStats(str(self.root), len(files), sum(st.st_size for _, st in files), self.max_bytes)

    def prune(self, max_bytes: int | None = None, stale_tmp_seconds: float = 3600) -> int:
        """Delete least-recently-used entries until the total fits; also old temp files. Returns count."""
        limit = self.max_bytes if max_bytes is None else max_bytes
        self.wrote = False
        now = time.time()
        removed = 0
        entries = []
        for f, st in self._files():
            if f.name.endswith(".tmp"):
                if now - st.st_mtime > stale_tmp_seconds:  # left by a killed writer
                    removed += _unlink(f)
            elif f.name.endswith(ENTRY_SUFFIX):
                entries.append((st.st_mtime, st.st_size, f))
        total = sum(size for _, size, _ in entries)
        for _, size, f in sorted(entries):
            if total <= limit:
                break
            removed += _unlink(f)
            total -= size
        return removed

    def clear(self) -> int:
        return sum(_unlink(f) for f, _ in self._files())


def _unlink(path: Path) -> int:
    try:
        path.unlink()
        return 1
    except OSError:
        return 0
