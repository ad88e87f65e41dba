"""Fault injection into the disk tier (issue 16 #2, #3): every kind of bad entry, at every position of a
chain, gives exactly the ``--no-cache`` result and writes the outputs; never another key's value."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from nodegraph import Engine, Graph
from nodegraph.codec import MAGIC
from nodegraph.settings import EngineSettings

PERSISTED = ["s1", "s2", "s3", "f"]  # the persisted nodes of the chain, in order
FAULTS = ["swapped", "truncated", "foreign", "empty", "header-only", "future-version"]


def chain(start: int = 5) -> Graph:
    g = Graph()
    prev = g.add("Number", id="n", value=start).value
    for i in (1, 2, 3):
        prev = g.add("Add", id=f"s{i}", a=prev, b=10 * i).sum
    f = g.add("Format", id="f", n=prev, style="brackets")
    g.add("WriteText", id="w", text=f.text, name="result")
    return g


def reference(tmp_path: Path) -> str:
    out = tmp_path / "ref"
    Engine(EngineSettings(cache_dir=None)).run(chain(), output_dir=out)
    return (out / "result.txt").read_text()


def damage(path: Path, fault: str, other: Path) -> None:
    data = path.read_bytes()
    if fault == "swapped":  # two well-formed entries exchanged between file names
        other_data = other.read_bytes()
        path.write_bytes(other_data)
        other.write_bytes(data)
    elif fault == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif fault == "foreign":
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + data[8:])
    elif fault == "empty":
        path.write_bytes(b"")
    elif fault == "header-only":
        path.write_bytes(data[: len(MAGIC) + 32])
    elif fault == "future-version":
        path.write_bytes(MAGIC[:3] + b"9" + data[len(MAGIC):])


def prime(cache: Path, tmp_path: Path) -> dict[str, Path]:
    engine = Engine(EngineSettings(cache_dir=cache))
    result = engine.run(chain(), output_dir=tmp_path / "prime")
    assert engine.disk is not None
    entries = {n: engine.disk.path(result.keys[n]) for n in PERSISTED}
    assert all(p.is_file() for p in entries.values())
    return entries


@pytest.mark.parametrize("fault, position", list(itertools.product(FAULTS, range(len(PERSISTED)))))
def test_a_bad_entry_anywhere_in_the_chain_gives_the_no_cache_result(tmp_path, fault, position):
    expected = reference(tmp_path)
    cache = tmp_path / "cache"
    entries = prime(cache, tmp_path)
    target = PERSISTED[position]
    other = PERSISTED[(position + 1) % len(PERSISTED)]
    damage(entries[target], fault, entries[other])
    out = tmp_path / "out"
    result = Engine(EngineSettings(cache_dir=cache)).run(chain(), output_dir=out)
    assert result.ok and result.outputs == {"w": [str(out / "result.txt")]}
    assert (out / "result.txt").read_text() == expected


@pytest.mark.parametrize("fault", FAULTS)
def test_every_entry_bad_at_once_still_writes_the_outputs(tmp_path, fault):
    expected = reference(tmp_path)
    cache = tmp_path / "cache"
    entries = prime(cache, tmp_path)
    for i, n in enumerate(PERSISTED):
        if fault != "swapped" or i % 2 == 0:  # swapping exchanges pairs
            damage(entries[n], fault, entries[PERSISTED[(i + 1) % len(PERSISTED)]])
    out = tmp_path / "out"
    result = Engine(EngineSettings(cache_dir=cache)).run(chain(), output_dir=out)
    assert result.ok and (out / "result.txt").read_text() == expected
    again = Engine(EngineSettings(cache_dir=cache)).run(chain(), output_dir=tmp_path / "again")
    assert (tmp_path / "again" / "result.txt").read_text() == expected  # recomputed entries are good again
    assert again.nodes["f"]["cache"] == "disk"
