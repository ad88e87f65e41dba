"""`nodegraph run | validate | nodes | schema | cache ...` (node packages may add commands)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from nodegraph.cache import DiskCache, parse_size
from nodegraph.context import CancelToken
from nodegraph.errors import WorkflowError
from nodegraph.events import (
    NodeFinished,
    NodeProgress,
    NodeStarted,
    NodeStatus,
    RunEvent,
    RunFailed,
    RunFinished,
    RunInterrupted,
)
from nodegraph.executor import Engine
from nodegraph.files import atomic_write_bytes
from nodegraph.graph import Graph
from nodegraph.node import REGISTRY
from nodegraph.settings import DEFAULT_DISK_BYTES, EngineSettings, PathPolicy, default_cache_dir, use_settings
from nodegraph.validation import validate
from nodegraph.workflow import BASE_DIR_KEY, apply_override, is_png, load_workflow

COMMANDS_ENTRY_POINT = "nodegraph.commands"
EXIT_OK, EXIT_FAILED, EXIT_INVALID, EXIT_INTERRUPTED = 0, 1, 2, 130


class TqdmListener:
    """One progress bar per node that reports steps, drawn from the run's events."""

    def __init__(self) -> None:
        from tqdm import tqdm

        self._tqdm = tqdm
        self._bar: Any = None
        self._types: dict[str, str] = {}

    def on_event(self, event: RunEvent) -> None:
        if isinstance(event, NodeStarted):
            self._types[event.node_id] = event.node_type
        elif isinstance(event, NodeProgress):
            if self._bar is None:  # drawn once here; updates only redraw when the count moves
                self._bar = self._tqdm(total=event.total, initial=event.value, unit="step", file=sys.stderr,
                                       desc=f"{event.node_id} {self._types.get(event.node_id, '')}", leave=True)
            elif event.value > self._bar.n:
                self._bar.update(event.value - self._bar.n)
        elif isinstance(event, (NodeFinished, RunFinished, RunFailed, RunInterrupted)) and self._bar is not None:
            self._bar.close()
            self._bar = None


def _print_issues(err: WorkflowError, as_json: bool) -> None:
    if as_json:
        print(json.dumps({"ok": False, "issues": [i.model_dump() for i in err.issues]}, indent=2, default=str))
    else:
        print(f"invalid workflow: {len(err.issues)} problem(s)", file=sys.stderr)
        for issue in err.issues:
            print(f"  - [{issue.kind}] {issue}", file=sys.stderr)


def parse_set(item: str) -> tuple[str, Any]:
    """``NODE.INPUT=VALUE`` → (``NODE.INPUT``, value); VALUE is JSON when it parses, else a string."""
    target, sep, raw = item.partition("=")
    if not sep or "." not in target:
        raise WorkflowError([_usage_issue(f"--set {item!r}: write NODE.INPUT=VALUE")])
    try:
        return target, json.loads(raw)
    except ValueError:
        return target, raw


def _apply_sets(graph: Any, sets: list[str]) -> None:
    # A path typed on the command line is relative to where it was typed, not to the workflow's folder.
    for item in sets:
        apply_override(graph, *parse_set(item), base_dir=Path.cwd())


def _usage_issue(message: str) -> Any:
    from nodegraph.errors import Issue

    return Issue(kind="invalid_value", message=message)


def _settings(args: argparse.Namespace, output_dir: Path) -> EngineSettings:
    """The one place a run's settings are read from the environment and the command line."""
    settings = EngineSettings.from_env(output_dir=output_dir, disk_cache_bytes=parse_size(args.cache_size))
    if args.cache_dir:  # everything kept between runs moves with it (entries, built-in models, fingerprints)
        root = Path(args.cache_dir).expanduser().resolve()
        settings = settings.with_(cache_dir=root, state_dir=root)
    if args.no_cache:  # no disk tier of node outputs; built-in models and fingerprints still live there
        settings = settings.with_(cache_dir=None)
    return _with_models(args, settings)


def _with_models(args: argparse.Namespace, settings: EngineSettings) -> EngineSettings:
    if args.models_dir:  # run, validate and batch take --models-dir
        settings = settings.with_(models_dirs=tuple(Path(d).expanduser().resolve() for d in args.models_dir))
    return settings


