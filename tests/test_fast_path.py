"""The fast path of a live stream (broker.Subscriber.direct, web/streams.py): while a
stream's handler waits with nothing queued and its client takes what it is sent, each
commit is written to the client from within its publish, and the handler stays asleep.

Run on both event loops a server meets: asyncio's (the in-process server) and uvloop's
(`genstream serve` in a process of its own; uvloop is installed with the `bench` extra).
On uvloop the fast path once never ran: a fresh uvloop transport's low-water mark is 16
bytes, and the test for "this write cannot wait" compared against it (sse_response.py).
"""

from __future__ import annotations

import asyncio
import random
import socket
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.eventlog import event as ev
from service.eventlog import journal as journal_module
from service.eventlog.event import Draft
from service.eventlog.journal import Emit
from service.storage.interface import Tx
from tests.conftest import Genstream, stored_events
from tests.process import server_process
from tests.sse_reader import SSEReader

COMMITS = 40
BIG = 48 * 1024  # an event this large, many times over, fills the socket's buffers


class Server(Protocol):
    url: str
    http: aiohttp.ClientSession

    async def json(self, method: str, path: str, status: int = 200, **kwargs: Any) -> Any: ...

    async def new_project(self) -> str: ...


async def _writes(server: Server) -> dict[str, float]:
    async with server.http.get(f"{server.url}/metrics") as response:
        text = await response.text()
    return {
        sample.labels["by"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "genstream_stream_writes_total"
    }


async def _publish(server: Server, project_id: str, i: int, pad: int = 0) -> int:
    body = {"type": "app.test.tick", "data": {"i": i, "pad": "x" * pad}}
    stored = await server.json("POST", f"/api/projects/{project_id}/events", 201, json=body)
    return int(stored["id"])


async def _keeps_up(server: Server) -> None:
    """One commit at a time, each read before the next: every one goes by the fast path."""
    project_id = await server.new_project()
    async with server.http.get(f"{server.url}/api/projects/{project_id}/stream") as response:
        reader = SSEReader(response)
        assert (await reader.event()).event == ev.STREAM_CURSOR
        before = await _writes(server)
        for i in range(COMMITS):
            stored = await _publish(server, project_id, i)
            frame = await reader.event(timeout=5)
            assert (frame.id, frame.event) == (stored, "app.test.tick")
        after = await _writes(server)
    assert after.get("direct", 0) - before.get("direct", 0) == COMMITS
    assert after.get("handler", 0) - before.get("handler", 0) == 0


async def test_a_client_that_keeps_up_is_written_from_the_publish_on_asyncio(
    gs: Genstream,
) -> None:
    await _keeps_up(gs)


async def test_a_client_that_keeps_up_is_written_from_the_publish_on_uvloop(
    tmp_path: Path,
) -> None:
    async with server_process(tmp_path) as server:
        await _keeps_up(server)


async def test_a_client_that_stops_reading_gets_the_rest_from_its_handler_in_order(
    gs: Genstream,
) -> None:
    """A client that stops reading: the transport fills, the fast path refuses, the
    handler writes what is queued once the client reads again; nothing lost, nothing twice."""
    project_id = await gs.new_project()
    url = f"{gs.url}/api/projects/{project_id}/stream"
    async with gs.http.get(url) as response:
        reader = SSEReader(response)
        assert (await reader.event()).event == ev.STREAM_CURSOR
        before = await _writes(gs)
        # Not read while published: 200 events of 48 KiB, 9.6 MB, more than loopback's
        # socket buffers and the transport's 64 KiB high-water mark hold.
        stored = [await _publish(gs, project_id, i, pad=BIG) for i in range(200)]
        received: list[int | None] = []
        async with asyncio.timeout(30):
            while len(received) < len(stored):
                received.append((await reader.event()).id)
        after = await _writes(gs)
    assert received == stored
    assert after.get("handler", 0) - before.get("handler", 0) >= 1
    assert after.get("direct", 0) - before.get("direct", 0) >= 1


# The attack: streams flip between the fast path and their handler's, many times each,
# while several publishers and a generation commit into the same project.
PUBLISHERS = 3
EVENTS_PER_PUBLISHER = 80
CLIENTS = 10
GENERATION_CLIENTS = 2
LAST = "app.test.done"
ATTACK_TIMEOUT = 90.0
SMALL_RECEIVE_BUFFER = 16 * 1024


async def _publisher(
    server: Server,
    project_id: str,
    rng: random.Random,
    published: asyncio.Condition,
    count: list[int],
) -> None:
    for i in range(EVENTS_PER_PUBLISHER):
        # Up to 60 KB: a few of them fill a paused client's socket buffers.
        await _publish(server, project_id, i, pad=rng.choice((0, 2_000, 40_000, 60_000)))
        async with published:
            count[0] += 1
            published.notify_all()


async def _pausing_client(
    server: Server,
    project_id: str,
    rng: random.Random,
    published: asyncio.Condition,
    count: list[int],
) -> list[int]:
    """Reads the project's stream to LAST; now and then stops reading until 20 to 80 more
    events were published (its buffers fill, the fast path refuses), then reads again."""
    ids: list[int] = []
    url = f"{server.url}/api/projects/{project_id}/stream?last_event_id=0"
    async with server.http.get(url) as response:
        # A small receive buffer (the kernel's autotuning off for this socket, tcp(7)):
        # a pause soon fills it and the server's send buffer, and the server's transport
        # buffer grows past its high-water mark.
        assert response.connection is not None and response.connection.transport is not None
        sock = response.connection.transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_RECEIVE_BUFFER)
        reader = SSEReader(response)
        while True:
            frame = await reader.event(timeout=ATTACK_TIMEOUT)
            assert frame.id is not None
            ids.append(frame.id)
            if frame.event == LAST:
                return ids
            if rng.random() < 0.15:
                goal = min(count[0] + rng.randint(20, 80), PUBLISHERS * EVENTS_PER_PUBLISHER)
                await _published(published, count, goal)


