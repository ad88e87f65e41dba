"""A node that attaches previews to its progress: imported into a server subprocess by test_server.py
(there are no tests here). Its previews are fixed JPEG-marked bytes, so a test can recognise them."""

from __future__ import annotations

import time
from typing import Annotated

from pydantic import Field

from nodegraph.context import RunContext
from nodegraph.node import node


@node(category="toy", outputs={"value": int})
def PreviewSteps(ctx: RunContext, steps: Annotated[int, Field(ge=1, le=20)] = 3) -> int:
    """Counts steps, offering a tiny preview image at each one (sent only when the run asked for previews)."""
    from nodegraph.events import PreviewImage

    progress = ctx.progress(steps)
    for i in range(steps):
        time.sleep(0.3)  # longer than the default minimum interval between previews
        progress.update(preview=lambda i=i: PreviewImage("JPEG", b"\xff\xd8\xff\xe0preview" + bytes([i])))  # type: ignore[call-arg]
    return steps
