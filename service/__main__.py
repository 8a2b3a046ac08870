"""The `genstream` command, and `python -m service`: the client's commands and the server's.

`python -m service` with no command starts the server, as SPEC says and `genstream serve`
does; `genstream` with no command prints its usage.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from service.client import cli
from service.storage.command import add_copy_command
from service.web.command import add_serve_command

SERVE = "serve"


def main(argv: Sequence[str] | None = None, *, default: str | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args and default is not None:
        args = [default]
    return cli.main(args, add_commands=(add_serve_command, add_copy_command))


if __name__ == "__main__":
    sys.exit(main(default=SERVE))
