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


def test_written_files_respect_the_umask(tmp_path):
    from nodegraph.files import _umask  # mkstemp alone would give 0600 whatever the umask

    mode = 0o666 & ~_umask()
    atomic_write_bytes(tmp_path / "a.bin", b"x")
    numbered = write_numbered(tmp_path, "img", ".png", b"y")
    assert (tmp_path / "a.bin").stat().st_mode & 0o777 == mode == numbered.stat().st_mode & 0o777


def test_atomic_folder_appears_whole_or_not_at_all(tmp_path):
    import pytest

    from nodegraph.files import atomic_folder

    with atomic_folder(tmp_path / "model") as work:
        (work / "a.txt").write_text("a")
        assert not (tmp_path / "model").exists()
    assert (tmp_path / "model" / "a.txt").read_text() == "a"
    with pytest.raises(RuntimeError), atomic_folder(tmp_path / "broken") as work:
        (work / "half").write_text("h")
        raise RuntimeError("killed mid-build")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # nothing half-built, no temp folder left
    with atomic_folder(tmp_path / "model") as work:  # another process finished first: theirs is kept
        (work / "b.txt").write_text("b")
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["a.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
