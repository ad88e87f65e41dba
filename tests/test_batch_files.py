"""Job files, the manifest and job scheduling of `nodegraph batch`, without Ray (fast)."""

from __future__ import annotations

import json
import sys
from collections import deque
from pathlib import Path
from typing import Annotated

import pytest

from nodegraph import node, validate
from nodegraph.batch.jobs import Job, JobPlanner, NumberedJob, check_job_file, jobs_from_folders, model_key
from nodegraph.batch.manifest import ManifestLine, ManifestWriter, read_manifest
from nodegraph.batch.runner import _Pending, _pick
from nodegraph.cli import _apply_sets
from nodegraph.graph import Graph
from nodegraph.types import MODEL_SOURCE
from nodegraph.workflow import graph_to_dict

TOY = {"version": 1, "nodes": {
    "n": {"type": "Number", "inputs": {"value": 1}},
    "add": {"type": "Add", "inputs": {"a": ["n", "value"], "b": 2}},
    "fmt": {"type": "Format", "inputs": {"n": ["add", "sum"]}},
    "w": {"type": "WriteText", "inputs": {"text": ["fmt", "text"], "name": "out"}},
}}


def write_lines(path: Path, lines: list[object]) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


def test_job_graph_is_the_run_set_graph() -> None:
    """A job's overrides build exactly the graph `nodegraph run --set` builds (one code path)."""
    planner = JobPlanner(TOY, "<toy>")
    job_graph = planner.graph(Job(id="a", set={"n.value": 7, "fmt.style": "brackets", "add.b": ["n", "value"]}))
    cli_graph = JobPlanner(TOY, "<toy>").graph(Job(id="b"))  # the workflow as loaded, no overrides
    _apply_sets(cli_graph, ["n.value=7", "fmt.style=brackets", 'add.b=["n", "value"]'])
    assert graph_to_dict(job_graph) == graph_to_dict(cli_graph)
    assert planner.graph(Job(id="c")).nodes["n"].inputs == {"value": 1}  # the base graph is not modified


def test_every_bad_job_is_reported_at_once_with_line_and_id(tmp_path: Path) -> None:
    jobs = write_lines(tmp_path / "jobs.jsonl", [
        {"id": "ok-1", "set": {"n.value": 3}},
        "",  # blank lines are not jobs
        {"id": "bad-range", "set": {"n.value": 5000}},
        "{not json",
        {"id": "ghost", "set": {"nobody.value": 1}},
        {"id": "../escape", "set": {}},
        {"id": "ok-1", "set": {"n.value": 4}},
        {"id": "ok-2", "set": {"n.value": 3}, "extra": 1},
        {"id": "ok-3", "set": {"n.value": 3}},
    ])
    check = check_job_file(JobPlanner(TOY, "<toy>"), jobs)
    found = {(i.line, i.id, i.kind) for i in check.issues}
    assert found == {(3, "bad-range", "invalid"), (4, None, "unreadable"), (5, "ghost", "invalid"),
                     (6, "../escape", "unreadable"), (7, "ok-1", "duplicate"), (8, "ok-2", "unreadable")}
    by_line = {i.line: i.message for i in check.issues}
    assert "less than or equal to 1000" in by_line[3]
    assert "'nobody'" in by_line[5]
    assert "already used on line 1" in by_line[7]
    assert check.jobs == 5  # lines that parse as jobs: ok-1, bad-range, ghost, ok-1 again, ok-3
    assert check.runnable == 2  # ok-1 (line 1) and ok-3


def test_check_skips_recorded_jobs_and_memoises_identical_overrides(tmp_path: Path) -> None:
    jobs = write_lines(tmp_path / "jobs.jsonl", [{"id": f"j{i}", "set": {"n.value": i % 3}} for i in range(300)])
    planner = JobPlanner(TOY, "<toy>")
    check = check_job_file(planner, jobs, skip=lambda job_id: job_id in {"j0", "j1"})
    assert (check.jobs, check.skipped, check.runnable, check.issues) == (300, 2, 298, [])
    assert len(planner._memo) == 3  # three distinct override sets were validated, not 300 graphs


