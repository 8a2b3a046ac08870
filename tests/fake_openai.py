"""A local stand-in for the OpenAI chat-completions endpoint, on 127.0.0.1.

Only the network is fake: tests drive the real `openai.AsyncOpenAI` client against it.
It speaks the streaming wire format of the real API (platform.openai.com/docs/api-
reference/chat-streaming): one SSE event `data: {chunk json}` per chunk, a first chunk
with the role, content deltas, a chunk with `finish_reason`, then - when the request
asked for `stream_options.include_usage` - a chunk with `choices: []` and `usage`, and
`data: [DONE]`. Errors are JSON `{"error": {message, type, param, code}}` with the
status the real API uses.

Real peers word the same stream differently, and a `Flavor` says how: LiteLLM's proxy
puts the role in the first content chunk, leaves `finish_reason` out of non-final
chunks, sends its usage chunk with one empty choice and `*_tokens_details`, pings
(`: ping`) before the first token, and gives error codes as strings (`"429"`); other
servers send a `retry:` block first, or number their events with `id:` lines (after either,
the SDK's own SSE decoder yields an empty event, which is not JSON).

Each request takes the next scripted `Reply`. A reply is a status and a list of steps
the handler runs in order: bytes to write (one write each, so a test decides where
the TCP writes fall), an `Event` to frame in the reply's flavor, a gate to wait on, a
cut of the connection, or a stall.
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


@dataclass(frozen=True)
class Event:
    """One SSE event of the stream, framed by the handler in the reply's Flavor."""

    payload: dict[str, Any] | str


@dataclass(frozen=True)
class Flavor:
    """How a server words a stream; the defaults are OpenAI's own."""

    role_chunk: bool = True  # False: the role rides in the first content chunk
    finish_reason_key: bool = True  # False: non-final chunks have no finish_reason key
    usage_choices: bool = False  # True: the usage chunk has one empty choice, not []
    usage_details: bool = False  # True: usage also has prompt/completion_tokens_details
    pings: int = 0  # `: ping` comment blocks before the first event
    retry_ms: int | None = None  # a `retry:` block of its own before the first event
    ids: bool = False  # each event has an `id: N` line, and a `: ping` block follows it


OPENAI: Final = Flavor()
LITELLM: Final = Flavor(
    role_chunk=False, finish_reason_key=False, usage_choices=True, usage_details=True, pings=1
)
PING: Final = b": ping\n\n"

Step = bytes | Event | Gate | Cut | Stall


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
    # How Event steps, the usage chunk and [DONE] are framed.
    flavor: Flavor = OPENAI


@dataclass(frozen=True)
class Recorded:
    headers: dict[str, str]
    body: dict[str, Any]
    at: float  # time.monotonic() when the request arrived


def event(payload: dict[str, Any] | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload)
    return f"data: {data}\n\n".encode()


def chunk(
    delta: dict[str, Any], finish_reason: str | None = None, flavor: Flavor = OPENAI
) -> dict[str, Any]:
    choice: dict[str, Any] = {"index": 0, "delta": delta}
    if finish_reason is not None or flavor.finish_reason_key:
        choice["finish_reason"] = finish_reason
    return {
        "id": CHUNK_ID,
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": MODEL,
        "choices": [choice],
    }


def text_chunks(
    pieces: Iterable[str], *, finish: str | None = "stop", flavor: Flavor = OPENAI
) -> list[dict[str, Any]]:
    """The chunks of a normal answer: role, one content delta per piece, finish."""
    deltas = [{"content": piece} for piece in pieces]
    if flavor.role_chunk or not deltas:
        deltas.insert(0, {"content": ""})
    deltas[0] = {"role": "assistant", **deltas[0]}
    chunks = [chunk(delta, flavor=flavor) for delta in deltas]
    if finish is not None:
        chunks.append(chunk({}, finish, flavor))
    return chunks


def text_events(pieces: Iterable[str], *, finish: str | None = "stop") -> list[bytes]:
    """The wire bytes of a normal answer in OpenAI's framing, one write per event."""
    return [event(c) for c in text_chunks(pieces, finish=finish)]


def usage_chunk(usage: Usage, flavor: Flavor = OPENAI) -> dict[str, Any]:
    counts: dict[str, Any] = {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    }
    if flavor.usage_details:
        counts["prompt_tokens_details"] = {"cached_tokens": 0, "audio_tokens": None}
        counts["completion_tokens_details"] = {"reasoning_tokens": 0, "audio_tokens": None}
    choices = [{"index": 0, "delta": {}}] if flavor.usage_choices else []
    return {**chunk({}), "choices": choices, "usage": counts}


class Framer:
    """Frames one reply's events in its Flavor: the blocks before the first event, ids."""

    def __init__(self, flavor: Flavor) -> None:
        self.flavor = flavor
        self.sent = 0

    def frame(self, payload: dict[str, Any] | str) -> list[bytes]:
        """The writes for one event, each block a write of its own."""
        writes: list[bytes] = []
        if not self.sent:
            if self.flavor.retry_ms is not None:
                writes.append(f"retry: {self.flavor.retry_ms}\n\n".encode())
            writes += [PING] * self.flavor.pings
        self.sent += 1
        if self.flavor.ids:
            writes += [f"id: {self.sent}\n".encode() + event(payload), PING]
        else:
            writes.append(event(payload))
        return writes


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


def answer(
    text: str, *, piece: int = 4, usage: Usage | None = None, flavor: Flavor = OPENAI
) -> Reply:
    """A normal streamed answer of `text` in content deltas of `piece` characters."""
    chunks = text_chunks(split(text, piece), flavor=flavor)
    return Reply(steps=tuple(Event(c) for c in chunks), usage=usage, flavor=flavor)


def huge_line(chars: int, *, write: int = 65_536) -> Reply:
    """One content delta of `chars` characters in a single `data:` line, then a normal
    finish: a server that sends a token of megabytes. The line goes out in writes of
    `write` bytes, all one repeated piece, so the fake holds a piece, not the line."""
    head, tail = event(chunk({"content": "\0"})).split(b"\\u0000")
    piece = b"x" * write
    count, rest = divmod(chars, write)
    line = (head, *(piece,) * count, *(piece[:rest],) * bool(rest), tail)
    return Reply(steps=(*text_events([], finish=None), *line, event(chunk({}, "stop"))))


def error(
    status: int,
    message: str,
    *,
    kind: str,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> Reply:
    return Reply(status=status, headers=headers or {}, body=error_body(message, kind, code))


def error_body(message: str, kind: str, code: str | None = None) -> dict[str, Any]:
    """The API's error object; LiteLLM gives `code` as a string of the HTTP status."""
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def stream_error(
    message: str, *, kind: str, code: str | None = None, flavor: Flavor = OPENAI
) -> Reply:
    """A 200 stream whose only event is an error object (then [DONE]): a failure the
    server reports after it has sent its headers, as LiteLLM does for a rate limit."""
    return Reply(steps=(Event(error_body(message, kind, code)),), flavor=flavor)


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
        framer = Framer(reply.flavor)
        for step in reply.steps:
            if isinstance(step, bytes):
                await response.write(step)
            elif isinstance(step, Event):
                await _write_all(response, framer.frame(step.payload))
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
            await _write_all(response, framer.frame(usage_chunk(reply.usage, reply.flavor)))
        if reply.done:
            await _write_all(response, framer.frame("[DONE]"))
        await response.write_eof()
        return response


async def _write_all(response: web.StreamResponse, writes: Iterable[bytes]) -> None:
    for data in writes:
        await response.write(data)
