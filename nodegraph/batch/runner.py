"""The batch driver: streams a job file to a pool of Ray actors and records each finished job once.

The driver reads the job file twice, never whole: once to check every job (before any runs), once to
feed a bounded look-ahead of jobs to the workers (``window`` jobs queued per worker). It alone writes
the manifest. A worker process that dies loses the jobs queued on it; Ray restarts the actor and the
driver puts those jobs back at the head of the queue, up to ``retries`` times each.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from nodegraph.batch.jobs import (
    CheckStopped,
    JobCheck,
    JobIssue,
    JobPlanner,
    ModelKey,
    NumberedJob,
    check_job_file,
    iter_lines,
    parse_job,
)
from nodegraph.batch.manifest import MANIFEST_NAME, ManifestLine, ManifestWriter, Recorded, read_manifest
from nodegraph.batch.worker import PARTIAL_DIR, BatchWorker, JobOutcome
from nodegraph.files import atomic_write_bytes
from nodegraph.settings import EngineSettings

if TYPE_CHECKING:
    from collections.abc import Iterator

logger = logging.getLogger(__name__)

RESTART_TIMEOUT_S = 300
# Read by Ray at import: "0" makes a local instance use 127.0.0.1 as its node address and bind its servers
# to loopback only (Ray's own default on macOS and Windows).
LOOPBACK_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
INSTALL_HINT = 'Ray is not installed: pip install -e ".[ray]" (or pip install ray)'


class RayMissing(RuntimeError):
    pass


class ManifestExists(RuntimeError):
    pass


@dataclass
class BatchOptions:
    workflow: Path
    jobs: Path
    output_dir: Path = Path("batch-output")
    ray_address: str = "auto"  # "auto": start a local Ray instance; else the address of a running cluster
    workers: int | None = None  # None: as many as the cluster's resources fit
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0
    resume: bool = False
    retry_failed: bool = False
    retries: int = 3
    report: Path | None = None
    settings: EngineSettings = field(default_factory=EngineSettings)
    window: int = 2  # jobs queued on each worker (one running, the rest ready to start at once)


@dataclass
class WorkerFigures:
    jobs: int = 0
    failed: int = 0
    seconds: float = 0.0
    loads: int = 0
    cache_hits: int = 0
    lost: int = 0  # times its process died with jobs on it
    processes: list[str] = field(default_factory=list)


@dataclass
class BatchSummary:
    jobs: int = 0  # lines that are jobs (valid or not) plus unreadable lines
    done: int = 0
    failed: int = 0
    skipped: int = 0  # already recorded (--resume)
    invalid: int = 0
    retried: int = 0
    interrupted: bool = False
    seconds: float = 0.0
    issues: list[JobIssue] = field(default_factory=list)
    workers: dict[str, WorkerFigures] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.interrupted and self.failed == 0 and self.invalid == 0


class BatchListener(Protocol):
    """What the CLI draws (progress bar and summary) from; every method is called on the driver thread."""

    def checked(self, check: JobCheck) -> None: ...

    def started(self, total: int, skipped: int, workers: int) -> None: ...

    def job_recorded(self, entry: ManifestLine) -> None: ...

    def worker_lost(self, worker: str, job_ids: list[str]) -> None: ...

    def stopping(self) -> None: ...


class LogListener:
    def checked(self, check: JobCheck) -> None:
        for issue in check.issues:
            logger.warning("job file: %s", issue)

    def started(self, total: int, skipped: int, workers: int) -> None:
        logger.info("batch: %d jobs (%d already recorded), %d workers", total, skipped, workers)

    def job_recorded(self, entry: ManifestLine) -> None:
        logger.debug("job %s %s", entry.id, entry.status)

    def worker_lost(self, worker: str, job_ids: list[str]) -> None:
        logger.warning("worker %s died with jobs %s on it; retrying them", worker, job_ids)

    def stopping(self) -> None:
        logger.info("batch: stopping")


class BatchStop:
    """Asked from a signal handler: the first ``request`` stops dispatching and lets running jobs finish,
    the second abandons them (their partial files stay under ``.partial/`` and are removed)."""

    def __init__(self) -> None:
        self.soft = threading.Event()
        self.hard = threading.Event()

    def request(self) -> None:
        (self.hard if self.soft.is_set() else self.soft).set()


@dataclass
class _Pending:
    job: NumberedJob
    key: ModelKey
    attempts: int = 0


def _import_ray(local: bool = False) -> Any:
    """Ray, or RayMissing with how to install it. ``local``: a one-machine instance will be started, so
    Ray must use the loopback address (it otherwise serves on the machine's external address)."""
    if local and "ray" not in sys.modules:
        os.environ.setdefault(LOOPBACK_ONLY_ENV, "0")
    try:
        import ray
    except ImportError:
        raise RayMissing(INSTALL_HINT) from None
    return ray


def _package_root() -> str:
    import nodegraph

    return str(Path(nodegraph.__file__).resolve().parent.parent)


def _connect(ray: Any, address: str) -> bool:
    """Start or join Ray; True when this call started it (and must shut it down)."""
    if ray.is_initialized():
        return False
    # Workers import this package from where the driver did (a checkout that is not installed, too).
    pythonpath = os.pathsep.join(p for p in (_package_root(), os.environ.get("PYTHONPATH")) if p)
    runtime_env = {"env_vars": {"PYTHONPATH": pythonpath}}
    if address == "auto":
        if ray.util.get_node_ip_address() not in ("127.0.0.1", "::1"):
            logger.warning("Ray was imported before the batch runner: the local instance serves on %s, not "
                           "only on loopback (set %s=0 before importing ray)",
                           ray.util.get_node_ip_address(), LOOPBACK_ONLY_ENV)
        ray.init(include_dashboard=False, _node_ip_address="127.0.0.1", runtime_env=runtime_env,
                 log_to_driver=False, configure_logging=False)
    else:
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=False, configure_logging=False)
    return True


