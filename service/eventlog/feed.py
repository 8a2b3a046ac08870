"""What hands committed events to this process's broker: the journal's commits alone, or
the shared log that several processes write.

* One process (SQLite): `Direct`. What this process's journal commits is every event
  there is, so each commit goes to the broker as it lands.
* Several processes (PostgreSQL): `SharedFeed`. Another process's commits reach this one
  only through the database. The backend gives ids from one counter taken under a lock
  held to commit (storage/postgres.py), so ids are dense and commit in id order across
  the whole log: once id H has committed, every id up to H has committed or was never
  given. The feed keeps one position, the newest id it has handed on; a catch-up reads
  the head H, then the events in (position, H] of the projects this process's streams
  follow, in id order, and publishes them. A notification after another process's
  commit (LISTEN/NOTIFY) only wakes it; so do a reconnect of the listening connection
  (PostgreSQL restarted, the backend terminated) and a timer (`poll_seconds`), so a
  notification that never arrived delays events by at most that long and loses none.
  This process's own commit is handed on at once when it follows the position without
  a gap (the usual case); otherwise it waits for the catch-up, which reads it back.

A stream subscribes before it replays (web/streams.py): a project it starts following
is in every catch-up issued after the subscribe, and what committed before is in its
replay, so nothing falls between them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Protocol

from service.eventlog.broker import Broker
from service.eventlog.event import Event
from service.storage.interface import SharedLog, StorageError

log = logging.getLogger(__name__)


class Publisher(Protocol):
    """Where the journal hands what it committed."""

    # The newest id handed to the broker: a stream subscribing now gets every event after
    # it, so it is where a stream with no cursor starts.
    @property
    def last_published_id(self) -> int: ...

    def committed(self, events: Sequence[Event]) -> None:
        """Events this process just committed, in id order (not empty)."""
        ...


def publish(broker: Broker, events: Sequence[Event]) -> None:
    """Each topic's events together, in id order: a subscriber takes a commit at once."""
    by_topic: dict[str, list[Event]] = {}
    for event in events:
        by_topic.setdefault(event.project_id, []).append(event)
    for topic, batch in by_topic.items():
        broker.publish(topic, batch)


class Direct:
    """One process: each commit of its journal goes to its broker as it lands."""

    def __init__(self, broker: Broker, last_published_id: int) -> None:
        self._broker = broker
        self.last_published_id = last_published_id

    def committed(self, events: Sequence[Event]) -> None:
        self.last_published_id = events[-1].id
        publish(self._broker, events)


class SharedFeed:
    """Several processes on one log: see the module's docstring."""

    def __init__(
        self,
        log_: SharedLog,
        broker: Broker,
        last_published_id: int,
        *,
        page: int,
        poll_seconds: float,
    ) -> None:
        self._log = log_
        self._broker = broker
        self.last_published_id = last_published_id
        self._page = page
        self._poll = poll_seconds
        self._wanted = asyncio.Event()
        self._reading = False
        self._task: asyncio.Task[None] | None = None
        self._listening: asyncio.Task[None] | None = None
        self.catch_ups = 0  # reads of the log (tests and metrics)

    @classmethod
    async def start(
        cls,
        log_: SharedLog,
        broker: Broker,
        *,
        page: int,
        poll_seconds: float,
        listen: bool = True,
    ) -> SharedFeed:
        """Follow the log from its head now. `listen=False`: the poll timer alone."""
        feed = cls(log_, broker, await log_.max_event_id(), page=page, poll_seconds=poll_seconds)
        feed._task = asyncio.create_task(feed._run(), name="shared-feed")
        if listen:
            feed._listening = asyncio.create_task(log_.listen(feed.hint), name="shared-feed-listen")
        return feed

    async def close(self) -> None:
        for task in (self._listening, self._task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    def committed(self, events: Sequence[Event]) -> None:
        if not self._reading and events[0].id == self.last_published_id + 1:
            self.last_published_id = events[-1].id
            publish(self._broker, events)
        else:
            # Another process committed in between (or a catch-up is reading): the
            # catch-up reads these back in their place.
            self.hint()

    def hint(self) -> None:
        """Something may have committed: catch up soon (cheap to call often)."""
        self._wanted.set()

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._poll):
                    await self._wanted.wait()
            self._wanted.clear()
            try:
                await self.catch_up()
            except StorageError as exc:
                # The database is away: try again at the next hint or tick; the position
                # stays, so nothing is skipped when it is back.
                log.warning("the shared feed could not read the log: %s", exc)

    async def catch_up(self) -> None:
        """Hand on every event up to the log's head, of the projects followed here."""
        self._reading = True
        try:
            head = await self._log.max_event_id()
            while self.last_published_id < head:
                topics = self._broker.topics()
                if not topics:  # nobody here follows anything: nothing to read
                    self.last_published_id = head
                    break
                self.catch_ups += 1
                events = await self._log.events_since(
                    self.last_published_id, head, topics, self._page
                )
                # A short page reached the head; a full one reached its own last id.
                upto = events[-1].id if len(events) == self._page else head
                if events:
                    publish(self._broker, events)
                self.last_published_id = upto
        finally:
            self._reading = False