def test_manifest_is_durable_per_line_and_a_torn_tail_is_dropped(tmp_path: Path) -> None:
    path = tmp_path / "manifest.jsonl"
    with ManifestWriter(path) as m:
        m.write(ManifestLine(id="a", status="done", outputs=["a/x.png"], line=1))
        m.write(ManifestLine(id="b", status="failed", error="boom", line=2))
    with open(path, "ab") as f:  # what a driver killed inside write() leaves behind
        f.write(b'{"id": "c", "status": "do')
    recorded = read_manifest(path)
    assert {k: (v.status, v.outputs) for k, v in recorded.items()} == {"a": ("done", ("a/x.png",)), "b": ("failed", ())}
    assert path.read_bytes().endswith(b"\n") and b'"c"' not in path.read_bytes()
    with ManifestWriter(path) as m:  # appending after the repair starts on a line of its own
        m.write(ManifestLine(id="c", status="done", line=3))
    assert [json.loads(x)["id"] for x in path.read_text().splitlines()] == ["a", "b", "c"]


def test_manifest_with_only_a_torn_line(tmp_path: Path) -> None:
    path = tmp_path / "manifest.jsonl"
    path.write_bytes(b'{"id": "a", "sta')
    assert read_manifest(path) == {}
    assert path.read_bytes() == b""


def test_jobs_from_folders_pair_by_name(tmp_path: Path) -> None:
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    for name in ("cat 01.png", "cat_01.jpg", "dog.png", "lonely.png", "notes.txt"):
        (images / name).write_bytes(b"x")
    for name in ("cat 01.png", "cat_01.png", "dog.webp"):
        (masks / name).write_bytes(b"x")
    unpaired: list[Path] = []
    jobs = list(jobs_from_folders(images, masks, extra={"sample.seed": 5}, unpaired=unpaired))
    assert [j.id for j in jobs] == ["cat_01", "cat_01-2", "dog"]
    assert jobs[0].set == {"image.path": str((images / "cat 01.png").resolve()),
                           "mask.path": str((masks / "cat 01.png").resolve()), "sample.seed": 5}
    assert jobs[2].set["mask.path"].endswith("dog.webp")
    assert [p.name for p in unpaired] == ["lonely.png"]


def _pending(job_id: str, key: tuple) -> _Pending:
    return _Pending(NumberedJob(1, Job(id=job_id)), key)


def test_jobs_go_to_the_worker_that_holds_their_models() -> None:
    a, b = (("ckpt", "source", "A"),), (("ckpt", "source", "B"),)
    pending = deque([_pending("1", a), _pending("2", b), _pending("3", a), _pending("4", b)])
    assert _pick(pending, b).job.job.id == "2"
    assert _pick(pending, b).job.job.id == "4"
    assert _pick(pending, b).job.job.id == "1"  # nothing left with B: the oldest job
    assert _pick(pending, None).job.job.id == "3"


@node(category="toy", outputs={"value": int})
def BatchToyLoader(source: Annotated[str, MODEL_SOURCE], scale: int = 1) -> int:
    """Stands for a checkpoint loader: its source is a model."""
    return scale


def test_model_key_names_model_sources() -> None:
    graph = Graph()
    loader = graph.add("BatchToyLoader", "load", source="builtin:x", scale=2)
    graph.add("Format", "fmt", n=loader.value)
    graph.add("WriteText", "w", text=graph["fmt"].text)
    assert model_key(validate(graph)) == (("load", "source", "builtin:x"),)