async def _published(published: asyncio.Condition, count: list[int], goal: int) -> None:
    async with published:
        await published.wait_for(lambda: count[0] >= goal)


async def _generation_client(server: Server, generation_id: str) -> list[int | None]:
    url = f"{server.url}/api/generations/{generation_id}/stream?last_event_id=0"
    async with server.http.get(url) as response:
        frames = await SSEReader(response).events_until_end(timeout=ATTACK_TIMEOUT)
    return [frame.id for frame in frames]


@pytest.mark.parametrize("seed", [1, 2])
async def test_streams_flipping_between_the_fast_path_and_the_handler_get_the_log_exactly(
    tmp_path: Path, seed: int
) -> None:
    """On uvloop (a `genstream serve` process): 10 project streams that pause and read
    while 3 publishers and a generation commit, 2 generation streams; each gets exactly
    the stored log (ids in order, none twice, none missing), and both paths wrote."""
    rng = random.Random(seed)
    published = asyncio.Condition()
    count = [0]
    async with server_process(tmp_path) as server:
        project_id = await server.new_project()
        before = await _writes(server)
        async with asyncio.timeout(ATTACK_TIMEOUT):
            clients = [
                asyncio.create_task(
                    _pausing_client(
                        server, project_id, random.Random(rng.random()), published, count
                    )
                )
                for _ in range(CLIENTS)
            ]
            submitted = await server.json(
                "POST",
                f"/api/projects/{project_id}/generations",
                202,
                json={"prompt": "a todo app with tests"},
            )
            generation_id = submitted["generation"]["id"]
            followers = [
                asyncio.create_task(_generation_client(server, generation_id))
                for _ in range(GENERATION_CLIENTS)
            ]
            await asyncio.gather(
                *(
                    _publisher(server, project_id, random.Random(rng.random()), published, count)
                    for _ in range(PUBLISHERS)
                )
            )
            generation_ids = await asyncio.gather(*followers)
            await _publish_last(server, project_id)
            results = await asyncio.gather(*clients)
        log = await stored_events(server.json, project_id, 0)
        after = await _writes(server)
    ids = [event["id"] for event in log]
    assert log[-1]["type"] == LAST and len(ids) == len(set(ids))
    wrong = [(n, sorted(set(ids) ^ set(got))[:5]) for n, got in enumerate(results) if got != ids]
    assert wrong == [], f"{len(wrong)} of {CLIENTS} clients differ from the log: {wrong}"
    of_generation = [event["id"] for event in log if event["generation_id"] == generation_id]
    assert log[ids.index(of_generation[-1])]["type"] == ev.GENERATION_COMPLETED
    assert all(got == of_generation for got in generation_ids)
    # Both paths wrote, and the handler's more than its replays: streams flipped.
    assert after.get("direct", 0) - before.get("direct", 0) > CLIENTS
    assert after.get("handler", 0) - before.get("handler", 0) > CLIENTS + GENERATION_CLIENTS


async def _publish_last(server: Server, project_id: str) -> None:
    await server.json(
        "POST", f"/api/projects/{project_id}/events", 201, json={"type": LAST, "data": {}}
    )


async def test_after_a_costly_fan_out_the_next_commit_gathers_what_came_meanwhile(
    gs: Genstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The journal rests after a publish that took long (journal.PUBLISH_REST_AFTER_S):
    what is appended meanwhile goes in one commit and one fan-out, in order, none lost.
    Here every publish counts as long and the rest is made long enough to see."""
    monkeypatch.setattr(journal_module, "PUBLISH_REST_AFTER_S", 0.0)
    monkeypatch.setattr(journal_module, "PUBLISH_REST_SHARE", 2_000.0)
    journal = gs.services.journal
    project_id = await gs.new_project()
    async with gs.http.get(f"{gs.url}/api/projects/{project_id}/stream") as response:
        reader = SSEReader(response)
        assert (await reader.event()).event == ev.STREAM_CURSOR
        await journal.transact(_nothing)  # the stream's own session row, committed
        commits = journal.stats.commits
        first = await journal.append(_tick(project_id, 0))
        # Appended one per loop turn (as a generation hands over its chunks) while the
        # writer rests after publishing `first`.
        later = []
        for i in range(1, 51):
            later.append(journal.append(_tick(project_id, i)))
            await asyncio.sleep(0)
        stored = first + [event for events in await asyncio.gather(*later) for event in events]
        received = [(await reader.event(timeout=5)).id for _ in stored]
    assert journal.stats.commits - commits == 2
    assert received == [event.id for event in stored]


def _tick(project_id: str, i: int) -> Draft:
    return Draft(project_id, None, "app.test.tick", {"i": i})


async def _nothing(tx: Tx, emit: Emit) -> None:
    return None
