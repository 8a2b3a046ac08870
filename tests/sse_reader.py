"""Reading a real SSE response byte by byte, the way a browser's EventSource would."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

DEFAULT_TIMEOUT = 10.0


@dataclass(frozen=True)
class Frame:
    raw: bytes
    id: int | None
    event: str | None
    data: bytes | None
    comments: tuple[bytes, ...]
    retry: int | None

    @property
    def json(self) -> dict[str, Any]:
        assert self.data is not None, f"no data in frame {self.raw!r}"
        value = orjson.loads(self.data)
        assert isinstance(value, dict)
        return value


def parse_frame(raw: bytes) -> Frame:
    fields: dict[bytes, list[bytes]] = {}
    comments: list[bytes] = []
    for line in raw.rstrip(b"\n").split(b"\n"):
        if line.startswith(b":"):
            comments.append(line[1:].strip())
            continue
        name, _, value = line.partition(b":")
        fields.setdefault(name, []).append(value[1:] if value.startswith(b" ") else value)
    ids = fields.get(b"id")
    events = fields.get(b"event")
    retries = fields.get(b"retry")
    return Frame(
        raw=raw,
        id=int(ids[-1]) if ids else None,
        event=events[-1].decode() if events else None,
        data=b"\n".join(fields[b"data"]) if b"data" in fields else None,
        comments=tuple(comments),
        retry=int(retries[-1]) if retries else None,
    )


class SSEReader:
    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response

    async def frame(self, timeout: float = DEFAULT_TIMEOUT) -> Frame:
        """The next frame (an event, a comment block or a retry line); EOFError at the end."""
        async with asyncio.timeout(timeout):
            raw = await self.response.content.readuntil(b"\n\n")
        if not raw.endswith(b"\n\n"):
            raise EOFError(f"stream ended mid-frame or cleanly: {raw!r}")
        return parse_frame(raw)

    async def event(self, timeout: float = DEFAULT_TIMEOUT) -> Frame:
        """The next frame that carries an event (comments and retry skipped)."""
        async with asyncio.timeout(timeout):
            while True:
                frame = await self.frame(timeout)
                if frame.event is not None:
                    return frame

    async def events_until_end(self, timeout: float = DEFAULT_TIMEOUT) -> list[Frame]:
        """Every event until the server closes the stream."""
        frames: list[Frame] = []
        async with asyncio.timeout(timeout):
            while True:
                try:
                    frame = await self.frame(timeout)
                except EOFError:
                    return frames
                if frame.event is not None:
                    frames.append(frame)
