"""The SSE response: a StreamResponse that owns its writes, their send timeout and the abort.

The stream handler only says what to send; how a write is bounded in time and how a
connection that cannot take it is dropped live here, in one place.
"""

from __future__ import annotations

import asyncio
import socket

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.base_protocol import BaseProtocol
from aiohttp.http_writer import StreamWriter

from service.eventlog import sse


def chunk(data: bytes) -> bytes:
    """`data` as one HTTP/1.1 chunk (RFC 9112 section 7.1): its size in hex, CRLF, the
    data, CRLF; what aiohttp's StreamWriter writes for a chunked response. Made once per
    commit for every stream that sends the commit whole (web/streams.py)."""
    return b"%x\r\n%b\r\n" % (len(data), data)


class SendTimeout(ConnectionError):
    """A write to the client did not complete in time; the connection was aborted."""


class SSEResponse(web.StreamResponse):
    """A text/event-stream response to `request` whose every write must complete within
    `send_timeout` seconds, else the connection is aborted and SendTimeout raised."""

    # The headers wait for the first bytes of the body, which follow at once (the
    # retry and `: connected`), and go out with them in one write, one segment: the
    # class flag aiohttp's own web.Response sets. A stream's time to first byte was two
    # writes (two system calls, two wake-ups of the client) where one does.
    _send_headers_immediately = False

    def __init__(self, request: web.Request, send_timeout: float) -> None:
        super().__init__(headers=sse.HEADERS)
        self._client = request
        # Taken before the headers go out, as the handler did: the fast path of `send`
        # reads its buffer, and a lost connection must not leave it None mid-stream.
        self._transport = request.transport
        self._protocol = request.protocol
        self._send_timeout = send_timeout
        self._writing = False
        # aiohttp's writer, once the headers are out with the first write: what
        # `send_now` writes past (None: it cannot, and says so).
        self._writer: StreamWriter | None = None
        self._prepared: AbstractStreamWriter | None = None  # what prepare() gave
        self.timed_out = False

    async def start(self, unacked_timeout: float) -> None:
        """Send the headers, then bound how long sent data may stay unacknowledged."""
        self._prepared = await self.prepare(self._client)
        _limit_unacked_time(self._client, unacked_timeout)

    def send_now(self, chunked: bytes) -> bool:
        """Write `chunked` (the frames as one HTTP/1.1 chunk: `chunk`) at once, from
        outside the handler's task, if the client can take it without waiting; False,
        with nothing written, if it cannot (then `send`).

        Straight to the transport, counted in aiohttp's writer as its own write counts
        (`output_size`, the access log's bytes; `buffer_size`, its drain's), which is all
        StreamWriter.write does for an uncompressed chunked response: the fast path of a
        fan-out, one C call per stream per commit, no task and no coroutine.
        """
        writer, transport = self._writer, self._transport
        if (
            writer is None
            or transport is None
            or self._writing
            or not _cannot_wait(self._protocol, transport, len(chunked))
        ):
            return False
        transport.write(chunked)
        writer.output_size += len(chunked)
        writer.buffer_size += len(chunked)
        return True

    def _open_fast_path(self) -> None:
        """After the first write (the headers went with it): what `send_now` needs, when
        aiohttp writes this response as plain chunks (chunked, uncompressed)."""
        writer = self._prepared
        if isinstance(writer, StreamWriter) and writer.chunked and not self.compression:
            self._writer = writer

    async def send(self, data: bytes) -> None:
        """One write, aborted with the connection when the client does not take it in time."""
        self._writing = True
        try:
            if _cannot_wait(self._protocol, self._transport, len(data)):
                # No timer: a timer per write cost as much as the write itself (fan-out profile).
                await self.write(data)
            else:
                async with asyncio.timeout(self._send_timeout):
                    await self.write(data)
            if self._writer is None:
                self._open_fast_path()
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


def _cannot_wait(protocol: BaseProtocol, transport: asyncio.Transport | None, size: int) -> bool:
    """True when a write of `size` bytes cannot wait for the client: aiohttp's write waits
    only while its protocol's writing is paused, which the transport does when its buffer
    passes the high-water mark (asyncio's flow control: pause_writing), and this write
    cannot take it past that mark.

    Not "below the low-water mark": the mark at which writing resumes is 16 bytes on a
    fresh uvloop 0.23 transport (get_write_buffer_limits() says (16, 65536); asyncio's
    and uvloop's own set_write_buffer_limits() default it to 16 KiB), so nearly no write
    passed that test and every write of a stream took the timer path."""
    if transport is None or transport.is_closing() or protocol.writing_paused:
        return False
    _low, high = transport.get_write_buffer_limits()
    return transport.get_write_buffer_size() + size <= high
