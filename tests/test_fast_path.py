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
from pathlib import Path
from typing import Any, Protocol

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from service.eventlog import event as ev
from tests.conftest import Genstream
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
