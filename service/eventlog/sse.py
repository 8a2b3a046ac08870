"""The Server-Sent Events wire format (WHATWG HTML 9.2), and nothing else."""

from __future__ import annotations

import functools
import re
from typing import Final

CONTENT_TYPE: Final = "text/event-stream"
HEADERS: Final = {
    "Content-Type": "text/event-stream; charset=utf-8",
    # no-transform: a proxy must not compress or rewrite the stream.
    "Cache-Control": "no-cache, no-transform",
    # nginx: do not buffer this response (proxy_buffering per response).
    "X-Accel-Buffering": "no",
}
PING: Final = b": ping\n\n"

# WHATWG HTML 9.2.6: a line ends at CR, LF or CRLF, so any of them inside a
# field would start a new field; a NUL in `id` makes the client ignore the field.
_LINE_BREAK = re.compile(rb"\r\n|\r|\n")
_FORBIDDEN_IN_FIELD = re.compile(r"[\r\n\x00]")


def frame(data: bytes, *, event: str | None = None, event_id: int | str | None = None) -> bytes:
    """One event: `id:`, `event:`, then one `data:` line per line of data, then a blank line.

    A field value that would break the framing is refused, never silently changed.
    """
    if type(event_id) is int and event is not None and b"\n" not in data and b"\r" not in data:
        # The usual event, framed once per event live and once per row on replay: an int
        # id, a known name, and JSON from orjson, which never holds a raw line break.
        return b"id: %d\nevent: %s\ndata: %s\n\n" % (event_id, _event_field(event), data)
    parts: list[bytes] = []
    if event_id is not None:
        text_id = str(event_id)
        if _FORBIDDEN_IN_FIELD.search(text_id):
            raise ValueError(f"SSE id cannot contain CR, LF or NUL: {text_id!r}")
        parts.append(b"id: " + text_id.encode())
    if event is not None:
        parts.append(b"event: " + _event_field(event))
    for line in _LINE_BREAK.split(data):
        parts.append(b"data: " + line)
    return b"\n".join(parts) + b"\n\n"


@functools.lru_cache(maxsize=256)
def _event_field(event: str) -> bytes:
    """An event name, checked and encoded once per name (there are a dozen)."""
    if _FORBIDDEN_IN_FIELD.search(event):
        raise ValueError(f"SSE event name cannot contain CR, LF or NUL: {event!r}")
    return event.encode()


def comment(text: str) -> bytes:
    """A comment line per line of text; clients ignore them, proxies see traffic."""
    return b"".join(b": " + line + b"\n" for line in _LINE_BREAK.split(text.encode())) + b"\n"


def retry(milliseconds: int) -> bytes:
    if milliseconds < 0:
        raise ValueError("retry must be a non-negative number of milliseconds")
    return b"retry: %d\n\n" % milliseconds
