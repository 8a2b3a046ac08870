"""kill -9 in the middle of several generations, then a restart on the same file."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest

from service.eventlog import event as ev
from tests.backends import SHORT_LEASE_SECONDS, Store
from tests.conftest import MakeServer
from tests.helpers import until_ended
from tests.process import ServerProcess, server_process
from tests.sse_reader import Frame, SSEReader

pytestmark = pytest.mark.backends
GENERATIONS = 3


async def _start_generation(server: ServerProcess) -> tuple[str, str]:
    project_id = await server.new_project()
    body = await server.json(
        "POST", f"/api/projects/{project_id}/generations", status=202, json={"prompt": "an api"}
    )
    return project_id, body["generation"]["id"]


async def _read_until_deltas(server: ServerProcess, project_id: str, count: int) -> list[Frame]:
    """Project stream from the start, until `count` deltas: all of it was committed."""
    seen: list[Frame] = []
    url = f"{server.url}/api/projects/{project_id}/stream?last_event_id=0"
    async with server.http.get(url) as response:
        reader = SSEReader(response)
        while sum(f.event == ev.MESSAGE_DELTA for f in seen) < count:
            seen.append(await reader.event())
    return seen


async def test_kill_9_mid_generations_then_restart_replays_everything_committed(
    tmp_path: Path, make_server: MakeServer, store: Store
) -> None:
    async with server_process(
        tmp_path,
        generation_lease_seconds=str(SHORT_LEASE_SECONDS),
        offline_tokens_per_second="30",
        **store.process_settings(),
    ) as server:
        started = [await _start_generation(server) for _ in range(GENERATIONS)]
        seen = await asyncio.gather(*(_read_until_deltas(server, p, 3) for p, _ in started))
        server.signal(signal.SIGKILL)
        assert await server.wait(10) == -signal.SIGKILL
    if not store.postgres:  # the SQLite file whole after kill -9 (PostgreSQL's is its own)
        assert await store.value("PRAGMA integrity_check") == "ok"
    statuses = [row[0] for row in await store.rows("SELECT status FROM generations")]
    assert statuses == ["running"] * GENERATIONS

    gs = await make_server(generation={"lease_seconds": SHORT_LEASE_SECONDS})  # same database
    for (project_id, generation_id), before in zip(started, seen, strict=True):
        generation = await until_ended(gs, generation_id, timeout=10 * SHORT_LEASE_SECONDS)
        assert generation["status"] == "failed"
        assert generation["error"]["code"] == "interrupted"
        assert generation["error"]["retryable"] is True

        async with gs.http.get(
            f"{gs.url}/api/projects/{project_id}/stream?last_event_id=0"
        ) as response:
            reader = SSEReader(response)
            after: list[Frame] = []
            while not after or after[-1].event != ev.GENERATION_FAILED:
                after.append(await reader.event())
        # Every event a client saw before the crash replays, byte for byte, in order.
        assert [f.raw for f in after[: len(before)]] == [f.raw for f in before]
        ids = [f.id for f in after if f.id is not None]
        assert ids == sorted(set(ids))
        terminal = [f for f in after if f.event in ev.TERMINAL_TYPES]
        assert len(terminal) == 1 and terminal[0] is after[-1]

        # One transaction per state change: the message holds exactly the committed text.
        messages = (await gs.json("GET", f"/api/projects/{project_id}/messages"))["messages"]
        streamed = "".join(f.json["delta"] for f in after if f.event == ev.MESSAGE_DELTA)
        assert messages[1]["status"] == "error"
        assert messages[1]["content"] == streamed.strip() != ""
