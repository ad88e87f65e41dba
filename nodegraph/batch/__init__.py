"""Batch runs of one workflow over a JSON Lines job file, on Ray (``nodegraph batch``; docs/batch.md).

Only ``runner`` imports Ray (lazily): job files, the manifest and the worker work without it.
"""

from nodegraph.batch.jobs import Job, JobIssue, JobPlanner, check_job_file, jobs_from_folders
from nodegraph.batch.manifest import MANIFEST_NAME, ManifestLine, read_manifest
from nodegraph.batch.runner import BatchOptions, BatchStop, BatchSummary, run_batch
from nodegraph.batch.worker import BatchWorker

__all__ = [
    "MANIFEST_NAME", "BatchOptions", "BatchStop", "BatchSummary", "BatchWorker", "Job", "JobIssue", "JobPlanner",
    "ManifestLine", "check_job_file", "jobs_from_folders", "read_manifest", "run_batch",
]
