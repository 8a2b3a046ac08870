"""The Server-Sent Events wire format (WHATWG HTML 9.2), and nothing else."""

from __future__ import annotations

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
    parts: list[bytes] = []
    if event_id is not None:
        text_id = str(event_id)
        if _FORBIDDEN_IN_FIELD.search(text_id):
            raise ValueError(f"SSE id cannot contain CR, LF or NUL: {text_id!r}")
        parts.append(b"id: " + text_id.encode())
    if event is not None:
        if _FORBIDDEN_IN_FIELD.search(event):
            raise ValueError(f"SSE event name cannot contain CR, LF or NUL: {event!r}")
        parts.append(b"event: " + event.encode())
    for line in _LINE_BREAK.split(data):
        parts.append(b"data: " + line)
    return b"\n".join(parts) + b"\n\n"


def comment(text: str) -> bytes:
    """A comment line per line of text; clients ignore them, proxies see traffic."""
    return b"".join(b": " + line + b"\n" for line in _LINE_BREAK.split(text.encode())) + b"\n"


def retry(milliseconds: int) -> bytes:
    if milliseconds < 0:
        raise ValueError("retry must be a non-negative number of milliseconds")
    return b"retry: %d\n\n" % milliseconds
