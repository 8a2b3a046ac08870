"""Reading Server-Sent Events on the client side, exactly as WHATWG HTML 9.2.6 says.

`SSEParser.feed(chunk)` takes bytes as they come off the socket, split anywhere (inside
a UTF-8 character, between the CR and LF of a CRLF), and returns the events completed
by that chunk. It keeps the two pieces of state the spec gives the EventSource itself:
the last event ID string (sent back as `Last-Event-ID` on reconnect) and the
reconnection time (`retry:`).
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass
from typing import Final

DEFAULT_EVENT_TYPE: Final = "message"
BOM: Final = "\ufeff"
_LINE_END: Final = re.compile(r"\r\n|\r|\n")


@dataclass(frozen=True, slots=True)
class Message:
    """One dispatched event: its type, its data and the last event ID at dispatch."""

    event: str
    data: str
    last_event_id: str


class SSEParser:
    """One per connection: a new connection starts a new stream (and may have a BOM)."""

    def __init__(self) -> None:
        # WHATWG: the stream is UTF-8; bytes that are not are replaced with U+FFFD.
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._started = False
        self._pending: list[str] = []  # the current line, not yet ended
        self._skip_lf = False  # the previous text ended in CR: a LF next is part of it
        self._data: list[str] = []
        self._event = ""
        self._id_buffer = ""
        self._last_event_id = ""
        self._retry_ms: int | None = None

    @property
    def last_event_id(self) -> str:
        """The last event ID string: the `id:` in force at the latest blank line."""
        return self._last_event_id

    @property
    def retry_ms(self) -> int | None:
        """The reconnection time the server asked for with `retry:`, if it did."""
        return self._retry_ms

    def feed(self, chunk: bytes) -> list[Message]:
        text = self._decoder.decode(chunk)
        if not text:
            return []
        if not self._started:
            self._started = True
            # WHATWG: one leading BOM is ignored, only at the start of the stream.
            if text.startswith(BOM):
                text = text[1:]
        if self._skip_lf:
            self._skip_lf = False
            if text.startswith("\n"):
                text = text[1:]
        messages: list[Message] = []
        start = 0
        for end in _LINE_END.finditer(text):
            line = text[start : end.start()]
            if self._pending:
                line = "".join(self._pending) + line
                self._pending.clear()
            self._line(line, messages)
            start = end.end()
        if start < len(text):
            self._pending.append(text[start:])
        # A CR ending this chunk ended a line; if the next chunk starts with LF, that
        # LF belongs to the same CRLF and must not end an empty line (a dispatch).
        elif text.endswith("\r"):
            self._skip_lf = True
        return messages

    def close(self) -> None:
        """End of stream: an event without its blank line is discarded, never dispatched."""
        self._decoder.decode(b"", final=True)
        self._pending.clear()
        self._data.clear()
        self._event = ""

    def _line(self, line: str, messages: list[Message]) -> None:
        if not line:
            self._dispatch(messages)
            return
        if line.startswith(":"):
            return  # a comment
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        # WHATWG: an id with NUL is ignored, so a stream cannot set a NUL cursor.
        elif name == "id" and "\0" not in value:
            self._id_buffer = value
        # Only ASCII digits: "retry: 1e3", "retry: -1" or "retry: ١٢" are ignored.
        elif name == "retry" and value.isascii() and value.isdigit():
            self._retry_ms = int(value)
        # any other field name, and a refused id or retry, is ignored

    def _dispatch(self, messages: list[Message]) -> None:
        # WHATWG: the ID is taken at every blank line, even one that dispatches nothing,
        # and the ID buffer is kept for the events that follow.
        self._last_event_id = self._id_buffer
        data, event = self._data, self._event
        self._data, self._event = [], ""
        if not data:
            return  # no data field: nothing is dispatched
        messages.append(Message(event or DEFAULT_EVENT_TYPE, "\n".join(data), self._last_event_id))
