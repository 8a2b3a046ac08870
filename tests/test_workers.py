"""`genstream serve --workers N` (service/web/workers.py): N processes on one port, on a
real PostgreSQL, started as a real command; and its refusal on SQLite."""

from __future__ import annotations

import os
import re
import signal
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import aiohttp
import pytest

from service.protocol import STREAM_CURSOR, EventType
from tests.helpers import wait_until
from tests.postgres import Database
from tests.process import ServerProcess, run_to_exit, server_process
from tests.sse_reader import Frame, SSEReader

WORKERS = 2
TIMEOUT = 20.0
# Each new connection lands on a worker the kernel picks (SO_REUSEPORT hashes the
# connection's addresses): 2 workers both seen within 60 tries but with odds of 2**-59.
TRIES = 60
SUPERVISOR_GONE = "the supervisor is gone: stopping"


@asynccontextmanager
async def workers(
    tmp_path: Path, pg_database: Database, **settings: str
) -> AsyncIterator[ServerProcess]:
    async with server_process(
        tmp_path,
        port=0,
        command=("serve", "--workers", str(WORKERS)),
        storage_backend="postgres",
        storage_url=pg_database.url,
        server_shutdown_grace_seconds="2",
        **settings,
    ) as supervisor:
        yield supervisor


async def pinned(stack: AsyncExitStack, url: str) -> tuple[int, aiohttp.ClientSession]:
    """A client session with one connection, and the pid of the worker it reached: what
    it sends next goes over that connection, to that worker."""
    session = await stack.enter_async_context(
        aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=1),
            timeout=aiohttp.ClientTimeout(total=None, sock_read=TIMEOUT),
        )
    )
    async with session.get(f"{url}/healthz") as response:
        assert response.status == 200
        pid: int = (await response.json())["pid"]
    return pid, session


async def one_per_worker(stack: AsyncExitStack, url: str) -> dict[int, aiohttp.ClientSession]:
    """A pinned session on each worker, by its pid."""
    found: dict[int, aiohttp.ClientSession] = {}
    for _ in range(TRIES):
        pid, session = await pinned(stack, url)
        found.setdefault(pid, session)
        if len(found) == WORKERS:
            return found
    raise AssertionError(f"{TRIES} connections reached only the workers {sorted(found)}")


def parent_of(pid: int) -> int:
    # /proc/<pid>/stat: "pid (comm) state ppid ...", comm in parentheses.
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_workers_are_processes_of_the_supervisor_sharing_one_port(
    tmp_path: Path, pg_database: Database
) -> None:
    async with workers(tmp_path, pg_database) as supervisor, AsyncExitStack() as stack:
        sessions = await one_per_worker(stack, supervisor.url)
        assert supervisor.pid not in sessions
        assert {parent_of(pid) for pid in sessions} == {supervisor.pid}
        # One log, whichever worker is asked: a project made on one is seen on the other.
        (made_on, first), (seen_on, second) = sessions.items()
        async with first.post(f"{supervisor.url}/api/projects", json={}) as response:
            assert response.status == 201
            project_id = (await response.json())["id"]
        async with second.get(f"{supervisor.url}/api/projects/{project_id}") as response:
            assert response.status == 200, (made_on, seen_on)


# The cross-process feed (eventlog/feed.py's SharedFeed, issue 13 item 3) hands another
# worker's commits to this worker's streams.
async def test_a_stream_on_one_worker_gets_a_generation_submitted_on_another(
    tmp_path: Path, pg_database: Database
) -> None:
    async with workers(tmp_path, pg_database) as supervisor, AsyncExitStack() as stack:
        streaming, submitting = (await one_per_worker(stack, supervisor.url)).values()
        url = supervisor.url
        async with submitting.post(f"{url}/api/projects", json={}) as response:
            project_id = (await response.json())["id"]
        stream = await stack.enter_async_context(
            streaming.get(f"{url}/api/projects/{project_id}/stream")
        )
        assert stream.status == 200
        reader = SSEReader(stream)
        cursor = await reader.event()
        assert cursor.event == STREAM_CURSOR
        path = f"{url}/api/projects/{project_id}/generations"
        async with submitting.post(path, json={"prompt": "a todo api"}) as response:
            assert response.status == 202
        received: list[Frame] = []
        while not received or received[-1].event != EventType.GENERATION_COMPLETED:
            received.append(await reader.event(TIMEOUT))
        logged = await supervisor.events(project_id, after=cursor.id or 0)
        assert [frame.id for frame in received] == [event["id"] for event in logged]


