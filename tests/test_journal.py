"""The journal over a real database (each backend): what one caller's mistake does to
the others."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from service.config import Settings
from service.eventlog import event as ev
from service.eventlog.broker import Broker
from service.eventlog.event import Draft
from service.eventlog.journal import Emit, Journal
from service.storage import open_storage
from service.storage.interface import Tx
from tests.backends import Store

pytestmark = pytest.mark.backends
PROJECT = "prj_journal"


@pytest.fixture
async def journal(store: Store) -> AsyncIterator[Journal]:
    storage = await open_storage(Settings().replace(storage=store.settings()).storage)
    journal = await Journal.start(storage, Broker(queue_size=16))
    yield journal
    await journal.close()
    await storage.close()


def draft(**payload: object) -> Draft:
    return Draft(PROJECT, None, ev.VALIDATION, dict(payload))


async def test_a_payload_that_cannot_be_encoded_fails_its_caller_alone(journal: Journal) -> None:
    good_before = journal.append(draft(n=1))
    bad = journal.append(draft(n={1, 2}))  # a set: orjson cannot encode it
    good_after = journal.append(draft(n=3))
    async with asyncio.timeout(5):
        before = await good_before
        with pytest.raises(TypeError):
            await bad
        after = await good_after
    # No id is lost to the failed append and none is given twice.
    assert after[0].id == before[0].id + 1


async def test_the_writer_goes_on_after_a_job_fails(journal: Journal) -> None:
    async def broken(tx: Tx, emit: Emit) -> None:
        await emit(draft(n=1))
        raise RuntimeError("the caller's own bug")

    async with asyncio.timeout(5):
        with pytest.raises(RuntimeError, match="own bug"):
            await journal.transact(broken)
        events = await journal.append(draft(n=2))
    assert events[0].id == 1  # the failed job's event was rolled back with it
    assert journal.last_published_id == 1


async def test_a_payload_carrying_the_events_own_id_fails_its_caller_alone(
    journal: Journal,
) -> None:
    bad = journal.append(draft(id=7))  # "id" is the event's own field, given by the storage
    good = journal.append(draft(n=1))
    async with asyncio.timeout(5):
        with pytest.raises(ValueError, match="'id'"):
            await bad
        events = await good
    assert events[0].id == 1


async def test_appends_and_jobs_of_one_batch_get_ids_in_the_order_they_arrived(
    journal: Journal,
) -> None:
    async def job(tx: Tx, emit: Emit) -> int:
        return (await emit(draft(n=2))).id

    async with asyncio.timeout(5):
        # Queued together: one transaction, appends on both sides of a job.
        first = journal.append(draft(n=1))
        middle = journal.transact(job)
        last = journal.append(draft(n=3), draft(n=4))
        assert [e.id for e in await first] == [1]
        assert await middle == 2
        assert [e.id for e in await last] == [3, 4]
    assert journal.last_published_id == 4


async def test_an_append_whose_check_refuses_writes_none_of_its_events(journal: Journal) -> None:
    """A check (a generation's lease) runs in the append's transaction; a refusal fails
    that append alone, and the others of the batch keep their order and their ids."""
    checked: list[int] = []

    async def allow(tx: Tx) -> None:
        checked.append(1)

    async def refuse(tx: Tx) -> None:
        raise LookupError("not held")

    async with asyncio.timeout(5):
        first = journal.append(draft(n=1), check=allow)
        refused = journal.append(draft(n=2), check=refuse)
        last = journal.append(draft(n=3))
        assert [e.id for e in await first] == [1]
        with pytest.raises(LookupError, match="not held"):
            await refused
        assert [e.id for e in await last] == [2]
    assert checked == [1]
    assert journal.last_published_id == 2
