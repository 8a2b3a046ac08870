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
import uuid
from dataclasses import dataclass

from aiohttp import hdrs, web

from service.eventlog import sse
from service.eventlog.broker import Batch, Subscriber
from service.eventlog.event import Event, cursor_frame, now_ms
from service.eventlog.journal import Emit, TxFunction
from service.metrics import Metrics
from service.protocol import ACTIVE_STATUSES, CloseReason
from service.storage.interface import Tx
from service.web.context import Services
from service.web.params import non_negative_int
from service.web.sse_response import SSEResponse, chunk

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
    header = request.headers.get(hdrs.LAST_EVENT_ID)
    return cursor if header is None else non_negative_int(header, hdrs.LAST_EVENT_ID)


@dataclass
class _Progress:
    last_id: int
    sent: int = 0
    done: bool = False


async def stream(
    request: web.Request, services: Services, target: StreamTarget, start_after: int | None
) -> web.StreamResponse:
    """Serve `target` as SSE, starting after event `start_after` (None: live from now)."""
    settings = services.settings.stream
    services.connections.open(target.key, target.project_id)
    # Subscribe before reading SQLite: whatever commits after the replay's read is
    # already queued for us, and what both deliver is dropped by id.
    with services.broker.subscription(target.project_id) as subscriber:
        session_id = uuid.uuid4().hex
        # No cursor: live from the newest event published before we subscribed; everything
        # after it reaches our buffer. Ids are global, so any published id is a cursor.
        start = services.journal.last_published_id if start_after is None else start_after
        progress = _Progress(last_id=start)
        reason = CloseReason.ERROR
        # Recorded before the first byte: a client that leaves at once still has its row.
        _record_open(services, session_id, request, target, start_after)
        response = SSEResponse(request, settings.send_timeout_seconds)
        try:
            await response.start(settings.send_timeout_seconds * UNACKED_TIMEOUT_FACTOR)
            subscriber.on_overflow = response.abort_if_writing
            reason = await _serve(response, services, subscriber, target, progress, start_after)
            if reason == CloseReason.SHUTDOWN:
                await response.send(GOODBYE)
            elif reason == CloseReason.SLOW_CLIENT:
                await response.send(TOO_SLOW)
            await response.finish()
        except asyncio.CancelledError:
            reason = _gone_reason(response, subscriber)
            raise
        except (ConnectionError, TimeoutError):
            # The client left, or would not take a write in time: nothing more can be sent.
            reason = _gone_reason(response, subscriber)
            response.abort()
        except Exception:
            if not response.prepared:
                raise  # nothing sent yet: the error middleware answers with JSON
            # Headers and events are out: a JSON error now would land inside the stream's
            # body. Drop the connection; the client reconnects and resumes by its cursor.
            log.exception("stream %s failed", target.key)
            response.abort()
        finally:
            services.connections.close(target.key, target.project_id)
            services.metrics.stream_closes.labels(reason).inc()
            _record_close(services, session_id, progress, reason)
        # Ended or aborted, the response the client got is the one returned: aiohttp has
        # nothing left to send on it.
        return response


async def _serve(
    response: SSEResponse,
    services: Services,
    subscriber: Subscriber,
    target: StreamTarget,
    progress: _Progress,
    start_after: int | None,
) -> CloseReason:
    """The stream's body, from its first bytes to the reason it ends."""
    settings = services.settings.stream
    # First bytes at once: EventSource fires `open` and proxies see a live response.
    first = sse.retry(settings.retry_ms) + sse.comment("connected")
    if start_after is None:
        # No cursor, so the client has no id to resume from until its first event: give
        # it one now. A drop before that event then resumes here, not live from later.
        first += cursor_frame(progress.last_id)
    await response.send(first)
    await _replay(response, services, target, progress)
    if not progress.done and await _generation_over(services, target):
        # The terminal event commits with the status: read once more for it (it may
        # have landed after the first read), then nothing more can come.
        await _replay(response, services, target, progress)
        progress.done = True
    if progress.done:
        return CloseReason.COMPLETED
    return await _follow(
        response, subscriber, target, progress, settings.heartbeat_seconds, services.metrics
    )


def _gone_reason(response: SSEResponse, subscriber: Subscriber) -> CloseReason:
    """Why a stream that could not go on ended: its send timed out, the broker closed
    it (slow, shutting down) and the connection went with it, or the client left."""
    if response.timed_out:
        return CloseReason.SEND_TIMEOUT
    return subscriber.closed if subscriber.closed is not None else CloseReason.CLIENT_GONE


