"""Small pure-Python nodes that prove the engine without any model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal, NamedTuple

from pydantic import Field

from nodegraph import RunContext, node, payload, rename_mapping
from nodegraph.files import atomic_write_bytes
from nodegraph.node import PERSIST

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
