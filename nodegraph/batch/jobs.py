"""Job files: JSON Lines read as a stream, each job checked against the workflow before anything runs.

A job is ``{"id": "cat-0042", "set": {"NODE.INPUT": value, ...}}``: the same overrides as
``nodegraph run --set`` (``nodegraph.workflow.apply_override`` applies both). Nothing here holds the
whole file: the check keeps 8 bytes per job (a hash of its id, to find duplicates) plus the bad lines.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from array import array
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic import ValidationError as PydanticValidationError

from nodegraph import validate
from nodegraph.cli import run_policy
from nodegraph.errors import WorkflowError
from nodegraph.graph import Graph, NodeInstance
from nodegraph.settings import EngineSettings, use_settings
from nodegraph.types import MODEL_SOURCE, file_role_of
from nodegraph.workflow import apply_override, graph_from_data, read_workflow_data

if TYPE_CHECKING:
    from nodegraph.settings import PathPolicy
    from nodegraph.validation import ValidGraph

JOB_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"  # also a safe file name: outputs are named by it
MAX_LINE_BYTES = 1024 * 1024
MAX_REPORTED_ISSUES = 1000
_MEMO_SIZE = 4096
ModelKey = tuple[tuple[str, str, str], ...]


class Job(BaseModel):
    """One line of a job file."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    id: str = Field(pattern=JOB_ID_PATTERN, description="Unique in the file; names the job's output folder.")
    set: dict[str, Any] = Field(default_factory=dict, description="NODE.INPUT overrides, as `run --set`.")


class JobIssue(BaseModel):
    """A job that cannot run, with where it is in the file."""

    line: int
    id: str | None = None
    kind: Literal["unreadable", "invalid", "duplicate"] = "unreadable"
    message: str

    def __str__(self) -> str:
        return f"line {self.line}" + (f" (job {self.id!r})" if self.id else "") + f": {self.message}"


@dataclass(frozen=True)
class NumberedJob:
    line: int
    job: Job


def iter_lines(path: str | os.PathLike[str]) -> Iterator[tuple[int, str | None]]:
    """``(line number, text)`` of each non-blank line, read lazily; ``None`` for a line over the size limit."""
    with open(path, "rb") as f:
        number = 0
        while True:
            raw = f.readline(MAX_LINE_BYTES + 1)
            if not raw:
                return
            number += 1
            if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
                while raw and not raw.endswith(b"\n"):  # skip the rest of the overlong line
                    raw = f.readline(MAX_LINE_BYTES)
                yield number, None
                continue
            text = raw.decode("utf-8", errors="replace").strip()
            if text:
                yield number, text


def parse_job(line: int, text: str | None) -> NumberedJob | JobIssue:
    if text is None:
        return JobIssue(line=line, message=f"line is longer than {MAX_LINE_BYTES} bytes")
    try:
        return NumberedJob(line, Job.model_validate_json(text))
    except PydanticValidationError as exc:
        first_error = exc
    try:  # say why in the words of the JSON parser, and name the job when it has an id
        data = json.loads(text)
    except ValueError as exc:
        return JobIssue(line=line, message=f"not JSON: {exc}")
    job_id = data.get("id") if isinstance(data, dict) and isinstance(data.get("id"), str) else None
    reasons = "; ".join(f"{'.'.join(str(x) for x in e['loc']) or 'job'}: {e['msg']}" for e in first_error.errors())
    return JobIssue(line=line, id=job_id, message=f"not a job ({reasons})")


def _id_hash(job_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(job_id.encode(), digest_size=8).digest(), "little")


class JobPlanner:
    """The workflow a batch runs, and the graph of each job (the workflow with the job's overrides).

    ``policy`` governs paths as for ``nodegraph run WORKFLOW --output-dir DIR`` (``cli.run_policy``, made
    once by the driver: overrides cannot change what it depends on): relative paths resolve against the
    workflow file's folder, writes stay inside the output directory.
    """

    def __init__(self, data: Any, source: str, policy: PathPolicy | None = None, models_dirs: tuple[Path, ...] = (),
                 settings: EngineSettings | None = None):
        self.data = data
        self.source = source
        self._policy = policy
        self._settings = settings or EngineSettings()  # check hooks read its limits (max_input_pixels ...)
        # raises WorkflowError for a broken workflow; ComfyUI model names resolve under models_dirs
        self._base = graph_from_data(data, source=source, models_dirs=models_dirs)
        self._memo: OrderedDict[str, tuple[str | None, ModelKey]] = OrderedDict()

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], settings: EngineSettings, output_dir: Path) -> JobPlanner:
        planner = cls(read_workflow_data(path), str(Path(path).resolve()), models_dirs=settings.models_dirs,
                      settings=settings)
        planner._policy = run_policy(Path(path), planner._base, output_dir, settings)
        return planner

    def policy(self, output_dir: Path | None = None) -> PathPolicy | None:
        """The path policy of a job writing into ``output_dir`` (default: the batch's output directory)."""
        if self._policy is None or output_dir is None:
            return self._policy
        return replace(self._policy, write_roots=(output_dir,))

    def graph(self, job: Job) -> Graph:
        """The job's graph; raises WorkflowError for an override that names no node or is malformed."""
        base = self._base
        graph = Graph({n: NodeInstance(inst.type, dict(inst.inputs)) for n, inst in base.nodes.items()},
                      name=base.name, description=base.description, metadata=dict(base.metadata),
                      registry=base.registry)
        for target, value in job.set.items():
            apply_override(graph, target, value)
        return graph

    def check(self, job: Job) -> tuple[str | None, ModelKey]:
        """Why the job cannot run (every problem, one message) or None, and the models it loads. Jobs with
        the same overrides share the answer, so a file of many similar jobs is checked at reading speed."""
        key = json.dumps(job.set, sort_keys=True, default=str)
        if key in self._memo:
            self._memo.move_to_end(key)
            return self._memo[key]
        try:
            graph = self.graph(job)
            with use_settings(self._settings):
                verdict: tuple[str | None, ModelKey] = (None, model_key(validate(graph, policy=self.policy())))
        except WorkflowError as err:
            verdict = ("; ".join(str(i) for i in err.issues), ())
        self._memo[key] = verdict
        if len(self._memo) > _MEMO_SIZE:
            self._memo.popitem(last=False)
        return verdict


