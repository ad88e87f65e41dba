"""Cache keys: canonical, content-addressed, and sensitive to everything that changes an output."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from nodegraph.keys import canonical_bytes, node_key

BASE = dict(node_type="Sample", version=1, literals={"seed": 1, "size": (64, 48), "opt": {"b": 2, "a": 1}},
            upstream={"latent": ("abc", "latent"), "unet": ("def", "unet")})


def test_order_and_container_type_do_not_matter():
    same = dict(BASE, literals={"opt": {"a": 1, "b": 2}, "size": [64, 48], "seed": 1},
                upstream={"unet": ("def", "unet"), "latent": ("abc", "latent")})
    assert node_key(**BASE) == node_key(**same)
    assert canonical_bytes({"a": 1, "b": (1, 2)}) == canonical_bytes({"b": [1, 2], "a": 1})


def test_everything_that_changes_an_output_changes_the_key():
    base = node_key(**BASE)
    variants = [
        dict(BASE, node_type="Other"), dict(BASE, version=2), dict(BASE, literals={**BASE["literals"], "seed": 2}),
        dict(BASE, literals={**BASE["literals"], "seed": 1.0}),  # 1 and 1.0 are different literals
        dict(BASE, upstream={**BASE["upstream"], "latent": ("abd", "latent")}),
        dict(BASE, upstream={**BASE["upstream"], "latent": ("abc", "mask")}),
    ]
    keys = {node_key(**v) for v in variants} | {node_key(**BASE, external="file-digest")}
    assert base not in keys and len(keys) == len(variants) + 1


def test_keys_are_stable_across_processes():
    root = str(Path(__file__).parent.parent)
    code = (f"import sys; sys.path.insert(0, {root!r}); from nodegraph.keys import node_key; "
            "print(node_key('T', 1, {'x': 'y', 'n': 3}, {'i': ('k', 'o')}))")
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env={"PYTHONHASHSEED": str(seed)}).stdout for seed in (1, 2)}
    assert len(outs) == 1 and len(outs.pop().strip()) == 40
