"""Content-addressed cache keys: canonical msgpack of what determines a node's outputs, hashed.

A key never contains node ids, Python ``hash()`` or anything else that changes between processes, so
identical sub-graphs share work and keys are stable across runs and machines.
"""

from __future__ import annotations

import enum
import hashlib
import os
from collections.abc import Mapping
from typing import Any

import msgpack

KEY_SCHEMA = 1  # bump when the key recipe itself changes
_PLAIN = frozenset({str, int, float, bool, bytes, type(None)})


def _normalise(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str, bytes)):
        return value
    if isinstance(value, Mapping):
        return [[str(k), _normalise(v)] for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))]
    if isinstance(value, (list, tuple)):
        return [_normalise(v) for v in value]
    if isinstance(value, enum.Enum):
        return _normalise(value.value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return _normalise(dump(mode="json"))
    raise TypeError(f"cannot build a cache key from a {type(value).__name__}")


def canonical_bytes(value: Any) -> bytes:
    """One byte string per value: dict order, tuple-vs-list and path types do not matter."""
    return msgpack.packb(_normalise(value), use_bin_type=True)


def digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=20).hexdigest()


def node_key(
    node_type: str,
    version: int,
    literals: Mapping[str, Any],
    upstream: Mapping[str, tuple[str, str]],
    external: Any = None,
    salt: str = "",
) -> str:
    """Key of one node's outputs.

    upstream: ``{input name: (key of the source node, output name)}`` -- the source's key, never its id.
    external: a fingerprint of content outside the graph that a source node reads (file digests).
    salt: the node's environment salt (its pack's version and the major.minor of the libraries it depends
    on), so a persisted entry is not served after an upgrade that changes the numbers.
    """
    # Built already in canonical form (sorted pairs; plain values as they are): this runs once per node
    # per run, so it stays off the generic normaliser for the common case.
    lits = [[k, v if type(v) in _PLAIN else _normalise(v)] for k, v in sorted(literals.items())]
    ups = [[k, key, out] for k, (key, out) in sorted(upstream.items())]
    ext = external if type(external) in _PLAIN else _normalise(external)
    body = [KEY_SCHEMA, node_type, version, lits, ups, ext]
    if salt:  # an unsalted key stays what it was, so entries of nodes without a salt survive this change
        body.append(salt)
    return digest(msgpack.packb(body, use_bin_type=True))


def file_fingerprint(path: str | os.PathLike[str]) -> str:
    """Digest of a file's bytes (inputs such as images and masks are small enough to read)."""
    h = hashlib.blake2b(digest_size=20)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
