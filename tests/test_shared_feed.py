"""Several genstream processes on one PostgreSQL log (issue 13 items 2 and 3): each
process's broker is fed from the database (eventlog/feed.py SharedFeed, LISTEN/NOTIFY as
a hint, the poll timer), and every client gets its project's log exactly, whichever
process it reaches and whichever process wrote. Real child servers (tests/process.py),
a real PostgreSQL (tests/postgres.py), raw SSE bytes (tests/sse_reader.py); every client
ends compared with the log as the database holds it, ids and bytes."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import pytest

from service.eventlog import event as ev
from service.eventlog.event import encode
from service.storage.postgres import LISTENER_NAME, PostgresStorage
from tests.helpers import wait_until
from tests.postgres import Database
from tests.process import ServerProcess, server_process
from tests.sse_reader import Frame, SSEReader
from tests.storage_contract import draft

TIMEOUT = 90.0
# Each client cuts its stream after this many events, then resumes on another process.
CUT_AFTER = (10, 80)


@asynccontextmanager
async def servers(
    tmp_path: Path, db: Database, count: int, **settings: str
) -> AsyncIterator[list[ServerProcess]]:
    """`count` genstream processes on one database (each its own folder, for nothing but
    its unused SQLite path). `settings` apply to all; see `server` for one of its own."""
    async with AsyncExitStack() as stack:
        started = [
            await stack.enter_async_context(server(tmp_path / f"p{n}", db, **settings))
            for n in range(count)
        ]
        yield started


def server(
    tmp_path: Path, db: Database, **settings: str
) -> AbstractAsyncContextManager[ServerProcess]:
    """One genstream process on the database (GENSTREAM_STORAGE_* in its environment)."""
    tmp_path.mkdir(exist_ok=True)
    return server_process(
        tmp_path,
        port=0,
        wrapper=(),
        command=("serve",),
        storage_backend="postgres",
        storage_url=db.url,
        **settings,
    )


async def database_log(db: Database, project_id: str) -> list[tuple[int, bytes]]:
    """The project's events as the database holds them: (id, the JSON data's bytes)."""
    conn = await asyncpg.connect(db.url)
    try:
        rows = await conn.fetch(
            "SELECT id, data FROM events WHERE project_id = $1 ORDER BY id", project_id
        )
    finally:
        await conn.close()
    return [(row["id"], bytes(row["data"])) for row in rows]


@dataclass
class Received:
    """What one client got, over all its connections."""

    events: list[tuple[int, bytes]] = field(default_factory=list)
    connections: int = 0
    pings: int = 0

    @property
    def last_id(self) -> int:
        return self.events[-1][0] if self.events else 0

    def take(self, frame: Frame) -> None:
        assert frame.id is not None and frame.data is not None, frame.raw
        self.events.append((frame.id, frame.data))


def check(received: Received, log: list[tuple[int, bytes]]) -> None:
    """The client holds the log's first events exactly: no gap, no duplicate, same bytes."""
    got = [event_id for event_id, _ in received.events]
    expected = [event_id for event_id, _ in log[: len(received.events)]]
    missing = sorted(set(expected) - set(got))[:5]
    assert got == expected, f"missing {missing}, duplicated {len(got) - len(set(got))}"
    assert received.events == log[: len(received.events)], "same ids, other bytes"


def is_end(frame: Frame, generation_id: str) -> bool:
    return frame.event in ev.TERMINAL_TYPES and frame.json["generation_id"] == generation_id


async def roaming_client(
    processes: list[ServerProcess],
    first: int,
    project_id: str,
    generation_id: str,
    rng: random.Random,
) -> Received:
    """Follow the project from cursor 0 on process `first`, cut the stream every 10-80
    events and resume with Last-Event-ID on another process, until the generation's end."""
    received = Received()
    at = first
    while True:
        process = processes[at]
        headers = {"Last-Event-ID": str(received.last_id)}
        url = f"{process.url}/api/projects/{project_id}/stream"
        async with process.http.get(url, headers=headers) as response:
            assert response.status == 200
            received.connections += 1
            reader = SSEReader(response)
            for _ in range(rng.randint(*CUT_AFTER)):
                frame = await reader.event()
                received.take(frame)
                if is_end(frame, generation_id):
                    return received
        # Leaving the block closes the connection mid-stream; the next one is elsewhere.
        at = rng.choice([n for n in range(len(processes)) if n != at])


