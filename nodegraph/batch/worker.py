"""One batch worker: an ``Engine`` kept for the worker's life (models and memory tier warm) that runs jobs.

It is a plain class: the Ray runner wraps it as an actor (one process per worker), and the benchmark's
in-process loop uses the same job → run mapping (``JobPlanner.graph``, the code of ``run --set``).
Outputs of a job are written into ``<output dir>/.partial/<id>.<random>/`` and renamed to
``<output dir>/<id>/`` only when the run succeeded, so a job's folder is whole or absent.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field

from nodegraph.batch.jobs import Job, JobPlanner
from nodegraph.cli import embedded_workflow
from nodegraph.errors import WorkflowError
from nodegraph.events import NodeStatus
from nodegraph.executor import Engine
from nodegraph.settings import EngineSettings, PathPolicy

if TYPE_CHECKING:
    from nodegraph.report import RunResult

logger = logging.getLogger(__name__)

PARTIAL_DIR = ".partial"


class JobOutcome(BaseModel):
    """What a worker sends back for one job (the driver turns it into a manifest line)."""

    id: str
    status: Literal["done", "failed"]
    outputs: list[str] = Field(default_factory=list)
    seconds: float = 0.0
    worker: str
    error: str | None = None
    report: dict[str, Any] | None = None
    loads: int = 0
    cache_hits: int = 0


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _error_text(result: RunResult) -> str:
    err = result.error
    if err is None:
        return "interrupted" if result.interrupted else "failed"
    where = f"node {err.node_id!r} ({err.node_type})" if err.node_id is not None else "the engine"
    return f"{where}: {err.exception_type}: {err.message}"


class BatchWorker:
    """Runs jobs of one workflow, one at a time, with one long-lived engine."""

    def __init__(self, workflow: Any, source: str, policy: PathPolicy | None, settings: EngineSettings):
        self.output_dir = Path(settings.output_dir).resolve()
        self.planner = JobPlanner(workflow, source, policy, settings.models_dirs, settings)
        self.engine = Engine(settings)
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self._current: str | None = None

    def ready(self) -> dict[str, Any]:
        return {"worker": self.name, "pid": os.getpid()}

    def status(self) -> dict[str, Any]:
        """The process id and the job running now (None between jobs)."""
        return {"worker": self.name, "pid": os.getpid(), "job": self._current}

    def run_job(self, job_id: str, overrides: dict[str, Any]) -> dict[str, Any]:
        """Run one job; a failure of the job (not of the process) comes back as a failed outcome."""
        self._current = job_id
        start = time.perf_counter()
        tmp = self.output_dir / PARTIAL_DIR / f"{job_id}.{uuid.uuid4().hex[:12]}"
        outcome = JobOutcome(id=job_id, status="failed", worker=self.name)
        try:
            graph = self.planner.graph(Job(id=job_id, set=overrides))
            policy = self.planner.policy(tmp)  # what `nodegraph run WORKFLOW --output-dir TMP` uses
            result = self.engine.run(graph, output_dir=tmp, policy=policy, raise_on_error=False,
                                     workflow_json=embedded_workflow(graph, policy) if policy else None)
            outcome.report = result.report()
            outcome.loads = len(result.loaded)
            outcome.cache_hits = sum(1 for n in result.nodes.values()
                                     if NodeStatus(n["status"]) is NodeStatus.CACHED and n.get("read", True))
            if result.ok:
                outcome.outputs = self._publish(job_id, tmp, result.outputs)
                outcome.status = "done"
            else:
                outcome.error = _error_text(result)
        except WorkflowError as err:
            outcome.error = "invalid job: " + "; ".join(str(i) for i in err.issues)
        except Exception as exc:  # a bug or an I/O error in this job must not take the worker down
            logger.exception("job %s failed", job_id)
            outcome.error = f"{type(exc).__name__}: {exc}"
        finally:
            self._current = None
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        outcome.seconds = time.perf_counter() - start
        return outcome.model_dump()

    def _publish(self, job_id: str, tmp: Path, outputs: dict[str, list[str]]) -> list[str]:
        """Move the finished job's folder into place (replacing one left by an unrecorded earlier attempt)."""
        final = self.output_dir / job_id
        if tmp.exists():
            if final.exists():
                old = tmp.with_name(tmp.name + ".old")
                os.rename(final, old)
                os.rename(tmp, final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.rename(tmp, final)
            _fsync_dir(self.output_dir)
        published = []
        for files in outputs.values():
            for f in files:
                path = Path(f)
                try:
                    published.append(f"{job_id}/{path.relative_to(tmp).as_posix()}")
                except ValueError:  # an output node that wrote outside the output dir (an absolute path)
                    published.append(str(path))
        return published
