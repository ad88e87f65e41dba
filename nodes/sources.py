"""Where model weights come from: resolving a ``source`` string, and fingerprinting its content.

A source is a diffusers-format folder, a single-file ``.safetensors`` checkpoint, a Hugging Face hub
repo id (downloaded on first use), or ``builtin:<name>`` (a tiny random-weight model built on first use
into the cache directory). Pickle formats are refused: weights are only ever read with safetensors.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from nodegraph.files import atomic_write_bytes
from nodegraph.keys import file_fingerprint
from nodegraph.settings import active_settings
from nodegraph.validation import HUB_ID

logger = logging.getLogger(__name__)

PICKLE_SUFFIXES = {".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle"}
DIFFUSERS_PARTS = ("model_index.json", "unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2",
                   "scheduler")


class SourceError(ValueError):
    """A model source that cannot be used; the message names the path or id and says why."""


@dataclass(frozen=True)
class ModelSource:
    path: str
    kind: Literal["diffusers", "single_file"]
    fingerprint: str
    variant: str | None = None


WEIGHT_DIRS = ("unet", "vae", "text_encoder", "text_encoder_2")


def hub_patterns(variant: str | None) -> tuple[list[str], list[str]]:
    """(allow, ignore) file patterns: configs, tokenizers and one set of safetensors weights for the
    components the loader reads.

    Repos often hold each weight file twice (full precision and an ``.fp16`` variant), and sometimes extra
    folders (SDXL base has ``vae_1_0/``): fetching only what will be loaded saves gigabytes. Sharded
    weights need their index files too.
    """
    allow = ["model_index.json", "scheduler/*", "tokenizer/*", "tokenizer_2/*"]
    ignore: list[str] = []
    for sub in WEIGHT_DIRS:
        allow.append(f"{sub}/config.json")
        if variant:
            allow += [f"{sub}/*.{variant}.safetensors", f"{sub}/*.{variant}.safetensors.index.json",
                      f"{sub}/*.{variant}-*.safetensors"]
        else:  # unvariant names have one dot: model.safetensors, model-00001-of-00002.safetensors
            allow += [f"{sub}/*.safetensors", f"{sub}/*.safetensors.index.json"]
            ignore += [f"{sub}/*.*.safetensors", f"{sub}/*.*.safetensors.index.json"]
    return allow, ignore


def _hub_download(repo_id: str, variant: str | None) -> Path:
    from huggingface_hub import snapshot_download

    allow, ignore = hub_patterns(variant)
    try:
        # snapshot_download shows a tqdm progress bar per file while downloading.
        return Path(snapshot_download(repo_id, allow_patterns=allow, ignore_patterns=ignore or None))
    except Exception as exc:
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
        why = "HF_HUB_OFFLINE is set and it is not in the local hub cache" if offline else str(exc)
        raise SourceError(f"cannot fetch hub model {repo_id!r}: {why}. Download it once while online, or set "
                          "source to a local diffusers folder or .safetensors file") from None


SourceKind = Literal["builtin", "diffusers", "single_file", "hub"]


def check_source(source: str) -> SourceKind:
    """What a source string names, checked cheaply (no hashing, building or downloading): validation calls
    it, so a missing path or a pickle checkpoint is refused before anything runs. Raises SourceError."""
    if source.startswith("builtin:"):
        from nodes.tiny import BUILTINS

        if source.split(":", 1)[1] not in BUILTINS:
            raise SourceError(f"unknown built-in model {source!r}; built-ins: "
                              f"{', '.join('builtin:' + b for b in BUILTINS)}")
        return "builtin"
    path = Path(source).expanduser()
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise SourceError(f"{path}: {path.suffix} checkpoints are pickle files, which can run code when loaded; "
                          "only .safetensors (or a diffusers folder of them) is accepted. Convert it first.")
    if path.is_dir():
        if not (path / "model_index.json").is_file() and not (path / "unet").is_dir():
            raise SourceError(f"{path}: not a diffusers-format model folder (no model_index.json or unet/)")
        return "diffusers"
    if path.is_file():
        if path.suffix.lower() != ".safetensors":
            raise SourceError(f"{path}: not a .safetensors checkpoint or diffusers folder")
        return "single_file"
    if path.exists():
        raise SourceError(f"{path}: not a regular file or folder")
    if HUB_ID.match(source) and not source.startswith((".", "/", "~")):
        return "hub"
    raise SourceError(f"{source}: no such file or directory (and not a hub id like 'org/name' or a builtin:)")


def resolve_path(source: str, variant: str | None = None) -> tuple[Path, Literal["diffusers", "single_file"]]:
    """The local folder or file a source string names (building or downloading it if needed)."""
    kind = check_source(source)
    if kind == "builtin":
        from nodes.tiny import BUILD_VERSION, BUILTINS, make_tiny_model

        name = source.split(":", 1)[1]
        folder = active_settings().state_root / "models" / f"{name}-v{BUILD_VERSION}"
        if not (folder / "model_index.json").is_file():
            logger.info("building %s into %s (random weights)", source, folder)
            make_tiny_model(folder, in_channels=BUILTINS[name])
        return folder, "diffusers"
    if kind == "hub":
        return _hub_download(source, variant), "diffusers"
    return Path(source).expanduser(), kind


HUB_BLOB = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")


def hub_blob_digest(path: Path) -> str | None:
    """The content digest a Hugging Face cache already names a file by, or None.

    A hub snapshot's files are links into ``blobs/``, named by the file's git object id: the sha256 of an
    LFS file (every weight file), the git sha1 of a small one. Downloads are checked against it, so hashing
    gigabytes of weights again would only re-derive a name we already have. A blob edited in place would go
    unnoticed (the hub cache is not meant to be edited); a copy of the same file outside the cache gets its
    own blake2b digest, so the two do not share cache entries.
    """
    if not path.is_symlink():
        return None
    target = path.resolve()
    if target.parent.name == "blobs" and HUB_BLOB.match(target.name) and target.is_file():
        return f"hub-blob:{target.name}"
    return None


def _file_digest(path: Path, memo_dir: Path) -> str:
    """blake2b of a file's bytes, memoised on disk by (path, size, mtime) so it is paid once per version;
    files in a hub cache use the digest the cache names them by (hub_blob_digest)."""
    named = hub_blob_digest(path)
    if named is not None:
        return named
    st = path.stat()
    ident = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    memo = memo_dir / (hashlib.blake2b(ident.encode(), digest_size=16).hexdigest() + ".json")
    try:
        return json.loads(memo.read_text())["digest"]
    except (OSError, ValueError, KeyError):
        pass
    digest = file_fingerprint(path)
    try:
        atomic_write_bytes(memo, json.dumps({"ident": ident, "digest": digest}).encode())
    except OSError:
        pass  # a read-only cache only costs re-hashing next time
    return digest


def fingerprint(path: Path, kind: str, variant: str | None = None) -> str:
    """Content digest of everything a model's outputs depend on (weights, configs, tokenizer files).

    Paths do not enter it, so the same weights at another path or on another machine give the same key.
    """
    memo_dir = active_settings().state_root / "fingerprints"
    h = hashlib.blake2b(digest_size=20)
    if kind == "single_file":
        h.update(_file_digest(path, memo_dir).encode())
        return h.hexdigest()
    for part in DIFFUSERS_PARTS:
        p = path / part
        files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else []
        for f in files:
            rel = f.relative_to(path).as_posix()
            if f.suffix == ".safetensors":
                name = f.name
                is_variant = len(name.split(".")) > 2
                if (variant is None and is_variant) or (variant is not None and f".{variant}." not in name):
                    continue
            elif f.suffix not in (".json", ".txt", ".model"):
                continue
            h.update(rel.encode() + b"\0" + _file_digest(f, memo_dir).encode() + b"\0")
    return h.hexdigest()


def resolve(source: str, variant: str | None = None) -> ModelSource:
    path, kind = resolve_path(source, variant)
    return ModelSource(str(path), kind, fingerprint(path, kind, variant), variant)
