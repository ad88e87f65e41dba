"""``nodegraph serve``: parse the flags, build the settings once (environment read here, at the edge), run."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def add_serve_command(sub: Any) -> None:
    p = sub.add_parser("serve", help="serve ComfyUI's HTTP + websocket API with one long-lived engine")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; others need --token)")
    p.add_argument("--port", type=int, default=8188)
    p.add_argument("--output-dir", default="output", help="where prompts write images (default ./output)")
    p.add_argument("--input-dir", default="input", help="uploads, and the only files prompts may read "
                                                        "besides models (default ./input)")
    p.add_argument("--temp-dir", default=None, help="files of type 'temp' (default: <cache>/temp)")
    p.add_argument("--cache-dir", default=None, help="results cache, built-in models, the queue journal")
    p.add_argument("--models-dir", action="append", default=None,
                   help="a models directory prompts may read (repeatable; default <cache>/models)")
    p.add_argument("--token", default=None, help="require this token (Bearer header or ?token=) on every route")
    p.add_argument("--allow-origin", action="append", default=[], metavar="ORIGIN",
                   help="a web origin (scheme://host:port) allowed to call the API from a browser")
    p.add_argument("--max-upload", default="50MiB", help="largest accepted upload (default 50MiB)")
    p.add_argument("--user-dir", default=None, help="the editor's settings and saved workflows (default <cache>/user)")
    p.add_argument("--previews", action="store_true", help="send latent previews unless a prompt asks for none")
    p.add_argument("--no-cache", action="store_true", help="no disk tier for node results")
    p.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        from aiohttp import web
    except ImportError:
        print("error: the server needs aiohttp: pip install 'nodegraph[server]'", file=sys.stderr)
        return 2

    from nodegraph.cache import parse_size
    from nodegraph.settings import EngineSettings

    from .app import Server, ServerConfig

    input_dir = Path(args.input_dir).resolve()
    overrides: dict[str, Any] = {"output_dir": Path(args.output_dir).resolve(), "input_dir": input_dir}
    if args.cache_dir:
        cache = Path(args.cache_dir).expanduser().resolve()
        overrides.update(cache_dir=cache, state_dir=cache)
    settings = EngineSettings.from_env(**overrides)
    state = settings.state_dir or settings.cache_dir
    assert state is not None
    models = tuple(Path(m).resolve() for m in args.models_dir) if args.models_dir else (settings.models_state_dir,)
    settings = settings.with_(models_dirs=models)
    if args.no_cache:
        settings = settings.with_(cache_dir=None)
    config = ServerConfig(host=args.host, port=args.port, token=args.token, allow_origins=tuple(args.allow_origin),
                          max_upload=parse_size(args.max_upload), previews=args.previews, engine=settings,
                          temp_dir=Path(args.temp_dir).resolve() if args.temp_dir else state / "temp",
                          journal=state / "server" / "queue.sqlite",
                          user_dir=Path(args.user_dir).resolve() if args.user_dir else state / "user")
    try:
        config.check()
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    logging.getLogger("nodegraph").setLevel(min(logging.getLogger("nodegraph").getEffectiveLevel(), logging.INFO))
    if not logging.getLogger().handlers:
        logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
    server = Server(config)
    # Every path the server itself uses is absolute by now. A relative path in a prompt means a file in the
    # input directory: the validation's PathPolicy resolves it so for inputs marked as paths, and the working
    # directory makes it so for any node input that opens a file without such a marker.
    os.chdir(input_dir)
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"nodegraph serving ComfyUI's API on http://{host}:{args.port} (output {settings.output_dir}, "
          f"input {settings.input_dir})", file=sys.stderr, flush=True)
    # run_app turns SIGINT and SIGTERM into a graceful shutdown: the worker interrupts the running prompt
    # (which goes back to pending) and the journal keeps the queue.
    web.run_app(server.app(), host=args.host, port=args.port, print=None, shutdown_timeout=1.0,
                access_log=None, handle_signals=True)
    return 0
