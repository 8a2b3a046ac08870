"""The SSE response: a StreamResponse that owns its writes, their send timeout and the abort.

The stream handler only says what to send; how a write is bounded in time and how a
connection that cannot take it is dropped live here, in one place.
"""

from __future__ import annotations

import asyncio
import socket

from aiohttp import web

from service.eventlog import sse


class SendTimeout(ConnectionError):
    """A write to the client did not complete in time; the connection was aborted."""


class SSEResponse(web.StreamResponse):
    """A text/event-stream response to `request` whose every write must complete within
    `send_timeout` seconds, else the connection is aborted and SendTimeout raised."""

    def __init__(self, request: web.Request, send_timeout: float) -> None:
        super().__init__(headers=sse.HEADERS)
        self._client = request
        # Taken before the headers go out, as the handler did: the fast path of `send`
        # reads its buffer, and a lost connection must not leave it None mid-stream.
        self._transport = request.transport
        self._send_timeout = send_timeout
        self._writing = False
        self.timed_out = False

    async def start(self, unacked_timeout: float) -> None:
        """Send the headers, then bound how long sent data may stay unacknowledged."""
        await self.prepare(self._client)
        _limit_unacked_time(self._client, unacked_timeout)

    async def send(self, data: bytes) -> None:
        """One write, aborted with the connection when the client does not take it in time."""
        self._writing = True
        try:
            if _cannot_wait(self._transport, len(data)):
                # No timer: a timer per write cost as much as the write itself (fan-out profile).
                await self.write(data)
            else:
                async with asyncio.timeout(self._send_timeout):
                    await self.write(data)
        except TimeoutError:
            self.timed_out = True
            self.abort()
            raise SendTimeout(f"a write did not complete in {self._send_timeout:g} s") from None
        finally:
            self._writing = False

    async def finish(self) -> None:
        """End the body; a client that does not take even that in time raises TimeoutError."""
        async with asyncio.timeout(self._send_timeout):
            await self.write_eof()

    def abort(self) -> None:
        """Drop the connection: nothing more is sent, and aiohttp closes the socket."""
        if self._client.transport is not None:
            self._client.transport.abort()

    def abort_if_writing(self) -> None:
        # A handler waiting on a write to a client that stopped reading never sees why
        # it should stop; only dropping the connection frees it. One that is not writing
        # ends the stream itself, cleanly.
        if self._writing:
            self.abort()


def _limit_unacked_time(request: web.Request, seconds: float) -> None:
    """Linux: drop the connection when sent data stays unacknowledged this long, so a
    peer whose network vanished (no FIN, no RST) is found even while the stream is
    quiet but for heartbeats (tcp(7), TCP_USER_TIMEOUT)."""
    option = getattr(socket, "TCP_USER_TIMEOUT", None)
    sock = request.transport.get_extra_info("socket") if request.transport else None
    if option is None or sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    sock.setsockopt(socket.IPPROTO_TCP, option, max(1, round(seconds * 1000)))


def _cannot_wait(transport: asyncio.Transport | None, size: int) -> bool:
    """True when a write of `size` bytes cannot wait for the client: aiohttp's write waits
    only while the transport is paused, which it is not below its low-water mark, and
    this write cannot take it past its high-water mark either."""
    if transport is None or transport.is_closing():
        return False
    low, _high = transport.get_write_buffer_limits()
    return transport.get_write_buffer_size() + size <= low
