"""Leases on the postgres backend, statement by statement (generation/leases.py is their
user; tests/test_processes.py runs them with real processes): who holds a lease and
until when, the row lock that makes an owner's write and another process's end take
turns, and the uniqueness rules a race between two processes meets."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest

from service.config import GenerationSettings
from service.errors import Conflict
from service.eventlog.broker import Broker
from service.eventlog.event import Draft, Event, encode
from service.eventlog.journal import Emit, Journal
from service.generation.lifecycle import Generations
from service.generation.providers.offline import OfflineProvider
from service.metrics import Metrics
from service.pipelines import load_pipelines
from service.storage.interface import Duplicate, Tx
from service.storage.postgres import PostgresStorage, PostgresTx
from tests.helpers import wait_until
from tests.postgres import Database
from tests.storage_contract import PROJECT, insert_generation

TIMEOUT = 20
RACE_ROUNDS = 10
OWNER = "host:1:aaaa"
OTHER = "host:2:bbbb"
GID = "gen_leased"


@pytest.fixture
async def storages(pg_database: Database) -> AsyncIterator[list[PostgresStorage]]:
    """Two backends on one database: two processes' writers."""
    opened = [await PostgresStorage.open(pg_database.url) for _ in range(2)]
    tx = opened[0].transaction()
    await tx.begin()
    await tx.insert_project(PROJECT, PROJECT, 1)
    await tx.commit()
    yield opened
    for storage in opened:
        await storage.close()


async def _begin(storage: PostgresStorage) -> PostgresTx:
    tx = storage.transaction()
    await tx.begin()
    return tx


async def _create(
    storage: PostgresStorage, gid: str = GID, client_request_id: str | None = None
) -> PostgresTx:
    """A generation inserted and leased to OWNER for a minute, its transaction left open."""
    tx = await _begin(storage)

    async def emit(draft: Draft) -> Event:
        (event,) = await tx.insert_events([encode(draft)])
        return event

    await insert_generation(tx, emit, PROJECT, gid, client_request_id)
    await tx.take_lease(gid, OWNER, 60)
    return tx


async def _in_tx(storage: PostgresStorage, check: str, *args: object) -> object:
    tx = await _begin(storage)
    result = await getattr(tx, check)(*args)
    await tx.commit()
    return result


async def test_the_owner_holds_its_lease_until_it_expires(
    storages: list[PostgresStorage],
) -> None:
    first, _ = storages
    await (await _create(first)).commit()
    assert await _in_tx(first, "holds_lease", GID, OWNER)
    assert not await _in_tx(first, "holds_lease", GID, OTHER)
    assert not await _in_tx(first, "lease_lapsed", GID)
    assert await first.lapsed_generation_ids() == []
    assert await _in_tx(first, "renew_leases", OWNER, 0.3, [GID]) == []

    async def lapsed() -> bool:
        return await first.lapsed_generation_ids() == [GID]

    await wait_until(lapsed, TIMEOUT)
    assert await _in_tx(first, "lease_lapsed", GID)
    assert not await _in_tx(first, "holds_lease", GID, OWNER)
    # Expired is lost for good: a renewal does not bring it back.
    assert await _in_tx(first, "renew_leases", OWNER, 60, [GID]) == [GID]
    assert await first.lapsed_generation_ids() == [GID]


async def test_an_ended_generation_is_no_ones(storages: list[PostgresStorage]) -> None:
    first, _ = storages
    await (await _create(first)).commit()
    tx = await _begin(first)
    await tx.update_generation(GID, status="failed")
    await tx.commit()
    assert not await _in_tx(first, "holds_lease", GID, OWNER)
    assert not await _in_tx(first, "lease_lapsed", GID)
    assert await _in_tx(first, "renew_leases", OWNER, 60, [GID]) == [GID]


async def test_cancel_requests_are_the_owners_to_read(storages: list[PostgresStorage]) -> None:
    first, second = storages
    await (await _create(first)).commit()
    assert await first.cancel_requests(OWNER) == []
    await _in_tx(second, "request_cancel", GID)
    assert await first.cancel_requests(OWNER) == [GID]
    assert await first.cancel_requests(OTHER) == []


async def test_a_reaper_waits_for_the_owners_write_then_finds_the_lease_renewed(
    storages: list[PostgresStorage], pg_database: Database
) -> None:
    first, second = storages
    await (await _create(first)).commit()
    await _in_tx(first, "renew_leases", OWNER, 0.3, [GID])

    async def lapsed() -> bool:
        return await first.lapsed_generation_ids() == [GID]

    await wait_until(lapsed, TIMEOUT)
    # The owner's transaction takes the locks first (the log, then the row, by its
    # UPDATE): expired, the owner is fenced, so only a test extends the claim by hand
    # (take_lease, as a creation does); it has not committed when the reaper checks.
    owner = await _begin(first)
    assert not await owner.holds_lease(GID, OWNER)
    await owner.take_lease(GID, OWNER, 60)
    async with asyncio.timeout(TIMEOUT):
        reaper = asyncio.create_task(_in_tx(second, "lease_lapsed", GID))

        async def blocked() -> bool:
            return await pg_database.backends(waiting_for_a_lock=True) == 1

        await wait_until(blocked, TIMEOUT)
        assert not reaper.done()
        await owner.commit()
        # It re-checked on the row the owner left: not lapsed any more.
        assert await reaper is False


