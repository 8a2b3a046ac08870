"""`genstream copy-to-postgres`: an SQLite database copied into an empty PostgreSQL one
(storage/copy.py), for a user moving to several processes (README "Running several
processes")."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import TypeAlias

from service import config
from service.storage.interface import StorageError

SubParsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def add_copy_command(commands: SubParsers) -> None:
    copy = commands.add_parser(
        "copy-to-postgres",
        help="copy an SQLite database into an empty PostgreSQL database, ids kept",
    )
    copy.add_argument("--config", help="settings file (default: the repo's config.toml)")
    copy.add_argument("--from", dest="source", help="the SQLite file (default: storage.path)")
    copy.add_argument(
        "--to",
        dest="target",
        help="postgresql://user@host:port/database (default: storage.url, that is "
        "GENSTREAM_STORAGE_URL); a password only from the environment (PGPASSWORD)",
    )
    copy.set_defaults(func=_copy)


def _copy(args: argparse.Namespace) -> int:
    try:
        settings = config.load(args.config)
        storage = settings.storage
        overrides = {k: v for k, v in (("path", args.source), ("url", args.target)) if v}
        if overrides:
            storage = settings.replace(storage=overrides).storage
    except config.ConfigError as exc:
        print(f"genstream: {exc}", file=sys.stderr)
        return 2
    # A password on the command line would be in every `ps` and shell history.
    refused = config.storage_url_error(args.target) if args.target else None
    if not storage.url:
        refused = "no target: give --to, or GENSTREAM_STORAGE_URL"
    if refused is not None:
        print(f"genstream: {refused}", file=sys.stderr)
        return 2
    from service.storage import copy  # asyncpg only for this command

    try:
        copied = asyncio.run(copy.copy_to_postgres(storage.path, storage.url))
    except StorageError as exc:
        print(f"genstream: {exc}", file=sys.stderr)
        return 1
    print(copy.describe(copied))
    return 0
