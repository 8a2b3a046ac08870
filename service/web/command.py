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
from service.web import server, workers

SubParsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def add_serve_command(commands: SubParsers) -> None:
    serve = commands.add_parser("serve", help="run the server")
    serve.add_argument("--config", help="settings file (default: the repo's config.toml)")
    serve.add_argument("--host", help="override server.host")
    serve.add_argument("--port", type=int, help="override server.port")
    serve.add_argument(
        "--workers",
        type=_positive,
        help="override server.workers: processes sharing the port (more than 1: postgres only)",
    )
    # Given by the supervisor of --workers to each worker it starts: its pipes.
    serve.add_argument(workers.WORKER_PIPES_OPTION, help=argparse.SUPPRESS)
    serve.set_defaults(func=_serve)


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {number}")
    return number


def _refuse_workers(settings: config.Settings) -> str | None:
    """Why these settings cannot run several workers, or None."""
    count = settings.server.workers
    if count == 1:
        return None
    if settings.storage.backend != "postgres":
        return (
            f'--workers {count} needs storage.backend = "postgres" (GENSTREAM_STORAGE_BACKEND): '
            f"the {settings.storage.backend} backend serves one process, and a second "
            "process on the same file would collide on event ids"
        )
    if settings.server.port == 0:
        return f"--workers {count} needs a fixed server.port: with 0 each would pick its own"
    return None


def _worker_argv(args: argparse.Namespace) -> list[str]:
    """The command line of one worker: this one's, without --workers."""
    argv = ["serve"]
    for option, value in (("--config", args.config), ("--host", args.host), ("--port", args.port)):
        if value is not None:
            argv += [option, str(value)]
    return [*argv, "--workers", "1"]


def _serve(args: argparse.Namespace) -> int:
    try:
        settings = config.load(args.config)
    except config.ConfigError as exc:
        print(f"genstream: {exc}", file=sys.stderr)
        return 2
    given = (("host", args.host), ("port", args.port), ("workers", args.workers))
    overrides = {k: v for k, v in given if v is not None}
    try:
        if overrides:
            settings = settings.replace(server=overrides)
        server.check_exposure(settings)
    except config.ConfigError as exc:
        print(f"genstream: {exc}", file=sys.stderr)
        return 2
    refused = _refuse_workers(settings)
    if refused is not None:
        print(f"genstream: {refused}", file=sys.stderr)
        return 2
    logs.configure(settings.log)
    link = None if args.worker_pipes is None else workers.WorkerLink.parse(args.worker_pipes)
    try:
        with asyncio.Runner(loop_factory=server.loop_factory()) as runner:
            if settings.server.workers > 1:
                return runner.run(
                    workers.supervise(settings, _worker_argv(args), settings.server.workers)
                )
            runner.run(server.serve(settings, link))
    except workers.WorkerAborted as exc:
        logging.getLogger("genstream").warning("worker not started: %s", exc)
        return 1
    except config.ConfigError as exc:
        print(f"genstream: {exc}", file=sys.stderr)
        return 2
    except (OSError, StorageError) as exc:
        logging.getLogger("genstream").error("cannot serve: %s", exc)
        print(f"genstream: cannot serve: {exc}", file=sys.stderr)
        return 1
    return 0
