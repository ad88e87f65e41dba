"""Encodings reused across processes: a rerun with a new seed never loads the text encoders."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nodes.tiny import make_tiny_model
from tests.sdxl_graphs import ROOT

pytestmark = pytest.mark.slow  # end-to-end runs of the tiny model

DEMO = ROOT / "workflows" / "demo_tiny.json"


def cli_run(tmp_path: Path, name: str, *args: str, workflow: Path = DEMO) -> dict:
    """`nodegraph run` in a new process; returns its report (plus the image it wrote, as an array)."""
    out = tmp_path / name
    cmd = [sys.executable, "-m", "nodegraph", "run", str(workflow), "--quiet", "--output-dir", str(out),
           "--report", str(tmp_path / f"{name}.json"), *args]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / f"{name}.json").read_text())
    (png,) = report["outputs"]["save"]
    report["pixels"] = np.asarray(Image.open(png))
    return report


def status(report: dict) -> dict[str, tuple[str, str | None]]:
    return {n: (v["status"], v["cache"]) for n, v in report["nodes"].items()}


def test_new_seed_in_a_new_process_reuses_encodings_from_disk(builtin_models_dir, tmp_path):
    first = cli_run(tmp_path, "first")
    assert {"text_encoder", "text_encoder_2", "vae_encoder", "unet", "vae_decoder"} <= set(first["loaded"])
    second = cli_run(tmp_path, "second", "--set", "sample.seed=7")
    s = status(second)
    for node in ("positive", "negative", "encode", "latent_mask"):
        assert s[node] == ("cached", "disk"), node
    assert s["sample"] == ("executed", None)
    assert "text_encoder" not in second["loaded"] and "text_encoder_2" not in second["loaded"]
    assert "vae_encoder" not in second["loaded"]
    assert sorted(second["loaded"]) == ["unet", "vae_decoder"]
    uncached = cli_run(tmp_path, "uncached", "--set", "sample.seed=7", "--no-cache")
    assert all(v[0] == "executed" for v in status(uncached).values())
    assert np.array_equal(second["pixels"], uncached["pixels"])
    assert not np.array_equal(second["pixels"], first["pixels"])


def test_changing_the_prompt_reruns_only_what_depends_on_it(builtin_models_dir, tmp_path):
    cli_run(tmp_path, "first")
    changed = cli_run(tmp_path, "changed", "--set", "positive.prompt=a green pear")
    s = status(changed)
    assert s["positive"] == ("executed", None)
    assert s["negative"] == ("cached", "disk") and s["latent_mask"] == ("cached", "disk")
    for node in ("sample", "decode", "composite", "save"):
        assert s[node][0] == "executed", node
    assert "text_encoder" in changed["loaded"] and "vae_encoder" not in changed["loaded"]


def test_replaced_weights_at_the_same_path_miss_every_dependent_entry(tmp_path):
    model = tmp_path / "model"
    make_tiny_model(model, in_channels=9, seed=0)
    workflow = json.loads(DEMO.read_text())
    workflow["nodes"]["checkpoint"]["inputs"]["source"] = str(model)
    for node in ("image", "mask"):
        workflow["nodes"][node]["inputs"]["path"] = str(DEMO.parent / workflow["nodes"][node]["inputs"]["path"])
    wf = tmp_path / "wf.json"
    wf.write_text(json.dumps(workflow))
    first = cli_run(tmp_path, "first", workflow=wf)
    again = cli_run(tmp_path, "again", workflow=wf)
    assert status(again)["composite"] == ("cached", "disk")
    replacement = tmp_path / "other"
    make_tiny_model(replacement, in_channels=9, seed=1)
    for f in replacement.rglob("*.safetensors"):
        (model / f.relative_to(replacement)).write_bytes(f.read_bytes())
    after = cli_run(tmp_path, "after", workflow=wf)
    s = status(after)
    for node in ("positive", "negative", "encode", "latent_mask", "sample", "decode", "composite"):
        assert s[node] == ("executed", None), node
    assert s["image"] == ("cached", "memory") or s["image"][0] in ("executed", "cached")
    assert not np.array_equal(after["pixels"], first["pixels"])


def test_same_weights_elsewhere_share_entries(tiny_models, tmp_path):
    """Keys hold content fingerprints, not paths: a copy of the model at another path hits the cache."""
    import shutil

    workflow = json.loads(DEMO.read_text())
    for node in ("image", "mask"):
        workflow["nodes"][node]["inputs"]["path"] = str(DEMO.parent / workflow["nodes"][node]["inputs"]["path"])
    reports = []
    for i, where in enumerate(("a", "b")):
        shutil.copytree(tiny_models[9], tmp_path / where)
        workflow["nodes"]["checkpoint"]["inputs"]["source"] = str(tmp_path / where)
        wf = tmp_path / f"wf{i}.json"
        wf.write_text(json.dumps(workflow))
        reports.append(cli_run(tmp_path, f"run{i}", workflow=wf))
    assert status(reports[1])["composite"] == ("cached", "disk")
    assert reports[1]["loaded"] == []


def test_cache_commands(builtin_models_dir, tmp_path):
    def cache(*args: str) -> str:
        proc = subprocess.run([sys.executable, "-m", "nodegraph", "cache", *args], capture_output=True, text=True,
                              timeout=60)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    cli_run(tmp_path, "first")
    stats = json.loads(cache("stats"))
    assert stats["entries"] >= 7 and stats["bytes"] > 0 and stats["max_bytes"] == 10 * 1024**3
    keep = stats["bytes"] // 2
    assert cache("prune", "--max-size", str(keep)).startswith("removed ")
    after = json.loads(cache("stats"))
    assert 0 < after["bytes"] <= keep and after["entries"] < stats["entries"]
    assert cache("clear").startswith("removed ")
    assert json.loads(cache("stats"))["entries"] == 0