async def test_sigterm_stops_every_worker_gracefully(tmp_path: Path, pg_database: Database) -> None:
    async with workers(tmp_path, pg_database) as supervisor, AsyncExitStack() as stack:
        pids = list(await one_per_worker(stack, supervisor.url))
        supervisor.signal(signal.SIGTERM)
        assert await supervisor.wait(TIMEOUT) == 0
        assert not any(alive(pid) for pid in pids)
        assert supervisor.log().count("stopped") == WORKERS, supervisor.log()
        # A normal stop is quiet: the supervisor's pipe closes only once a worker exited.
        assert SUPERVISOR_GONE not in supervisor.log(), supervisor.log()


async def test_workers_whose_supervisor_is_killed_warn_and_stop(
    tmp_path: Path, pg_database: Database
) -> None:
    async with workers(tmp_path, pg_database) as supervisor, AsyncExitStack() as stack:
        await one_per_worker(stack, supervisor.url)
        supervisor.signal(signal.SIGKILL)

        def all_stopped() -> bool:
            log = supervisor.log()  # the workers write to the supervisor's stderr
            return log.count(SUPERVISOR_GONE) == WORKERS and log.count("stopped") == WORKERS

        await wait_until(all_stopped, TIMEOUT)


async def test_a_worker_that_dies_is_restarted_and_its_siblings_generation_goes_on(
    tmp_path: Path, pg_database: Database
) -> None:
    """On postgres a restarted worker's recovery ends only lapsed leases: the generation
    its sibling runs is still running once the new worker listens. Past
    server.worker_restarts (1 here) the supervisor gives up and fails."""
    async with (
        workers(
            tmp_path, pg_database, server_worker_restarts="1", offline_tokens_per_second="20"
        ) as supervisor,
        AsyncExitStack() as stack,
    ):
        sessions = await one_per_worker(stack, supervisor.url)
        (killed, _), (other, running_on) = sessions.items()
        url = supervisor.url
        async with running_on.post(f"{url}/api/projects", json={}) as response:
            project_id = (await response.json())["id"]
        path = f"{url}/api/projects/{project_id}/generations"
        async with running_on.post(path, json={"prompt": "a todo api"}) as response:
            assert response.status == 202
            generation_id = (await response.json())["generation"]["id"]
        os.kill(killed, signal.SIGKILL)
        restarted = re.compile(r"worker \d+ restarted \(pid (\d+)\)")
        await wait_until(lambda: restarted.search(supervisor.log()) is not None, TIMEOUT)
        found = restarted.search(supervisor.log())
        assert found is not None
        again = int(found.group(1))
        assert f"(pid {killed}) exited with status -9 while serving: restarting it" in (
            supervisor.log()
        )
        assert parent_of(again) == supervisor.pid and alive(other)
        async with running_on.get(f"{url}/api/generations/{generation_id}") as response:
            assert (await response.json())["status"] == "running"

        os.kill(again, signal.SIGKILL)
        assert await supervisor.wait(TIMEOUT) == 1
        assert "after 1 restarts within 60 s (server.worker_restarts): giving up" in (
            supervisor.log()
        )
        assert f"(pid {again}) exited with status -9 while serving" in supervisor.log()


async def test_without_restarts_a_worker_that_dies_stops_the_others_and_the_supervisor_fails(
    tmp_path: Path, pg_database: Database
) -> None:
    async with (
        workers(tmp_path, pg_database, server_worker_restarts="0") as supervisor,
        AsyncExitStack() as stack,
    ):
        killed, other = list(await one_per_worker(stack, supervisor.url))
        os.kill(killed, signal.SIGKILL)
        assert await supervisor.wait(TIMEOUT) == 1
        assert not alive(other)
        assert f"(pid {killed}) exited with status -9 while serving" in supervisor.log()
        assert "restarting it" not in supervisor.log()


async def test_a_worker_that_cannot_start_fails_the_start(
    tmp_path: Path, pg_database: Database
) -> None:
    # A database that is not there: each worker's start fails, none listens.
    url = pg_database.url.rsplit("/", 1)[0] + "/no_such_database"
    code, stderr = await run_to_exit(
        tmp_path, args=("--workers", str(WORKERS)), storage_backend="postgres", storage_url=url
    )
    assert code == 1, stderr
    assert "before it was set up" in stderr


@pytest.mark.parametrize("how", ["option", "setting"])
async def test_sqlite_refuses_several_workers_before_anything_starts(
    tmp_path: Path, how: str
) -> None:
    given = {"args": ("--workers", "2")} if how == "option" else {"server_workers": "2"}
    code, stderr = await run_to_exit(tmp_path, **given)
    assert code == 2
    assert 'genstream: --workers 2 needs storage.backend = "postgres"' in stderr
    assert not (tmp_path / "genstream.db").exists()


async def test_one_worker_is_the_plain_server(tmp_path: Path) -> None:
    async with server_process(tmp_path, command=("serve", "--workers", "1")) as server:
        health = await server.json("GET", "/healthz")
        assert health == {"status": "ok", "pid": server.pid}
