"""Output files: whole or not at all, and numbered saves never overwrite one another."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from nodegraph.files import atomic_write_bytes, write_numbered

WRITER = ("import sys; sys.path.insert(0, {root!r}); from pathlib import Path; "
          "from nodegraph.files import write_numbered; "
          "[write_numbered(Path({out!r}), 'img', '.png', b'x' * 1000) for _ in range(50)]")


def test_numbered_writes_take_the_next_free_number(tmp_path):
    (tmp_path / "img_00001.png").write_bytes(b"old")
    first = write_numbered(tmp_path, "img", ".png", b"new")
    assert first.name == "img_00002.png" and first.read_bytes() == b"new"
    assert (tmp_path / "img_00001.png").read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img_00001.png", "img_00002.png"]  # no temp left


def test_concurrent_numbered_writes_lose_nothing(tmp_path):
    root = str(Path(__file__).resolve().parent.parent)
    code = WRITER.format(root=root, out=str(tmp_path))
    procs = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(3)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0]
    files = sorted(tmp_path.iterdir())
    assert len(files) == 150 and files[-1].name == "img_00150.png"


def test_atomic_write_replaces_whole(tmp_path):
    target = tmp_path / "sub" / "f.bin"
    atomic_write_bytes(target, b"a" * 10)
    atomic_write_bytes(target, b"b" * 5)
    assert target.read_bytes() == b"bbbbb" and [p.name for p in target.parent.iterdir()] == ["f.bin"]
