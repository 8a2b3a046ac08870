"""Issue 13 item 8's multi-process test: three genstream processes on one real PostgreSQL
behind Debian's nginx with deploy/nginx-upstream.conf as the README gives it (round-robin,
no sticky sessions), a generation running on each, raw-SSE clients through nginx that
cut their stream every 10-80 events and resume with Last-Event-ID wherever nginx sends
them, and one process killed (SIGKILL) in the middle of its generation.

Each client ends with exactly its project's log as the database holds it (ids and bytes,
no gap, no duplicate), the survivors' generations complete, and the killed process's
generation is ended as failed/`interrupted` by a surviving process's lease reaper
(generation/leases.py), that terminal event reaching every client of its project.

Which process served a connection: nginx's `$upstream_addr` in a response header the test
adds in the http {} block beside the recipe (its location blocks have no add_header of
their own, so they inherit it: nginx docs, ngx_http_headers_module, add_header).
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import aiohttp
import orjson
import pytest

from service.protocol import EventType
from tests.conftest import LOOPBACK, client_session
from tests.postgres import Database
from tests.process import ServerProcess, free_port, server_process
from tests.proxies import BINARIES, Kind, recipe, run_proxy, substitute
from tests.sse_reader import Frame, SSEReader
from tests.test_nginx_upstream import RECIPE_ADDRESSES, UPSTREAM_RECIPE
from tests.test_shared_feed import Received, check, database_log, is_end

pytestmark = pytest.mark.skipif(
    BINARIES[Kind.NGINX] is None, reason="nginx is not installed (make test does)"
)

LEASE: Final = 2.0
# "a todo api" is 1,263 tokens of the offline provider: about 4 s a generation.
TOKENS_PER_SECOND: Final = "300"
CLIENTS_PER_PROJECT: Final = 4
CUT_AFTER: Final = (10, 80)
# The killed process's generation has streamed this many events to one of its clients
# (of about 1,300) when the process is killed.
KILL_AFTER_EVENTS: Final = 250
# Renewals and the look for lapsed leases come every third of the lease (leases.py); the
# reaper's end is one commit after that (as tests/test_processes.py).
REAPED_WITHIN: Final = LEASE + LEASE / 3 + 2.0
# A stream of the killed process's project is quiet (but for pings) until that end.
READ_TIMEOUT: Final = REAPED_WITHIN + 5.0
TIMEOUT: Final = 60.0
UPSTREAM_HEADER: Final = "X-Test-Upstream"
SHOW_UPSTREAM: Final = f"add_header {UPSTREAM_HEADER} $upstream_addr always;"
# What a stream cut by the death of the process behind nginx raises at the client.
DROPPED: Final = (EOFError, aiohttp.ClientPayloadError, aiohttp.ClientConnectionError)


@dataclass
class Client:
    """One raw-SSE client of a project through nginx, over all its connections."""

    project_id: str
    generation_id: str
    rng: random.Random
    received: Received = field(default_factory=Received)
    upstreams: list[str] = field(default_factory=list)  # the process of each connection
    dropped: list[str] = field(default_factory=list)  # the process of each cut stream
    ended_at: float = 0.0

    def moves(self) -> int:
        """How many of its reconnects reached another process than the one before."""
        return sum(a != b for a, b in zip(self.upstreams, self.upstreams[1:], strict=False))


async def follow(
    http: aiohttp.ClientSession,
    proxy_url: str,
    client: Client,
    killed: asyncio.Event,
    halfway: asyncio.Event,
    watch: str,
) -> None:
    """Follow the project from cursor 0 through nginx, cutting the stream every 10-80
    events and resuming with Last-Event-ID, until its generation's terminal event. A
    stream may break only after the kill, and only one the killed process served.
    `halfway` is set once this client holds KILL_AFTER_EVENTS of the `watch` project."""
    url = f"{proxy_url}/api/projects/{client.project_id}/stream"
    while True:
        headers = {"Last-Event-ID": str(client.received.last_id)}
        async with http.get(url, headers=headers) as response:
            assert response.status == 200, response.status
            # Tried and failed peers come first in $upstream_addr: the last one answered.
            upstream = response.headers[UPSTREAM_HEADER].split(", ")[-1]
            client.upstreams.append(upstream)
            reader = SSEReader(response)
            try:
                for _ in range(client.rng.randint(*CUT_AFTER)):
                    frame = await reader.event(READ_TIMEOUT)
                    if _take(client, frame):
                        return
                    if client.project_id == watch and len(client.received.events) >= (
                        KILL_AFTER_EVENTS
                    ):
                        halfway.set()
            except DROPPED as exc:
                assert killed.is_set(), f"a stream broke before the kill: {exc!r}"
                client.dropped.append(upstream)
        # Leaving the block closes the connection mid-stream; nginx picks the next process.


def _take(client: Client, frame: Frame) -> bool:
    """Keep the frame; whether it is the end of the client's generation."""
    client.received.take(frame)
    if is_end(frame, client.generation_id):
        client.ended_at = time.monotonic()
        return True
    return False


