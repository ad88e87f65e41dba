"""The CLI's exit codes, reports, --set, and interrupt behaviour (run as a real subprocess)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from nodegraph.cli import main

TOY = {"version": 1, "nodes": {
    "n": {"type": "Number", "inputs": {"value": 2}},
    "c": {"type": "Count", "inputs": {"n": ["n", "value"], "steps": 3}},
    "f": {"type": "Format", "inputs": {"n": ["c", "value"]}},
    "w": {"type": "WriteText", "inputs": {"text": ["f", "text"], "name": "cli"}},
}}

# A runner that registers the toy nodes, then hands over to the real CLI.
RUNNER = "import sys; sys.path.insert(0, {root!r}); import tests.toy_nodes; from nodegraph.cli import main; sys.exit(main())"


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    root = str(Path(__file__).resolve().parent.parent)
    return subprocess.run([sys.executable, "-c", RUNNER.format(root=root), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


def write(path: Path, data) -> Path:
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


def test_run_writes_output_and_report(tmp_path, capsys):
    wf = write(tmp_path / "wf.json", TOY)
    code = main(["run", str(wf), "--output-dir", str(tmp_path / "out"), "--report", str(tmp_path / "r.json"),
                 "--quiet", "--set", "n.value=5"])
    assert code == 0
    assert (tmp_path / "out" / "cli.txt").read_text() == "5"
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["ok"] is True and report["error"] is None and report["loaded"] == []
    assert report["nodes"]["c"] == {**report["nodes"]["c"], "type": "Count", "status": "executed", "cache": None}
    assert report["outputs"] == {"w": [str(tmp_path / "out" / "cli.txt")]}


def test_second_process_reads_the_disk_cache(tmp_path):
    wf = write(tmp_path / "wf.json", TOY)
    args = ["run", str(wf), "--output-dir", "out", "--quiet", "--cache-dir", str(tmp_path / "c")]
    assert run_cli(*args, "--report", "r1.json", cwd=tmp_path).returncode == 0
    p = run_cli(*args, "--report", "r2.json", "--set", 'w.name="again"', cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    report = json.loads((tmp_path / "r2.json").read_text())
    assert report["nodes"]["f"]["cache"] == "disk" and report["nodes"]["c"]["status"] == "skipped"
    p = run_cli(*args, "--no-cache", "--report", "r3.json", cwd=tmp_path)
    assert json.loads((tmp_path / "r3.json").read_text())["nodes"]["f"]["status"] == "executed"


@pytest.mark.parametrize("content, expect", [
    ("{oops", "invalid JSON at line 1, column 2"),
    ({"version": 7, "nodes": {}}, "version 7 is not supported"),
    ({"version": 1, "nodes": {"a": {"type": "Zap"}}}, "unknown node type 'Zap'"),
])
def test_invalid_workflow_exits_2_without_traceback(tmp_path, capsys, content, expect):
    wf = write(tmp_path / "wf.json", content)
    assert main(["run", str(wf)]) == 2
    err = capsys.readouterr().err
    assert expect in err and "Traceback" not in err
    assert main(["validate", str(wf), "--json"]) == 2
    assert json.loads(capsys.readouterr().out)["ok"] is False


def test_validate_ok_and_set_errors(tmp_path, capsys):
    wf = write(tmp_path / "wf.json", TOY)
    assert main(["validate", str(wf)]) == 0
    assert main(["run", str(wf), "--set", "ghost.value=1"]) == 2
    assert "ghost" in capsys.readouterr().err
    assert main(["run", str(wf), "--set", "novalue"]) == 2


def test_failing_node_exits_1_and_reports_it(tmp_path, capsys):
    data = {"version": 1, "nodes": {
        "n": {"type": "Number", "inputs": {"value": 1}},
        "x": {"type": "Fail", "inputs": {"x": ["n", "value"]}},
        "f": {"type": "Format", "inputs": {"n": ["x", "value"]}},
        "w": {"type": "WriteText", "inputs": {"text": ["f", "text"]}}}}
    wf = write(tmp_path / "wf.json", data)
    code = main(["run", str(wf), "--quiet", "--no-cache", "--output-dir", str(tmp_path / "o"),
                 "--report", str(tmp_path / "r.json")])
    assert code == 1
    assert json.loads((tmp_path / "r.json").read_text())["error"]["node"] == "x"
    assert not (tmp_path / "o").exists()


def test_nodes_and_schema_listings(capsys):
    assert main(["nodes", "--json"]) == 0
    listing = {n["type"]: n for n in json.loads(capsys.readouterr().out)}
    assert listing["Number"]["inputs"]["value"] == {"type": "INT", "required": False, "default": 0,
                                                    "minimum": -1000, "maximum": 1000}
    assert listing["Format"]["inputs"]["style"]["choices"] == ["plain", "brackets"]
    assert main(["nodes"]) == 0 and "A constant integer." in capsys.readouterr().out
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["properties"]["version"] == {"const": 1}


def test_ctrl_c_exits_130_and_leaves_no_output(tmp_path):
    data = json.loads(json.dumps(TOY))
    data["nodes"]["c"]["inputs"]["steps"] = 10**9
    wf = write(tmp_path / "wf.json", data)
    root = str(Path(__file__).resolve().parent.parent)
    proc = subprocess.Popen([sys.executable, "-c", RUNNER.format(root=root), "run", str(wf), "--no-cache",
                             "--output-dir", "out", "--report", "r.json"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ})
    seen: list[str] = []
    reader = threading.Thread(target=lambda: seen.extend(iter(lambda: proc.stderr.read(1), "")), daemon=True)
    reader.start()
    deadline = time.time() + 60
    while time.time() < deadline and "Count" not in "".join(seen):  # inside the step loop now
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=60)
    reader.join(timeout=10)
    err = "".join(seen)
    assert proc.returncode == 130, err
    assert not (tmp_path / "out").exists()
    assert json.loads((tmp_path / "r.json").read_text())["error"]["interrupted"] is True


def test_engine_imports_without_torch():
    """The engine knows nothing about diffusion: importing it (and its CLI) must not import torch."""
    root = str(Path(__file__).resolve().parent.parent)
    code = (f"import sys; sys.path.insert(0, {root!r}); import nodegraph, nodegraph.cli, nodegraph.schema; "
            "assert 'torch' not in sys.modules and 'nodes' not in sys.modules, sorted(sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_bad_output_dir_fails_before_anything_runs(tmp_path, capsys, calls):
    wf = write(tmp_path / "wf.json", TOY)
    (tmp_path / "afile").write_text("x")
    assert main(["run", str(wf), "--quiet", "--no-cache", "--output-dir", str(tmp_path / "afile")]) == 2
    assert "not a directory" in capsys.readouterr().err and calls == []
    if os.geteuid() != 0:  # root may write anywhere
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        assert main(["run", str(wf), "--quiet", "--no-cache", "--output-dir", str(ro / "out")]) == 2
        assert "not writable" in capsys.readouterr().err and calls == []


def test_report_is_written_for_validation_failures_and_a_directory_is_a_clean_error(tmp_path, capsys):
    bad = write(tmp_path / "bad.json", {"version": 1, "nodes": {"a": {"type": "Zap"}}})
    assert main(["run", str(bad), "--report", str(tmp_path / "r.json")]) == 2
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["ok"] is False and report["issues"][0]["kind"] == "unknown_node_type"
    wf = write(tmp_path / "wf.json", TOY)
    assert main(["run", str(wf), "--report", str(tmp_path), "--output-dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "is a directory" in err and "Traceback" not in err and not (tmp_path / "o").exists()


@pytest.mark.parametrize("size", ["inf", "nan", "-1", "1e999GiB", "lots"])
def test_non_finite_cache_size_is_a_usage_error(tmp_path, capsys, size):
    wf = write(tmp_path / "wf.json", TOY)
    assert main(["run", str(wf), "--cache-size", size, "--output-dir", str(tmp_path / "o")]) == 2
    assert "cannot read size" in capsys.readouterr().err and not (tmp_path / "o").exists()


@pytest.mark.parametrize("target, expect", [("/dev/zero", "not a regular file"), ("DIR", "is a directory"),
                                            ("BIG", "too large")])
def test_special_huge_and_directory_workflow_files_are_refused(tmp_path, capsys, target, expect):
    if target == "DIR":
        target = str(tmp_path)
    elif target == "BIG":
        big = tmp_path / "big.json"
        with open(big, "wb") as f:
            f.truncate(64 * 1024 * 1024)  # sparse: no real disk used
        target = str(big)
    assert main(["validate", target]) == 2
    err = capsys.readouterr().err
    assert expect in err and "Traceback" not in err


def test_closed_pipe_exits_quietly(tmp_path):
    root = str(Path(__file__).resolve().parent.parent)
    for command in (["schema"], ["nodes", "--json"]):
        proc = subprocess.Popen([sys.executable, "-c", RUNNER.format(root=root), *command], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        proc.stdout.read(10)
        proc.stdout.close()  # like `| head -c 10`
        err = proc.stderr.read().decode()
        assert proc.wait(timeout=60) == 0 and "Traceback" not in err and "Exception" not in err, err


def test_second_ctrl_c_exits_130_at_once(tmp_path):
    data = json.loads(json.dumps(TOY))
    data["nodes"]["c"] = {"type": "Stubborn", "inputs": {"n": ["n", "value"], "seconds": 60}}
    wf = write(tmp_path / "wf.json", data)
    root = str(Path(__file__).resolve().parent.parent)
    proc = subprocess.Popen([sys.executable, "-c", RUNNER.format(root=root), "run", str(wf), "--no-cache",
                             "--output-dir", "out"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    seen: list[str] = []
    reader = threading.Thread(target=lambda: seen.extend(iter(lambda: proc.stderr.read(1), "")), daemon=True)
    reader.start()
    deadline = time.time() + 60
    while time.time() < deadline and "Stubborn" not in "".join(seen):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    while time.time() < deadline and "Ctrl-C again" not in "".join(seen):
        time.sleep(0.05)
    started = time.time()
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 130, "".join(seen)
    assert time.time() - started < 10  # did not wait for the 60 s node
    assert not (tmp_path / "out").exists()


def test_tqdm_bar_draws_its_first_line_once(tmp_path, capsys):
    from nodegraph import Engine, Graph
    from nodegraph.cli import TqdmListener

    g = Graph()
    c = g.add("Count", id="c", n=g.add("Number", id="n", value=1).value, steps=5)
    g.add("WriteText", id="w", text=g.add("Format", id="f", n=c.value).text)
    Engine().run(g, output_dir=tmp_path, listener=TqdmListener())
    err = capsys.readouterr().err
    assert err.count("0/5") == 1 and "5/5" in err


def test_dry_run_prints_the_plan_and_runs_nothing(tmp_path, capsys, calls):
    wf = write(tmp_path / "wf.json", TOY)
    assert main(["run", str(wf), "--dry-run", "--no-cache", "--output-dir", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "c Count: execute" in out and "w WriteText: execute" in out and calls == []
    assert main(["run", str(wf), "--dry-run", "--json", "--no-cache", "--output-dir", str(tmp_path / "o")]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["nodes"]["c"]["action"] == "execute" and not (tmp_path / "o").exists()


def test_set_paths_are_relative_to_the_current_directory_and_file_paths_to_the_workflow(tmp_path):
    """A path in the file resolves against the file's folder; one typed with --set, against the cwd."""
    (tmp_path / "flows").mkdir()
    (tmp_path / "flows" / "in.txt").write_text("beside the workflow")
    (tmp_path / "here.txt").write_text("typed on the command line")
    wf = write(tmp_path / "flows" / "wf.json", {"version": 1, "nodes": {
        "r": {"type": "ReadText", "inputs": {"path": "in.txt"}},
        "w": {"type": "SaveTextAs", "inputs": {"text": ["r", "text"], "prefix": "out"}}}})
    assert run_cli("run", str(wf), "--quiet", "--output-dir", "o1", cwd=tmp_path).returncode == 0
    assert (tmp_path / "o1" / "out.txt").read_text() == "beside the workflow"
    proc = run_cli("run", str(wf), "--quiet", "--output-dir", "o2", "--set", "r.path=here.txt", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "o2" / "out.txt").read_text() == "typed on the command line"


