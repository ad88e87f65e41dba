"""Running mutated example workflows on the tiny model (issue 16): nothing but a clean run or a structured error.

Starts from workflows/demo_tiny.json (native v1) and tests/comfy/inpaint_api.json (ComfyUI API format), cuts
them to 1-2 steps, mutates the values a user would touch (steps, strength, sampler, prompt, feather, prefix,
which image/mask file, a dropped optional input) and runs each through the real CLI entry point, in process so
that the tiny model loads once. The outcome must be one of:
- exit 0 and every output node of the workflow wrote its files (listed in the report, present on disk);
- exit 1 with a report naming the failing node (and the node named on stderr), nothing half-written claimed;
- exit 2 (validation refused it) with a report of issues.
Never an exception escaping ``main`` (a traceback for the user) and never exit 0 with nothing written.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nodegraph.cli import main

ROOT = Path(__file__).resolve().parent.parent
IMAGES = ["demo_image.png", "demo_image_alpha.png", "demo_mask.png"]

pytestmark = pytest.mark.slow


def native_base() -> dict[str, Any]:
    doc = json.loads((ROOT / "workflows" / "demo_tiny.json").read_text())
    doc["nodes"]["sample"]["inputs"]["steps"] = 2
    return doc


def comfy_base() -> dict[str, Any]:
    doc = json.loads((ROOT / "tests" / "comfy" / "inpaint_api.json").read_text())
    doc["3"]["inputs"]["steps"] = 2
    doc["10"]["inputs"]["image"] = "demo_image_alpha.png"  # the run's directory holds the images
    return doc


text = st.one_of(st.text(max_size=30), st.sampled_from(["", "(apple:1.5)", "((a))", "[b]", "a" * 400, "(x:-1)",
                                                         "\\(", "(apple:1e3)", "é😀"]))
NATIVE_EDITS: dict[tuple[str, str], st.SearchStrategy[Any]] = {
    ("sample", "steps"): st.sampled_from([1, 2]),
    ("sample", "strength"): st.sampled_from([0.3, 0.5, 0.51, 0.9999, 1.0]),
    ("sample", "sampler"): st.sampled_from(["euler", "euler_ancestral", "heun", "dpmpp_2m", "ddim", "lms"]),
    ("sample", "scheduler"): st.sampled_from(["normal", "karras", "simple", "exponential"]),
    ("sample", "guidance_scale"): st.sampled_from([0.0, 1.0, 7.5, 100.0]),
    ("sample", "seed"): st.sampled_from([0, 1, 2**63, 2**64 - 1]),
    ("sample", "negative"): st.just(None),
    ("positive", "prompt"): text,
    ("negative", "prompt"): text,
    ("composite", "feather"): st.integers(0, 8),
    ("save", "prefix"): st.sampled_from(["demo", "sub/dir/x", "x" * 100, "é", "a.b"]),
    ("image", "path"): st.sampled_from(IMAGES),
    ("mask", "path"): st.sampled_from(IMAGES),
}
COMFY_EDITS: dict[tuple[str, str], st.SearchStrategy[Any]] = {
    ("3", "steps"): st.sampled_from([1, 2]),
    ("3", "denoise"): st.sampled_from([0.3, 0.5, 1.0]),
    ("3", "sampler_name"): st.sampled_from(["euler", "euler_ancestral", "heun", "dpmpp_2m", "ddim"]),
    ("3", "scheduler"): st.sampled_from(["normal", "karras", "simple", "sgm_uniform"]),
    ("3", "cfg"): st.sampled_from([1.0, 7.5]),
    ("6", "text"): text,
    ("7", "text"): text,
    ("20", "noise_mask"): st.booleans(),
    ("15", "x"): st.sampled_from([0, 8, 200]),
    ("10", "image"): st.sampled_from(IMAGES),
    ("9", "filename_prefix"): st.sampled_from(["ComfyUI", "a/b", "é"]),
}


def _edits(data: st.DataObject, table: dict[tuple[str, str], st.SearchStrategy[Any]]) -> list[tuple[str, str, Any]]:
    keys = data.draw(st.lists(st.sampled_from(sorted(table)), min_size=1, max_size=3, unique=True))
    return [(node, name, data.draw(table[(node, name)])) for node, name in keys]


def check_run(doc: dict[str, Any], edits: list[tuple[str, str, Any]], comfy: bool, capsys: Any) -> None:
    for node, name, value in edits:
        inputs = doc[node]["inputs"] if comfy else doc["nodes"][node]["inputs"]
        if value is None:
            inputs.pop(name, None)
        else:
            inputs[name] = value
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp)
        for name in IMAGES:
            shutil.copy(ROOT / "workflows" / name, run_dir / name)
        wf = run_dir / "wf.json"
        wf.write_text(json.dumps(doc))
        out, report_path = run_dir / "out", run_dir / "report.json"
        capsys.readouterr()
        code = main(["run", str(wf), "--output-dir", str(out), "--report", str(report_path), "--quiet",
                     "--no-cache"])
        err = capsys.readouterr().err
        assert "Traceback" not in err, err
        assert code in (0, 1, 2), (code, err)
        report = json.loads(report_path.read_text())
        if code == 0:
            assert report["ok"] is True and report["error"] is None
            savers = [n for n, entry in report["nodes"].items() if entry["type"] in ("SaveImage", "comfy.SaveImage")]
            assert report["outputs"], f"exit 0 with nothing written: {edits}"
            assert set(savers) <= set(report["outputs"]), (savers, report["outputs"])
            for files in report["outputs"].values():
                assert files and all(Path(f).is_file() and Path(f).stat().st_size > 0 for f in files)
                assert all(Path(f).resolve().is_relative_to(out.resolve()) for f in files)
        elif code == 1:
            assert report["ok"] is False and report["error"]["node"], report
            assert f"'{report['error']['node']}'" in err, err
        else:
            assert report["ok"] is False and report.get("issues"), report


@settings(max_examples=20, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.data())
def test_running_mutated_native_workflows_is_clean_or_a_structured_error(builtin_models_dir, capsys, data):
    check_run(native_base(), _edits(data, NATIVE_EDITS), comfy=False, capsys=capsys)


@settings(max_examples=15, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.data())
def test_running_mutated_comfy_workflows_is_clean_or_a_structured_error(builtin_models_dir, capsys, data):
    check_run(comfy_base(), _edits(data, COMFY_EDITS), comfy=True, capsys=capsys)
