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

from nodegraph.cache import DEFAULT_DISK_BYTES, DiskCache, default_cache_dir, parse_size
from nodegraph.context import CancelToken
from nodegraph.errors import WorkflowError
from nodegraph.executor import Engine
from nodegraph.files import atomic_write_bytes
from nodegraph.graph import validate
from nodegraph.node import REGISTRY
from nodegraph.workflow import apply_override, load_workflow

COMMANDS_ENTRY_POINT = "nodegraph.commands"
EXIT_OK, EXIT_FAILED, EXIT_INVALID, EXIT_INTERRUPTED = 0, 1, 2, 130


class TqdmListener:
    """One progress bar per node that reports steps, plus a line per finished node."""

    def __init__(self) -> None:
        from tqdm import tqdm

        self._tqdm = tqdm
        self._bar: Any = None
        self._types: dict[str, str] = {}

    def node_started(self, node_id: str, node_type: str) -> None:
        self._types[node_id] = node_type

    def node_progress(self, node_id: str, done: int, total: int) -> None:
        if self._bar is None:
            self._bar = self._tqdm(total=total, desc=f"{node_id} {self._types.get(node_id, '')}", unit="step",
                                   file=sys.stderr, leave=True)
        self._bar.n = done
        self._bar.refresh()

    def node_finished(self, node_id: str, status: str) -> None:
        if self._bar is not None:
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
    for item in sets:
        apply_override(graph, *parse_set(item))


def _usage_issue(message: str) -> Any:
    from nodegraph.errors import Issue

    return Issue(kind="invalid_value", message=message)


def cmd_run(args: argparse.Namespace) -> int:
    try:
        graph = load_workflow(args.file)
        _apply_sets(graph, args.set or [])
    except WorkflowError as err:
        _print_issues(err, False)
        return EXIT_INVALID
    if args.cache_dir:  # everything kept between runs moves with it (entries, built-in models, fingerprints)
        os.environ["NODEGRAPH_CACHE_DIR"] = str(Path(args.cache_dir).expanduser().resolve())
    disk = None if args.no_cache else DiskCache(args.cache_dir, parse_size(args.cache_size))
    engine = Engine(disk=disk)
    cancel = CancelToken()

    def on_sigint(signum: int, frame: Any) -> None:
        if cancel.cancelled:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        print("\ninterrupt: stopping after the current step (Ctrl-C again to stop at once)", file=sys.stderr)
        cancel.cancel()

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:  # Engine.run validates before anything runs; an invalid graph raises WorkflowError from there
        result = engine.run(graph, output_dir=args.output_dir, cancel=cancel, raise_on_error=False,
                            listener=None if args.quiet else TqdmListener(), workflow_json=graph.to_json(None))
    except WorkflowError as err:
        _print_issues(err, False)
        return EXIT_INVALID
    finally:
        signal.signal(signal.SIGINT, previous)
    if args.report:
        atomic_write_bytes(args.report, (json.dumps(result.report(), indent=2) + "\n").encode())
    if result.interrupted:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    if not result.ok:
        err = result.error or {}
        print(f"run failed in node {err.get('node')!r} ({err.get('type')}): {err.get('exception')}: "
              f"{err.get('message')}", file=sys.stderr)
        return EXIT_FAILED
    if not args.quiet:
        for node_id, files in result.outputs.items():
            for f in files:
                print(f"{node_id}: wrote {f}")
        counts: dict[str, int] = {}
        for info in result.nodes.values():
            counts[info["status"]] = counts.get(info["status"], 0) + 1
        summary = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
        print(f"done in {result.seconds:.2f}s ({summary}); loaded: {', '.join(result.loaded) or 'nothing'}")
    return EXIT_OK


def cmd_validate(args: argparse.Namespace) -> int:
    try:
        vg = validate(load_workflow(args.file))
    except WorkflowError as err:
        _print_issues(err, args.json)
        return EXIT_INVALID
    if args.json:
        print(json.dumps({"ok": True, "nodes": len(vg.order), "outputs": vg.outputs}))
    else:
        print(f"ok: {len(vg.order)} nodes, output nodes {vg.outputs}")
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
            print(f"    in  {name}: {info['type']}" + (f" ({', '.join(extra)})" if extra else ""))
        for name, socket in d["outputs"].items():
            print(f"    out {name}: {socket}")
    return EXIT_OK


def cmd_schema(args: argparse.Namespace) -> int:
    from nodegraph.schema import workflow_schema

    print(json.dumps(workflow_schema(REGISTRY), indent=2, default=str))
    return EXIT_OK


def cmd_cache(args: argparse.Namespace) -> int:
    disk = DiskCache(args.cache_dir)
    if args.action == "stats":
        s = disk.stats()
        print(json.dumps({"path": s.path, "entries": s.entries, "bytes": s.bytes, "max_bytes": s.max_bytes}))
    elif args.action == "clear":
        print(f"removed {disk.clear()} files from {disk.root}")
    else:
        limit = parse_size(args.max_size) if args.max_size else disk.max_bytes
        print(f"removed {disk.prune(limit)} files from {disk.root}")
    return EXIT_OK


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
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("validate", help="check a workflow without running it")
    p.add_argument("file")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_validate)

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

    for ep in metadata.entry_points(group=COMMANDS_ENTRY_POINT):
        ep.load()(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args))
    except WorkflowError as err:
        _print_issues(err, False)
        return EXIT_INVALID
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_INVALID
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