# -- exactly once across processes ------------------------------------------------------

PROCESSES = 3
CLIENTS_PER_PROJECT_AND_PROCESS = 3


@pytest.mark.parametrize("seed", [1, 2])
async def test_clients_resuming_on_other_processes_each_get_the_log_exactly(
    tmp_path: Path, pg_database: Database, seed: int
) -> None:
    """Three processes on one database, a generation running on each (its own project),
    and on every process clients of every project that cut their stream every 10-80
    events and resume on another process: each ends with exactly the database's log of
    its project up to the generation's end."""
    rng = random.Random(seed)
    async with servers(
        tmp_path, pg_database, PROCESSES, offline_tokens_per_second="10000"
    ) as processes:
        async with asyncio.timeout(TIMEOUT):
            project_ids = [await process.new_project() for process in processes]
            generation_ids = [
                (await process.generate(project_id))["generation"]["id"]
                for process, project_id in zip(processes, project_ids, strict=True)
            ]
            clients = {
                (project_id, start, n): asyncio.create_task(
                    roaming_client(
                        processes, start, project_id, generation_id, random.Random(rng.random())
                    )
                )
                for project_id, generation_id in zip(project_ids, generation_ids, strict=True)
                for start in range(PROCESSES)
                for n in range(CLIENTS_PER_PROJECT_AND_PROCESS)
            }
            results = {key: await task for key, task in clients.items()}
        logs = {
            project_id: await database_log(pg_database, project_id) for project_id in project_ids
        }
    for (project_id, _, _), received in results.items():
        check(received, logs[project_id])
    resumes = sum(received.connections for received in results.values())
    assert resumes > 2 * len(results), resumes  # most clients moved between processes


# -- two writers of one project, the first holding its transaction ------------------------


async def test_a_writer_holding_its_ids_uncommitted_is_not_skipped_by_readers_elsewhere(
    tmp_path: Path, pg_database: Database
) -> None:
    """A generation runs on process A while a second writer of the same project (this
    test's own connection, another process as far as the database knows) takes ids and
    holds its transaction open until A's writer is waiting behind it: A's next events
    would take higher ids and commit first if ids were a plain sequence. Streams on
    processes B and C, opened before, get the held event in its place, none skipped."""
    async with servers(tmp_path, pg_database, 3, offline_tokens_per_second="300") as (
        writer,
        *readers,
    ):
        other = await PostgresStorage.open(pg_database.url)
        try:
            async with asyncio.timeout(TIMEOUT):
                project_id = await writer.new_project()
                streams = [
                    asyncio.create_task(_follow_to_end(reader, project_id, "0"))
                    for reader in readers
                    for _ in range(2)
                ]
                generation_id = (await writer.generate(project_id))["generation"]["id"]
                held = 0
                while not any(task.done() for task in streams) and held < 5:
                    tx = other.transaction()
                    await tx.begin()
                    await tx.insert_events([encode(draft(project_id, held=held))])

                    async def waiting() -> bool:
                        if any(task.done() for task in streams):
                            return True  # the generation ended: nothing more to queue
                        return await pg_database.backends(waiting_for_a_lock=True) >= 1

                    # A's writer queues behind the held ids: commit only then.
                    await wait_until(waiting, timeout=10)
                    held += await pg_database.backends(waiting_for_a_lock=True) >= 1
                    await tx.commit()
                ends = await asyncio.gather(*streams)
        finally:
            await other.close()
        log = await database_log(pg_database, project_id)
    assert held >= 3, held
    for received in ends:
        assert any(is_end(frame, generation_id) for frame in received[-1:])
        check(_as_received(received), log)


