"""Several real genstream processes on one real PostgreSQL (issue 13 item 4): leases,
fencing, and the answers a race between two processes gives (generation/leases.py).

Each process is `python -m service serve` (tests/process.py) on the pg_database fixture's
database, its offline provider slowed (TOKENS_PER_SECOND) so a generation runs for tens
of seconds, its leases LEASE seconds long.
"""

from __future__ import annotations

import asyncio
import re
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any, Final

import asyncpg
import pytest

from service.protocol import ACTIVE_STATUSES
from service.storage.postgres import WRITER_IDLE_IN_TRANSACTION_MS
from tests.helpers import wait_until
from tests.postgres import Database
from tests.process import ServerProcess, server_process
from tests.sse_reader import SSEReader

LEASE: Final = 2.0
# A generation of the offline provider at this pace runs far longer than any test here.
TOKENS_PER_SECOND: Final = "20"
# A lease is renewed, and lapsed ones looked for, every third of it (leases.py); a
# reaper's end is one commit after that.
REAPED_WITHIN: Final = LEASE + LEASE / 3 + 2.0
# A process paused inside a transaction holds the log's lock until PostgreSQL ends its
# idle session (storage/postgres.py): the reaper's end waits that long at most, besides.
PAUSED_REAPED_WITHIN: Final = REAPED_WITHIN + WRITER_IDLE_IN_TRANSACTION_MS / 1000
RACE_ROUNDS: Final = 8
TIMEOUT: Final = 30.0
IDENTITY: Final = re.compile(r"this process is (\S+) \(generation leases")

Start = Callable[..., Awaitable[ServerProcess]]


@pytest.fixture
async def start(tmp_path: Path, pg_database: Database) -> AsyncIterator[Start]:
    """Start a genstream process on the test's database; each is killed at the end."""
    async with AsyncExitStack() as stack:
        count = 0

        async def start_one(port: int = 0, **settings: str) -> ServerProcess:
            nonlocal count
            count += 1
            folder = tmp_path / f"process-{count}"
            folder.mkdir()
            return await stack.enter_async_context(
                server_process(
                    folder,
                    port=port,
                    storage_backend="postgres",
                    storage_url=pg_database.url,
                    offline_tokens_per_second=TOKENS_PER_SECOND,
                    generation_lease_seconds=str(LEASE),
                    **settings,
                )
            )

        yield start_one


def identity_of(server: ServerProcess) -> str:
    found = IDENTITY.search(server.log())
    assert found is not None, server.log()
    return found.group(1)


async def status(server: ServerProcess, generation_id: str) -> dict[str, Any]:
    generation: dict[str, Any] = await server.json("GET", f"/api/generations/{generation_id}")
    return generation


async def wait_status(
    server: ServerProcess, generation_id: str, statuses: set[str], timeout: float = TIMEOUT
) -> dict[str, Any]:
    async def reached() -> bool:
        return (await status(server, generation_id))["status"] in statuses

    await wait_until(reached, timeout, interval=0.05)
    return await status(server, generation_id)


async def running(server: ServerProcess) -> tuple[str, str]:
    """A project and its generation, submitted to `server` and running there."""
    project_id = await server.new_project()
    submitted = await server.generate(project_id)
    generation_id: str = submitted["generation"]["id"]
    await wait_status(server, generation_id, {"running"})
    return project_id, generation_id


async def owner_in_database(database: Database, generation_id: str) -> str:
    conn = await asyncpg.connect(database.url)
    try:
        owner: str = await conn.fetchval(
            "SELECT owner FROM generations WHERE id = $1", generation_id
        )
    finally:
        await conn.close()
    return owner


# -- a process that dies ----------------------------------------------------------------


async def test_a_killed_owners_generation_is_ended_by_another_process_and_streamed(
    start: Start, pg_database: Database
) -> None:
    owner, survivor = await start(), await start()
    project_id, generation_id = await running(owner)
    assert await owner_in_database(pg_database, generation_id) == identity_of(owner)
    async with survivor.http.get(f"{survivor.url}/api/generations/{generation_id}/stream") as resp:
        assert resp.status == 200
        reader = SSEReader(resp)
        owner.signal(signal.SIGKILL)
        await owner.wait(TIMEOUT)
        killed = time.monotonic()
        frames = await reader.events_until_end(timeout=REAPED_WITHIN + 5)
    ended_after = time.monotonic() - killed
    assert frames[-1].event == "generation.failed", [f.event for f in frames]
    assert frames[-1].json["code"] == "interrupted"
    assert ended_after <= REAPED_WITHIN, ended_after
    generation = await status(survivor, generation_id)
    assert generation["status"] == "failed" and generation["error"]["code"] == "interrupted"
    messages = (await survivor.json("GET", f"/api/projects/{project_id}/messages"))["messages"]
    assert messages[-1]["status"] == "error"
    assert f"generation {generation_id}: its process stopped renewing" in survivor.log()
    # The same terminal events as a start's recovery: the message's update, then the end.
    events = [e for e in await survivor.events(project_id) if e["generation_id"] == generation_id]
    assert [e["type"] for e in events[-2:]] == ["message.updated", "generation.failed"]
    # The project is free again, on either process.
    await survivor.generate(project_id, prompt="again")


# -- a process paused past its lease ------------------------------------------------------


