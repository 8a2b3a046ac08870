"""`genstream serve`: the server's own subcommand, kept out of the client's CLI (the client
imports nothing from the server side; service/__main__.py puts the two together)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from typing import TypeAlias

from service import config, logs
from service.storage.sqlite import StorageError
from service.web import server

SubParsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def add_serve_command(commands: SubParsers) -> None:
    serve = commands.add_parser("serve", help="run the server")
    serve.add_argument("--config", help="settings file (default: the repo's config.toml)")
    serve.add_argument("--host", help="override server.host")
    serve.add_argument("--port", type=int, help="override server.port")
    serve.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    try:
        settings = config.load(args.config)
    except config.ConfigError as exc:
        print(f"genstream: {exc}", file=sys.stderr)
        return 2
    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    if overrides:
        settings = settings.replace(server=overrides)
    logs.configure(settings.log)
    try:
        with asyncio.Runner(loop_factory=server.loop_factory()) as runner:
            runner.run(server.serve(settings))
    except config.ConfigError as exc:
        print(f"genstream: {exc}", file=sys.stderr)
        return 2
    except (OSError, StorageError) as exc:
        logging.getLogger("genstream").error("cannot serve: %s", exc)
        print(f"genstream: cannot serve: {exc}", file=sys.stderr)
        return 1
    return 0
