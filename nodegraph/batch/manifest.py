"""``manifest.jsonl``: one line per finished job, written by the driver alone, durable line by line.

Each line is appended, flushed and fsynced as its job ends, so a driver killed at any moment leaves
every finished job recorded and at most one torn line at the end, which the next ``--resume`` drops.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic import ValidationError as PydanticValidationError

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.jsonl"


class ManifestLine(BaseModel):
    """What happened to one job."""

    model_config = ConfigDict(extra="allow")
    id: str
    status: Literal["done", "failed"]
    outputs: list[str] = Field(default_factory=list, description="Files written, relative to the output dir.")
    seconds: float = 0.0
    worker: str | None = None
    error: str | None = None
    report: dict[str, Any] | None = None
    line: int | None = Field(default=None, description="The job's line number in the job file.")
    attempts: int = 1


@dataclass(frozen=True)
class Recorded:
    """The part of a manifest line that ``--resume`` needs (kept for every recorded job)."""

    status: str
    outputs: tuple[str, ...]


def _repair_tail(path: Path) -> None:
    """Drop a half-written last line (the driver died inside a write), so the next line starts clean."""
    with open(path, "rb+") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        # Walk back to the last newline in blocks; a torn line is at most one job's record.
        end = size
        while end > 0:
            start = max(0, end - 65536)
            f.seek(start)
            cut = f.read(end - start).rfind(b"\n")
            if cut >= 0:
                keep = start + cut + 1
                break
            end = start
        else:
            keep = 0
        logger.warning("manifest %s: dropping a torn last line (%d bytes)", path, size - keep)
        f.truncate(keep)
        f.flush()
        os.fsync(f.fileno())


def read_manifest(path: Path) -> dict[str, Recorded]:
    """The recorded jobs by id (a later line for an id wins), after repairing a torn tail."""
    recorded: dict[str, Recorded] = {}
    if not path.exists():
        return recorded
    _repair_tail(path)
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            try:
                entry = ManifestLine.model_validate_json(raw)
            except PydanticValidationError as exc:
                logger.warning("manifest %s: line %d is not a record, ignored: %s", path, number, exc.errors()[0]["msg"])
                continue
            recorded[entry.id] = Recorded(entry.status, tuple(entry.outputs))
    return recorded


class ManifestWriter:
    """Appends records; each ``write`` returns only once the line is on disk."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            _repair_tail(path)
        self._file = open(path, "ab")  # noqa: SIM115  (held open for the whole batch)

    def write(self, entry: ManifestLine) -> None:
        self._file.write(entry.model_dump_json(exclude_none=True).encode() + b"\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> ManifestWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