def test_models_dir_resolves_comfyui_model_names(tmp_path, tiny_models, capsys):
    """`ckpt_name` as ComfyUI writes it (relative to models/checkpoints) loads with --models-dir."""
    import shutil

    root = Path(__file__).resolve().parent.parent
    models = tmp_path / "ComfyUI" / "models"
    shutil.copytree(tiny_models[9], models / "checkpoints" / "sdxl" / "v1" / "tiny-inpaint")
    prompt = json.loads((root / "tests" / "comfy" / "inpaint_api.json").read_text())
    prompt["4"]["inputs"]["ckpt_name"] = "sdxl/v1/tiny-inpaint"
    prompt["10"]["inputs"]["image"] = str(root / "workflows" / "demo_image_alpha.png")
    wf = tmp_path / "workflows" / "api.json"
    wf.parent.mkdir()
    wf.write_text(json.dumps(prompt))
    assert main(["validate", str(wf)]) == 2  # relative to the workflow's folder: no such file
    assert "sdxl/v1/tiny-inpaint" in capsys.readouterr().err
    assert main(["validate", str(wf), "--models-dir", str(models), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ok"]
    prompt["4"]["inputs"]["ckpt_name"] = "../checkpoints/sdxl/v1/tiny-inpaint"  # never looked up in models dirs
    wf.write_text(json.dumps(prompt))
    assert main(["validate", str(wf), "--models-dir", str(models)]) == 2