class UsageError(Exception):
    """A bad command line (exit 2, one line, no traceback)."""


def _check_output_dir(text: str) -> Path:
    """The output directory, resolved; refused before anything runs if it cannot take files."""
    path = Path(text).expanduser().resolve()
    if path.exists() and not path.is_dir():
        raise UsageError(f"--output-dir {text}: exists and is not a directory")
    probe = path
    while not probe.exists():  # created on first write; its nearest existing parent must be writable
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise UsageError(f"--output-dir {text}: {probe} is not writable")
    return path


def _check_report_path(text: str | None) -> Path | None:
    if text is None:
        return None
    path = Path(text).expanduser()
    if path.is_dir():
        raise UsageError(f"--report {text}: is a directory; give a file name such as {path / 'report.json'}")
    if not path.parent.is_dir():
        raise UsageError(f"--report {text}: folder {path.parent} does not exist")
    return path


def _write_report(path: Path | None, doc: dict[str, Any]) -> None:
    if path is not None:
        atomic_write_bytes(path, (json.dumps(doc, indent=2, default=str) + "\n").encode())


def _policy(args: argparse.Namespace, graph: Graph, output_dir: Path, settings: EngineSettings) -> PathPolicy:
    return run_policy(Path(args.file), graph, output_dir, settings, trust_workflow=args.trust_workflow,
                      allow_outside_writes=args.allow_outside_writes)


def run_policy(source: Path, graph: Graph, output_dir: Path, settings: EngineSettings, *,
               trust_workflow: bool = False, allow_outside_writes: bool = False) -> PathPolicy:
    """Writes stay in the output directory; a workflow from a PNG is untrusted and reads only beside it.

    Relative paths resolve against the workflow file's folder; for a PNG, against the folder recorded in it
    when it was written (if that still exists), else the PNG's folder.
    """
    source = source.expanduser().resolve()
    base = source.parent
    read_roots: tuple[Path, ...] | None = None
    if is_png(source):
        recorded = graph.metadata.get(BASE_DIR_KEY)
        if isinstance(recorded, str) and Path(recorded).is_dir():
            base = Path(recorded)
        if not trust_workflow:
            read_roots = (source.parent, *settings.models_dirs)
    return PathPolicy(write_roots=(output_dir,), read_roots=read_roots, base_dir=base,
                      allow_outside_writes=allow_outside_writes)


def embedded_workflow(graph: Graph, policy: PathPolicy) -> str:
    """The workflow JSON that outputs embed, so a rerun from a PNG resolves relative paths as this run did."""
    embedded = graph.to_dict()
    embedded.setdefault("metadata", {})[BASE_DIR_KEY] = str(policy.base_dir)
    return json.dumps(embedded, indent=None)


def _quiet_libraries() -> None:
    """Silence the progress bars of huggingface_hub, diffusers and transformers (they all follow this)."""
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    hub = sys.modules.get("huggingface_hub.utils")
    if hub is not None:
        hub.disable_progress_bars()


