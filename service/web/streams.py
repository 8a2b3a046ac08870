"""The SSE stream handler: subscribe, replay from SQLite, then follow the topic live.

A stream ends in one of six ways, each recorded on its streaming session:
`client_gone` (the client left; aiohttp cancels the handler because the runner has
handler_cancellation=True), `completed` (a generation stream sent its terminal event),
`slow_client` (its buffer overflowed: cut off, it resumes from SQLite), `send_timeout`
(one write took longer than stream.send_timeout_seconds: a client that stopped reading
or whose network vanished; the connection is aborted), `shutdown` (the server is
stopping: a goodbye comment, then close) and `error`.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from service.eventlog import sse
from service.eventlog.broker import Subscriber
from service.eventlog.event import Event, cursor_frame, now_ms
from service.eventlog.journal import Emit, TxFunction
from service.metrics import Metrics
from service.protocol import ACTIVE_STATUSES, CloseReason
from service.storage.sqlite import Tx
from service.web.context import Services
from service.web.params import non_negative_int

log = logging.getLogger(__name__)

CURSOR_PARAM = "last_event_id"
GOODBYE = sse.comment("server shutting down, reconnect")
TOO_SLOW = sse.comment("too far behind, reconnect to resume")
# The kernel gives up on unacknowledged data after this many send timeouts: later than
# a stuck write's own timeout (which names the reason), soon enough for a quiet stream.
UNACKED_TIMEOUT_FACTOR = 2


@dataclass(frozen=True, slots=True)
class StreamTarget:
    """What a stream follows: a project's feed, or one generation within it."""

    project_id: str
    generation_id: str | None = None

    @property
    def key(self) -> str:
        if self.generation_id is not None:
            return f"generation:{self.generation_id}"
        return f"project:{self.project_id}"

    def wants(self, event: Event) -> bool:
        return self.generation_id is None or event.generation_id == self.generation_id


def parse_cursor(request: web.Request) -> int | None:
    """Last-Event-ID, else ?last_event_id=; the header wins when both are there, but
    each is checked (a bad one is a 400 even beside a good one, as the API says)."""
    query = request.query.get(CURSOR_PARAM)
    cursor = None if query is None else non_negative_int(query, CURSOR_PARAM)
    header = request.headers.get("Last-Event-ID")
    return cursor if header is None else non_negative_int(header, "Last-Event-ID")


class SendTimeout(ConnectionError):
    """A write to the client did not complete in time; the connection was aborted."""


@dataclass
class _Progress:
    last_id: int
    send_timeout: float
    abort: Callable[[], None]
    transport: asyncio.Transport | None = None
    sent: int = 0
    done: bool = False
    writing: bool = False


async def stream(
    request: web.Request, services: Services, target: StreamTarget, start_after: int | None
) -> web.StreamResponse:
    """Serve `target` as SSE, starting after event `start_after` (None: live from now)."""
    settings = services.settings.stream
    services.connections.open(target.key, target.project_id)
    # Subscribe before reading SQLite: whatever commits after the replay's read is
    # already queued for us, and what both deliver is dropped by id.
    subscriber = services.broker.subscribe(target.project_id)
    session_id = uuid.uuid4().hex
    # No cursor: live from the newest event published before we subscribed; everything
    # after it reaches our buffer. Ids are global, so any published id is a cursor.
    start = services.journal.last_published_id if start_after is None else start_after
    progress = _Progress(
        last_id=start,
        send_timeout=settings.send_timeout_seconds,
        abort=lambda: _abort(request),
        transport=request.transport,
    )
    reason = CloseReason.ERROR
    # Recorded before the first byte: a client that leaves at once still has its row.
    _record_open(services, session_id, request, target, start_after)
    response = web.StreamResponse(headers=sse.HEADERS)
    try:
        await response.prepare(request)
        _limit_unacked_time(request, settings.send_timeout_seconds * UNACKED_TIMEOUT_FACTOR)
        subscriber.on_overflow = lambda: _abort_if_stuck(request, progress)
        # First bytes at once: EventSource fires `open` and proxies see a live response.
        first = sse.retry(settings.retry_ms) + sse.comment("connected")
        if start_after is None:
            # No cursor, so the client has no id to resume from until its first event: give
            # it one now. A drop before that event then resumes here, not live from later.
            first += cursor_frame(start)
        await _write(response, progress, first)
        await _replay(response, services, target, progress)
        if not progress.done and await _generation_over(services, target):
            # The terminal event commits with the status: read once more for it (it may
            # have landed after the first read), then nothing more can come.
            await _replay(response, services, target, progress)
            progress.done = True
        if not progress.done:
            reason = await _follow(
                response, subscriber, target, progress, settings.heartbeat_seconds, services.metrics
            )
        else:
            reason = CloseReason.COMPLETED
        if reason == CloseReason.SHUTDOWN:
            await _write(response, progress, GOODBYE)
        elif reason == CloseReason.SLOW_CLIENT:
            await _write(response, progress, TOO_SLOW)
        async with asyncio.timeout(settings.send_timeout_seconds):
            await response.write_eof()
        return response
    except asyncio.CancelledError:
        reason = _closed_reason(subscriber, CloseReason.CLIENT_GONE)
        raise
    except SendTimeout:
        reason = CloseReason.SEND_TIMEOUT
        return web.StreamResponse()  # the connection is aborted; nothing more is sent
    except (ConnectionError, TimeoutError):
        reason = _closed_reason(subscriber, CloseReason.CLIENT_GONE)
        _abort(request)
        return web.StreamResponse()  # nothing more can be sent; aiohttp closes the socket
    except Exception:
        if not response.prepared:
            raise  # nothing sent yet: the error middleware answers with JSON
        # Headers and events are out: a JSON error now would land inside the stream's
        # body. Drop the connection; the client reconnects and resumes by its cursor.
        log.exception("stream %s failed", target.key)
        _abort(request)
        return response
    finally:
        services.broker.unsubscribe(subscriber)
        services.connections.close(target.key, target.project_id)
        services.metrics.stream_closes.labels(reason).inc()
        _record_close(services, session_id, progress, reason)