async def _replay(
    response: SSEResponse, services: Services, target: StreamTarget, progress: _Progress
) -> None:
    page = services.settings.stream.replay_page
    while True:
        events = await services.storage.events_after(
            target.project_id, progress.last_id, page, target.generation_id
        )
        read = len(events)
        frames, sent = _frames(Batch(events), target, progress)
        # The page's events go before the write is awaited: a stream waiting on its client
        # then holds one bytes object, not a page of objects (README "Memory after
        # connection churn": 200 streams replaying at once held 65-73 MB of pages).
        del events
        if sent:
            await response.send(frames)
            counts = services.metrics.deliveries
            counts.replayed += sent
            counts.events += sent
            counts.handler_writes += 1
        del frames  # nor its bytes, once written, while the next page is read
        if read < page or progress.done:
            return


async def _generation_over(services: Services, target: StreamTarget) -> bool:
    if target.generation_id is None:
        return False
    generation = await services.storage.generation(target.generation_id)
    return generation is not None and generation.status not in ACTIVE_STATUSES


async def _follow(
    response: SSEResponse,
    subscriber: Subscriber,
    target: StreamTarget,
    progress: _Progress,
    heartbeat: float,
    metrics: Metrics,
) -> CloseReason:
    counts = metrics.deliveries

    def direct(batch: Batch) -> bool:
        """The fast path (broker.Subscriber.offer): a commit written to the client from
        within its publish, while this handler waits with nothing queued. False when the
        client cannot take it at once: then it is queued, and the handler writes it."""
        if progress.done:
            return True  # the handler is ending the stream: nothing more goes out
        if _wants_whole(batch, target, progress.last_id):
            # The commit whole, as one HTTP chunk made once for every such stream of it.
            if not response.send_now(batch.derived(chunk)):
                return False
            events = batch.events
            sent, last_id, done = len(events), events[-1].id, False
        else:
            frames, sent, last_id, done = _select(batch, target, progress.last_id)
            if sent and not response.send_now(chunk(frames)):
                return False
        if sent:
            counts.events += sent
            counts.direct_writes += 1
        _advance(progress, sent, last_id, done)
        if done:
            subscriber.wake()
        return True

    subscriber.direct = direct
    try:
        while True:
            ready = await subscriber.wait(heartbeat)
            if subscriber.closed is not None:
                return subscriber.closed
            if progress.done:
                return CloseReason.COMPLETED  # its last event went by the fast path
            if not ready:
                await response.send(sse.PING)
                continue
            # The batch is not kept past _frames: only its frames wait on the write, and
            # not those once written, while the stream waits for more.
            frames, sent = _frames(Batch(subscriber.take()), target, progress)
            if sent:
                await response.send(frames)
                counts.events += sent
                counts.handler_writes += 1
            del frames
            if progress.done:
                return CloseReason.COMPLETED
    finally:
        subscriber.direct = None


def _frames(batch: Batch, target: StreamTarget, progress: _Progress) -> tuple[bytes, int]:
    """The frames of every new event of the batch, joined for one write, and how many
    they are; what was already sent is dropped. Advances `progress` as if they were
    written (a write that fails ends the stream). Sync, so that its caller can let the
    batch go before it awaits the write."""
    frames, sent, last_id, done = _select(batch, target, progress.last_id)
    _advance(progress, sent, last_id, done)
    return frames, sent


def _select(batch: Batch, target: StreamTarget, after: int) -> tuple[bytes, int, int, bool]:
    """The frames of the batch's events after id `after` that `target` wants, joined;
    how many; the last one's id (`after` if none); and whether it ends the stream."""
    events = batch.events
    if not events:
        return b"", 0, after, False
    if _wants_whole(batch, target, after):
        # Its frames, joined once for every such subscriber of the commit.
        return batch.frames, len(events), events[-1].id, False
    frames: list[bytes] = []
    done = False
    for event in events:
        if event.id <= after or not target.wants(event):
            continue
        frames.append(event.frame)
        after = event.id
        if target.generation_id is not None and event.terminal:
            done = True
            break
    return b"".join(frames), len(frames), after, done


def _wants_whole(batch: Batch, target: StreamTarget, after: int) -> bool:
    """A project stream that keeps up (nothing of the batch sent yet) wants all of it."""
    events = batch.events
    return target.generation_id is None and bool(events) and events[0].id > after


def _advance(progress: _Progress, sent: int, last_id: int, done: bool) -> None:
    progress.last_id = last_id
    progress.sent += sent
    progress.done = progress.done or done


def _record_open(
    services: Services,
    session_id: str,
    request: web.Request,
    target: StreamTarget,
    cursor: int | None,
) -> None:
    peer = request.remote
    agent = request.headers.get(hdrs.USER_AGENT)
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
