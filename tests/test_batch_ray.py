"""`nodegraph batch` on a real local Ray instance with the tiny model: outputs equal the CLI's, a killed
worker's job is retried and recorded once, a killed driver resumes, bad jobs fail alone, and a
million-line job file streams in bounded memory until Ctrl-C. One Ray instance serves the module."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # before Ray is imported: loopback only
ray = pytest.importorskip("ray")

from nodegraph.batch.jobs import JobCheck  # noqa: E402
from nodegraph.batch.manifest import ManifestLine  # noqa: E402
from nodegraph.batch.runner import BatchOptions, BatchRunner, LogListener, _package_root  # noqa: E402
from nodegraph.settings import EngineSettings  # noqa: E402

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
JOBS = 40
DRIVER_RSS_MB: dict[str, float] = {}  # a driver's peak memory on a small job file, for comparison


@pytest.fixture(scope="module")
def ray_address() -> Any:
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False,
             configure_logging=False, runtime_env={"env_vars": {"PYTHONPATH": _package_root()}})
    address = ray.get_runtime_context().gcs_address
    assert address.startswith("127.0.0.1:") and ray.util.get_node_ip_address() == "127.0.0.1"
    yield address
    ray.shutdown()


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, builtin_models_dir: Path) -> dict[str, Path]:
    """A tiny-model workflow with absolute paths (2 steps), and a cache dir holding the built-in model."""
    root = tmp_path_factory.mktemp("batch")
    data = json.loads((ROOT / "workflows" / "demo_tiny.json").read_text())
    nodes = data["nodes"]
    nodes["image"]["inputs"]["path"] = str(ROOT / "workflows" / "demo_image.png")
    nodes["mask"]["inputs"]["path"] = str(ROOT / "workflows" / "demo_mask.png")
    nodes["sample"]["inputs"]["steps"] = 2
    nodes["save"]["inputs"]["prefix"] = "out"
    workflow = root / "workflow.json"
    workflow.write_text(json.dumps(data))
    cache = root / "cache"
    cache.mkdir()
    (cache / "models").symlink_to(builtin_models_dir)
    return {"root": root, "workflow": workflow, "cache": cache}


def job(i: int) -> dict[str, Any]:
    return {"id": f"job-{i:03d}", "set": {"sample.seed": 1000 + i, "positive.prompt": f"a red apple, take {i % 7}"}}


def write_jobs(path: Path, jobs: list[Any]) -> Path:
    path.write_text("".join((j if isinstance(j, str) else json.dumps(j)) + "\n" for j in jobs))
    return path


def manifest_lines(out: Path) -> list[dict[str, Any]]:
    path = out / "manifest.jsonl"
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.endswith("}")]


def options(env: dict[str, Path], jobs: Path, out: Path, **kw: Any) -> BatchOptions:
    settings = EngineSettings(cache_dir=env["cache"], state_dir=env["cache"])
    return BatchOptions(workflow=env["workflow"], jobs=jobs, output_dir=out, workers=2, settings=settings, **kw)


def cli_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def batch_cli(env: dict[str, Path], address: str, jobs: Path, out: Path, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "nodegraph.batch.cli", "batch", str(env["workflow"]), str(jobs),
                             "--output-dir", str(out), "--ray", address, "--workers", "1", "--cache-dir",
                             str(env["cache"]), "--quiet", *extra], cwd=ROOT, env=cli_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


class Recorder(LogListener):
    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    def checked(self, check: JobCheck) -> None:
        self.events.append(("checked", check))

    def job_recorded(self, entry: ManifestLine) -> None:
        self.events.append(("recorded", entry.id))

    def worker_lost(self, worker: str, job_ids: list[str]) -> None:
        self.events.append(("lost", list(job_ids)))


@pytest.fixture(scope="module")
def killed_batch(ray_address: str, env: dict[str, Path]) -> dict[str, Any]:
    """40 good jobs and 3 bad lines, 2 workers; one worker's process is SIGKILLed while it runs a job."""
    lines: list[Any] = [job(i) for i in range(JOBS)]
    lines.insert(5, {"id": "bad-seed", "set": {"sample.seed": "not a number"}})
    lines.insert(9, "{this is not json")
    lines.insert(12, {"id": "job-001", "set": {"sample.seed": 1}})
    jobs = write_jobs(env["root"] / "jobs.jsonl", lines)
    out = env["root"] / "out"
    recorder = Recorder()
    runner = BatchRunner(options(env, jobs, out, report=env["root"] / "report.json"), recorder)
    holder: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: holder.setdefault("summary", runner.run()))
    thread.start()
    try:
        wait_for(lambda: len(manifest_lines(out)) >= 6, 120, "the first jobs")
        victim = runner.actors[0]
        wait_for(lambda: ray.get(victim.status.remote())["job"] is not None, 30, "a running job")
        status = ray.get(victim.status.remote())
        os.kill(status["pid"], signal.SIGKILL)
    finally:
        thread.join(timeout=240)
    assert not thread.is_alive()
    return {"summary": holder["summary"], "out": out, "jobs": jobs, "events": recorder.events, "killed": status}


