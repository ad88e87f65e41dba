"""Importing this module registers every SDXL node (the ``nodegraph.nodes`` entry point names it).

Every module of the ``nodes`` package is imported, so a new node module registers by existing: there is
no list to edit. Node modules import torch, diffusers and transformers only inside function bodies, so
this costs no heavy import (validation answers in well under a second). Kept apart from the package's
__init__ so that ``import nodes.tiny`` and friends do not import every node module.
"""

from __future__ import annotations

import importlib
import pkgutil

import nodes

MODULES = tuple(sorted(m.name for m in pkgutil.iter_modules(nodes.__path__, "nodes.")
                       if m.name != __name__ and not m.ispkg))

for _module in MODULES:
    importlib.import_module(_module)
