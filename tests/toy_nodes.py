"""Small pure-Python nodes that prove the engine without any model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal, NamedTuple

from pydantic import Field

from nodegraph import RunContext, node, payload, rename_mapping
from nodegraph.files import atomic_write_bytes
from nodegraph.node import PERSIST
from nodegraph.types import MODEL_SOURCE, READ_PATH, WRITE_PATH

CALLS: list[str] = []  # which toy functions ran, for tests that count executions


@payload
@dataclass(frozen=True)
class Text:
    __socket__ = "TEXT"
    value: str


class Value(NamedTuple):  # one output named "value" (a bare `-> int` would be named "int")
    value: int


class Sum(NamedTuple):
    sum: int


class TextAndLength(NamedTuple):
    text: Text
    length: int


@node(category="toy")
def Number(value: Annotated[int, Field(ge=-1000, le=1000)] = 0) -> Value:
    """A constant integer."""
    CALLS.append("Number")
    return Value(value)


@node(category="toy", cache=PERSIST)
def Add(a: int, b: int = 0) -> Sum:
    """a + b."""
    CALLS.append("Add")
    return Sum(a + b)


@node(category="toy", cache=PERSIST)
def Format(n: int, style: Literal["plain", "brackets"] = "plain", pair: list[int] | None = None) -> Text:
    """Render a number as text."""
    CALLS.append("Format")
    body = f"[{n}]" if style == "brackets" else str(n)
    if pair is not None:
        body += f" {pair}"
    return Text(body)


@node(category="toy")
def Split(text: Text) -> TextAndLength:
    """The text and its length."""
    CALLS.append("Split")
    return TextAndLength(text, len(text.value))


@node(category="toy")
def Fail(x: int, message: str = "boom") -> Value:
    """Always raises."""
    raise RuntimeError(message)


@node(category="toy")
def Count(n: int, ctx: RunContext, steps: Annotated[int, Field(ge=1)] = 5) -> Value:
    """Counts through steps with progress; a cancellation point at each step."""
    CALLS.append("Count")
    bar = ctx.progress(steps)
    for _ in range(steps):
        bar.update()
    return Value(n)


@node(category="toy", output=True,
      comfy=rename_mapping("SaveText", "WriteText", {"text": "text", "filename_prefix": "name"}, ()))
def WriteText(text: Text, ctx: RunContext, name: str = "out") -> list[str]:
    """Write text to OUTPUT_DIR/NAME.txt atomically."""
    CALLS.append("WriteText")
    ctx.check_cancelled()
    path = Path(ctx.output_dir) / f"{name}.txt"
    atomic_write_bytes(path, text.value.encode())
    return [str(path)]


@node(category="toy", comfy=rename_mapping("PrimitiveInt", "Number", {"value": "value"}, ("value",)))
def Square(x: int) -> Value:
    """x * x."""
    CALLS.append("Square")
    return Value(x * x)


@node(category="toy", output=True)
def WriteSettings(ctx: RunContext) -> list[str]:
    """Write the engine settings this node sees (from ctx and from the active context) as JSON."""
    import json

    from nodegraph.settings import active_settings

    path = Path(ctx.output_dir) / "settings.json"
    doc = {"state_root": str(ctx.settings.state_root), "active": str(active_settings().state_root)}
    atomic_write_bytes(path, json.dumps(doc).encode())
    return [str(path)]


@node(category="toy", outputs={"value": int})
def TupleForOne() -> int:
    """Wrong: one output, returns a tuple."""
    return (1, 2)  # type: ignore[return-value]


@node(category="toy", outputs={"value": int, "other": int})
def DictMissing() -> dict[str, int]:
    """Wrong: a dict without one of its outputs."""
    return {"value": 1}


@node(category="toy", outputs={"value": int, "other": int})
def DictExtra() -> dict[str, int]:
    """Wrong: a dict with a key that is no output."""
    return {"value": 1, "other": 2, "third": 3}


@node(category="toy", output=True)
def WritesNothing(ctx: RunContext) -> list[str]:
    """Wrong: an output node that writes nothing."""
    return []


@node(category="toy", output=True)
def ClaimsMissingFile(ctx: RunContext) -> list[str]:
    """Wrong: an output node that reports a file it did not write."""
    return [str(Path(ctx.output_dir) / "never-written.txt")]


@node(category="toy", outputs={"value": int})
def Previewing(n: int, ctx: RunContext, steps: int = 4) -> int:
    """Counts steps offering a preview at each; returns how many previews were built."""
    from nodegraph.events import PreviewImage

    built = []

    def factory() -> PreviewImage:
        built.append(1)
        return PreviewImage("PNG", b"preview")

    bar = ctx.progress(steps)
    for _ in range(steps):
        bar.update(preview=factory)
    return len(built)


@node(category="toy", outputs={"text": Text})
def ReadText(path: Annotated[str, READ_PATH]) -> Text:
    """Read a text file (a READ_PATH input: resolved and checked against the run's path policy)."""
    return Text(Path(path).read_text())


@node(category="toy", output=True)
def SaveTextAs(text: Text, prefix: Annotated[str, WRITE_PATH] = "saved") -> list[str]:
    """Write PREFIX.txt (a WRITE_PATH input: confined to the output directory unless allowed)."""
    path = Path(f"{prefix}.txt")
    atomic_write_bytes(path, text.value.encode())
    return [str(path)]


@node(category="toy", outputs={"text": Text})
def SourceName(source: Annotated[str, MODEL_SOURCE]) -> Text:
    """Echo a model source (a MODEL_SOURCE input: hub ids and schemes are not paths)."""
    return Text(source)


@node(category="toy", outputs={"value": float})
def Scale(x: float, factor: float = 1.0) -> float:
    """x * factor."""
    return x * factor


@node(category="toy", outputs={"value": int})
def Stubborn(n: int, ctx: RunContext, seconds: float = 60.0) -> int:
    """Sleeps without checking for cancellation (a long library call): only a second Ctrl-C stops it."""
    import time

    ctx.progress(1)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.02)
    return n
