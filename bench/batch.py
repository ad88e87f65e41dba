"""Batch throughput and faults: an in-process loop over Engine.run vs `nodegraph batch` with 1 and 2 workers.

    python3 -m bench.batch [--jobs 200] [--steps 2] [--fault-jobs 200] [--kills 5]

All modes run the same tiny-model jobs (distinct seeds, no disk tier, so every job samples) in the same
process on a local Ray instance; figures are ratios against the in-process loop measured in this run.
"Steady" rates leave out each worker's first job (process start, imports, model load). The fault run
SIGKILLs a worker process every few jobs and then checks the manifest: no job lost, none recorded twice.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # local Ray on loopback only
os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parent.parent


def _workflow(tmp: Path, steps: int) -> Path:
    data = json.loads((ROOT / "workflows" / "demo_tiny.json").read_text())
    nodes = data["nodes"]
    nodes["image"]["inputs"]["path"] = str(ROOT / "workflows" / "demo_image.png")
    nodes["mask"]["inputs"]["path"] = str(ROOT / "workflows" / "demo_mask.png")
    nodes["sample"]["inputs"]["steps"] = steps
    path = tmp / "workflow.json"
    path.write_text(json.dumps(data))
    return path


def _jobs(tmp: Path, name: str, count: int) -> Path:
    path = tmp / f"{name}.jsonl"
    path.write_text("".join(json.dumps({"id": f"j{i:05d}", "set": {"sample.seed": 10_000 + i}}) + "\n"
                            for i in range(count)))
    return path


def in_process(workflow: Path, jobs: Path, out: Path, settings: Any) -> dict[str, float]:
    from nodegraph.batch.jobs import JobPlanner, iter_lines, parse_job
    from nodegraph.cli import embedded_workflow
    from nodegraph.executor import Engine

    planner = JobPlanner.from_file(workflow, settings, out)
    engine = Engine(settings)
    times = []
    start = time.perf_counter()
    for line, text in iter_lines(jobs):
        parsed = parse_job(line, text)
        assert not hasattr(parsed, "message")
        t0 = time.perf_counter()
        graph = planner.graph(parsed.job)  # type: ignore[union-attr]
        target = out / parsed.job.id  # type: ignore[union-attr]
        policy = planner.policy(target)
        assert policy is not None
        result = engine.run(graph, output_dir=target, policy=policy, workflow_json=embedded_workflow(graph, policy))
        assert result.ok
        times.append(time.perf_counter() - t0)
    total = time.perf_counter() - start
    steady = sum(times[1:])
    return {"jobs": len(times), "seconds": total, "jobs_per_s": len(times) / total,
            "steady_jobs_per_s": (len(times) - 1) / steady, "per_job_ms": 1000 * steady / (len(times) - 1)}


class _Timeline:
    def __init__(self) -> None:
        self.stamps: list[tuple[float, str]] = []
        self.lost = 0

    def checked(self, check: Any) -> None:
        pass

    def started(self, total: int, skipped: int, workers: int) -> None:
        self.t0 = time.perf_counter()

    def job_recorded(self, entry: Any) -> None:
        self.stamps.append((time.perf_counter(), entry.worker or ""))

    def worker_lost(self, worker: str, job_ids: list[str]) -> None:
        self.lost += 1

    def stopping(self) -> None:
        pass


def batch(workflow: Path, jobs: Path, out: Path, settings: Any, workers: int,
          kills: int = 0) -> tuple[dict[str, float], Any, _Timeline]:
    import ray

    from nodegraph.batch.runner import BatchOptions, BatchRunner

    timeline = _Timeline()
    runner = BatchRunner(BatchOptions(workflow=workflow, jobs=jobs, output_dir=out, workers=workers,
                                      settings=settings), timeline)
    killer = None
    if kills:
        def kill_loop() -> None:
            total = sum(1 for _ in open(jobs))
            every = max(1, total // (kills + 1))
            done_kills = 0
            while done_kills < kills:
                time.sleep(0.05)
                if len(timeline.stamps) < every * (done_kills + 1) or not runner.actors:
                    continue
                actor = random.choice(runner.actors)
                try:
                    status = ray.get(actor.status.remote(), timeout=30)
                except Exception:
                    continue  # restarting
                if status["job"] is None:
                    continue
                os.kill(status["pid"], signal.SIGKILL)
                done_kills += 1

        killer = threading.Thread(target=kill_loop, daemon=True)
        killer.start()
    start = time.perf_counter()
    summary = runner.run()
    total = time.perf_counter() - start
    if killer is not None:
        killer.join(timeout=5)
    # Steady state: from each worker process's first recorded job on.
    seen: set[str] = set()
    steady = [t for t, w in timeline.stamps if w in seen or seen.add(w)]  # type: ignore[func-returns-value]
    n = len(timeline.stamps)
    figures = {"jobs": n, "seconds": total, "jobs_per_s": n / total}
    if len(steady) > 1:
        span = steady[-1] - min(t for t, _ in timeline.stamps)
        figures["steady_jobs_per_s"] = len(steady) / span if span > 0 else float("nan")
    return figures, summary, timeline


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--fault-jobs", type=int, default=200)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--cache-dir", default=None, help="where the built-in tiny model lives (default: usual)")
    args = parser.parse_args(argv)

    import ray

    from nodegraph.batch.runner import _package_root
    from nodegraph.settings import EngineSettings

    settings = EngineSettings.from_env()
    if args.cache_dir:
        root = Path(args.cache_dir).resolve()
        settings = settings.with_(cache_dir=root, state_dir=root)
    settings = settings.with_(cache_dir=None)  # memory tier only: every job samples, in every mode
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False,
             configure_logging=False, runtime_env={"env_vars": {"PYTHONPATH": _package_root()}})
    results: dict[str, Any] = {"jobs": args.jobs, "steps": args.steps}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        workflow = _workflow(tmp, args.steps)
        jobs = _jobs(tmp, "jobs", args.jobs)
        results["in_process"] = in_process(workflow, jobs, tmp / "loop", settings)
        print("in-process", results["in_process"], flush=True)
        for workers in (1, 2):
            figures, summary, _ = batch(workflow, jobs, tmp / f"batch{workers}", settings, workers)
            assert summary.done == args.jobs, summary
            results[f"batch_{workers}"] = figures
            print(f"batch {workers} worker(s)", figures, flush=True)
        base = results["in_process"]["steady_jobs_per_s"]
        one = results["batch_1"].get("steady_jobs_per_s", float("nan"))
        results["overhead_ms_per_job"] = 1000 * (1 / one - 1 / base)
        if args.kills:
            fjobs = _jobs(tmp, "fault", args.fault_jobs)
            out = tmp / "fault"
            figures, summary, timeline = batch(workflow, fjobs, out, settings, 2, kills=args.kills)
            ids = [json.loads(x)["id"] for x in (out / "manifest.jsonl").read_text().splitlines()]
            expected = {f"j{i:05d}" for i in range(args.fault_jobs)}
            results["fault"] = {"jobs": args.fault_jobs, "kills": args.kills, "workers_lost": timeline.lost,
                                "retried": summary.retried, "failed": summary.failed,
                                "lost": len(expected - set(ids)), "duplicated": len(ids) - len(set(ids)),
                                "seconds": figures["seconds"]}
            print("fault", results["fault"], flush=True)
    ray.shutdown()
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
