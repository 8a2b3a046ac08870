"""The `genstream` command's client side: new, generate, tail, status, publish
(service/__main__.py adds `serve`)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeAlias

import orjson

from service.client import commands as subcommands
from service.client.api import DEFAULT_URL
from service.client.terminal import make_display

URL_ENV = "GENSTREAM_URL"
TOKEN_ENV = "GENSTREAM_TOKEN"


def _new(args: argparse.Namespace) -> int:
    return subcommands.run(
        lambda client: subcommands.new(client, args.name, sys.stdout), *_target(args)
    )


def _generate(args: argparse.Namespace) -> int:
    options = subcommands.GenerateOptions(
        project_id=args.project,
        prompt=args.prompt,
        image_urls=args.image or [],
        out_dir=Path(args.out) if args.out is not None else None,
        pipeline=args.pipeline,
        inputs=_inputs(args),
    )
    display = make_display(sys.stdout)
    return subcommands.run(
        lambda client: subcommands.generate(client, options, display), *_target(args)
    )


def _tail(args: argparse.Namespace) -> int:
    return subcommands.run(
        lambda client: subcommands.tail(client, args.project, args.after, args.json, sys.stdout),
        *_target(args),
    )


def _status(args: argparse.Namespace) -> int:
    return subcommands.run(
        lambda client: subcommands.status(client, args.project, args.json, sys.stdout),
        *_target(args),
    )


def _publish(args: argparse.Namespace) -> int:
    return subcommands.run(
        lambda client: subcommands.publish(client, args.project, args.type, args.data, sys.stdout),
        *_target(args),
    )


def _target(args: argparse.Namespace) -> tuple[str, str | None]:
    return args.url, args.token or None


def _client_options() -> argparse.ArgumentParser:
    """--url and --token, shared by every subcommand that talks to a server."""
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument(
        "--url",
        default=os.environ.get(URL_ENV, DEFAULT_URL),
        help=f"the server (default: ${URL_ENV}, else {DEFAULT_URL})",
    )
    options.add_argument(
        "--token",
        default=os.environ.get(TOKEN_ENV),
        help=f"API token (default: ${TOKEN_ENV}, which keeps it out of `ps`)",
    )
    return options


SubParsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def build_parser(
    add_commands: Sequence[Callable[[SubParsers], None]] = (),
) -> argparse.ArgumentParser:
    """The client's commands, and any others given (the server adds `serve`)."""
    parser = argparse.ArgumentParser(prog="genstream", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in add_commands:
        add(commands)
    _add_client_commands(commands)
    return parser


def _add_client_commands(commands: SubParsers) -> None:
    client = [_client_options()]
    new = commands.add_parser(
        "new", parents=client, help="create a project and print its id", description=_NEW_HELP
    )
    new.add_argument("name", help="the project's name")
    new.set_defaults(func=_new)

    generate = commands.add_parser(
        "generate", parents=client, help="run a generation, streamed", description=_GEN_HELP
    )
    generate.add_argument("project", help="project id")
    generate.add_argument("prompt", help="what to build")
    generate.add_argument("--out", metavar="DIR", help="write the generated files under DIR")
    generate.add_argument(
        "--image", action="append", metavar="URL", help="an image URL for the prompt (repeatable)"
    )
    generate.add_argument(
        "--pipeline",
        metavar="NAME",
        help="the pipeline to run (GET /api/pipelines); default: the project's, else the server's",
    )
    generate.add_argument(
        "--inputs", type=_json_object, metavar="JSON", help="the pipeline's inputs, an object"
    )
    generate.add_argument(
        "--input",
        action="append",
        type=_input_pair,
        metavar="KEY=VALUE",
        help="one of the pipeline's inputs, over --inputs (VALUE as JSON if it is: 2, true; "
        "else as text); repeatable",
    )
    generate.set_defaults(func=_generate)

    tail = commands.add_parser(
        "tail", parents=client, help="follow a project's events", description=_TAIL_HELP
    )
    tail.add_argument("project", help="project id")
    tail.add_argument(
        "--from",
        dest="after",
        type=_event_id,
        metavar="ID",
        help="replay the events after ID first (0: all of them); default: from now on",
    )
    tail.add_argument("--json", action="store_true", help="one JSON event a line, for jq")
    tail.set_defaults(func=_tail)

    status = commands.add_parser(
        "status", parents=client, help="show a project's state", description=_STATUS_HELP
    )
    status.add_argument("project", help="project id")
    status.add_argument("--json", action="store_true", help="the project as one JSON object")
    status.set_defaults(func=_status)

    publish = commands.add_parser(
        "publish", parents=client, help="publish an app event", description=_PUBLISH_HELP
    )
    publish.add_argument("project", help="project id")
    publish.add_argument("type", help="the event's type: app.<name>, e.g. app.notify")
    publish.add_argument("data", type=_json_object, metavar="DATA-JSON", help="a JSON object")
    publish.set_defaults(func=_publish)


def _json_object(raw: str) -> dict[str, Any]:
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError('must be a JSON object, such as \'{"to": "u:1"}\'')
    return value


def _input_pair(raw: str) -> tuple[str, Any]:
    key, equals, value = raw.partition("=")
    if not equals or not key:
        raise argparse.ArgumentTypeError(f"not KEY=VALUE: {raw!r}")
    try:
        return key, orjson.loads(value)
    except orjson.JSONDecodeError:
        return key, value  # `--input visitor_id=v-42`: a word is the text it says


def _inputs(args: argparse.Namespace) -> dict[str, Any] | None:
    """--inputs, then each --input over it; None when neither was given (the server's
    default: no inputs)."""
    if args.inputs is None and not args.input:
        return None
    return {**(args.inputs or {}), **dict(args.input or ())}


def _event_id(raw: str) -> int:
    if not raw.isascii() or not raw.isdigit():
        raise argparse.ArgumentTypeError(f"not an event id: {raw!r}")
    return int(raw)


_NEW_HELP = "Create a project and print its id, so that `P=$(genstream new demo)` works."
_GEN_HELP = (
    "Submit a prompt and stream the generation: the assistant's text as it arrives, a "
    "progress bar (on a terminal), each file as it completes, and each event of the "
    "pipeline's own (--pipeline). Ctrl+C cancels the generation on the server. Exit "
    "status: 0 completed, 1 failed or an API error, 3 cancelled elsewhere, 130 interrupted."
)
_TAIL_HELP = "Follow a project's events as they happen, resuming by itself; Ctrl+C stops."
_STATUS_HELP = "Show a project: its status, the running generation, its files."
_PUBLISH_HELP = (
    "Publish an app event on a project's log: stored, then sent to every stream of the "
    "project. Prints the stored event as one JSON line. The token needs the publish right."
)


def main(
    argv: Sequence[str] | None = None, add_commands: Sequence[Callable[[SubParsers], None]] = ()
) -> int:
    args = build_parser(add_commands).parse_args(argv)
    code: int = args.func(args)
    return code
