"""The journal: the one way an event reaches anyone. Commit to storage, then publish.

One writer task owns the storage's writes. Callers hand it jobs; everything queued
while the previous commit ran goes into the next transaction (group commit). The
journal encodes each event; the storage gives its id as it inserts it, in the order
jobs arrive, strictly increasing within a project (the backend's own rule says how it
keeps commit order equal to id order), so every topic sees its events in id order.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeGuard, TypeVar

from service.errors import JournalClosed, StorageUnavailable
from service.eventlog.broker import Broker
from service.eventlog.event import Draft, Encoded, Event, encode
from service.eventlog.feed import Direct, Publisher
from service.storage.interface import Duplicate, Storage, StorageError, Tx

log = logging.getLogger(__name__)

T = TypeVar("T")
# Inserts one event in the job's transaction at once and returns it, with its id.
Emit = Callable[[Draft], Awaitable[Event]]
TxFunction = Callable[[Tx, Emit], Awaitable[T]]
# A publish that took at least this long (a commit fanned out to many streams, each
# written in it: web/streams.py's fast path) makes the writer rest before its next
# commit, for PUBLISH_REST_SHARE of that time, so that what is appended meanwhile goes
# in one commit and one fan-out: the loop spends at most about two thirds of its time
# on fan-out, and a flood's commits grow instead of each costing every stream a write.
PUBLISH_REST_AFTER_S = 0.001
PUBLISH_REST_SHARE = 0.5
# Run in an append's transaction before its events are inserted (a generation's lease,
# generation/leases.py); it only reads and locks, and what it raises fails that append.
Check = Callable[[Tx], Awaitable[None]]


@dataclass(eq=False)
class _Append:
    drafts: tuple[Draft, ...]
    future: asyncio.Future[list[Event]]
    check: Check | None = None


@dataclass(eq=False)
class _Transact(Generic[T]):
    fn: TxFunction[T]
    future: asyncio.Future[T]


@dataclass
class JournalStats:
    commits: int = 0
    events: int = 0
    failed_commits: int = 0


class Journal:
    def __init__(self, storage: Storage, publisher: Publisher) -> None:
        self._storage = storage
        # Where commits go: straight to the broker (one process), or through the shared
        # log's feed (several processes on PostgreSQL: eventlog/feed.py).
        self._publisher = publisher
        self._queue: list[_Append | _Transact[Any]] = []
        self._wakeup = asyncio.Event()
        # Kept, not asked for per append: get_running_loop() is a getpid() system call on
        # each call (CPython 3.11 checks the pid), 9% of the journal at 10 producers.
        self._loop = asyncio.get_running_loop()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._rest = 0.0  # seconds to wait before the next commit (PUBLISH_REST_AFTER_S)
        self.stats = JournalStats()
        # Told the duration of each commit (metrics); called once per batch.
        self.on_commit: Callable[[float], None] | None = None

    @classmethod
    async def start(
        cls, storage: Storage, broker: Broker, publisher: Publisher | None = None
    ) -> Journal:
        """Start the writer. Commits go to `publisher`, or straight to `broker`."""
        if publisher is None:
            publisher = Direct(broker, await storage.max_event_id())
        journal = cls(storage, publisher)
        journal._task = asyncio.create_task(journal._run(), name="journal-writer")
        return journal

    async def close(self) -> None:
        """Commit what is queued, then stop. Later appends are refused."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task

    @property
    def last_published_id(self) -> int:
        """The newest id handed to the broker: a stream subscribing now gets every event
        after it, so it is where a stream with no cursor starts."""
        return self._publisher.last_published_id

    @property
    def closing(self) -> bool:
        return self._closing

    @property
    def pending(self) -> int:
        """Jobs queued for the next transaction (not counting the one being committed)."""
        return len(self._queue)

    def append(self, *drafts: Draft, check: Check | None = None) -> asyncio.Future[list[Event]]:
        """Queue events; the future resolves once they are committed and published.
        `check`, if given, runs first in the same transaction: if it raises, none of
        these events is written and the future holds its exception."""
        future: asyncio.Future[list[Event]] = self._loop.create_future()
        self._enqueue(_Append(drafts, future, check))
        return future

    def transact(self, fn: TxFunction[T]) -> asyncio.Future[T]:
        """Run `fn` in the next transaction; events it emits are published after commit.

        An exception from `fn` undoes everything `fn` wrote (a savepoint) and reaches the
        caller; the other jobs of the batch still commit.
        """
        future: asyncio.Future[T] = self._loop.create_future()
        self._enqueue(_Transact(fn, future))
        return future

    def _enqueue(self, job: _Append | _Transact[Any]) -> None:
        if self._closing:
            job.future.set_exception(JournalClosed())
            return
        self._queue.append(job)
        self._wakeup.set()

    async def _run(self) -> None:
        while True:
            if self._rest and not self._closing:
                rest, self._rest = self._rest, 0.0
                await asyncio.sleep(rest)
            if not self._queue:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            batch, self._queue = self._queue, []
            try:
                if _appends_alone(batch):
                    await self._commit_appends(batch)
                else:
                    await self._commit(batch)
            except Exception as exc:
                # A bug past the database's own errors must not end the writer: every
                # later write would wait for ever. Fail this batch's callers, go on.
                log.exception("journal writer failed on a batch of %d jobs", len(batch))
                await self._storage.transaction().rollback()  # a no-op if it committed
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(exc)

    async def _commit_appends(self, batch: list[_Append]) -> None:
        """Appends alone (a generation's chunks, the usual batch): no caller's statement
        to run, so the storage commits them in one go (on SQLite no trip to a thread for
        a small batch, where BEGIN, INSERT, COMMIT cost three). The lean path: at 10
        producers the journal's own work is a fifth of each commit's (issue 16)."""
        started = time.perf_counter()
        encoded: list[Encoded] = []
        counts: list[int] = []  # per job: how many events, or -1 for one refused
        refusals: list[BaseException] = []
        for job in batch:
            try:
                encoded.extend([encode(draft) for draft in job.drafts])
            except (TypeError, ValueError) as exc:
                # A payload orjson cannot encode: that caller's mistake fails that caller
                # alone, before anything is written.
                counts.append(-1)
                refusals.append(exc)
                continue
            counts.append(len(job.drafts))
        try:
            events = await self._storage.commit_events(encoded) if encoded else []
        except StorageError as exc:
            self._refused(batch, exc)
            return
        self._committed(started, events)
        start = 0
        refused = iter(refusals)
        for job, count in zip(batch, counts, strict=True):
            if job.future.done():  # the caller gave up waiting (cancelled)
                start += max(count, 0)
            elif count < 0:
                job.future.set_exception(next(refused))
            else:
                job.future.set_result(events[start : start + count])
                start += count

    def _committed(self, started: float, published: list[Event]) -> None:
        elapsed = time.perf_counter() - started
        self.stats.commits += 1
        self.stats.events += len(published)
        if self.on_commit is not None:
            self.on_commit(elapsed)
        # Publish only what is durable, in id order (the storage gave ids in job order).
        if published:
            publishing = time.perf_counter()
            self._publisher.committed(published)
            spent = time.perf_counter() - publishing
            if spent >= PUBLISH_REST_AFTER_S:
                self._rest = spent * PUBLISH_REST_SHARE

    def _refused(self, batch: Sequence[_Append | _Transact[Any]], exc: StorageError) -> None:
        self.stats.failed_commits += 1
        log.error("journal commit of %d jobs failed: %s", len(batch), exc)
        failure = StorageUnavailable(f"the database refused the write: {exc}")
        for job in batch:
            if not job.future.done():
                job.future.set_exception(failure)

    async def _commit(self, batch: list[_Append | _Transact[Any]]) -> None:
        """A batch with a transaction job or a checked append: one transaction, each
        job's statements in arrival order, a failing job undone alone (a savepoint)."""
        tx = self._storage.transaction()
        published: list[Event] = []
        outcomes: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        # Appends encoded and waiting for their insert, kept in arrival order.
        waiting: list[tuple[_Append, list[Encoded]]] = []
        started = time.perf_counter()

        def take(job: _Append) -> None:
            try:
                waiting.append((job, [encode(draft) for draft in job.drafts]))
            except (TypeError, ValueError) as exc:
                # A payload orjson cannot encode: that caller's mistake fails that caller
                # alone, before anything is written.
                outcomes.append((job.future, None, exc))

        def settle(events: Sequence[Event]) -> None:
            """Hand each waiting append its share of the events just inserted."""
            start = 0
            for job, encoded in waiting:
                mine = list(events[start : start + len(encoded)])
                start += len(encoded)
                outcomes.append((job.future, mine, None))
            published.extend(events)
            waiting.clear()

        try:
            await tx.begin()
            for job in batch:
                if isinstance(job, _Append):
                    if job.check is not None:
                        error = await _checked(tx, job.check)
                        if error is not None:
                            outcomes.append((job.future, None, error))
                            continue
                    take(job)
                    continue
                if waiting:  # the appends before this job get the lower ids
                    settle(await tx.insert_events(_flat(waiting)))
                value, events, error = await self._run_job(tx, job)
                published.extend(events)
                outcomes.append((job.future, value, error))
            if waiting:
                settle(await tx.insert_events(_flat(waiting)))
            await tx.commit()
        except StorageError as exc:
            await tx.rollback()
            self._refused(batch, exc)
            return
        self._committed(started, published)
        for future, value, error in outcomes:
            if future.done():  # the caller gave up waiting (cancelled)
                continue
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(value)

    async def _run_job(
        self, tx: Tx, job: _Transact[Any]
    ) -> tuple[Any, list[Event], BaseException | None]:
        emitted: list[Event] = []

        async def emit(draft: Draft) -> Event:
            (event,) = await tx.insert_events([encode(draft)])
            emitted.append(event)
            return event

        await tx.savepoint()
        try:
            value = await job.fn(tx, emit)
        except Duplicate as exc:
            # Another process committed the same unique key first: this job's conflict.
            await tx.rollback_to_savepoint()
            return None, [], exc
        except StorageError:
            raise  # the database itself failed: the whole batch fails
        except Exception as exc:
            # The savepoint undoes the job's rows and hands its ids back to the storage.
            await tx.rollback_to_savepoint()
            return None, [], exc
        await tx.release()
        return value, emitted, None


async def _checked(tx: Tx, check: Check) -> BaseException | None:
    """What an append's check refused with; None to go on. A check writes nothing, so a
    refusal has nothing to undo; the database failing fails the whole batch."""
    try:
        await check(tx)
    except StorageError:
        raise
    except Exception as exc:
        return exc
    return None


def _appends_alone(batch: list[_Append | _Transact[Any]]) -> TypeGuard[list[_Append]]:
    return all(type(job) is _Append and job.check is None for job in batch)


def _flat(waiting: list[tuple[_Append, list[Encoded]]]) -> list[Encoded]:
    return [encoded for _, batch in waiting for encoded in batch]