async def test_clients_behind_nginx_get_the_log_exactly_while_a_process_is_killed(
    tmp_path: Path, pg_database: Database
) -> None:
    ports = [free_port() for _ in RECIPE_ADDRESSES]
    addresses = [f"{LOOPBACK}:{port}" for port in ports]
    upstream = substitute(
        recipe(UPSTREAM_RECIPE), dict(zip(RECIPE_ADDRESSES, addresses, strict=True))
    )
    rng = random.Random(1)
    async with AsyncExitStack() as stack:
        processes: list[ServerProcess] = []
        for port in ports:
            folder = tmp_path / f"process-{port}"
            folder.mkdir()
            processes.append(
                await stack.enter_async_context(
                    server_process(
                        folder,
                        port=port,
                        storage_backend="postgres",
                        storage_url=pg_database.url,
                        offline_tokens_per_second=TOKENS_PER_SECOND,
                        generation_lease_seconds=str(LEASE),
                    )
                )
            )
        proxy = await stack.enter_async_context(
            run_proxy(
                Kind.NGINX,
                tmp_path / "nginx",
                ports[0],
                changes={
                    f"proxy_pass http://{LOOPBACK}:{ports[0]};": "proxy_pass http://genstream;"
                },
                http=f"{upstream}\n{SHOW_UPSTREAM}\n",
            )
        )
        http = await stack.enter_async_context(client_session())
        victim, survivor = processes[0], processes[1]
        async with asyncio.timeout(TIMEOUT):
            # A generation on each process (submitted to it directly: it runs there).
            projects = [await process.new_project() for process in processes]
            generations = [
                (await process.generate(project_id))["generation"]["id"]
                for process, project_id in zip(processes, projects, strict=True)
            ]
            killed, halfway = asyncio.Event(), asyncio.Event()
            clients = [
                Client(project_id, generation_id, random.Random(rng.random()))
                for project_id, generation_id in zip(projects, generations, strict=True)
                for _ in range(CLIENTS_PER_PROJECT)
            ]
            following = [
                asyncio.create_task(follow(http, proxy.url, c, killed, halfway, projects[0]))
                for c in clients
            ]
            # Every task's failure at once, not only after the kill's wait.
            waiting = asyncio.create_task(halfway.wait())
            await asyncio.wait([waiting, *following], return_when=asyncio.FIRST_COMPLETED)
            assert halfway.is_set(), [t.exception() for t in following if t.done()]
            served_before = {a: sum(a in c.upstreams for c in clients) for a in addresses}
            killed.set()
            victim.signal(signal.SIGKILL)
            killed_at = time.monotonic()
            await victim.wait(TIMEOUT)
            await asyncio.gather(*following)
        statuses = [
            await survivor.json("GET", f"/api/generations/{generation_id}")
            for generation_id in generations
        ]
        logs = {project_id: await database_log(pg_database, project_id) for project_id in projects}
        survivors_logs = "".join(process.log() for process in processes[1:])

    # The killed process's generation: ended by a survivor's reaper, within the bound.
    assert statuses[0]["status"] == "failed", statuses[0]
    assert statuses[0]["error"]["code"] == "interrupted", statuses[0]
    assert f"generation {generations[0]}: its process stopped renewing" in survivors_logs
    assert [s["status"] for s in statuses[1:]] == ["completed", "completed"], statuses
    for client in clients:
        log = logs[client.project_id]
        check(client.received, log)
        assert len(client.received.events) == len(log), "the client stopped short of the log"
    victims = [c for c in clients if c.project_id == projects[0]]
    for client in victims:
        last = last_event(client)
        assert last == (EventType.GENERATION_FAILED, "interrupted"), last
    ended_after = max(c.ended_at for c in victims) - killed_at
    assert ended_after <= REAPED_WITHIN, ended_after

    # nginx spread the streams: every process served some before the kill, a share of the
    # reconnects (round-robin over every client: about two thirds) reached another process,
    # and every stream that broke was the killed process's.
    assert all(served_before.values()), served_before
    connections = sum(len(c.upstreams) for c in clients)
    moves = sum(c.moves() for c in clients)
    reconnects = connections - len(clients)
    assert moves >= reconnects / 3, (moves, reconnects)
    dropped = [address for c in clients for address in c.dropped]
    assert set(dropped) <= {addresses[0]}, dropped
    print(
        f"{connections} connections, {moves} of {reconnects} reconnects to another process, "
        f"{len(dropped)} streams cut by the kill, the killed generation ended "
        f"{ended_after:.2f} s after it; events per project {[len(logs[p]) for p in projects]}"
    )


def last_event(client: Client) -> tuple[str, str | None]:
    """The type of the client's last event and, for a failure, its code."""
    _, data = client.received.events[-1]
    event = orjson.loads(data)
    return event["type"], event.get("code")
