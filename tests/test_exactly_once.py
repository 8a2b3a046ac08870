"""Exactly once under concurrency, over real sockets: many clients resuming at once
mid-generation, each cutting its own stream at random points, while pollers read the
same log. Every client's events must equal the log, and every streaming session the
server recorded must have sent exactly the events between its cursor and its last id.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from service.eventlog import event as ev
from tests.backends import Store
from tests.conftest import Genstream, MakeServer
from tests.helpers import follow_with_cuts, wait_until
from tests.sse_reader import Frame

pytestmark = pytest.mark.backends

PROJECTS = 2
CLIENTS_PER_PROJECT = 15
# Pollers keep reads in flight on the server's reader connections the whole time: the
# race that skipped events needed another read open at the moment a stream replayed.
POLLERS = 6
# Each client cuts its stream after this many events, then resumes at once.
CUT_AFTER = (20, 80)
TIMEOUT = 60.0


async def _client(
    gs: Genstream, project_id: str, generation_id: str, rng: random.Random
) -> list[int]:
    """Follow the project from the start, cutting the stream every 20-80 events and
    resuming with Last-Event-ID, until the generation's terminal event."""

    def terminal(frame: Frame) -> bool:
        return frame.event in ev.TERMINAL_TYPES and frame.json["generation_id"] == generation_id

    return await follow_with_cuts(gs, project_id, rng, CUT_AFTER, terminal)


async def _poller(
    gs: Genstream, project_ids: list[str], rng: random.Random, stop: asyncio.Event
) -> int:
    """Read pages of /events from random points of the log, as many polling clients do;
    returns how many reads it made."""
    reads = 0
    while not stop.is_set():
        for project_id in project_ids:
            project = await gs.json("GET", f"/api/projects/{project_id}")
            after = rng.randint(0, project["last_event_id"])
            await gs.json("GET", f"/api/projects/{project_id}/events?after={after}&limit=500")
            reads += 2
    return reads


SESSION_COLUMNS = ("id", "cursor", "last_event_id", "events_sent", "close_reason", "span")


async def _sessions(store: Store) -> list[dict[str, Any]]:
    rows = await store.rows(
        "SELECT s.id, s.cursor, s.last_event_id, s.events_sent, s.close_reason, "
        "(SELECT count(*) FROM events e WHERE e.project_id = s.project_id "
        " AND e.id > COALESCE(s.cursor, 0) AND e.id <= COALESCE(s.last_event_id, 0)) "
        "AS span FROM stream_sessions s WHERE s.key LIKE 'project:%'"
    )
    return [dict(zip(SESSION_COLUMNS, row, strict=True)) for row in rows]


@pytest.mark.parametrize("seed", [1, 2])
async def test_many_resuming_clients_with_pollers_each_get_the_log_exactly(
    make_server: MakeServer, store: Store, seed: int
) -> None:
    rng = random.Random(seed)
    gs = await make_server(offline={"tokens_per_second": 3000})
    project_ids = [await gs.new_project(f"p{n}") for n in range(PROJECTS)]
    stop = asyncio.Event()
    pollers = [
        asyncio.create_task(_poller(gs, project_ids, random.Random(rng.random()), stop))
        for _ in range(POLLERS)
    ]
    try:
        async with asyncio.timeout(TIMEOUT):
            generations = [(await gs.generate(pid))["generation"]["id"] for pid in project_ids]
            clients = {
                (pid, n): asyncio.create_task(_client(gs, pid, gid, random.Random(rng.random())))
                for pid, gid in zip(project_ids, generations, strict=True)
                for n in range(CLIENTS_PER_PROJECT)
            }
            results = {key: await task for key, task in clients.items()}
    finally:
        stop.set()
        reads = await asyncio.gather(*pollers)
    assert all(r > 0 for r in reads)
    logs = {pid: [e["id"] for e in await gs.events(pid)] for pid in project_ids}
    # Each client stopped at its generation's terminal event: it must hold the log up to it.
    wrong_clients = [
        (key, sorted(set(logs[key[0]][: len(received)]) ^ set(received))[:5])
        for key, received in results.items()
        if received != logs[key[0]][: len(received)] or received[-1] not in logs[key[0]]
    ]
    assert wrong_clients == [], f"{len(wrong_clients)} of {len(results)} clients: {wrong_clients}"
    # The server's own record: each session sent every event of its span, no more, no less.
    await _until_sessions_closed(gs, store)
    sessions = await _sessions(store)
    resumes = len(sessions)
    assert resumes > PROJECTS * CLIENTS_PER_PROJECT * 2
    wrong = [s for s in sessions if s["events_sent"] != s["span"]]
    assert wrong == [], f"{len(wrong)} of {resumes} sessions sent other than their span"


async def _until_sessions_closed(gs: Genstream, store: Store) -> None:
    # A session's close is written by the journal after the stream ends: wait for every one.
    async def all_closed() -> bool:
        open_sessions = await store.value(
            "SELECT count(*) FROM stream_sessions WHERE ended_at IS NULL"
        )
        if open_sessions != 0:
            return False
        return bool((await gs.json("GET", "/api/connections"))["total"] == 0)

    await wait_until(all_closed, timeout=10, interval=0.05)
