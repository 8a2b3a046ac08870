"""service/protocol.py as the page's ES module, served at /static/protocol.js.

The page's modules import their event types, statuses and close reasons from it, so the
page keeps no copy of the vocabulary: a new member of `protocol.py` is in the page when
the server next starts. Each name of `protocol.__all__` is one `export const` line, its
value written as JSON: a StrEnum is a frozen object of its members (`NAME: "value"`), a
frozenset a frozen array of its values (sorted: test membership with `includes`), a
string the string.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from enum import StrEnum
from pathlib import Path
from typing import Final

import orjson
from aiohttp import hdrs, web

from service import protocol

PATH: Final = "/static/protocol.js"
# WHATWG HTML, "fetch a single module script": a module is refused unless its MIME type
# is a JavaScript one.
CONTENT_TYPE: Final = "text/javascript"
_HEAD: Final = (
    "// service/protocol.py, the one vocabulary, as the page imports it: written from it by\n"
    "// service/web/protocol_js.py when the server starts (there is no such file to edit).\n"
)
# The JavaScript client's package (static/client/, README "Embedding") is published as
# files, so it holds the same text as a file of its own, written by
# `python -m service.web.protocol_js` (tests/test_js_client_package.py holds it equal).
PACKAGE_COPY: Final = Path(__file__).parent / "static" / "client" / "protocol.js"
PACKAGE_HEAD: Final = (
    "// service/protocol.py, the one vocabulary, as the client imports it: written from it by\n"
    "// `python -m service.web.protocol_js` (do not edit; a test holds it to protocol.py).\n"
)


def render(head: str = _HEAD) -> bytes:
    """The module's text: one export per name of `protocol.__all__`, in that order."""
    exports = [_export(name, getattr(protocol, name)) for name in protocol.__all__]
    return (head + "".join(exports)).encode()


def _export(name: str, value: object) -> str:
    if isinstance(value, type) and issubclass(value, StrEnum):
        members = {member.name: member.value for member in value}
        return f"export const {name} = Object.freeze({_json(members)});\n"
    if isinstance(value, frozenset):
        return f"export const {name} = Object.freeze({_json(sorted(value))});\n"
    if isinstance(value, str):
        return f"export const {name} = {_json(value)};\n"
    raise TypeError(f"service.protocol.{name}: no ES module form for a {type(value).__name__}")


def _json(value: object) -> str:
    # JSON is a JavaScript expression; orjson writes these ASCII strings as they are.
    return orjson.dumps(value).decode()


def handler() -> Callable[[web.Request], Awaitable[web.Response]]:
    """The route's handler, with the module rendered once, now: when the app is made."""
    body = render()

    async def serve(request: web.Request) -> web.Response:
        # Made by this process, with no file date to revalidate against: the browser asks
        # again on each load (a kilobyte) rather than keep one from an older server.
        return web.Response(
            body=body,
            content_type=CONTENT_TYPE,
            charset="utf-8",
            headers={hdrs.CACHE_CONTROL: "no-cache"},
        )

    return serve


if __name__ == "__main__":
    PACKAGE_COPY.write_bytes(render(PACKAGE_HEAD))
    sys.stdout.write(f"wrote {PACKAGE_COPY}\n")
