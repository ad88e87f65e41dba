"""Disk tier integrity: checksums, truncation, concurrent writers, SIGKILL mid-write, read-only dirs."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from nodegraph import DiskCache
from nodegraph.cache import MemoryCache, parse_size
from nodegraph.codec import CorruptEntry, decode_entry, encode_entry
from tests.toy_nodes import Text

KEY = "ab" + "0" * 38


def sample_value() -> dict:
    return {"latent": torch.arange(12, dtype=torch.float32).reshape(3, 4), "meta": (1, "x", None),
            "text": Text("hi"), "half": torch.ones(2, dtype=torch.bfloat16)}


def test_round_trip_preserves_types_and_bits(tmp_path):
    disk = DiskCache(tmp_path)
    assert disk.put(KEY, sample_value())
    found, value = DiskCache(tmp_path).get(KEY)
    assert found
    assert torch.equal(value["latent"], sample_value()["latent"]) and value["half"].dtype == torch.bfloat16
    assert value["meta"] == (1, "x", None) and value["text"] == Text("hi")


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage", "empty"])
def test_bad_entry_is_dropped_once_with_a_warning(tmp_path, caplog, damage):
    disk = DiskCache(tmp_path)
    disk.put(KEY, sample_value())
    path = disk.path(KEY)
    data = path.read_bytes()
    path.write_bytes({"truncate": data[: len(data) // 2], "flip": data[:-5] + bytes([data[-5] ^ 1]) + data[-4:],
                      "garbage": b"not an entry at all", "empty": b""}[damage])
    with caplog.at_level(logging.WARNING):
        assert disk.get(KEY) == (False, None)
        assert disk.get(KEY) == (False, None)
    assert not path.exists()
    assert sum("dropping bad entry" in r.message for r in caplog.records) == 1


def test_unregistered_dataclass_is_not_stored(tmp_path):
    from dataclasses import dataclass

    @dataclass
    class Secret:
        x: int

    disk = DiskCache(tmp_path)
    assert not disk.put(KEY, {"v": Secret(1)})
    with pytest.raises(CorruptEntry):
        decode_entry(encode_entry({"v": 1})[:-1])


def test_read_only_directory_degrades_with_a_warning(tmp_path, caplog):
    if os.geteuid() == 0:
        ro = tmp_path / "file-not-dir"
        ro.write_text("x")  # root ignores permissions; a file where the directory should be still fails
        disk = DiskCache(ro)
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        disk = DiskCache(ro)
    with caplog.at_level(logging.WARNING):
        assert not disk.put(KEY, sample_value())
        assert not disk.put("cd" + KEY[2:], sample_value())
    assert not disk.enabled
    assert sum("not writable" in r.message for r in caplog.records) == 1


WRITER = textwrap.dedent("""
    import sys, torch
    from nodegraph.cache import DiskCache
    disk = DiskCache(sys.argv[1])
    value = {"t": torch.arange(int(sys.argv[3]), dtype=torch.float32)}
    for _ in range(int(sys.argv[2])):
        assert disk.put("ab" + "0" * 38, value)
        found, got = disk.get("ab" + "0" * 38)
        assert found and torch.equal(got["t"], value["t"]), "read a bad entry"
    print("ok")