def _worker_count(ray: Any, opts: BatchOptions) -> int:
    if opts.workers is not None:
        return max(1, opts.workers)
    resources = ray.cluster_resources()
    fits = int(resources.get("CPU", 1) // max(opts.cpus_per_worker, 1e-9))
    if opts.gpus_per_worker > 0:
        fits = min(fits, int(resources.get("GPU", 0) // opts.gpus_per_worker))
    return max(1, fits)


def _actor_class(ray: Any) -> Any:
    class RayBatchWorker(BatchWorker):
        _threads_set = False

        def run_job(self, job_id: str, overrides: dict[str, Any]) -> dict[str, Any]:
            if not self._threads_set:
                # As many compute threads as CPUs the worker holds, whatever the driver's environment says:
                # torch's float reductions depend on the thread count, and a job must give the pixels of
                # `nodegraph run` at that count (OMP_NUM_THREADS=C). Set on the first job, not at start-up,
                # so that a restarted worker answers at once; not through a runtime_env, which would keep
                # Ray from reusing its started worker processes.
                import torch

                cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
                torch.set_num_threads(max(1, math.floor(cpus)))
                self._threads_set = True
            return super().run_job(job_id, overrides)

        # A separate thread answers status() while a job runs (the test that kills a worker mid-job asks).
        @ray.method(concurrency_group="control")
        def status(self) -> dict[str, Any]:
            return super().status()

    return ray.remote(concurrency_groups={"control": 1})(RayBatchWorker)


def _skip(recorded: Recorded | None, output_dir: Path, retry_failed: bool) -> bool:
    if recorded is None:
        return False
    if recorded.status == "done":
        return all((output_dir / f).exists() for f in recorded.outputs)
    return not retry_failed


class BatchRunner:
    """One batch: check, start workers, dispatch, record. ``run`` returns the summary."""

    def __init__(self, opts: BatchOptions, listener: BatchListener | None = None, stop: BatchStop | None = None):
        self.opts = opts
        self.listener: BatchListener = listener or LogListener()
        self.stop = stop or BatchStop()
        self.output_dir = opts.output_dir.expanduser().resolve()
        self.summary = BatchSummary()
        self.actors: list[Any] = []  # the live actor handles (tests ask them for status)
        self._per_job: list[dict[str, Any]] = []

    # ---- the whole batch -----------------------------------------------------------------------
    def run(self) -> BatchSummary:
        start = time.perf_counter()
        opts = self.opts
        planner = JobPlanner.from_file(opts.workflow, opts.settings, self.output_dir)  # WorkflowError: broken
        manifest_path = self.output_dir / MANIFEST_NAME
        if manifest_path.exists() and not opts.resume:
            raise ManifestExists(f"{manifest_path} exists: pass --resume to continue that batch, "
                                 "or choose another --output-dir")
        recorded = read_manifest(manifest_path) if opts.resume else {}
        try:
            check = check_job_file(planner, opts.jobs,
                                   lambda job_id: _skip(recorded.get(job_id), self.output_dir, opts.retry_failed),
                                   self.stop.soft.is_set)
        except CheckStopped:
            self.summary.interrupted = True
            self.summary.seconds = time.perf_counter() - start
            return self.summary
        self.summary.issues = check.issues
        self.summary.jobs = check.jobs + check.count("unreadable")
        self.listener.checked(check)
        ray = _import_ray(local=opts.ray_address == "auto")
        self.output_dir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.output_dir / PARTIAL_DIR, ignore_errors=True)  # left by an abandoned batch
        started_ray = _connect(ray, opts.ray_address)
        try:
            with ManifestWriter(manifest_path) as manifest:
                self._start_workers(ray, planner)
                self._dispatch(ray, planner, check, recorded, manifest)
        finally:
            for actor in self.actors:
                ray.kill(actor)
            self.actors = []
            if started_ray:
                ray.shutdown()
            shutil.rmtree(self.output_dir / PARTIAL_DIR, ignore_errors=True)
        self.summary.seconds = time.perf_counter() - start
        if opts.report is not None:
            self._write_report(opts.report)
        return self.summary

    def _start_workers(self, ray: Any, planner: JobPlanner) -> None:
        opts = self.opts
        count = _worker_count(ray, opts)
        settings = opts.settings.with_(output_dir=self.output_dir)
        cls = _actor_class(ray).options(num_cpus=opts.cpus_per_worker, num_gpus=opts.gpus_per_worker,
                                        max_restarts=-1, max_task_retries=0)
        self.actors = [cls.remote(planner.data, planner.source, planner.policy(), settings) for _ in range(count)]
        for i, info in enumerate(ray.get([a.ready.remote() for a in self.actors])):
            self.summary.workers[f"worker-{i}"] = WorkerFigures(processes=[info["worker"]])

    # ---- dispatch ------------------------------------------------------------------------------
    def _stream(self, planner: JobPlanner, check: JobCheck, recorded: dict[str, Recorded],
                manifest: ManifestWriter) -> Iterator[_Pending]:
        """Jobs to run, in file order; invalid and already-recorded ones are dealt with on the way."""
        for line, text in iter_lines(self.opts.jobs):
            parsed = parse_job(line, text)
            if isinstance(parsed, JobIssue):
                continue  # unreadable: reported by the check, no id to record it under
            job_id = parsed.job.id
            if _skip(recorded.get(job_id), self.output_dir, self.opts.retry_failed):
                self.summary.skipped += 1
                continue
            issue = check.bad.get(line)
            if issue is not None:
                if issue.kind == "duplicate":
                    continue  # the first line with this id is the job
                problem, _ = planner.check(parsed.job)
                self._record(manifest, ManifestLine(id=job_id, status="failed", line=line, attempts=0,
                                                    error=f"invalid job: {problem or issue.message}"), None)
                self.summary.invalid += 1
                continue
            yield _Pending(parsed, planner.check(parsed.job)[1])

    def _dispatch(self, ray: Any, planner: JobPlanner, check: JobCheck, recorded: dict[str, Recorded],
                  manifest: ManifestWriter) -> None:
        from ray.exceptions import RayActorError, WorkerCrashedError

        opts = self.opts
        stream = self._stream(planner, check, recorded, manifest)
        self.listener.started(check.runnable, check.skipped, len(self.actors))
        lookahead = opts.window * len(self.actors)
        pending: deque[_Pending] = deque()
        inflight: dict[Any, tuple[_Pending, int]] = {}
        queued = [0] * len(self.actors)
        held: list[ModelKey | None] = [None] * len(self.actors)  # models each worker loaded last
        # Workers whose process died: no jobs go to them until Ray's restart has run their constructor
        # (a ready() probe answers); the other workers go on meanwhile.
        probes: dict[Any, int] = {}
        down: dict[int, float] = {}  # worker -> when it was found dead
        exhausted = False
        announced = False
        while True:
            if self.stop.hard.is_set():
                self.summary.interrupted = True
                return
            if self.stop.soft.is_set():
                self.summary.interrupted = True
                if not announced:
                    self.listener.stopping()
                    announced = True
                pending.clear()
                exhausted = True
            while not exhausted and len(pending) < lookahead:
                nxt = next(stream, None)
                if nxt is None:
                    exhausted = True
                else:
                    pending.append(nxt)
            for w in range(len(self.actors)):
                while pending and w not in down and queued[w] < opts.window:
                    item = _pick(pending, held[w])
                    held[w] = item.key
                    item.attempts += 1
                    ref = self.actors[w].run_job.remote(item.job.job.id, item.job.job.set)
                    inflight[ref] = (item, w)
                    queued[w] += 1
            if not inflight and (exhausted and not pending or self.stop.soft.is_set()):
                return
            if not inflight and not probes:
                raise RuntimeError(f"every worker is gone (none came back within {RESTART_TIMEOUT_S}s); "
                                   "the jobs not recorded run with --resume")
            ready, _ = ray.wait([*inflight, *probes], num_returns=1, timeout=0.2)
            if ready:
                ready, _ = ray.wait([*inflight, *probes], num_returns=len(inflight) + len(probes), timeout=0)
            lost: dict[int, list[_Pending]] = {}
            for ref in ready:
                if ref in probes:
                    self._probe_answered(ray, ref, probes, down)
                    continue
                item, w = inflight.pop(ref)
                queued[w] -= 1
                try:
                    outcome = JobOutcome.model_validate(ray.get(ref))
                except (RayActorError, WorkerCrashedError):
                    lost.setdefault(w, []).append(item)
                    continue
                self._record(manifest, ManifestLine(
                    id=outcome.id, status=outcome.status, outputs=outcome.outputs, seconds=round(outcome.seconds, 6),
                    worker=outcome.worker, error=outcome.error, report=outcome.report, line=item.job.line,
                    attempts=item.attempts), (f"worker-{w}", outcome))
            for w, items in lost.items():
                self._worker_lost(w, items, pending, manifest, died=w not in down)
                held[w] = None
                if w not in down:
                    down[w] = time.monotonic()
                    probes[self.actors[w].ready.remote()] = w

    def _probe_answered(self, ray: Any, ref: Any, probes: dict[Any, int], down: dict[int, float]) -> None:
        from ray.exceptions import RayActorError

        w = probes.pop(ref)
        try:
            info = ray.get(ref)
        except RayActorError:  # still restarting (or died again while starting)
            if time.monotonic() - down[w] > RESTART_TIMEOUT_S:
                logger.warning("worker-%d did not come back within %ds; going on without it", w, RESTART_TIMEOUT_S)
                return
            time.sleep(0.05)
            probes[self.actors[w].ready.remote()] = w
            return
        del down[w]
        self.summary.workers[f"worker-{w}"].processes.append(info["worker"])

    def _worker_lost(self, w: int, items: list[_Pending], pending: deque[_Pending], manifest: ManifestWriter,
                     died: bool) -> None:
        """Jobs that were on a dead process go back to the head of the queue (``died``: news of the death,
        not more jobs of a death already seen)."""
        figures = self.summary.workers[f"worker-{w}"]
        figures.lost += died
        self.listener.worker_lost(figures.processes[-1], [i.job.job.id for i in items])
        for item in sorted(items, key=lambda i: i.job.line, reverse=True):
            if item.attempts > self.opts.retries:
                self._record(manifest, ManifestLine(
                    id=item.job.job.id, status="failed", line=item.job.line, attempts=item.attempts,
                    error=f"the worker process died while running it, {item.attempts} times"), None)
            else:
                self.summary.retried += 1
                pending.appendleft(item)

    def _record(self, manifest: ManifestWriter, entry: ManifestLine,
                origin: tuple[str, JobOutcome] | None) -> None:
        manifest.write(entry)
        if entry.status == "done":
            self.summary.done += 1
        elif entry.attempts > 0:  # invalid jobs are counted apart
            self.summary.failed += 1
        if origin is not None:
            slot, outcome = origin
            fig = self.summary.workers[slot]
            fig.jobs += 1
            fig.failed += outcome.status != "done"
            fig.seconds += outcome.seconds
            fig.loads += outcome.loads
            fig.cache_hits += outcome.cache_hits
        if self.opts.report is not None:
            self._per_job.append({"id": entry.id, "status": entry.status, "seconds": entry.seconds,
                                  "worker": entry.worker, "attempts": entry.attempts,
                                  "loads": origin[1].loads if origin else 0,
                                  "cache_hits": origin[1].cache_hits if origin else 0})
        self.listener.job_recorded(entry)

    def _write_report(self, path: Path) -> None:
        s = self.summary
        body = {
            "ok": s.ok, "jobs": s.jobs, "done": s.done, "failed": s.failed, "invalid": s.invalid,
            "skipped": s.skipped, "retried": s.retried, "interrupted": s.interrupted, "seconds": round(s.seconds, 3),
            "issues": [i.model_dump() for i in s.issues],
            "workers": {k: vars(v) for k, v in s.workers.items()},
            "per_job": self._per_job,
        }
        atomic_write_bytes(path, (json.dumps(body, indent=2) + "\n").encode())


def _pick(pending: deque[_Pending], held: ModelKey | None) -> _Pending:
    """The first queued job that loads the models this worker holds; else the oldest job."""
    if held is not None:
        for i, item in enumerate(pending):
            if item.key == held:
                del pending[i]
                return item
    return pending.popleft()


def run_batch(opts: BatchOptions, listener: BatchListener | None = None, stop: BatchStop | None = None) -> BatchSummary:
    """Run a batch to the end (or until ``stop``); see ``BatchRunner``."""
    return BatchRunner(opts, listener, stop).run()


__all__ = ["BatchOptions", "BatchRunner", "BatchStop", "BatchSummary", "INSTALL_HINT", "ManifestExists",
           "RayMissing", "run_batch"]
