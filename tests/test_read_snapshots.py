"""A read a stream relies on sees every event published before the stream subscribed.

In one process, over a real SQLite file, with the project's own Storage, Broker and
Journal: the interleavings that lost events (issue 10) forced by hand, then attacked at
random with many readers at once.

SQLite only: the mechanism is SQLite's, a reader connection whose stepped statement holds
its WAL read snapshot open. PostgreSQL's reads are autocommit statements on a pool, each
with a snapshot of its own (Read Committed); tests/test_postgres_storage.py's readers by
cursor over open writers test that side.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from service.eventlog import event as ev
from service.eventlog.broker import Broker
from service.eventlog.event import Draft, Event
from service.eventlog.journal import Emit, Journal
from service.storage.sqlite import Storage, Tx
from service.web import views

pytestmark = pytest.mark.sqlite_only("SQLite's reader connections and their WAL snapshots")
PROJECT = "prj_snapshots"
GENERATION = "gen_snapshots"


@pytest.fixture(params=[2], ids=["2-readers"])
async def parts(
    tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[tuple[Storage, Broker, Journal]]:
    storage = await Storage.open(str(tmp_path / "snapshots.db"), readers=request.param)
    broker = Broker(queue_size=100_000)
    journal = await Journal.start(storage, broker)
    yield storage, broker, journal
    await journal.close()
    await storage.close()


def draft(n: int) -> Draft:
    return Draft(PROJECT, None, ev.VALIDATION, {"check": "n", "ok": True, "detail": str(n)})


async def _create_project(journal: Journal) -> None:
    async def insert(tx: Tx, emit: Emit) -> None:
        await tx.insert_project(PROJECT, "snapshots", 0)

    await journal.transact(insert)


async def _hold_a_read_open(storage: Storage) -> AsyncIterator[None]:
    """Another read in flight: a statement stepped once and not finished, on a reader
    connection of the storage's own, the state a read split into an execute trip and a
    fetch trip left its connection in between the two."""
    async with storage._readers.lend() as connection:
        cursor = await connection.execute("SELECT name FROM sqlite_master")
        await cursor.fetchone()
        try:
            yield
        finally:
            await cursor.close()


async def test_a_replay_sees_an_event_published_while_another_read_is_open(
    parts: tuple[Storage, Broker, Journal],
) -> None:
    storage, broker, journal = parts
    await _create_project(journal)
    await journal.append(draft(0), draft(1))
    async for _ in _hold_a_read_open(storage):
        [published] = await journal.append(draft(2))
        subscriber = broker.subscribe(PROJECT)
        # Published before the subscribe: not in the buffer, so the replay must have it.
        assert subscriber.take() == []
        replay = await storage.events_after(PROJECT, 0, 100)
    assert [e.id for e in replay] == [1, 2, published.id]


async def _start_generation(tx: Tx, emit: Emit) -> None:
    await tx.insert_generation(
        generation_id=GENERATION,
        project_id=PROJECT,
        client_request_id=None,
        prompt="p",
        image_urls=[],
        provider="offline",
        model="m",
        user_message_id="msg_u",
        assistant_message_id="msg_a",
        first_event_id=1,
        at=0,
    )


async def _end_generation(tx: Tx, emit: Emit) -> None:
    await tx.update_generation(GENERATION, status="completed")
    await emit(Draft(PROJECT, GENERATION, ev.GENERATION_COMPLETED, {}))


Read = Callable[[Storage], Awaitable[Any]]
READS: dict[str, tuple[Read, Callable[[Any], bool]]] = {
    # what each read path must see of the generation's end, committed a moment before
    "replay page": (
        lambda s: s.events_after(PROJECT, 0, 100, GENERATION),
        lambda events: any(e.type == ev.GENERATION_COMPLETED for e in events),
    ),
    "events polling": (
        lambda s: s.events_after(PROJECT, 0, 100),
        lambda events: any(e.type == ev.GENERATION_COMPLETED for e in events),
    ),
    "generation over check": (
        lambda s: s.generation(GENERATION),
        lambda generation: generation.status == "completed",
    ),
    "project view": (
        lambda s: s.project(PROJECT),
        lambda project: views.project(project)["status"] == "idle" and project.last_event_id > 0,
    ),
    "project list": (
        lambda s: s.projects(),
        lambda projects: (
            views.project(projects[0])["status"] == "idle" and projects[0].last_event_id > 0
        ),
    ),
}


@pytest.mark.parametrize("name", list(READS))
async def test_every_read_path_sees_a_commit_made_while_another_read_is_open(
    parts: tuple[Storage, Broker, Journal], name: str
) -> None:
    storage, _broker, journal = parts
    await _create_project(journal)
    await journal.transact(_start_generation)
    read, sees_the_end = READS[name]
    async for _ in _hold_a_read_open(storage):
        await journal.transact(_end_generation)
        assert sees_the_end(await read(storage))


ATTACK_ROUNDS = 60
RESUME_BEHIND = 300


# One reader connection is correct too (every read is one trip, so none is ever open
# while another runs); several must not share a snapshot either.
@pytest.mark.parametrize("parts", [1, 2, 4], ids=lambda n: f"{n}-readers", indirect=True)
async def test_subscribers_replaying_among_many_readers_miss_nothing(
    parts: tuple[Storage, Broker, Journal],
) -> None:
    """Appends go on while readers page through the log; subscribers join at random
    moments and replay. Each one's replay plus its buffer must hold every id from its
    cursor on, with no gap."""
    storage, broker, journal = parts
    await _create_project(journal)
    stop = asyncio.Event()
    rng = random.Random(10)

    async def producer() -> None:
        n = 0
        while not stop.is_set():
            await journal.append(*(draft(n + i) for i in range(rng.randint(1, 5))))
            n += 5

    async def poller() -> None:
        while not stop.is_set():
            after = max(0, journal.last_published_id - rng.randint(0, RESUME_BEHIND))
            await storage.events_after(PROJECT, after, 500)

    async def subscriber_replays() -> list[int]:
        # a cursor among the newest events, as a resuming client's is
        cursor = max(0, journal.last_published_id - rng.randint(0, RESUME_BEHIND))
        subscriber = broker.subscribe(PROJECT)
        # Everything after `head` reaches the buffer: the replay need not go further.
        head = journal.last_published_id
        try:
            ids: list[Event] = []
            after = cursor
            while after < head:
                page = await storage.events_after(PROJECT, after, 50)
                ids.extend(page)
                if len(page) < 50:
                    break
                after = page[-1].id
            # An append of our own, committed after the replay: in the buffer, it closes
            # the range this subscriber must hold without a gap.
            await journal.append(draft(-1))
            ids.extend(subscriber.take())
        finally:
            broker.unsubscribe(subscriber)
        seen = sorted({e.id for e in ids if e.id > cursor})
        return [cursor, *seen]

    background = [asyncio.create_task(producer())] + [
        asyncio.create_task(poller()) for _ in range(4)
    ]
    gaps: list[tuple[int, list[int]]] = []
    try:
        async with asyncio.timeout(60):
            for _ in range(ATTACK_ROUNDS):
                for cursor, *seen in await asyncio.gather(
                    *(subscriber_replays() for _ in range(8))
                ):
                    expected = list(range(cursor + 1, seen[-1] + 1)) if seen else []
                    if seen != expected:
                        gaps.append((cursor, sorted(set(expected) - set(seen))))
    finally:
        stop.set()
        await asyncio.gather(*background)
    assert gaps == [], f"{len(gaps)} of {ATTACK_ROUNDS * 8} subscribers missed events"