def model_key(vg: ValidGraph) -> ModelKey:
    """The model sources a job loads (inputs marked ``MODEL_SOURCE``): jobs with the same key go to the
    worker that already holds those models."""
    found = []
    for node_id in vg.order:
        spec = vg.specs[node_id]
        for name, value in vg.literals[node_id].items():
            if file_role_of(spec.inputs[name].annotation) == MODEL_SOURCE:
                found.append((node_id, name, str(value)))
    return tuple(found)


@dataclass
class JobCheck:
    """The outcome of checking a whole job file: how many jobs, and which lines cannot run (by line)."""

    jobs: int = 0  # lines that parse as a job (valid or not)
    skipped: int = 0  # jobs that ``skip`` said are already recorded
    bad: dict[int, JobIssue] = field(default_factory=dict)

    def count(self, kind: str) -> int:
        return sum(1 for i in self.bad.values() if i.kind == kind)

    @property
    def runnable(self) -> int:
        """Jobs that will be sent to a worker (not invalid, not a repeated id, not already recorded)."""
        return self.jobs - self.count("invalid") - self.count("duplicate") - self.skipped

    @property
    def issues(self) -> list[JobIssue]:
        return [self.bad[n] for n in sorted(self.bad)]


class CheckStopped(Exception):
    """``check_job_file`` was asked to stop (Ctrl-C while a long file was being checked)."""


def check_job_file(planner: JobPlanner, path: str | os.PathLike[str],
                   skip: Callable[[str], bool] | None = None,
                   stop: Callable[[], bool] | None = None) -> JobCheck:
    """Read the whole file once, checking every job; keep only the problems (the first
    ``MAX_REPORTED_ISSUES`` with their message, later ones by line only). ``skip(id)``: already done;
    ``stop()`` is asked every thousand lines (raises CheckStopped)."""
    result = JobCheck()
    hashes = array("Q")
    bad_count = 0

    def add(issue: JobIssue) -> None:
        nonlocal bad_count
        bad_count += 1
        if len(result.bad) < MAX_REPORTED_ISSUES:
            result.bad[issue.line] = issue
        else:
            result.bad.setdefault(issue.line, issue.model_copy(update={"message": "(not shown)"}))

    for line, text in iter_lines(path):
        if stop is not None and line % 1000 == 0 and stop():
            raise CheckStopped(f"stopped while checking line {line}")
        parsed = parse_job(line, text)
        if isinstance(parsed, JobIssue):
            add(parsed)
            continue
        result.jobs += 1
        hashes.append(_id_hash(parsed.job.id))
        if skip is not None and skip(parsed.job.id):
            result.skipped += 1
            continue
        problem, _ = planner.check(parsed.job)
        if problem is not None:
            add(JobIssue(line=line, id=parsed.job.id, kind="invalid", message=problem))
    for issue in _duplicates(path, hashes):
        add(issue)
    return result


def _duplicates(path: str | os.PathLike[str], hashes: array[int]) -> list[JobIssue]:
    """Second and later uses of an id. Sorting the 8-byte id hashes finds candidates without holding ids;
    only ids whose hash repeats are read again."""
    import numpy as np

    if len(hashes) < 2:
        return []
    sorted_hashes = np.sort(np.frombuffer(hashes, dtype=np.uint64))
    repeated = set(sorted_hashes[1:][sorted_hashes[1:] == sorted_hashes[:-1]].tolist())
    if not repeated:
        return []
    first_line: dict[str, int] = {}
    issues = []
    for line, text in iter_lines(path):
        parsed = parse_job(line, text)
        if isinstance(parsed, JobIssue) or _id_hash(parsed.job.id) not in repeated:
            continue
        job_id = parsed.job.id
        if job_id in first_line:
            issues.append(JobIssue(line=line, id=job_id, kind="duplicate", message=f"id {job_id!r} is already used on line "
                                                                 f"{first_line[job_id]}"))
        else:
            first_line[job_id] = line
    return issues


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


def safe_job_id(name: str) -> str:
    """A job id made from a file name: other characters become ``_``."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip("._-")[:128]
    return cleaned or "job"


def jobs_from_folders(images: Path, masks: Path, *, image_input: str = "image.path",
                      mask_input: str = "mask.path", extra: Mapping[str, Any] | None = None,
                      unpaired: list[Path] | None = None) -> Iterator[Job]:
    """One job per image that has a mask with the same file stem, in name order; ids come from the stems
    (made unique with ``-2``, ``-3``...). Images without a mask are appended to ``unpaired``."""
    by_stem = {p.stem: p for p in sorted(masks.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
    used: set[str] = set()
    for image in sorted(images.iterdir()):
        if image.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        mask = by_stem.get(image.stem)
        if mask is None:
            if unpaired is not None:
                unpaired.append(image)
            continue
        job_id = base = safe_job_id(image.stem)
        n = 1
        while job_id in used:
            n += 1
            job_id = f"{base[:120]}-{n}"
        used.add(job_id)
        yield Job(id=job_id, set={image_input: str(image.resolve()), mask_input: str(mask.resolve()),
                                  **(extra or {})})