""")


def test_two_processes_writing_the_same_key(tmp_path):
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), "30", "50000"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    found, value = DiskCache(tmp_path).get(KEY)
    assert found and value["t"].shape == (50000,)
    assert not [f for f in (tmp_path / "entries" / "ab").iterdir() if f.suffix == ".tmp"]


def test_sigkill_during_writes_leaves_nothing_that_reads_as_valid(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), "100000", "2000000"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while time.time() < deadline and not list((tmp_path / "entries").glob("*/*.tmp")):
        time.sleep(0.005)
    time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    disk = DiskCache(tmp_path)
    found, value = disk.get(KEY)
    if found:  # an entry renamed into place before the kill is whole
        assert value["t"].shape == (2000000,)
    # Only renamed files count as entries; a killed writer's temp file is never read, and prune sweeps it.
    for entry in (tmp_path / "entries").glob("*/*.ngc"):
        assert decode_entry(entry.read_bytes())["t"].shape == (2000000,)
    for tmp in (tmp_path / "entries").glob("*/*.tmp"):
        os.utime(tmp, (0, 0))
    disk.prune()
    assert not list((tmp_path / "entries").glob("*/*.tmp"))


def test_prune_evicts_least_recently_used(tmp_path):
    disk = DiskCache(tmp_path)
    keys = [f"{i:02x}" + "1" * 38 for i in range(4)]
    for i, k in enumerate(keys):
        disk.put(k, {"t": torch.zeros(1000)})
        os.utime(disk.path(k), (1000 + i, 1000 + i))
    disk.get(keys[0])  # touched: now the most recent
    size = disk.path(keys[0]).stat().st_size
    disk.prune(max_bytes=2 * size)
    assert [disk.path(k).exists() for k in keys] == [True, False, False, True]
    assert disk.stats().entries == 2 and disk.clear() == 2


def test_memory_cache_is_bounded_in_bytes():
    mem = MemoryCache(max_bytes=3 * 4000)
    for i in range(5):
        mem.put(str(i), torch.zeros(1000))
    assert len(mem) == 3 and "0" not in mem and "4" in mem and mem.bytes <= 3 * 4000
    mem.get("2")
    mem.put("5", torch.zeros(1000))
    assert "2" in mem and "3" not in mem


def test_parse_size():
    assert parse_size("10GiB") == 10 * 1024**3 and parse_size("500MB") == 500 * 10**6 and parse_size("12") == 12
    with pytest.raises(ValueError):
        parse_size("lots")


def test_runs_that_add_nothing_do_not_scan_the_cache(tmp_path, monkeypatch):
    from nodegraph import Engine
    from nodegraph.settings import EngineSettings
    from tests.test_executor import chain

    settings = EngineSettings(cache_dir=tmp_path / "cache")
    engine = Engine(settings)
    engine.run(chain(), output_dir=tmp_path)
    assert engine.disk is not None and engine.disk.wrote is False  # pruned after the run that wrote: reset
    scans = []
    monkeypatch.setattr(DiskCache, "prune", lambda self, *a, **k: scans.append(1) or 0)
    Engine(settings).run(chain(), output_dir=tmp_path)  # everything from disk
    assert scans == []
    Engine(settings).run(chain(value=8), output_dir=tmp_path)  # writes new entries
    assert scans == [1]


def test_an_entry_under_another_keys_name_is_refused_and_dropped(tmp_path):
    disk = DiskCache(tmp_path)
    other = "ab" + "1" * 38
    disk.put(KEY, {"v": 1})
    disk.put(other, {"v": 2})
    disk.path(KEY).write_bytes(disk.path(other).read_bytes())  # well-formed, checksum-valid, wrong key
    assert disk.get(KEY) == (False, None) and not disk.path(KEY).exists()
    assert disk.get(other) == (True, {"v": 2})


@pytest.mark.parametrize("damage", ["future", "old-format", "foreign", "empty", "header-only"])
def test_foreign_future_and_empty_entries_are_misses(tmp_path, damage):
    from nodegraph.codec import MAGIC

    disk = DiskCache(tmp_path)
    disk.put(KEY, {"v": 1})
    data = disk.path(KEY).read_bytes()
    bad = {"future": b"NGC9" + data[4:], "old-format": b"NGC1" + data[4:], "foreign": b"PK\x03\x04" + data,
           "empty": b"", "header-only": data[:len(MAGIC) + 32]}[damage]
    disk.path(KEY).write_bytes(bad)
    assert disk.get(KEY) == (False, None) and not disk.path(KEY).exists()


def test_memory_and_disk_tiers_answer_in_the_same_shape(tmp_path):
    for store in (MemoryCache(10**6), DiskCache(tmp_path)):
        assert store.get(KEY) == (False, None) and not store.contains(KEY)
        assert store.put(KEY, {"v": 3}) is True
        assert store.get(KEY) == (True, {"v": 3}) and store.contains(KEY)


SALTED_RUN = ("import sys; sys.path.insert(0, {root!r}); import tests.toy_nodes; "
              "import nodegraph; sys.modules['nodegraph.node'].environment_salt = lambda package, depends: sys.argv[1]; "
              "from nodegraph.cli import main; "
              "sys.exit(main(sys.argv[2:]))")


def test_a_changed_salt_misses_and_an_unchanged_one_hits_across_processes(tmp_path):
    import json
    import subprocess
    from pathlib import Path

    wf = tmp_path / "wf.json"
    wf.write_text(json.dumps({"version": 1, "nodes": {
        "n": {"type": "Number", "inputs": {"value": 2}},
        "s": {"type": "Add", "inputs": {"a": ["n", "value"], "b": 1}},
        "w": {"type": "WriteText", "inputs": {"text": ["f", "text"]}},
        "f": {"type": "Format", "inputs": {"n": ["s", "sum"], "style": "brackets"}}}}))
    root = str(Path(__file__).resolve().parent.parent)

    def run(salt: str, style: str) -> dict:
        args = ["run", str(wf), "--quiet", "--output-dir", str(tmp_path / "o"), "--cache-dir", str(tmp_path / "c"),
                "--report", str(tmp_path / "r.json"), "--set", f'f.style="{style}"']
        proc = subprocess.run([sys.executable, "-c", SALTED_RUN.format(root=root), salt, *args],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        return json.loads((tmp_path / "r.json").read_text())["nodes"]["s"]

    assert run("torch=2.13|pack=1", "plain")["status"] == "executed"
    assert run("torch=2.13|pack=1", "brackets")["cache"] == "disk"  # unchanged salt: served from disk
    assert run("torch=2.14|pack=1", "plain")["status"] == "executed"  # a library upgrade: recomputed


def test_cache_entries_respect_the_umask(tmp_path):
    import os

    old = os.umask(0o022)
    try:
        disk = DiskCache(tmp_path)
        disk.put(KEY, {"v": 1})
        assert disk.path(KEY).stat().st_mode & 0o777 == 0o644
    finally:
        os.umask(old)
