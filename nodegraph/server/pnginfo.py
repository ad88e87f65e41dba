"""The text chunks a PNG written by a served prompt carries, as ComfyUI's do.

``prompt`` is the API-format prompt and ``workflow`` the editor's graph (``extra_data.extra_pnginfo.workflow``),
so dropping the PNG onto the editor restores the graph; ``nodegraph_workflow`` (written by SaveImage from
``RunContext.workflow_json``) is the native graph the prompt became, so ``nodegraph run that.png`` reruns it.
Other ``extra_pnginfo`` keys (extensions add some) are kept as chunks of their own, as ComfyUI does.
"""

from __future__ import annotations

import json
from typing import Any

from nodegraph.workflow import PNG_TEXT_KEY


def png_text(prompt: dict[str, Any], extra_data: dict[str, Any]) -> dict[str, str]:
    """ComfyUI's chunks for one prompt: ``prompt`` plus each ``extra_pnginfo`` entry (``workflow`` first)."""
    chunks = {"prompt": json.dumps(prompt)}
    extra = extra_data.get("extra_pnginfo")
    if isinstance(extra, dict):
        for key, value in extra.items():
            if isinstance(key, str) and key and key not in chunks and key != PNG_TEXT_KEY:
                chunks[key] = json.dumps(value)
    return chunks

