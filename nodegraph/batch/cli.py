"""``nodegraph batch`` and ``nodegraph batch-jobs`` (registered through the ``nodegraph.commands`` entry point)."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path
from typing import Any

from nodegraph.batch.jobs import JobCheck, jobs_from_folders
from nodegraph.batch.manifest import ManifestLine
from nodegraph.cli import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_INVALID, EXIT_OK, _settings, parse_set
from nodegraph.errors import WorkflowError
from nodegraph.settings import DEFAULT_DISK_BYTES

SHOWN_ISSUES = 50


class ProgressListener:
    """A bar over jobs (done / failed / rate / ETA) on stderr, and the job file's problems up front."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.bar: Any = None
        self.done = 0
        self.failed = 0

    def checked(self, check: JobCheck) -> None:
        issues = check.issues
        if not issues:
            return
        print(f"job file: {len(issues)} job(s) cannot run (they are recorded as failed; the others run):",
              file=sys.stderr)
        for issue in issues[:SHOWN_ISSUES]:
            print(f"  - {issue}", file=sys.stderr)
        if len(issues) > SHOWN_ISSUES:
            print(f"  ... and {len(issues) - SHOWN_ISSUES} more (see --report)", file=sys.stderr)

    def started(self, total: int, skipped: int, workers: int) -> None:
        if skipped:
            print(f"resume: {skipped} job(s) already recorded, skipped", file=sys.stderr)
        if not self.quiet:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="job", desc=f"batch ({workers} workers)", file=sys.stderr)

    def job_recorded(self, entry: ManifestLine) -> None:
        if entry.attempts == 0:  # an invalid job, listed before the bar started
            return
        if entry.status == "done":
            self.done += 1
        else:
            self.failed += 1
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(done=self.done, failed=self.failed, refresh=False)

    def worker_lost(self, worker: str, job_ids: list[str]) -> None:
        print(f"\nworker {worker} died with {len(job_ids)} job(s) on it; Ray restarts it and they are retried",
              file=sys.stderr)

    def stopping(self) -> None:
        print("\ninterrupt: no new jobs; waiting for running ones (Ctrl-C again to abandon them)", file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def cmd_batch(args: argparse.Namespace) -> int:
    from nodegraph.batch.runner import BatchOptions, BatchStop, ManifestExists, RayMissing, _import_ray

    try:
        _import_ray(local=args.ray == "auto")
    except RayMissing as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    output_dir = Path(args.output_dir).expanduser().resolve()
    settings = _settings(args, output_dir)
    opts = BatchOptions(workflow=Path(args.workflow), jobs=Path(args.jobs), output_dir=output_dir,
                        ray_address=args.ray, workers=args.workers, gpus_per_worker=args.gpus_per_worker,
                        cpus_per_worker=args.cpus_per_worker, resume=args.resume, retry_failed=args.retry_failed,
                        retries=args.retries, report=Path(args.report) if args.report else None, settings=settings)
    if args.check:
        return _check_only(opts)
    from nodegraph.batch.runner import BatchRunner

    stop = BatchStop()
    listener = ProgressListener(args.quiet)
    previous = signal.signal(signal.SIGINT, lambda signum, frame: stop.request())
    try:
        summary = BatchRunner(opts, listener, stop).run()
    except (ManifestExists, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    finally:
        signal.signal(signal.SIGINT, previous)
        listener.close()
    print(f"batch: {summary.done} done, {summary.failed} failed, {summary.invalid} invalid, "
          f"{summary.skipped} skipped (already recorded), {summary.retried} retried after a lost worker; "
          f"{summary.seconds:.1f}s; manifest: {opts.output_dir / 'manifest.jsonl'}", file=sys.stderr)
    if summary.interrupted:
        print("interrupted: run again with --resume to finish", file=sys.stderr)
        return EXIT_INTERRUPTED
    return EXIT_OK if summary.ok else EXIT_FAILED


def _check_only(opts: Any) -> int:
    from nodegraph.batch.jobs import JobPlanner, check_job_file

    check = check_job_file(JobPlanner.from_file(opts.workflow, opts.settings, opts.output_dir), opts.jobs)
    for issue in check.issues:
        print(f"  - {issue}", file=sys.stderr)
    print(f"{check.jobs} job(s), {len(check.issues)} problem(s)")
    return EXIT_INVALID if check.issues else EXIT_OK


def cmd_batch_jobs(args: argparse.Namespace) -> int:
    extra = dict(parse_set(item) for item in args.set or [])
    unpaired: list[Path] = []
    out = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout  # noqa: SIM115
    count = 0
    try:
        for job in jobs_from_folders(Path(args.images), Path(args.masks), image_input=args.image_input,
                                     mask_input=args.mask_input, extra=extra, unpaired=unpaired):
            out.write(json.dumps(job.model_dump()) + "\n")
            count += 1
    finally:
        if out is not sys.stdout:
            out.close()
    if unpaired:
        print(f"{len(unpaired)} image(s) have no mask with the same name, left out: "
              + ", ".join(p.name for p in unpaired[:10]) + (" ..." if len(unpaired) > 10 else ""), file=sys.stderr)
    print(f"wrote {count} job(s)" + (f" to {args.output}" if args.output else ""), file=sys.stderr)
    return EXIT_OK if count else EXIT_FAILED


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("batch", help="run a workflow over a JSON Lines job file on Ray (docs/batch.md)")
    p.add_argument("workflow")
    p.add_argument("jobs", help='JSON Lines: {"id": "cat-0042", "set": {"NODE.INPUT": value, ...}} per line')
    p.add_argument("--output-dir", default="batch-output",
                   help="job outputs go to DIR/<job id>/, the manifest to DIR/manifest.jsonl")
    p.add_argument("--ray", default="auto", metavar="auto|ADDRESS",
                   help="auto: start a local Ray instance (default); ADDRESS: join a running cluster")
    p.add_argument("--workers", type=int, default=None, help="worker actors (default: as many as fit)")
    p.add_argument("--gpus-per-worker", type=float, default=0.0)
    p.add_argument("--cpus-per-worker", type=float, default=1.0)
    p.add_argument("--resume", action="store_true", help="continue a batch: skip jobs the manifest records")
    p.add_argument("--retry-failed", action="store_true", help="with --resume: run recorded failures again")
    p.add_argument("--retries", type=int, default=3, help="times a job is retried after its worker died")
    p.add_argument("--report", metavar="R.json", help="per-job and per-worker figures")
    p.add_argument("--check", action="store_true", help="only check the job file (exit 2 if any job is bad)")
    p.add_argument("--models-dir", action="append", metavar="DIR",
                   help="a ComfyUI models directory (checkpoints/, loras/ ...): a ComfyUI workflow's model names "
                        "load from there (repeatable)")
    p.add_argument("--cache-dir", default=None, help="cache directory shared by the workers")
    p.add_argument("--cache-size", default=str(DEFAULT_DISK_BYTES), help="disk cache cap, e.g. 10GiB")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the disk cache")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_batch)

    p = sub.add_parser("batch-jobs", help="write a job file from folders of images and masks paired by name")
    p.add_argument("--images", required=True)
    p.add_argument("--masks", required=True)
    p.add_argument("--set", action="append", metavar="NODE.INPUT=VALUE", help="an override added to every job")
    p.add_argument("--image-input", default="image.path", help="the input that takes the image path")
    p.add_argument("--mask-input", default="mask.path", help="the input that takes the mask path")
    p.add_argument("-o", "--output", help="the job file to write (default: standard output)")
    p.set_defaults(func=cmd_batch_jobs)


def main(argv: list[str] | None = None) -> int:
    """``python -m nodegraph.batch.cli`` (the same commands, until the entry point is installed)."""
    import logging

    parser = argparse.ArgumentParser(prog="nodegraph")
    parser.add_argument("-v", "--verbose", action="store_true")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args))
    except (WorkflowError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INVALID


if __name__ == "__main__":
    sys.exit(main())
