"""A local stand-in for the OpenAI chat-completions endpoint, on 127.0.0.1.

Only the network is fake: tests drive the real `openai.AsyncOpenAI` client against it.
It speaks the streaming wire format of the real API (platform.openai.com/docs/api-
reference/chat-streaming): one SSE event `data: {chunk json}` per chunk, a first chunk
with the role, content deltas, a chunk with `finish_reason`, then - when the request
asked for `stream_options.include_usage` - a chunk with `choices: []` and `usage`, and
`data: [DONE]`. Errors are JSON `{"error": {message, type, param, code}}` with the
status the real API uses.

Each request takes the next scripted `Reply`. A reply is a status and a list of steps
the handler runs in order: bytes to write (one write each, so a test decides where
the TCP writes fall), a gate to wait on, a cut of the connection, or a stall.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from aiohttp import web

LOOPBACK: Final = "127.0.0.1"
MODEL: Final = "fake-model"
CHUNK_ID: Final = "chatcmpl-fake"
CREATED: Final = 1_732_345_678


@dataclass(frozen=True)
class Gate:
    """The handler waits here until the test opens the gate."""

    opened: asyncio.Event = field(default_factory=asyncio.Event)

    def open(self) -> None:
        self.opened.set()


@dataclass(frozen=True)
class Cut:
    """Drop the connection without ending the chunked body: a cut mid-stream."""


@dataclass(frozen=True)
class Stall:
    """Send nothing more until the server shuts down: the client's timeout decides."""


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int


Step = bytes | Gate | Cut | Stall


@dataclass(frozen=True)
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    # For a 200: the stream's steps. The usage chunk and [DONE] follow them unless
    # a step cut or stalled the stream first.
    steps: tuple[Step, ...] = ()
    usage: Usage | None = None
    # For an error status: the JSON body.
    body: dict[str, Any] | None = None
    done: bool = True


@dataclass(frozen=True)
class Recorded:
    headers: dict[str, str]
    body: dict[str, Any]
    at: float  # time.monotonic() when the request arrived


def event(payload: dict[str, Any] | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload)
    return f"data: {data}\n\n".encode()


def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
    return {
        "id": CHUNK_ID,
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": MODEL,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    }


def text_events(pieces: Iterable[str], *, finish: str | None = "stop") -> list[bytes]:
    """The events of a normal answer: role, one content delta per piece, finish."""
    events = [event(chunk({"role": "assistant", "content": ""}))]
    events += [event(chunk({"content": piece})) for piece in pieces]
    if finish is not None:
        events.append(event(chunk({}, finish)))
    return events


def split(text: str, size: int) -> list[str]:
    return [text[start : start + size] for start in range(0, len(text), size)]


def rewrite(data: bytes, sizes: Sequence[int]) -> list[bytes]:
    """The same bytes in writes of the given sizes, cycling: bursts and splits alike."""
    writes: list[bytes] = []
    start = 0
    index = 0
    while start < len(data):
        size = sizes[index % len(sizes)]
        writes.append(data[start : start + size])
        start += size
        index += 1
    return writes


def answer(text: str, *, piece: int = 4, usage: Usage | None = None) -> Reply:
    """A normal streamed answer of `text` in content deltas of `piece` characters."""
    return Reply(steps=tuple(text_events(split(text, piece))), usage=usage)


def error(
    status: int,
    message: str,
    *,
    kind: str,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> Reply:
    body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return Reply(status=status, headers=headers or {}, body=body)


class FakeOpenAI:
    """The fake server: `script(...)` the replies, `url` for base_url, `requests` seen."""

    def __init__(self) -> None:
        self.replies: deque[Reply] = deque()
        self.requests: list[Recorded] = []
        self._closing = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.url = ""

    def script(self, *replies: Reply) -> None:
        self.replies.extend(replies)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._completions)
        # handler_cancellation: a client that gives up (a timeout) ends its handler.
        self._runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, LOOPBACK, 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://{LOOPBACK}:{port}/v1"

    async def close(self) -> None:
        self._closing.set()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(Recorded(dict(request.headers), body, time.monotonic()))
        if not self.replies:
            return web.json_response({"error": {"message": "no reply scripted"}}, status=599)
        reply = self.replies.popleft()
        if reply.status != 200:
            return web.json_response(reply.body, status=reply.status, headers=reply.headers)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for step in reply.steps:
            if isinstance(step, bytes):
                await response.write(step)
            elif isinstance(step, Gate):
                await step.opened.wait()
            elif isinstance(step, Cut):
                assert request.transport is not None
                request.transport.abort()
                return response
            else:
                await self._closing.wait()
                return response
        include_usage = (body.get("stream_options") or {}).get("include_usage")
        if include_usage and reply.usage is not None:
            usage = {
                "prompt_tokens": reply.usage.prompt_tokens,
                "completion_tokens": reply.usage.completion_tokens,
                "total_tokens": reply.usage.prompt_tokens + reply.usage.completion_tokens,
            }
            await response.write(event({**chunk({}), "choices": [], "usage": usage}))
        if reply.done:
            await response.write(event("[DONE]"))
        await response.write_eof()
        return response
