"""Turning node outputs into bytes for the disk cache and back, without pickle.

Tensors go into one safetensors blob; everything else into a msgpack tree. Dataclasses are rebuilt only
if they were registered with ``@payload`` (so a cache file can never name an arbitrary class to import).
The whole entry carries a blake2b checksum so a torn or corrupted file is detected on read, and its own
cache key inside the checksummed body, so an entry copied or renamed under another key's name (or
written by a foreign or future format) is refused rather than served as that key's value.
"""

from __future__ import annotations

import dataclasses
import hashlib
import sys
from typing import Any, TypeVar

import msgpack

from nodegraph.node import REGISTRY, Registry

T = TypeVar("T")
MAGIC = b"NGC2"  # NGC1 entries carried no key: they read as foreign, are dropped and recomputed
_DIGEST = 32


class NotEncodable(TypeError):
    """A value the disk tier cannot store (model handles, arbitrary objects)."""


class CorruptEntry(ValueError):
    """Bytes that are not a whole, intact entry."""


def payload(cls: type[T]) -> type[T]:
    """Register a frozen dataclass that flows between nodes as storable in the disk cache."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"@payload needs a dataclass, got {cls!r}")
    REGISTRY.payloads[f"{cls.__module__}.{cls.__qualname__}"] = cls
    return cls


def _torch() -> Any:
    return sys.modules.get("torch")


def _encode(value: Any, tensors: dict[str, Any], registry: Registry) -> Any:
    if value is None or isinstance(value, (bool, int, float, str, bytes)):
        return value
    torch = _torch()
    if torch is not None and isinstance(value, torch.Tensor):
        name = str(len(tensors))
        tensors[name] = value.detach().to("cpu").contiguous().clone()
        return {"__t": name}
    if isinstance(value, tuple):
        return {"__tuple": [_encode(v, tensors, registry) for v in value]}
    if isinstance(value, list):
        return [_encode(v, tensors, registry) for v in value]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {"__d": [[k, _encode(v, tensors, registry)] for k, v in value.items()]}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        name = f"{type(value).__module__}.{type(value).__qualname__}"
        if registry.payloads.get(name) is not type(value):
            raise NotEncodable(f"{name} is not registered with @payload")
        fields = {f.name: _encode(getattr(value, f.name), tensors, registry) for f in dataclasses.fields(value)}
        return {"__dc": name, "f": fields}
    raise NotEncodable(f"cannot store a {type(value).__name__} in the disk cache")


def _decode(tree: Any, tensors: dict[str, Any], registry: Registry) -> Any:
    if isinstance(tree, list):
        return [_decode(v, tensors, registry) for v in tree]
    if not isinstance(tree, dict):
        return tree
    if "__t" in tree:
        return tensors[tree["__t"]]
    if "__tuple" in tree:
        return tuple(_decode(v, tensors, registry) for v in tree["__tuple"])
    if "__d" in tree:
        return {k: _decode(v, tensors, registry) for k, v in tree["__d"]}
    if "__dc" in tree:
        cls = registry.payloads.get(tree["__dc"])
        if cls is None:
            raise CorruptEntry(f"entry names unregistered payload type {tree['__dc']!r}")
        return cls(**{k: _decode(v, tensors, registry) for k, v in tree["f"].items()})
    raise CorruptEntry("unknown tag in entry")


def encode_entry(value: Any, registry: Registry | None = None, key: str = "") -> bytes:
    tensors: dict[str, Any] = {}
    tree = _encode(value, tensors, registry or REGISTRY)
    blob = None
    if tensors:
        from safetensors.torch import save

        blob = save(tensors)
    body = msgpack.packb({"key": key, "tree": tree, "st": blob}, use_bin_type=True)
    return MAGIC + hashlib.blake2b(body, digest_size=_DIGEST).digest() + body


def decode_entry(data: bytes, registry: Registry | None = None, key: str | None = None) -> Any:
    """The value of an entry; ``key``: the key it must carry (a mismatch is a bad entry)."""
    if not data.startswith(MAGIC[:3]):
        raise CorruptEntry("foreign file")
    if not data.startswith(MAGIC):
        raise CorruptEntry(f"entry format {data[:4]!r} is not this version's {MAGIC!r}")
    if len(data) <= len(MAGIC) + _DIGEST:
        raise CorruptEntry("truncated entry (no body)")
    digest = data[len(MAGIC): len(MAGIC) + _DIGEST]
    body = data[len(MAGIC) + _DIGEST:]
    if hashlib.blake2b(body, digest_size=_DIGEST).digest() != digest:
        raise CorruptEntry("checksum mismatch")
    try:
        doc = msgpack.unpackb(body, raw=False)
        if key is not None and doc["key"] != key:
            raise CorruptEntry(f"entry carries key {str(doc['key'])[:12]}..., not {key[:12]}... (swapped or copied)")
        tensors: dict[str, Any] = {}
        if doc["st"] is not None:
            from safetensors.torch import load

            tensors = load(doc["st"])
        return _decode(doc["tree"], tensors, registry or REGISTRY)
    except CorruptEntry:
        raise
    except Exception as exc:  # a checksum-valid but unreadable entry is still only a cache miss
        raise CorruptEntry(f"unreadable entry: {exc}") from exc