def test_worker_killed_mid_job_is_retried_and_every_job_recorded_once(killed_batch: dict[str, Any]) -> None:
    summary, out = killed_batch["summary"], killed_batch["out"]
    lines = manifest_lines(out)
    ids = [x["id"] for x in lines]
    assert sorted(ids) == sorted({f"job-{i:03d}" for i in range(JOBS)} | {"bad-seed"})  # each exactly once
    assert summary.done == JOBS and summary.failed == 0 and summary.retried >= 1
    lost = [ids for kind, ids in killed_batch["events"] if kind == "lost"]
    assert lost and all(lost)  # the jobs on the killed process (running and queued) came back
    by_id = {x["id"]: x for x in lines}
    for job_id in sum(lost, []):
        assert by_id[job_id]["status"] == "done" and by_id[job_id]["attempts"] == 2
        assert by_id[job_id]["worker"] != killed_batch["killed"]["worker"]
    report = json.loads((killed_batch["out"].parent / "report.json").read_text())
    # The restarted process is listed once it has answered; on a fast machine the other worker may finish the
    # batch first, so the report holds one or two processes for the killed worker, never more.
    assert report["workers"]["worker-0"]["lost"] == 1 and len(report["workers"]["worker-0"]["processes"]) in (1, 2)
    assert sum(w["jobs"] for w in report["workers"].values()) == JOBS
    assert not (out / ".partial").exists()


def test_bad_jobs_are_reported_before_any_run_and_fail_alone(killed_batch: dict[str, Any]) -> None:
    events, summary = killed_batch["events"], killed_batch["summary"]
    assert events[0][0] == "checked"  # every job was checked before the first was recorded
    issues = {(i.line, i.id, i.kind) for i in events[0][1].issues}
    assert issues == {(6, "bad-seed", "invalid"), (10, None, "unreadable"), (13, "job-001", "duplicate")}
    bad = [x for x in manifest_lines(killed_batch["out"]) if x["id"] == "bad-seed"]
    assert len(bad) == 1 and bad[0]["status"] == "failed" and "seed" in bad[0]["error"] and bad[0]["line"] == 6
    assert summary.invalid == 1 and summary.done == JOBS


def test_batch_outputs_are_pixel_identical_to_nodegraph_run(killed_batch: dict[str, Any], env: dict[str, Path],
                                                           tmp_path: Path) -> None:
    """The CLI (`nodegraph run WORKFLOW --set ...`, in a subprocess, its own fresh cache) for every job."""
    from PIL import Image

    cli_cache = tmp_path / "cli-cache"
    cli_cache.mkdir()
    (cli_cache / "models").symlink_to(env["cache"] / "models")
    script = ["import sys", "from nodegraph.cli import main", f"for i in range({JOBS}):",
              "    s = 'sample.seed=%d' % (1000 + i)",
              "    p = 'positive.prompt=a red apple, take %d' % (i % 7)",
              f"    code = main(['run', {str(env['workflow'])!r}, '--set', s, '--set', p, '--quiet', '--output-dir',"
              f" {str(tmp_path)!r} + '/cli/%d' % i, '--cache-dir', {str(cli_cache)!r}])",
              "    assert code == 0, code"]
    subprocess.run([sys.executable, "-c", "\n".join(script)], cwd=ROOT, env=cli_env(), check=True, timeout=300)
    by_id = {x["id"]: x for x in manifest_lines(killed_batch["out"])}
    previous = None
    for i in range(JOBS):
        entry = by_id[f"job-{i:03d}"]
        assert entry["outputs"] == [f"job-{i:03d}/out_00001.png"]
        ours = np.asarray(Image.open(killed_batch["out"] / entry["outputs"][0]))
        theirs = np.asarray(Image.open(tmp_path / "cli" / str(i) / "out_00001.png"))
        assert ours.shape == theirs.shape and np.array_equal(ours, theirs), f"job {i}"
        assert previous is None or not np.array_equal(ours, previous)  # seeds differ, so do the images
        previous = ours


