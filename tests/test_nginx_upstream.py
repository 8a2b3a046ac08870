"""deploy/nginx-upstream.conf, the README's upstream block for several processes, is the
tested one: Debian's nginx with exactly that text (its three addresses put on three
genstream processes sharing one PostgreSQL) spreads requests over every process with no
sticky sessions, a stream resumes through it whichever process it lands on, and a
stopped process's GETs go to the others."""

from __future__ import annotations

import signal
from contextlib import AsyncExitStack
from pathlib import Path

import pytest

from service.protocol import EventType
from tests.conftest import LOOPBACK
from tests.helpers import wait_until
from tests.postgres import Database
from tests.process import ServerProcess, free_port, server_process
from tests.proxies import BINARIES, README, Kind, recipe, run_proxy, substitute
from tests.sse_reader import SSEReader

pytestmark = pytest.mark.skipif(
    BINARIES[Kind.NGINX] is None, reason="nginx is not installed (make test does)"
)

UPSTREAM_RECIPE = "nginx-upstream.conf"
RECIPE_ADDRESSES = ("127.0.0.1:8081", "127.0.0.1:8082", "127.0.0.1:8083")
TIMEOUT = 20.0
REQUESTS = 3 * len(RECIPE_ADDRESSES)


def test_readme_documents_the_same_upstream_block() -> None:
    assert recipe(UPSTREAM_RECIPE).strip() in README.read_text()


def served(process: ServerProcess, path: str) -> int:
    """How many requests for `path` the process's access log holds."""
    return sum(f" GET {path} 200 " in line for line in process.log().splitlines())


async def test_nginx_spreads_over_every_process_and_a_stream_resumes_on_any(
    tmp_path: Path, pg_database: Database
) -> None:
    ports = [free_port() for _ in RECIPE_ADDRESSES]
    upstream = substitute(
        recipe(UPSTREAM_RECIPE),
        {
            address: f"127.0.0.1:{port}"
            for address, port in zip(RECIPE_ADDRESSES, ports, strict=True)
        },
    )
    async with AsyncExitStack() as stack:
        processes = [
            await stack.enter_async_context(
                server_process(
                    tmp_path / str(port),
                    port=port,
                    storage_backend="postgres",
                    storage_url=pg_database.url,
                )
            )
            for port in ports
        ]
        proxy = await stack.enter_async_context(
            run_proxy(
                Kind.NGINX,
                tmp_path / "nginx",
                ports[0],
                # The recipe's location, its proxy_pass lines to the upstream block.
                changes={
                    f"proxy_pass http://{LOOPBACK}:{ports[0]};": "proxy_pass http://genstream;"
                },
                http=upstream,
            )
        )
        first = processes[0]
        project = await first.new_project()
        await first.generate(project)

        async def completed() -> bool:
            events = await first.events(project)
            return bool(events) and events[-1]["type"] == EventType.GENERATION_COMPLETED

        await wait_until(completed, TIMEOUT)
        log = await first.events(project)
        path = f"/api/projects/{project}"
        for _ in range(REQUESTS):
            async with first.http.get(proxy.url + path) as response:
                assert response.status == 200
        assert all(served(process, path) > 0 for process in processes), [
            served(process, path) for process in processes
        ]

        # Every reconnect may land on another process: each resume gives exactly the rest.
        stream = f"{proxy.url}{path}/stream"
        for cursor in (0, log[len(log) // 3]["id"], log[2 * len(log) // 3]["id"]):
            headers = {"Last-Event-ID": str(cursor)}
            async with first.http.get(stream, headers=headers) as response:
                reader = SSEReader(response)
                ids: list[int] = []
                while not ids or ids[-1] < log[-1]["id"]:
                    frame = await reader.event(TIMEOUT)
                    assert frame.id is not None
                    ids.append(frame.id)
            assert ids == [event["id"] for event in log if event["id"] > cursor]

        # A stopped process: nginx sends its share of GETs to the others.
        processes[1].signal(signal.SIGTERM)
        assert await processes[1].wait(TIMEOUT) == 0
        for _ in range(REQUESTS):
            async with first.http.get(proxy.url + path) as response:
                assert response.status == 200