def _limit_unacked_time(request: web.Request, seconds: float) -> None:
    """Linux: drop the connection when sent data stays unacknowledged this long, so a
    peer whose network vanished (no FIN, no RST) is found even while the stream is
    quiet but for heartbeats (tcp(7), TCP_USER_TIMEOUT)."""
    option = getattr(socket, "TCP_USER_TIMEOUT", None)
    sock = request.transport.get_extra_info("socket") if request.transport else None
    if option is None or sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    sock.setsockopt(socket.IPPROTO_TCP, option, max(1, round(seconds * 1000)))


def _abort(request: web.Request) -> None:
    if request.transport is not None:
        request.transport.abort()


def _abort_if_stuck(request: web.Request, progress: _Progress) -> None:
    # A handler waiting on a write to a client that stopped reading never sees the
    # overflow; only dropping the connection frees it. One that is not writing ends the
    # stream itself, cleanly.
    if progress.writing and request.transport is not None:
        request.transport.abort()


def _closed_reason(subscriber: Subscriber, default: CloseReason) -> CloseReason:
    return subscriber.closed if subscriber.closed is not None else default


async def _replay(
    response: web.StreamResponse, services: Services, target: StreamTarget, progress: _Progress
) -> None:
    page = services.settings.stream.replay_page
    while True:
        events = await services.storage.events_after(
            target.project_id, progress.last_id, page, target.generation_id
        )
        if events:
            sent = await _send(response, events, target, progress)
            services.metrics.events_replayed.inc(sent)
            services.metrics.events_delivered.inc(sent)
        if len(events) < page or progress.done:
            return


async def _generation_over(services: Services, target: StreamTarget) -> bool:
    if target.generation_id is None:
        return False
    generation = await services.storage.generation(target.generation_id)
    return generation is not None and generation["status"] not in ACTIVE_STATUSES


async def _follow(
    response: web.StreamResponse,
    subscriber: Subscriber,
    target: StreamTarget,
    progress: _Progress,
    heartbeat: float,
    metrics: Metrics,
) -> CloseReason:
    while True:
        ready = await subscriber.wait(heartbeat)
        if subscriber.closed is not None:
            return subscriber.closed
        if not ready:
            await _write(response, progress, sse.PING)
            continue
        metrics.events_delivered.inc(await _send(response, subscriber.take(), target, progress))
        if progress.done:
            return CloseReason.COMPLETED


async def _send(
    response: web.StreamResponse, events: list[Event], target: StreamTarget, progress: _Progress
) -> int:
    """Write every new event of the batch in one write; drop what was already sent.
    Returns how many were written."""
    frames: list[bytes] = []
    for event in events:
        if event.id <= progress.last_id or not target.wants(event):
            continue
        frames.append(event.frame)
        progress.last_id = event.id
        if target.generation_id is not None and event.terminal:
            progress.done = True
            break
    if frames:
        progress.sent += len(frames)
        await _write(response, progress, b"".join(frames))
    return len(frames)


async def _write(response: web.StreamResponse, progress: _Progress, data: bytes) -> None:
    """One write, aborted with the connection when the client does not take it in time."""
    progress.writing = True
    try:
        if _cannot_wait(progress.transport, len(data)):
            # No timer: a timer per write cost as much as the write itself (fan-out profile).
            await response.write(data)
        else:
            async with asyncio.timeout(progress.send_timeout):
                await response.write(data)
    except TimeoutError:
        progress.abort()
        raise SendTimeout(f"a write did not complete in {progress.send_timeout:g} s") from None
    finally:
        progress.writing = False


def _cannot_wait(transport: asyncio.Transport | None, size: int) -> bool:
    """True when a write of `size` bytes cannot wait for the client: aiohttp's write waits
    only while the transport is paused, which it is not below its low-water mark, and
    this write cannot take it past its high-water mark either."""
    if transport is None or transport.is_closing():
        return False
    low, _high = transport.get_write_buffer_limits()
    return transport.get_write_buffer_size() + size <= low


def _record_open(
    services: Services,
    session_id: str,
    request: web.Request,
    target: StreamTarget,
    cursor: int | None,
) -> None:
    peer = request.remote
    agent = request.headers.get("User-Agent")
    at = now_ms()

    async def write(tx: Tx, emit: Emit) -> None:
        await tx.open_session(
            session_id, target.key, target.project_id, target.generation_id, peer, agent, cursor, at
        )

    _background(services, write)


def _record_close(
    services: Services, session_id: str, progress: _Progress, reason: CloseReason
) -> None:
    at = now_ms()

    async def write(tx: Tx, emit: Emit) -> None:
        await tx.close_session(session_id, progress.last_id or None, progress.sent, reason, at)

    _background(services, write)


def _background(services: Services, fn: TxFunction[None]) -> None:
    """Session bookkeeping must not delay the stream: queue it, log a failure."""
    if services.journal.closing:
        return
    future = services.journal.transact(fn)
    future.add_done_callback(_log_failure)


def _log_failure(future: asyncio.Future[None]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.warning("could not record a streaming session: %s", future.exception())
