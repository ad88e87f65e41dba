"""The fuzz corpus (issue 16): each minimal failing input found by the issue or the fuzzers, run through the CLI.

tests/fuzz_corpus/*.json are workflows (native v1 or ComfyUI API format); expected.json says what running each
must give: ``exit`` 0 (a clean run that writes its outputs), 1 (a run failure whose report names ``node``) or
2 (refused at validation: an issue on ``node``/``input``, of ``kind``, whose message holds ``contains``). Each
runs in a temporary directory that also holds the demo images, a pickle ``model.ckpt`` and ``bomb.png`` (the
header of a 12000x12000 PNG: the pixel limit must refuse it before any pixel is decoded), and an output
directory whose ``link`` is a symlink to a folder outside it.
"""

from __future__ import annotations

import json
import pickle
import shutil
import struct
import zlib
from pathlib import Path
from typing import Any

import pytest

from nodegraph.cli import main

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "tests" / "fuzz_corpus"
EXPECTED: dict[str, dict[str, Any]] = json.loads((CORPUS / "expected.json").read_text())


def png_header(width: int, height: int) -> bytes:
    """A PNG's signature, IHDR (8-bit greyscale) and IEND: what a decompression bomb shows before its data."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)) + \
        chunk(b"IEND", b"")


def cases() -> list[Any]:
    out = []
    for name in sorted(EXPECTED):
        expect = EXPECTED[name]
        marks = [pytest.mark.slow] if expect["exit"] != 2 else []  # these reach the tiny model
        if "xfail" in expect:
            marks.append(pytest.mark.xfail(reason=expect["xfail"], strict=True))
        out.append(pytest.param(name, marks=marks, id=name.removesuffix(".json")))
    return out


def test_every_corpus_file_has_an_expectation():
    assert sorted(p.name for p in CORPUS.glob("*.json") if p.name != "expected.json") == sorted(EXPECTED)


@pytest.mark.parametrize("name", cases())
def test_corpus_input_gives_its_structured_error_or_a_clean_run(name, tmp_path, capsys, builtin_models_dir):
    expect = EXPECTED[name]
    for image in ("demo_image.png", "demo_image_alpha.png", "demo_mask.png"):
        shutil.copy(ROOT / "workflows" / image, tmp_path / image)
    (tmp_path / "model.ckpt").write_bytes(pickle.dumps({"state_dict": {}}))
    (tmp_path / "bomb.png").write_bytes(png_header(12000, 12000))
    wf = tmp_path / name
    shutil.copy(CORPUS / name, wf)
    out, report_path = tmp_path / "out", tmp_path / "report.json"
    out.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (out / "link").symlink_to(tmp_path / "elsewhere")
    code = main(["run", str(wf), "--output-dir", str(out), "--report", str(report_path), "--quiet", "--no-cache"])
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    report = json.loads(report_path.read_text())
    assert code == expect["exit"], (code, err)
    if code == 0:
        assert report["ok"] is True and report["outputs"]
        for files in report["outputs"].values():
            assert files and all(Path(f).is_file() and Path(f).resolve().is_relative_to(out.resolve()) for f in files)
        return
    assert report["ok"] is False and not report.get("outputs")
    assert not any((tmp_path / "elsewhere").iterdir())
    if code == 1:
        error = report["error"]
        assert error["node"] == expect["node"] and f"'{expect['node']}'" in err
        messages = [error["message"]]
    else:
        issues = [i for i in report["issues"] if i["node"] == expect["node"]]
        if "input" in expect:
            issues = [i for i in issues if i["input"] == expect["input"]]
        if "kind" in expect:
            issues = [i for i in issues if i["kind"] == expect["kind"]]
        assert issues, report["issues"]
        messages = [i["message"] for i in issues]
    for key in ("contains", "contains2"):
        if key in expect:
            assert any(expect[key] in m for m in messages), (expect[key], messages)
