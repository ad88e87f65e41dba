"""The real CLIP BPE vocabulary (49,408 tokens), built from the file the open-clip-torch wheel ships.

Real SDXL checkpoints need it for their tokenizers. It is looked up, never downloaded: set
``NODEGRAPH_CLIP_BPE`` to a ``bpe_simple_vocab_16e6.txt.gz``, or ``pip install --no-deps open-clip-torch``
(the file is read in place; open_clip itself is never imported, so its torchvision dependency is not needed).
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
from pathlib import Path

BPE_NAME = "bpe_simple_vocab_16e6.txt.gz"
VOCAB_SIZE = 49408
_MERGES = VOCAB_SIZE - 256 * 2 - 2  # the byte alphabet twice (plain and end-of-word), plus 2 specials


def byte_alphabet() -> list[str]:
    """CLIP's byte -> printable character table, in CLIP's own order (printable bytes first)."""
    order = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars = [chr(b) for b in order]
    extra = 0
    for b in range(256):
        if b not in order:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def find_clip_bpe() -> Path | None:
    explicit = os.environ.get("NODEGRAPH_CLIP_BPE")
    if explicit:
        return Path(explicit) if Path(explicit).is_file() else None
    for package in ("open_clip", "clip"):
        spec = importlib.util.find_spec(package)  # locates the package without importing it
        for location in (spec.submodule_search_locations or []) if spec else []:
            candidate = Path(location) / BPE_NAME
            if candidate.is_file():
                return candidate
    return None


def write_clip_tokenizer(folder: Path, pad_token: str = "<|endoftext|>") -> None:
    """vocab.json + merges.txt + tokenizer_config.json for the real CLIP tokenizer."""
    bpe = find_clip_bpe()
    if bpe is None:
        raise FileNotFoundError(
            f"the CLIP BPE vocabulary ({BPE_NAME}) is needed for a full-size SDXL tokenizer; install it with "
            "`pip install --no-deps open-clip-torch` or set NODEGRAPH_CLIP_BPE to the file")
    lines = gzip.open(bpe, "rt", encoding="utf-8").read().split("\n")
    merges = [tuple(line.split()) for line in lines[1:1 + _MERGES]]
    alphabet = byte_alphabet()
    tokens = alphabet + [c + "</w>" for c in alphabet] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "pad_token": pad_token, "do_lower_case": True}))