def cmd_run(args: argparse.Namespace) -> int:
    report_path = _check_report_path(args.report)
    output_dir = _check_output_dir(args.output_dir)
    settings = _settings(args, output_dir)
    if args.quiet:
        _quiet_libraries()
    try:
        graph = load_workflow(args.file, models_dirs=settings.models_dirs)
        _apply_sets(graph, args.set or [])
        policy = _policy(args, graph, output_dir, settings)
        engine = Engine(settings)
        if args.dry_run:
            plan = engine.plan(graph, policy=policy)
            print(json.dumps(plan.to_dict(), indent=2) if args.json else "\n".join(plan.describe()))
            return EXIT_OK
    except WorkflowError as err:
        _print_issues(err, False)
        _write_report(report_path, {"ok": False, "error": {"message": "invalid workflow"},
                                    "issues": [i.model_dump() for i in err.issues]})
        return EXIT_INVALID
    cancel = CancelToken()

    def on_sigint(signum: int, frame: Any) -> None:
        if cancel.cancelled:  # a second Ctrl-C: stop now, with the status a shell expects
            sys.stderr.write("\ninterrupted\n")
            os._exit(EXIT_INTERRUPTED)
        print("\ninterrupt: stopping after the current step (Ctrl-C again to stop at once)", file=sys.stderr)
        cancel.cancel()

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:  # Engine.run validates before anything runs; an invalid graph raises WorkflowError from there
        result = engine.run(graph, cancel=cancel, raise_on_error=False, policy=policy,
                            listener=None if args.quiet else TqdmListener(),
                            workflow_json=embedded_workflow(graph, policy))
    except WorkflowError as err:
        _print_issues(err, False)
        _write_report(report_path, {"ok": False, "error": {"message": "invalid workflow"},
                                    "issues": [i.model_dump() for i in err.issues]})
        return EXIT_INVALID
    finally:
        signal.signal(signal.SIGINT, previous)
    _write_report(report_path, result.report())
    if result.interrupted:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    if not result.ok:
        failure = result.error
        where = f"node {failure.node_id!r} ({failure.node_type})" if failure is not None else "the engine"
        what = f"{failure.exception_type}: {failure.message}" if failure is not None else "unknown error"
        print(f"run failed in {where}: {what}", file=sys.stderr)
        return EXIT_FAILED
    if not args.quiet:
        for node_id, files in result.outputs.items():
            for f in files:
                print(f"{node_id}: wrote {f}")
        counts: dict[str, int] = {}
        for info in result.nodes.values():
            status = NodeStatus(info["status"]).value
            counts[status] = counts.get(status, 0) + 1
        summary = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
        print(f"done in {result.seconds:.2f}s ({summary}); loaded: {', '.join(result.loaded) or 'nothing'}")
    return EXIT_OK


def cmd_validate(args: argparse.Namespace) -> int:
    try:
        settings = _with_models(args, EngineSettings.from_env())
        graph = load_workflow(args.file, models_dirs=settings.models_dirs)
        output_dir = Path(args.output_dir).expanduser().resolve()
        with use_settings(settings):  # check hooks read the same limits a run would
            vg = validate(graph, policy=_policy(args, graph, output_dir, settings))
    except WorkflowError as err:
        _print_issues(err, args.json)
        return EXIT_INVALID
    if args.json:
        print(json.dumps({"ok": True, "nodes": len(vg.order), "outputs": vg.outputs}))
    else:
        print(f"ok: {len(vg.order)} nodes, output nodes {vg.outputs}")
    return EXIT_OK


def cmd_convert(args: argparse.Namespace) -> int:
    from nodegraph.comfy_ui import convert_workflow
    from nodegraph.workflow import read_workflow_data

    converted = convert_workflow(read_workflow_data(args.file), args.to, REGISTRY, args.file)
    text = json.dumps(converted, indent=2) + "\n"
    if args.output:
        atomic_write_bytes(args.output, text.encode())
    else:
        sys.stdout.write(text)
    return EXIT_OK


def cmd_nodes(args: argparse.Namespace) -> int:
    specs = REGISTRY.all()
    if args.json:
        print(json.dumps([s.describe() for s in specs.values()], indent=2, default=str))
        return EXIT_OK
    for spec in specs.values():
        d = spec.describe()
        print(f"{spec.name}  [{spec.category}, v{spec.version}]" + ("  (output)" if spec.is_output else ""))
        if spec.doc:
            print("    " + spec.doc.split("\n\n")[0].replace("\n", "\n    "))
        for name, info in d["inputs"].items():
            extra = []
            if not info["required"]:
                extra.append(f"default={info.get('default')!r}")
            for k in ("choices", "minimum", "maximum"):
                if k in info:
                    extra.append(f"{k}={info[k]}")
            print(f"    in  {name}: {info['type']}" + (f" ({', '.join(extra)})" if extra else "")
                  + (f"  -- {info['description']}" if info.get("description") else ""))
        for name, socket in d["outputs"].items():
            print(f"    out {name}: {socket}")
    return EXIT_OK