def test_batch_without_ray_says_how_to_install_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from nodegraph.batch.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)  # what an environment without the extra looks like
    workflow = tmp_path / "wf.json"
    workflow.write_text(json.dumps(TOY))
    jobs = write_lines(tmp_path / "jobs.jsonl", [{"id": "a"}])
    assert main(["batch", str(workflow), str(jobs), "--output-dir", str(tmp_path / "out")]) == 2
    assert 'pip install -e ".[ray]"' in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_batch_check_lists_problems_without_running(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from nodegraph.batch.cli import main

    workflow = tmp_path / "wf.json"
    workflow.write_text(json.dumps(TOY))
    jobs = write_lines(tmp_path / "jobs.jsonl", [{"id": "a", "set": {"n.value": 2}}, {"id": "b", "set": {"n.x": 1}}])
    assert main(["batch", str(workflow), str(jobs), "--check"]) == 2
    captured = capsys.readouterr()
    assert "line 2 (job 'b')" in captured.err and "2 job(s), 1 problem(s)" in captured.out


def test_a_batch_never_starts_over_an_existing_manifest(tmp_path: Path) -> None:
    from nodegraph.batch.runner import BatchOptions, BatchRunner, ManifestExists

    workflow = tmp_path / "wf.json"
    workflow.write_text(json.dumps(TOY))
    jobs = write_lines(tmp_path / "jobs.jsonl", [{"id": "a"}])
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.jsonl").write_text('{"id": "a", "status": "done"}\n')
    with pytest.raises(ManifestExists, match="--resume"):
        BatchRunner(BatchOptions(workflow=workflow, jobs=jobs, output_dir=out)).run()
    assert (out / "manifest.jsonl").read_text() == '{"id": "a", "status": "done"}\n'


def test_ctrl_c_while_checking_a_long_file_stops_before_any_run(tmp_path: Path) -> None:
    from nodegraph.batch.runner import BatchOptions, BatchRunner, BatchStop

    workflow = tmp_path / "wf.json"
    workflow.write_text(json.dumps(TOY))
    jobs = write_lines(tmp_path / "jobs.jsonl", [{"id": f"j{i}", "set": {"n.value": i % 5}} for i in range(5000)])
    stop = BatchStop()
    stop.request()  # as the CLI's SIGINT handler does
    summary = BatchRunner(BatchOptions(workflow=workflow, jobs=jobs, output_dir=tmp_path / "out"), stop=stop).run()
    assert summary.interrupted and summary.done == 0
    assert not (tmp_path / "out").exists()  # nothing started: no Ray, no output folder, no manifest


def test_batch_jobs_command_writes_a_job_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from nodegraph.batch.cli import main

    (tmp_path / "img").mkdir()
    (tmp_path / "msk").mkdir()
    for name in ("a.png", "b.png"):
        (tmp_path / "img" / name).write_bytes(b"x")
    (tmp_path / "msk" / "a.png").write_bytes(b"x")
    out = tmp_path / "jobs.jsonl"
    assert main(["batch-jobs", "--images", str(tmp_path / "img"), "--masks", str(tmp_path / "msk"),
                 "--set", "sample.steps=30", "--set", "positive.prompt=a cat", "-o", str(out)]) == 0
    jobs = [json.loads(x) for x in out.read_text().splitlines()]
    assert jobs == [{"id": "a", "set": {"image.path": str((tmp_path / "img" / "a.png").resolve()),
                                        "mask.path": str((tmp_path / "msk" / "a.png").resolve()),
                                        "sample.steps": 30, "positive.prompt": "a cat"}}]
    assert "b.png" in capsys.readouterr().err


def test_batch_models_dir_resolves_comfyui_model_names(tmp_path: Path, tiny_models: dict[int, Path],
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    from nodegraph.batch.cli import main

    root = Path(__file__).resolve().parent.parent
    models = tmp_path / "models"
    shutil.copytree(tiny_models[9], models / "checkpoints" / "sdxl" / "v1" / "tiny")
    prompt = json.loads((root / "tests" / "comfy" / "inpaint_api.json").read_text())
    prompt["4"]["inputs"]["ckpt_name"] = "sdxl/v1/tiny"
    prompt["10"]["inputs"]["image"] = str(root / "workflows" / "demo_image_alpha.png")
    workflow = tmp_path / "api.json"
    workflow.write_text(json.dumps(prompt))
    jobs = write_lines(tmp_path / "jobs.jsonl", [{"id": "a", "set": {"3.seed": 1}}])
    assert main(["batch", str(workflow), str(jobs), "--check", "--models-dir", str(models)]) == 0
    assert "1 job(s), 0 problem(s)" in capsys.readouterr().out
    assert main(["batch", str(workflow), str(jobs), "--check"]) == 2  # the name alone names no file