def _rss_mb(pid: int) -> float:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def test_killed_driver_then_resume_redoes_nothing_and_misses_nothing(ray_address: str, env: dict[str, Path]) -> None:
    jobs = write_jobs(env["root"] / "resume.jsonl", [job(i) for i in range(24)])
    out = env["root"] / "resume-out"
    proc = batch_cli(env, ray_address, jobs, out)
    peak = 0.0

    def started() -> bool:
        nonlocal peak
        peak = max(peak, _rss_mb(proc.pid))
        return len(manifest_lines(out)) >= 5 or proc.poll() is not None

    try:
        wait_for(started, 150, "the first jobs")
        DRIVER_RSS_MB["small"] = peak
        proc.kill()
    finally:
        proc.wait(timeout=30)
    before = manifest_lines(out)
    assert 5 <= len(before) < 24, proc.stderr.read().decode()[-2000:] if proc.stderr else ""
    stamps = {x["id"]: (out / x["outputs"][0]).stat().st_mtime_ns for x in before}
    with open(out / "manifest.jsonl", "ab") as f:  # the driver may also die inside a write: a torn line
        f.write(b'{"id": "job-023", "status": "done", "outp')
    summary = BatchRunner(options(env, jobs, out, resume=True)).run()
    after = manifest_lines(out)
    assert after[:len(before)] == before  # recorded lines kept as they were
    assert sorted(x["id"] for x in after) == [f"job-{i:03d}" for i in range(24)]  # each exactly once
    assert summary.skipped == len(before) and summary.done == 24 - len(before)
    assert all((out / x["outputs"][0]).stat().st_mtime_ns == stamps[x["id"]] for x in before)  # not redone
    assert all((out / x["outputs"][0]).is_file() for x in after)


def test_million_line_job_file_streams_in_bounded_memory_then_ctrl_c(ray_address: str, env: dict[str, Path]) -> None:
    jobs = env["root"] / "million.jsonl"
    padding = "x" * 150  # about 250 bytes a line: 250 MB of jobs that must never be held at once
    with open(jobs, "w") as f:
        for i in range(1_000_000):
            f.write(json.dumps({"id": f"m{i:07d}", "set": {"sample.seed": i % 4,
                                                           "negative.prompt": f"blurry {padding}"}}) + "\n")
    size_mb = jobs.stat().st_size / 1e6
    out = env["root"] / "million-out"
    proc = batch_cli(env, ray_address, jobs, out)
    peak = 0.0
    at_first = None
    try:
        def progress() -> bool:
            nonlocal peak, at_first
            if proc.poll() is not None:
                return True
            peak = max(peak, _rss_mb(proc.pid))
            done = len(manifest_lines(out))
            if done >= 1 and at_first is None:
                at_first = _rss_mb(proc.pid)
            return done >= 12

        wait_for(progress, 150, "the first jobs of the million")
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:] if proc.stderr else ""
        at_twelfth = _rss_mb(proc.pid)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130
    assert at_first is not None and at_twelfth - at_first < 20  # no growth per job
    # Checking all the jobs first costs 8 bytes a job (16 MB); holding the file would cost its size (226 MB),
    # its parsed jobs several times that. Compared with a driver of 24 jobs (the resume test).
    baseline = DRIVER_RSS_MB.get("small", 450.0)
    assert peak - baseline < 60 < size_mb / 3, (peak, baseline, size_mb)
    lines = manifest_lines(out)
    assert 12 <= len(lines) < 100 and len({x["id"] for x in lines}) == len(lines)
    assert all(x["status"] == "done" and (out / x["outputs"][0]).is_file() for x in lines)
    assert not (out / ".partial").exists()  # nothing half-written left behind