def cmd_schema(args: argparse.Namespace) -> int:
    from nodegraph.schema import workflow_schema

    print(json.dumps(workflow_schema(REGISTRY), indent=2, default=str))
    return EXIT_OK


def cmd_cache(args: argparse.Namespace) -> int:
    disk = DiskCache(Path(args.cache_dir).expanduser() if args.cache_dir else default_cache_dir())
    if args.action == "stats":
        s = disk.stats()
        print(json.dumps({"path": s.path, "entries": s.entries, "bytes": s.bytes, "max_bytes": s.max_bytes}))
    elif args.action == "clear":
        print(f"removed {disk.clear()} files from {disk.root}")
    else:
        limit = parse_size(args.max_size) if args.max_size else disk.max_bytes
        print(f"removed {disk.prune(limit)} files from {disk.root}")
    return EXIT_OK


def _add_policy_args(p: argparse.ArgumentParser, output_dir: bool = True) -> None:
    if output_dir:
        p.add_argument("--output-dir", default="outputs", help="where output nodes would write (default: ./outputs)")
    p.add_argument("--allow-outside-writes", action="store_true",
                   help="let the workflow write outside --output-dir (docs/security.md)")
    p.add_argument("--trust-workflow", action="store_true",
                   help="a workflow taken from a PNG may read files anywhere, not only beside the PNG")
    p.add_argument("--models-dir", action="append", metavar="DIR",
                   help="a ComfyUI models directory (checkpoints/, loras/, vae/ ...): a ComfyUI workflow's model "
                        "names load from there (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nodegraph", description="Run and inspect node-graph workflows.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run a workflow (JSON, ComfyUI API JSON, or a PNG we wrote)")
    p.add_argument("file")
    p.add_argument("--set", action="append", metavar="NODE.INPUT=VALUE",
                   help="override an input; VALUE is JSON when it parses, else a string")
    p.add_argument("--output-dir", default="outputs", help="where output nodes write (default: ./outputs)")
    p.add_argument("--report", metavar="REPORT.json", help="write the run report here")
    p.add_argument("--quiet", action="store_true", help="no progress bars or summary")
    p.add_argument("--cache-dir", default=None,
                   help=f"cache directory for results, built-in models and fingerprints (default: {default_cache_dir()})")
    p.add_argument("--cache-size", default=str(DEFAULT_DISK_BYTES), help="disk cache cap, e.g. 10GiB")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the disk cache")
    p.add_argument("--dry-run", action="store_true", help="print the plan (what would run, what is cached) and stop")
    p.add_argument("--json", action="store_true", help="with --dry-run: the plan as JSON")
    _add_policy_args(p, output_dir=False)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("validate", help="check a workflow without running it (paths as `run` would check them)")
    p.add_argument("file")
    p.add_argument("--json", action="store_true")
    _add_policy_args(p)
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("convert", help="print a workflow (native, ComfyUI UI or API format, PNG) converted")
    p.add_argument("file")
    p.add_argument("--to", choices=["native", "api"], default="native",
                   help="native v1 (default) or ComfyUI API format")
    p.add_argument("-o", "--output", metavar="OUT", help="write here instead of printing")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("nodes", help="list node types with inputs, outputs and docs")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_nodes)

    p = sub.add_parser("schema", help="print the JSON Schema of workflow files")
    p.set_defaults(func=cmd_schema)

    p = sub.add_parser("cache", help="inspect or trim the disk cache")
    p.add_argument("action", choices=["stats", "clear", "prune"])
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--max-size", default=None, help="prune down to this size, e.g. 2GiB")
    p.set_defaults(func=cmd_cache)

    from nodegraph.server.cli import add_serve_command

    add_serve_command(sub)
    for ep in metadata.entry_points(group=COMMANDS_ENTRY_POINT):
        ep.load()(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        code = int(args.func(args))
        sys.stdout.flush()  # inside the try: a reader that went away is handled below, not at exit
        return code
    except WorkflowError as err:
        _print_issues(err, False)
        return EXIT_INVALID
    except (ValueError, UsageError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_INVALID
    except BrokenPipeError:
        # The reader went away (``nodegraph schema | head``): nothing more to say, and nothing to say it to.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
