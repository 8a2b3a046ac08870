"""SQLite's small commits on the event loop's own thread (storage/sqlite.py _LoopWriter):
they must never stall the loop, nor let the WAL grow without end, and a failed one must
write nothing and hand its ids back, as a commit on aiosqlite's thread does."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiosqlite
import pytest

from service.errors import StorageUnavailable
from service.eventlog import event as ev
from service.eventlog.broker import Broker
from service.eventlog.event import Draft
from service.eventlog.journal import Journal
from service.storage.sqlite import CHECKPOINT_FRAMES
from service.storage.sqlite import Storage as SqliteStorage

PROJECT = "prj_loop_writer"
PAGE = 4096  # SQLite's default page size, the size of a WAL frame's page


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "genstream.db"


@pytest.fixture
async def journal(db_path: Path) -> AsyncIterator[Journal]:
    storage = await SqliteStorage.open(str(db_path))
    journal = await Journal.start(storage, Broker(queue_size=16))
    # The first commit after opening goes to aiosqlite's thread (it may start the WAL
    # anew, which syncs): the next ones are the loop's.
    await journal.append(draft(0))
    yield journal
    await journal.close()
    await storage.close()


def draft(n: int, size: int = 0) -> Draft:
    return Draft(PROJECT, None, ev.VALIDATION, {"n": n, "pad": "x" * size})


def loop_commits(journal: Journal) -> int:
    storage = journal._storage
    assert isinstance(storage, SqliteStorage)
    return storage._loop_writer.commits


async def test_a_write_lock_held_elsewhere_does_not_stall_the_loop(
    journal: Journal, db_path: Path
) -> None:
    """SQLite waits for a write lock up to the busy timeout (5 s here); on the loop's
    thread that wait would stall every stream of the process. The batch goes to
    aiosqlite's thread instead, which waits, and commits once the lock is released."""
    async with aiosqlite.connect(db_path, isolation_level=None) as other:
        await other.execute("BEGIN IMMEDIATE")
        pending = journal.append(draft(1))
        started = time.perf_counter()
        await asyncio.sleep(0.05)  # the probe: how long the loop takes to come back
        stalled = time.perf_counter() - started
        assert not pending.done()  # still waiting for the lock, on the thread
        await other.execute("ROLLBACK")
    async with asyncio.timeout(5):
        (event,) = await pending
    assert stalled < 1.0
    assert event.id == 2
    before = loop_commits(journal)
    await journal.append(draft(2))
    assert loop_commits(journal) == before + 1  # the lock gone, the loop commits again


async def test_a_failed_commit_on_the_loop_writes_nothing_and_hands_its_ids_back(
    journal: Journal, db_path: Path
) -> None:
    """One multi-row INSERT in autocommit is atomic: when its second row is refused, its
    first is not written either, and the next append gets the first row's id."""
    with sqlite3.connect(db_path, isolation_level=None) as other:
        # Another writer took the id the second event of the next batch would get.
        other.execute(
            "INSERT INTO events (id, project_id, type, ts, data) VALUES (3, ?, ?, 0, '{}')",
            (PROJECT, ev.VALIDATION),
        )
    before = loop_commits(journal)
    with pytest.raises(StorageUnavailable, match="UNIQUE"):
        await journal.append(draft(1), draft(2))
    assert loop_commits(journal) == before
    with sqlite3.connect(db_path, isolation_level=None) as other:
        assert other.execute("SELECT id FROM events ORDER BY id").fetchall() == [(1,), (3,)]
        other.execute("DELETE FROM events WHERE id = 3")
    (event,) = await journal.append(draft(3))
    assert event.id == 2


async def test_the_wal_stays_bounded_while_the_loop_commits(
    journal: Journal, db_path: Path
) -> None:
    """The loop's connection never checkpoints (a checkpoint syncs): a connection on its
    own thread does, so the WAL is copied back and reused as SQLite's own automatic
    checkpoint would, instead of growing by every commit."""
    commits = 3000  # each of about 3 frames and 1 KiB: 10 times CHECKPOINT_FRAMES
    for n in range(commits):
        await journal.append(draft(n, size=1000))
    wal = db_path.with_name(db_path.name + "-wal")
    assert wal.stat().st_size < 4 * CHECKPOINT_FRAMES * PAGE
    assert loop_commits(journal) > commits // 2
    with sqlite3.connect(db_path) as other:
        assert other.execute("SELECT count(*), max(id) FROM events").fetchone() == (
            commits + 1,
            commits + 1,
        )
