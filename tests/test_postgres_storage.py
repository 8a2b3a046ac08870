"""The postgres backend beyond the contract (tests/test_storage_contract.py runs that):
commit order is id order across writers of several processes, the schema's version, a
lost connection, the app on it end to end, and a clear refusal when it is unreachable."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from service.eventlog.event import Event, encode
from service.storage.interface import StorageError
from service.storage.postgres import SCHEMA_VERSION, PostgresStorage
from tests.conftest import MakeServer
from tests.helpers import wait_until
from tests.postgres import Database
from tests.process import free_port, run_to_exit
from tests.storage_contract import PROJECT, draft, ids

TIMEOUT = 20


@pytest.fixture
async def writers(pg_database: Database) -> AsyncIterator[list[PostgresStorage]]:
    """Two backends on one database: the writers of two processes (two connections)."""
    opened = [await PostgresStorage.open(pg_database.url) for _ in range(2)]
    yield opened
    for storage in opened:
        await storage.close()


async def _with_project(storage: PostgresStorage, *project_ids: str) -> None:
    tx = storage.transaction()
    await tx.begin()
    for project_id in project_ids:
        await tx.insert_project(project_id, project_id, 1)
    await tx.commit()


# -- commit order is id order, across processes -----------------------------------------


async def test_a_writer_that_would_commit_a_higher_id_first_waits_for_the_lower_one(
    writers: list[PostgresStorage], pg_database: Database
) -> None:
    first, second = writers
    await _with_project(first, PROJECT)
    async with asyncio.timeout(TIMEOUT):
        slow = first.transaction()
        await slow.begin()
        (low,) = await slow.insert_events([encode(draft(n=1))])
        # The second process commits at once, while the first still holds its transaction
        # open: with ids from a plain sequence it would commit id low + 1 before low.
        fast = asyncio.create_task(second.commit_events([encode(draft(n=2))]))

        async def blocked() -> bool:
            return await pg_database.backends(waiting_for_a_lock=True) == 1

        await wait_until(blocked)
        assert not fast.done()
        # A reader meanwhile sees neither: nothing past the cursor that could hide `low`.
        assert await second.events_after(PROJECT, 0, 10) == []
        await slow.commit()
        (high,) = await fast
    assert high.id == low.id + 1
    assert ids(await second.events_after(PROJECT, 0, 10)) == [low.id, high.id]


async def test_readers_after_a_cursor_never_miss_a_lower_id_committed_later(
    writers: list[PostgresStorage],
) -> None:
    """Writers of one project on two connections, each holding its transaction open a
    random while after taking its ids (the delay that reorders commits), and readers
    following the project by cursor (`id > C`, C the newest id they read): each reader
    ends with every event, in order, none skipped."""
    await _with_project(writers[0], PROJECT)
    rounds, readers_count = 40, 3
    rng = random.Random(13)
    delays = [rng.uniform(0, 0.01) for _ in range(rounds * len(writers))]
    done = asyncio.Event()

    async def writer(storage: PostgresStorage, number: int) -> list[int]:
        mine: list[int] = []
        for n in range(rounds):
            tx = storage.transaction()
            await tx.begin()
            events = await tx.insert_events([encode(draft(writer=number, n=n))] * 2)
            await asyncio.sleep(delays[number * rounds + n])  # held open, ids taken
            await tx.commit()
            mine += ids(events)
        return mine

    async def reader(storage: PostgresStorage) -> list[int]:
        seen: list[Event] = []
        cursor = 0
        while True:
            finished = done.is_set()  # read once more after the writers are done
            page = await storage.events_after(PROJECT, cursor, 1000)
            seen += page
            if page:
                cursor = page[-1].id
            if finished:
                return ids(seen)
            await asyncio.sleep(0)

    async with asyncio.timeout(TIMEOUT):
        reading = [asyncio.create_task(reader(writers[n % 2])) for n in range(readers_count)]
        written = await asyncio.gather(*(writer(s, n) for n, s in enumerate(writers)))
        done.set()
        seen = await asyncio.gather(*reading)
    every = sorted(i for mine in written for i in mine)
    assert every == list(range(every[0], every[0] + len(every)))  # dense, no id twice
    for got in seen:
        assert got == every


# -- the schema ----------------------------------------------------------------------------


async def test_the_schema_is_migrated_once_and_a_newer_one_is_refused(
    pg_database: Database,
) -> None:
    # Two processes starting at once: the advisory lock lets one migrate at a time.
    both = await asyncio.gather(*(PostgresStorage.open(pg_database.url) for _ in range(2)))
    for storage in both:
        await storage.close()
    connection = await asyncpg.connect(pg_database.url)
    try:
        assert await connection.fetchval("SELECT count(*) FROM genstream_schema") == 1
        assert await connection.fetchval("SELECT version FROM genstream_schema") == SCHEMA_VERSION
        await connection.execute("UPDATE genstream_schema SET version = version + 1")
    finally:
        await connection.close()
    with pytest.raises(StorageError, match="newer than this code"):
        await PostgresStorage.open(pg_database.url)


# -- trouble --------------------------------------------------------------------------------


async def test_a_lost_writer_connection_fails_its_transaction_then_reconnects(
    pg_database: Database,
) -> None:
    storage = await PostgresStorage.open(pg_database.url)
    try:
        await _with_project(storage, PROJECT)
        before = await storage.commit_events([encode(draft(n=1))])
        tx = storage.transaction()
        await tx.begin()
        await tx.insert_events([encode(draft(n=2))])
        assert await pg_database.terminate_backends() >= 1
        await wait_until(storage._writer.is_closed)
        with pytest.raises(StorageError):  # asyncpg's own exception stays inside
            await tx.commit()
        await tx.rollback()  # nothing is open any more: nothing to undo, no error
        # The next write connects again; the lost transaction's id is given again.
        after = await storage.commit_events([encode(draft(n=3))])
        assert after[0].id == before[0].id + 1
        assert ids(await storage.events_after(PROJECT, 0, 10)) == ids(before + after)
    finally:
        await storage.close()


async def test_serve_exits_with_status_1_when_postgres_is_unreachable(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    url = f"postgresql://gs:s3cret@127.0.0.1:{port}/genstream"
    code, stderr = await run_to_exit(tmp_path, storage_backend="postgres", storage_url=url)
    assert code == 1, stderr
    assert f"cannot connect to PostgreSQL at postgresql://gs:***@127.0.0.1:{port}/genstream" in (
        stderr
    )
    assert "s3cret" not in stderr and "Traceback" not in stderr


async def test_serve_refuses_postgres_without_a_url(tmp_path: Path) -> None:
    code, stderr = await run_to_exit(tmp_path, storage_backend="postgres")
    assert code == 1, stderr
    assert "storage.url is empty" in stderr and "GENSTREAM_STORAGE_URL" in stderr


# -- the app on it ----------------------------------------------------------------------------


async def test_a_generation_runs_end_to_end_on_postgres(
    make_server: MakeServer, pg_database: Database
) -> None:
    gs = await make_server(storage={"backend": "postgres", "url": pg_database.url})
    project_id = await gs.new_project()
    submitted = await gs.generate(project_id, client_request_id="req-1")
    again = await gs.generate(project_id, client_request_id="req-1")
    assert again["generation"]["id"] == submitted["generation"]["id"]
    generation = await gs.wait_generation(submitted["generation"]["id"])
    assert generation["status"] == "completed"
    events = await gs.events(project_id)
    assert [e["id"] for e in events] == sorted({e["id"] for e in events})
    assert events[-1]["type"] == "generation.completed"
    project = await gs.json("GET", f"/api/projects/{project_id}")
    assert project["last_event_id"] == events[-1]["id"] and project["status"] == "idle"
    files = (await gs.json("GET", f"/api/projects/{project_id}/files"))["files"]
    assert files and all(f["size"] > 0 for f in files)
    messages = (await gs.json("GET", f"/api/projects/{project_id}/messages"))["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant"]


async def test_a_commit_that_rolled_back_an_aborted_transaction_is_a_failure(
    pg_database: Database,
) -> None:
    # PostgreSQL answers COMMIT of an aborted transaction with the tag ROLLBACK and no
    # error: the journal, which publishes once commit returns, must hear a failure.
    storage = await PostgresStorage.open(pg_database.url)
    try:
        await _with_project(storage, PROJECT)
        tx = storage.transaction()
        await tx.begin()
        (event,) = await tx.insert_events([encode(draft(n=1))])
        with pytest.raises(StorageError):
            await tx.insert_project(PROJECT, PROJECT, 1)  # a duplicate key aborts it
        with pytest.raises(StorageError, match="rolled back"):
            await tx.commit()
        assert await storage.max_event_id() == event.id - 1  # nothing was stored
    finally:
        await storage.close()
