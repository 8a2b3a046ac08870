"""A reverse proxy in front of a real genstream server that breaks things on purpose,
the way networks and middleboxes do: streams cut mid-frame, a reply lost after the
server acted on the request, a cursor header rewritten."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

from tests.conftest import LOOPBACK, client_session

# Headers a client sends that the server acts on; the rest stay on the proxy.
FORWARDED_HEADERS = ("Accept", "Authorization", "Content-Type", "Last-Event-ID")


@dataclass
class Faults:
    # Cut each of the first `cut_streams` streams after this many bytes (mid-frame).
    cut_stream_after: int | None = None
    cut_streams: int = 1_000_000
    # Instead of closing a cut stream, go silent and keep it open (a half-open link).
    freeze: bool = False
    # Send streams Last-Event-ID: 0 instead of the client's cursor (a broken proxy).
    replay_from_zero: bool = False
    # Forward the first submission, then drop the connection instead of answering.
    lose_first_submit_reply: bool = False
    # Answer every stream request 503, as a proxy whose upstream refuses them would.
    refuse_streams: bool = False


@dataclass
class Seen:
    """What went through: each stream's cursor header as the client sent it."""

    stream_cursors: list[str | None] = field(default_factory=list)
    submits: int = 0
    cut: int = 0
    # Requests answered 502 because the upstream was not listening, and streams refused.
    bad_gateway: int = 0
    refused: int = 0
    # Each stream request's query string (where an EventSource carries its ?token=).
    stream_queries: list[str] = field(default_factory=list)


class FaultyProxy:
    def __init__(self, upstream: str, faults: Faults) -> None:
        self.upstream = upstream
        self.faults = faults
        self.seen = Seen()
        self._http = client_session()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        headers = {k: request.headers[k] for k in FORWARDED_HEADERS if k in request.headers}
        is_stream = request.path.endswith("/stream")
        if is_stream:
            self.seen.stream_cursors.append(headers.get("Last-Event-ID"))
            self.seen.stream_queries.append(request.query_string)
            if self.faults.replay_from_zero and "Last-Event-ID" in headers:
                headers["Last-Event-ID"] = "0"
            if self.faults.refuse_streams:
                self.seen.refused += 1
                return web.Response(status=503, text="streams refused by the proxy")
        try:
            async with self._http.request(
                request.method,
                self.upstream + request.path_qs,
                headers=headers,
                data=await request.read(),
            ) as upstream:
                if upstream.content_type == "text/event-stream":
                    return await self._pipe_stream(request, upstream)
                body = await upstream.read()
        except aiohttp.ClientConnectorError:
            # The upstream is not listening (restarting): nginx's answer.
            self.seen.bad_gateway += 1
            return web.Response(status=502, text="bad gateway")
        if request.method == "POST" and request.path.endswith("/generations"):
            self.seen.submits += 1
            if self.faults.lose_first_submit_reply and self.seen.submits == 1:
                # The server has created the generation; the client never hears of it.
                assert request.transport is not None
                request.transport.abort()
                raise asyncio.CancelledError
        return web.Response(status=upstream.status, body=body, content_type=upstream.content_type)

    async def _pipe_stream(
        self, request: web.Request, upstream: aiohttp.ClientResponse
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            status=upstream.status, headers={"Content-Type": upstream.headers["Content-Type"]}
        )
        await response.prepare(request)
        budget = self.faults.cut_stream_after
        if self.seen.cut >= self.faults.cut_streams:
            budget = None
        async for chunk in upstream.content.iter_any():
            if budget is not None and len(chunk) >= budget:
                await response.write(chunk[:budget])
                self.seen.cut += 1
                if self.faults.freeze:
                    # Until the client gives up on it (the handler is then cancelled).
                    await asyncio.Event().wait()
                break
            if budget is not None:
                budget -= len(chunk)
            await response.write(chunk)
        await response.write_eof()
        return response

    async def close(self) -> None:
        await self._http.close()


@asynccontextmanager
async def faulty_proxy(upstream: str, faults: Faults) -> AsyncIterator[tuple[str, FaultyProxy]]:
    """Yield the proxy's URL and the proxy, serving on a free loopback port."""
    proxy = FaultyProxy(upstream, faults)
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", proxy.handle)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    sock = socket.socket()
    sock.bind((LOOPBACK, 0))
    port = sock.getsockname()[1]
    await web.SockSite(runner, sock).start()
    try:
        yield f"http://{LOOPBACK}:{port}", proxy
    finally:
        await runner.cleanup()
        await proxy.close()
