"""The in-memory broker: a dict of per-project topics, each subscriber with a bounded buffer.

Interface kept small (subscription, publish, close) so that a broker for several
processes (Redis Streams) can stand in its place without touching the journal's callers
or the stream handlers.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property

from service.eventlog.event import Event
from service.protocol import CloseReason

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Batch:
    """Events in id order, with their frames joined once for every reader who wants them
    all: a topic's share of one commit reaches each of its subscribers as one Batch."""

    events: Sequence[Event]
    _derived: dict[Callable[[bytes], bytes], bytes] = field(default_factory=dict)

    @cached_property
    def frames(self) -> bytes:
        return b"".join(event.frame for event in self.events)

    def derived(self, encode: Callable[[bytes], bytes]) -> bytes:
        """`encode(frames)`, made once for every reader of the batch (the web layer
        wraps the frames in an HTTP chunk)."""
        made = self._derived.get(encode)
        if made is None:
            made = self._derived[encode] = encode(self.frames)
        return made


# Takes a batch straight to the stream's client, or returns False to have it queued.
Direct = Callable[[Batch], bool]


@dataclass(eq=False)
class Subscriber:
    """One stream's view of a topic. The publisher appends; the stream handler drains.

    A plain deque and one waiter future, not an asyncio.Queue: the handler takes every
    queued event at once and writes them in one go, and a publish costs no task switch.
    A stream that keeps up costs not even a wake-up: while its handler waits with nothing
    queued, `direct` writes each commit to its client from within the publish (the fast
    path), and the handler wakes only for a client behind, a heartbeat or the end.
    """

    topic: str
    limit: int
    # Kept, not looked up: asyncio.get_running_loop() costs a getpid() system call on
    # each call (CPython 3.11's C get_running_loop checks the pid), 11% of a fan-out profile.
    loop: asyncio.AbstractEventLoop
    pending: deque[Event] = field(default_factory=deque)
    closed: CloseReason | None = None
    # Called when the buffer overflows: the handler may be stuck in a write to a client
    # that stopped reading, and only aborting its transport frees it.
    on_overflow: Callable[[], None] | None = None
    # Set by the stream while it follows live (web/streams.py); None queues every batch.
    direct: Direct | None = None
    _waiter: asyncio.Future[None] | None = None
    _timer: asyncio.TimerHandle | None = None
    _quiet_seconds: float = 0.0
    _quiet_deadline: float = 0.0

    def wake(self) -> None:
        """End the handler's wait (the fast path sent a generation's last event)."""
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def offer(self, batch: Batch, now: float) -> None:
        """Hand over a commit's events at once: one call per subscriber, not one per
        event (a thousand subscribers times a batch of events is millions). `now` is the
        loop's time, read once per publish."""
        if self.closed is not None:
            return
        waiter = self._waiter
        if (
            self.direct is not None
            and not self.pending
            and waiter is not None
            and not waiter.done()
            and self._sent_direct(batch)
        ):
            # Written, and in order: nothing was queued before it and no write of the
            # handler's is in flight (it is parked in `wait`). The stream was not quiet.
            self._quiet_deadline = now + self._quiet_seconds
            return
        events = batch.events
        if len(self.pending) >= self.limit:
            # Behind: it still holds a full buffer of earlier commits it has not taken.
            # Never drop an event silently and never grow without bound: end the
            # subscription; the client reconnects and replays from SQLite. A commit
            # larger than the buffer (one model delta holding 500 files) is still taken
            # whole by a subscriber that keeps up: what counts is how much it left
            # untaken, so a buffer holds at most `limit` events plus one commit.
            self.pending.clear()
            self.close(CloseReason.SLOW_CLIENT)
            if self.on_overflow is not None:
                self.on_overflow()
            return
        self.pending.extend(events)
        self.wake()

    def _sent_direct(self, batch: Batch) -> bool:
        assert self.direct is not None
        try:
            return self.direct(batch)
        except Exception:
            # A fault of one stream must not reach the publisher (the journal, with the
            # other subscribers of this commit after this one): this stream queues from now.
            log.exception("direct delivery to a subscriber of %s failed", self.topic)
            self.direct = None
            return False

    def close(self, reason: CloseReason) -> None:
        if self.closed is None:
            self.closed = reason
        self.wake()

    def take(self) -> list[Event]:
        events = list(self.pending)
        self.pending.clear()
        return events

    async def wait(self, quiet_seconds: float) -> bool:
        """Wait until there is something to take or the subscription closed.

        Returns False when `quiet_seconds` passed with nothing to take (time for a heartbeat).
        """
        if self.pending or self.closed is not None:
            return True
        loop = self.loop
        waiter = self._waiter = loop.create_future()
        self._quiet_seconds = quiet_seconds
        self._quiet_deadline = loop.time() + quiet_seconds
        # One timer per subscriber, moved on only when it fires, not one per wait: under
        # load a stream waits once per event, and a timer each time cost as much as the
        # write (fan-out profile, uvloop).
        if self._timer is None:
            self._timer = loop.call_at(self._quiet_deadline, self._on_timer)
        try:
            await waiter
        finally:
            self._waiter = None
        return bool(self.pending) or self.closed is not None

    def _on_timer(self) -> None:
        self._timer = None
        waiter = self._waiter
        if waiter is None or waiter.done():
            return  # not waiting: the next wait sets a timer again
        if self.loop.time() >= self._quiet_deadline:
            waiter.set_result(None)
        else:
            self._timer = self.loop.call_at(self._quiet_deadline, self._on_timer)

    def stop(self) -> None:
        """Cancel the heartbeat timer (the stream ended)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class Broker:
    def __init__(self, queue_size: int) -> None:
        self._queue_size = queue_size
        self._topics: dict[str, set[Subscriber]] = {}
        # The loop of the first subscribe, kept (Subscriber.loop says why): a publish
        # reaches subscribers only, so it always has one.
        self._loop: asyncio.AbstractEventLoop | None = None

    @contextmanager
    def subscription(self, topic: str) -> Iterator[Subscriber]:
        """A subscriber to `topic` for the length of a `with` block: leaving it, however
        it is left (an error, a cancelled handler), unsubscribes, so the two cannot drift
        apart (encode/broadcaster's `subscribe()` is the model)."""
        subscriber = self.subscribe(topic)
        try:
            yield subscriber
        finally:
            self.unsubscribe(subscriber)

    def subscribe(self, topic: str) -> Subscriber:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        subscriber = Subscriber(topic, self._queue_size, self._loop)
        self._topics.setdefault(topic, set()).add(subscriber)
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        subscriber.stop()
        members = self._topics.get(subscriber.topic)
        if members is not None:
            members.discard(subscriber)
            if not members:
                del self._topics[subscriber.topic]

    def publish(self, topic: str, events: Sequence[Event]) -> None:
        """Committed events of one topic, in id order."""
        members = self._topics.get(topic)
        if not members or self._loop is None:
            return
        batch = Batch(events)
        now = self._loop.time()
        for subscriber in tuple(members):
            subscriber.offer(batch, now)

    def close_all(self, reason: CloseReason) -> None:
        for members in self._topics.values():
            for subscriber in members:
                subscriber.close(reason)

    def topics(self) -> list[str]:
        """The topics someone here follows."""
        return list(self._topics)

    def subscriber_count(self) -> int:
        return sum(len(members) for members in self._topics.values())
