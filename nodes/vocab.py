"""The real CLIP BPE vocabulary (49,408 tokens), built from the merge rules this package ships.

Real SDXL checkpoints need it for their tokenizers. ``data/clip_bpe_merges.txt.gz`` (208 KB, MIT, see
``data/CLIP-LICENSE.txt``) holds the 48,894 merges CLIP uses -- the first lines of OpenAI's
``bpe_simple_vocab_16e6.txt`` -- so nothing is downloaded and no other package is needed for it.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

MERGES_FILE = Path(__file__).with_name("data") / "clip_bpe_merges.txt.gz"
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


def clip_merges() -> list[tuple[str, str]]:
    """CLIP's merge rules, in priority order."""
    with gzip.open(MERGES_FILE, "rt", encoding="utf-8") as f:
        merges = [tuple(line.split()) for line in f.read().splitlines()]
    if len(merges) != _MERGES or any(len(m) != 2 for m in merges):
        raise ValueError(f"{MERGES_FILE}: expected {_MERGES} merge rules of two symbols; the file is damaged")
    return merges  # type: ignore[return-value]


def write_clip_tokenizer(folder: Path, pad_token: str = "<|endoftext|>") -> None:
    """vocab.json + merges.txt + tokenizer_config.json for the real CLIP tokenizer."""
    merges = clip_merges()
    alphabet = byte_alphabet()
    tokens = alphabet + [c + "</w>" for c in alphabet] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "pad_token": pad_token, "do_lower_case": True}))