async def test_a_second_active_generation_in_a_project_is_a_duplicate(
    storages: list[PostgresStorage],
) -> None:
    first, second = storages
    await (await _create(first)).commit()
    tx = await _begin(second)
    with pytest.raises(Duplicate) as caught:

        async def emit(draft: Draft) -> Event:
            (event,) = await tx.insert_events([encode(draft)])
            return event

        await insert_generation(tx, emit, PROJECT, "gen_second", None)
    assert caught.value.constraint == "generations_one_active"
    await tx.rollback()


async def test_the_same_client_request_id_is_a_duplicate(
    storages: list[PostgresStorage],
) -> None:
    first, second = storages
    created = await _create(first, client_request_id="req-1")
    await created.update_generation(GID, status="completed")
    await created.commit()
    tx = await _begin(second)

    async def emit(draft: Draft) -> Event:
        (event,) = await tx.insert_events([encode(draft)])
        return event

    with pytest.raises(Duplicate) as caught:
        await insert_generation(tx, emit, PROJECT, "gen_again", "req-1")
    assert caught.value.constraint == "generations_project_id_client_request_id_key"
    await tx.rollback()


async def test_a_duplicate_fails_its_journal_job_alone(storages: list[PostgresStorage]) -> None:
    """Another process's commit took the key: the job that meets it gets Duplicate (the
    lifecycle then reads again), and the other jobs of its batch commit."""
    first, second = storages
    created = await _create(first, client_request_id="req-1")
    await created.update_generation(GID, status="completed")
    await created.commit()
    journal = await Journal.start(second, Broker(queue_size=16))
    try:

        async def again(tx: Tx, emit: Emit) -> None:
            await insert_generation(tx, emit, PROJECT, "gen_again", "req-1")

        async with asyncio.timeout(TIMEOUT):
            clashing = journal.transact(again)
            beside = journal.append(Draft(PROJECT, None, "validation", {"n": 1}))
            with pytest.raises(Duplicate):
                await clashing
            (event,) = await beside
    finally:
        await journal.close()
    assert [e.id for e in await second.events_after(PROJECT, 0, 10)][-1] == event.id
    assert await second.generation("gen_again") is None


class _Unlocked(PostgresTx):
    """A transaction whose submit takes no lock first: the race the lock prevents."""

    async def lock_log(self) -> None:
        return None


class _UnlockedStorage(PostgresStorage):
    def transaction(self) -> PostgresTx:
        return _Unlocked(self)


async def test_without_the_submit_lock_the_partial_index_still_refuses_a_second_generation(
    pg_database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    """Two processes' lifecycles whose submits both read before either commits: the
    second insert meets the first's row in generations_one_active (Duplicate), reads
    again, and answers as one process would, the 409 naming the running generation. (The
    same client_request_id needs the lock itself: without it the second submit's two
    reads may straddle the first's commit, no generation by that request, then one
    running, a 409 where one process answers created false.)"""
    caplog.set_level(logging.INFO, "service.generation.lifecycle")
    opened: list[tuple[PostgresStorage, Journal, Generations]] = []
    for _ in range(2):
        storage = await _UnlockedStorage.open(pg_database.url)
        journal = await Journal.start(storage, Broker(queue_size=1024))
        generations = Generations(
            storage,
            journal,
            OfflineProvider(tokens_per_second=5),
            max_concurrent=4,
            timeout_seconds=60,
            metrics=Metrics(),
            limits=GenerationSettings(lease_seconds=30),
            pipelines=load_pipelines(),
        )
        opened.append((storage, journal, generations))
    (_, journal, first), (_, _, second) = opened
    try:
        async with asyncio.timeout(TIMEOUT):
            for n in range(RACE_ROUNDS):
                project_id = f"prj_race_{n}"

                async def project(tx: Tx, emit: Emit, project_id: str = project_id) -> None:
                    await tx.insert_project(project_id, project_id, 1)

                await journal.transact(project)
                answers = await asyncio.gather(
                    first.submit(project_id, "a todo api", [], f"req-a-{n}"),
                    second.submit(project_id, "a blog", [], f"req-b-{n}"),
                    return_exceptions=True,
                )
                (created,) = [a for a in answers if not isinstance(a, BaseException)]
                (refused,) = [a for a in answers if isinstance(a, BaseException)]
                assert isinstance(refused, Conflict), refused
                assert refused.code == "generation_running"
                assert refused.details["generation_id"] == created.generation.id
    finally:
        for storage, journal, generations in opened:
            await generations.close()
            await journal.close()
            await storage.close()
    met = caplog.text.count("submit met another process's commit (generations_one_active)")
    print(f"duplicates met in {RACE_ROUNDS} raced pairs: {met}")
    assert met > 0