async def _follow_to_end(process: ServerProcess, project_id: str, cursor: str) -> list[Frame]:
    """One stream of the project from `cursor`, to its generation's terminal event."""
    url = f"{process.url}/api/projects/{project_id}/stream"
    frames: list[Frame] = []
    async with process.http.get(url, headers={"Last-Event-ID": cursor}) as response:
        assert response.status == 200
        reader = SSEReader(response)
        while True:
            frame = await reader.event(timeout=30)
            frames.append(frame)
            if frame.event in ev.TERMINAL_TYPES:
                return frames


def _as_received(frames: list[Frame]) -> Received:
    received = Received()
    for frame in frames:
        received.take(frame)
    return received


# -- notifications lost: a terminated listener, a restarted server, none at all ----------


async def _listener_pid(db: Database, process: ServerProcess) -> int | None:
    conn = await asyncpg.connect(db.cluster.url())
    try:
        pid = await conn.fetchval(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND application_name = $2",
            db.name,
            f"{LISTENER_NAME}-{process.pid}",
        )
    finally:
        await conn.close()
    return None if pid is None else int(pid)


async def _terminate(db: Database, pid: int) -> None:
    conn = await asyncpg.connect(db.cluster.url())
    try:
        assert await conn.fetchval("SELECT pg_terminate_backend($1)", pid)
    finally:
        await conn.close()


async def _commit_one(db: Database, project_id: str, step: str) -> int:
    """One event of `project_id` committed by a writer outside every genstream process."""
    other = await PostgresStorage.open(db.url)
    try:
        return await _commit_with(other, project_id, step)
    finally:
        await other.close()


async def _commit_with(other: PostgresStorage, project_id: str, step: str) -> int:
    (event,) = await other.commit_events([encode(draft(project_id, step=step))])
    return event.id


async def test_a_terminated_listen_connection_reconnects_and_catches_up(
    tmp_path: Path, pg_database: Database
) -> None:
    """pg_terminate_backend on process B's LISTEN connection, then an event committed
    elsewhere at once (most likely before B listens again, heard by nobody there): B's
    stream gets it, by the catch-up after the reconnect; then a whole generation run on
    process A, nothing lost. B polls only once a minute, so it is the reconnect and the
    new LISTEN that deliver, not the timer."""
    async with servers(tmp_path, pg_database, 1) as (a,):
        async with server(tmp_path / "b", pg_database, storage_poll_seconds="60") as b:
            other = await PostgresStorage.open(pg_database.url)
            try:
                async with asyncio.timeout(TIMEOUT):
                    project_id = await a.new_project()

                    async def listening() -> bool:
                        return await _listener_pid(pg_database, b) is not None

                    await wait_until(listening, timeout=10)
                    first = await _listener_pid(pg_database, b)
                    url = f"{b.url}/api/projects/{project_id}/stream"
                    async with b.http.get(url, headers={"Last-Event-ID": "0"}) as response:
                        reader = SSEReader(response)
                        assert first is not None
                        await _terminate(pg_database, first)
                        held = await _commit_with(other, project_id, "while unheard")
                        received = Received()
                        received.take(await reader.event(timeout=10))
                        assert received.last_id == held

                        async def reconnected() -> bool:
                            return await _listener_pid(pg_database, b) not in (None, first)

                        await wait_until(reconnected, timeout=10)
                        generation_id = (await a.generate(project_id))["generation"]["id"]
                        received.events += (await _events_to_end(reader, generation_id)).events
            finally:
                await other.close()
        log = await database_log(pg_database, project_id)
    check(received, log)
    assert received.events[-1] == log[-1]


