"""The in-memory broker: a dict of per-project topics, each subscriber with a bounded buffer.

Interface kept small (subscription, publish, close) so that a broker for several
processes (Redis Streams) can stand in its place without touching the journal's callers
or the stream handlers.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from service.eventlog.event import Event
from service.protocol import CloseReason


@dataclass(eq=False)
class Subscriber:
    """One stream's view of a topic. The publisher appends; the stream handler drains.

    A plain deque and one waiter future, not an asyncio.Queue: the handler takes every
    queued event at once and writes them in one go, and a publish costs no task switch.
    """

    topic: str
    limit: int
    pending: deque[Event] = field(default_factory=deque)
    closed: CloseReason | None = None
    # Called when the buffer overflows: the handler may be stuck in a write to a client
    # that stopped reading, and only aborting its transport frees it.
    on_overflow: Callable[[], None] | None = None
    _waiter: asyncio.Future[None] | None = None
    _timer: asyncio.TimerHandle | None = None
    _quiet_deadline: float = 0.0

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def offer(self, events: Sequence[Event]) -> None:
        """Queue a commit's events at once: one call and one wake-up per subscriber, not
        one per event (a thousand subscribers times a batch of events is millions)."""
        if self.closed is not None:
            return
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
        self._wake()

    def close(self, reason: CloseReason) -> None:
        if self.closed is None:
            self.closed = reason
        self._wake()

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
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
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
        loop = asyncio.get_running_loop()
        if loop.time() >= self._quiet_deadline:
            waiter.set_result(None)
        else:
            self._timer = loop.call_at(self._quiet_deadline, self._on_timer)

    def stop(self) -> None:
        """Cancel the heartbeat timer (the stream ended)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class Broker:
    def __init__(self, queue_size: int) -> None:
        self._queue_size = queue_size
        self._topics: dict[str, set[Subscriber]] = {}

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
        subscriber = Subscriber(topic=topic, limit=self._queue_size)
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
        for subscriber in tuple(self._topics.get(topic, ())):
            subscriber.offer(events)

    def close_all(self, reason: CloseReason) -> None:
        for members in self._topics.values():
            for subscriber in members:
                subscriber.close(reason)

    def topics(self) -> list[str]:
        """The topics someone here follows."""
        return list(self._topics)

    def subscriber_count(self) -> int:
        return sum(len(members) for members in self._topics.values())
