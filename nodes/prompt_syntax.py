"""Prompt weighting syntax: ``(words:1.3)`` sets a weight, ``(words)`` multiplies by 1.1, ``[words]``
divides by 1.1; ``\\(`` and ``\\)`` are literal brackets. Nesting multiplies. A resulting weight outside
``[-MAX_WEIGHT, MAX_WEIGHT]`` is refused: it would scale the text encoder's states to infinity (a NaN image)."""

from __future__ import annotations

import re

_TOKEN = re.compile(r"\\[()\[\]\\]|\(|\)|\[|\]|:\s*-?[0-9]*\.?[0-9]+\s*\)|[^\\()\[\]:]+|:")
UP, DOWN = 1.1, 1 / 1.1
MAX_WEIGHT = 100.0


class PromptWeightError(ValueError):
    """A prompt whose weights cannot be encoded (too large, or not finite)."""


def has_weighting(prompt: str) -> bool:
    return bool(re.search(r"(?<!\\)[()\[\]]", prompt))


def parse_weighted(prompt: str) -> list[tuple[str, float]]:
    """Split a prompt into (text, weight) segments; adjacent segments of equal weight are merged."""
    out: list[tuple[str, float]] = []
    stack: list[tuple[str, int]] = []  # (bracket, index in out where the group starts)

    def scale(start: int, factor: float) -> None:
        for i in range(start, len(out)):
            out[i] = (out[i][0], out[i][1] * factor)

    for m in _TOKEN.finditer(prompt):
        tok = m.group(0)
        if tok.startswith("\\"):
            out.append((tok[1:], 1.0))
        elif tok in ("(", "["):
            stack.append((tok, len(out)))
        elif tok == ")" and stack and stack[-1][0] == "(":
            scale(stack.pop()[1], UP)
        elif tok == "]" and stack and stack[-1][0] == "[":
            scale(stack.pop()[1], DOWN)
        elif tok.startswith(":") and tok.endswith(")") and stack and stack[-1][0] == "(":
            weight = float(tok[1:-1].strip())
            scale(stack.pop()[1], weight)
        else:
            out.append((tok, 1.0))
    for bracket, start in reversed(stack):  # unclosed groups still count, as in A1111
        scale(start, UP if bracket == "(" else DOWN)
    for text, weight in out:
        if not abs(weight) <= MAX_WEIGHT:  # also catches inf and NaN
            raise PromptWeightError(f"prompt weight {weight:.4g} on {text.strip()[:40]!r} is outside "
                                    f"[-{MAX_WEIGHT:g}, {MAX_WEIGHT:g}] (too large a (text:weight) or too many "
                                    "nested parentheses)")
    merged: list[tuple[str, float]] = []
    for text, weight in out:
        if merged and merged[-1][1] == weight:
            merged[-1] = (merged[-1][0] + text, weight)
        elif text:
            merged.append((text, weight))
    return merged or [("", 1.0)]