async def test_a_restarted_postgres_loses_no_event_and_streams_keep_their_heartbeats(
    tmp_path: Path, pg_database: Database
) -> None:
    """Streams on two processes while PostgreSQL restarts: each keeps sending pings while
    it is down, and gets every event committed after it is back (a generation run on
    one of them, submitted once the database takes writes again), none twice."""
    async with servers(tmp_path, pg_database, 2, stream_heartbeat_seconds="0.2") as processes:
        async with asyncio.timeout(TIMEOUT):
            project_id = await processes[0].new_project()
            before = await _commit_one(pg_database, project_id, "before")
            async with AsyncExitStack() as stack:
                readers: list[tuple[SSEReader, Received]] = []
                for process in processes:
                    url = f"{process.url}/api/projects/{project_id}/stream"
                    response = await stack.enter_async_context(
                        process.http.get(url, headers={"Last-Event-ID": "0"})
                    )
                    reader = SSEReader(response)
                    received = Received()
                    received.take(await reader.event())
                    assert received.last_id == before
                    readers.append((reader, received))
                async with pg_database.cluster.down():
                    for reader, _ in readers:  # pings go on while the database is away
                        assert await _pings(reader, 3) == 3
                generation_id = await _generate_when_back(processes[1], project_id)
                for reader, received in readers:
                    received.events += (await _events_to_end(reader, generation_id)).events
        log = await database_log(pg_database, project_id)
    for _, received in readers:
        check(received, log)
        assert received.events[-1] == log[-1]


async def _pings(reader: SSEReader, count: int) -> int:
    seen = 0
    while seen < count:
        frame = await reader.frame(timeout=5)
        assert frame.event is None, f"an event while the database was down: {frame.raw!r}"
        seen += frame.comments.count(b"ping")
    return seen


async def _generate_when_back(process: ServerProcess, project_id: str) -> str:
    """Submit a generation, retried while the database is not back (a 503)."""
    path = f"/api/projects/{project_id}/generations"
    generation_id: str | None = None

    async def accepted() -> bool:
        nonlocal generation_id
        async with process.http.post(process.url + path, json={"prompt": "a todo api"}) as r:
            if r.status == 503:
                return False
            assert r.status == 202, (r.status, await r.text())
            generation_id = (await r.json())["generation"]["id"]
            return True

    await wait_until(accepted, timeout=30, interval=0.2)
    assert generation_id is not None
    return generation_id


async def _events_to_end(reader: SSEReader, generation_id: str) -> Received:
    received = Received()
    while True:
        frame = await reader.event(timeout=30)
        received.take(frame)
        if is_end(frame, generation_id):
            return received


POLL_SECONDS = 0.5


@pytest.mark.parametrize(
    "unheard",
    [
        pytest.param({"storage_listen": "false"}, id="no-listener"),
    ],
)
async def test_a_notification_that_never_arrives_is_made_up_for_by_the_poll_timer(
    tmp_path: Path, pg_database: Database, unheard: dict[str, str]
) -> None:
    """Process B does not LISTEN (storage.listen = false): events committed elsewhere
    reach its streams by the poll timer alone, each within poll_seconds of its commit
    (and a margin for a loaded machine), and a whole generation on A, nothing lost."""
    async with servers(tmp_path, pg_database, 1) as (a,):
        settings = {"storage_poll_seconds": str(POLL_SECONDS), **unheard}
        async with server(tmp_path / "b", pg_database, **settings) as b:
            async with asyncio.timeout(TIMEOUT):
                assert await _listener_pid(pg_database, b) is None
                project_id = await a.new_project()
                url = f"{b.url}/api/projects/{project_id}/stream"
                async with b.http.get(url, headers={"Last-Event-ID": "0"}) as response:
                    reader = SSEReader(response)
                    delays = []
                    received = Received()
                    for n in range(5):
                        started = time.monotonic()
                        held = await _commit_one(pg_database, project_id, f"poll {n}")
                        received.take(await reader.event(timeout=10))
                        delays.append(time.monotonic() - started)
                        assert received.last_id == held
                    generation_id = (await a.generate(project_id))["generation"]["id"]
                    received.events += (await _events_to_end(reader, generation_id)).events
        log = await database_log(pg_database, project_id)
    assert max(delays) < POLL_SECONDS + 1.0, delays
    check(received, log)
    assert received.events[-1] == log[-1]