async def test_a_process_paused_past_its_lease_writes_nothing_more_for_it(
    start: Start,
) -> None:
    owner, survivor = await start(), await start()
    project_id, generation_id = await running(owner)
    owner.signal(signal.SIGSTOP)
    paused = time.monotonic()
    try:
        failed = await wait_status(survivor, generation_id, {"failed"}, PAUSED_REAPED_WITHIN + 5)
        reaped_after = time.monotonic() - paused
    finally:
        owner.signal(signal.SIGCONT)
    assert reaped_after <= PAUSED_REAPED_WITHIN, reaped_after
    assert failed["error"]["code"] == "interrupted"
    ended = [e for e in await survivor.events(project_id) if e["generation_id"] == generation_id]
    assert ended[-1]["type"] == "generation.failed"

    # Awake, the owner's next write (a chunk of its still running provider) or its next
    # renewal finds the lease gone: the run stops, and says so.
    def fenced() -> bool:
        return f"generation {generation_id}: fenced" in owner.log()

    await wait_until(fenced, TIMEOUT)
    # Still alive and answering; and nothing of that generation was written after its end.
    await owner.json("GET", "/healthz")
    after = [e for e in await owner.events(project_id) if e["generation_id"] == generation_id]
    assert after == ended
    assert (await status(owner, generation_id))["status"] == "failed"
    assert "Traceback" not in owner.log(), owner.log()


# -- a restarted process ------------------------------------------------------------------


async def test_a_restarted_process_has_a_new_identity(start: Start) -> None:
    first = await start()
    before = identity_of(first)
    first.signal(signal.SIGKILL)
    await first.wait(TIMEOUT)
    again = await start(port=first.port)
    after = identity_of(again)
    assert after != before
    assert before.split(":")[0] == after.split(":")[0]  # the same host


# -- races between two processes --------------------------------------------------------


async def _post(server: ServerProcess, path: str, body: dict[str, Any]) -> tuple[int, Any]:
    async with server.http.post(server.url + path, json=body) as response:
        return response.status, await response.json()


async def _submit_on_both(
    servers: tuple[ServerProcess, ServerProcess], project_id: str, *bodies: dict[str, Any]
) -> list[tuple[int, Any]]:
    path = f"/api/projects/{project_id}/generations"
    return list(
        await asyncio.gather(
            *(_post(server, path, body) for server, body in zip(servers, bodies, strict=True))
        )
    )


async def _free(server: ServerProcess, generation_id: str) -> None:
    """Cancel a generation a round left running (fewer runs competing for the cores)."""
    await server.json("POST", f"/api/generations/{generation_id}/cancel")


async def test_the_same_client_request_id_on_two_processes_is_one_generation(
    start: Start,
) -> None:
    servers = (await start(), await start())
    for n in range(RACE_ROUNDS):
        project_id = await servers[0].new_project()
        body = {"prompt": "a todo api", "client_request_id": f"req-{n}"}
        answers = await _submit_on_both(servers, project_id, body, body)
        assert [code for code, _ in answers] == [202, 202], answers
        ids = {reply["generation"]["id"] for _, reply in answers}
        assert len(ids) == 1, answers
        assert sorted(reply["created"] for _, reply in answers) == [False, True], answers
        # The same key with another prompt: one generation, and the 409 for the other.
        other = {"prompt": "a blog", "client_request_id": f"req-other-{n}"}
        answers = await _submit_on_both(servers, project_id, body | other, other)
        codes = sorted(code for code, _ in answers)
        assert codes in ([202, 409], [409, 409]), answers
        for code, reply in answers:
            if code == 409:
                assert reply["error"]["code"] in ("client_request_id_reused", "generation_running")
        await _free(servers[0], ids.pop())
    print("duplicate paths taken:", _duplicates(servers))


async def test_a_second_generation_raced_on_two_processes_is_a_409(start: Start) -> None:
    servers = (await start(), await start())
    for n in range(RACE_ROUNDS):
        project_id = await servers[0].new_project()
        answers = await _submit_on_both(
            servers, project_id, {"prompt": f"first {n}"}, {"prompt": f"second {n}"}
        )
        codes = sorted(code for code, _ in answers)
        assert codes == [202, 409], answers
        (created,) = [reply for code, reply in answers if code == 202]
        (refused,) = [reply for code, reply in answers if code == 409]
        assert refused["error"]["code"] == "generation_running"
        assert refused["error"]["generation_id"] == created["generation"]["id"]
        await _free(servers[1], created["generation"]["id"])
    print("duplicate paths taken:", _duplicates(servers))


def _duplicates(servers: tuple[ServerProcess, ServerProcess]) -> int:
    """How often a submit met the other process's commit and read again."""
    return sum(server.log().count("submit met another process's commit") for server in servers)


# -- cancel on another process ------------------------------------------------------------


async def test_cancel_on_another_process_reaches_the_run_within_a_second(
    start: Start,
) -> None:
    owner, other = await start(), await start()
    project_id, generation_id = await running(owner)
    began = time.monotonic()
    cancelled = await other.json("POST", f"/api/generations/{generation_id}/cancel")
    took = time.monotonic() - began
    assert cancelled["status"] == "cancelled", cancelled
    assert took < 1.0, took
    events = [e for e in await owner.events(project_id) if e["generation_id"] == generation_id]
    assert events[-1]["type"] == "generation.cancelled"
    messages = (await owner.json("GET", f"/api/projects/{project_id}/messages"))["messages"]
    assert messages[-1]["status"] == "cancelled"
    assert (await status(owner, generation_id))["status"] not in ACTIVE_STATUSES
