"""genstream's streams through Debian's nginx, Caddy and HAProxy, each run by the test on a
loopback port with the recipe from deploy/ that the README shows (tests/proxies.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any, Final

import aiohttp
import pytest
from aiohttp import hdrs

from service.eventlog import event as ev
from tests.conftest import Genstream, MakeServer
from tests.proxies import (
    BINARIES,
    README,
    RECIPES,
    Kind,
    RunningProxy,
    recipe,
    run_proxy,
    wait_until_upstream_refused,
)
from tests.sse_reader import Frame, SSEReader

# Short enough for a test to outlast, with heartbeats four times as often.
IDLE_TIMEOUT: Final = "1s"
IDLE_TIMEOUT_SECONDS: Final = 1.0
HEARTBEAT_SECONDS: Final = 0.25
RETRY_MS: Final = 3000


def installed(*kinds: Kind) -> list[Any]:
    return [
        pytest.param(
            kind,
            id=str(kind),
            marks=pytest.mark.skipif(
                BINARIES[kind] is None, reason=f"{kind} is not installed (make test does)"
            ),
        )
        for kind in kinds
    ]


ALL: Final = installed(*Kind)
# The two whose recipes hold a request while genstream restarts.
HOLDING: Final = installed(Kind.CADDY, Kind.HAPROXY)

Front = Callable[..., Awaitable[RunningProxy]]


@pytest.fixture
async def front(tmp_path: Path) -> AsyncIterator[Front]:
    """Put a proxy of a kind in front of a server: front(kind, gs, idle_timeout=...)."""
    async with AsyncExitStack() as stack:
        count = 0

        async def start(kind: Kind, gs: Genstream, **options: Any) -> RunningProxy:
            nonlocal count
            count += 1
            directory = tmp_path / f"{kind}-{count}"
            return await stack.enter_async_context(
                run_proxy(kind, directory, gs.server.port, **options)
            )

        yield start


async def open_stream(
    gs: Genstream, url: str, last_event_id: int | None = None
) -> aiohttp.ClientResponse:
    headers = {} if last_event_id is None else {hdrs.LAST_EVENT_ID: str(last_event_id)}
    response = await gs.http.get(url, headers=headers)
    assert response.status == 200, (response.status, await response.text())
    assert response.headers[hdrs.CONTENT_TYPE] == "text/event-stream; charset=utf-8"
    return response


async def expect_opening(reader: SSEReader) -> None:
    # The first bytes come at once, before any event exists to push them along.
    assert (await reader.frame(timeout=5)).retry == RETRY_MS
    assert (await reader.frame(timeout=5)).comments == (b"connected",)


@pytest.mark.parametrize("kind", ALL)
def test_readme_documents_each_recipe(kind: Kind) -> None:
    readme = README.read_text()
    for name in RECIPES[kind]:
        assert recipe(name).strip() in readme, name


@pytest.mark.parametrize("kind", ALL)
async def test_events_pass_through_while_the_generation_runs(
    kind: Kind, make_server: MakeServer, front: Front
) -> None:
    gs = await make_server(offline={"tokens_per_second": 20})
    proxy = await front(kind, gs)
    project_id = await gs.new_project()
    generation_id = (await gs.generate(project_id))["generation"]["id"]
    async with await open_stream(gs, f"{proxy.url}/api/generations/{generation_id}/stream") as r:
        reader = SSEReader(r)
        await expect_opening(reader)
        deltas = 0
        while deltas < 5:
            frame = await reader.event(timeout=5)
            deltas += frame.event == ev.MESSAGE_DELTA
            # Each event is through the proxy before the generation ends: not held back.
            # (Its first events are written before its task starts: still `pending` then.)
            generation = await gs.json("GET", f"/api/generations/{generation_id}")
            assert generation["status"] in ("pending", "running"), frame
    await gs.json("POST", f"/api/generations/{generation_id}/cancel")


@pytest.mark.parametrize("kind", ALL)
async def test_quiet_stream_outlives_the_proxy_idle_timeout_on_heartbeats(
    kind: Kind, make_server: MakeServer, front: Front
) -> None:
    gs = await make_server(stream={"heartbeat_seconds": HEARTBEAT_SECONDS})
    proxy = await front(kind, gs, idle_timeout=IDLE_TIMEOUT)
    project_id = await gs.new_project()
    loop = asyncio.get_running_loop()
    async with await open_stream(gs, f"{proxy.url}/api/projects/{project_id}/stream") as r:
        reader = SSEReader(r)
        await expect_opening(reader)
        # Nothing happens in the project: only pings, for over twice the proxy's timeout.
        start = loop.time()
        pings = 0
        while loop.time() - start < 2.5 * IDLE_TIMEOUT_SECONDS:
            frame = await reader.frame(timeout=IDLE_TIMEOUT_SECONDS)
            if frame.comments == (b"ping",):
                pings += 1
            else:
                # The cursor a no-cursor stream is given before any event.
                assert frame.event == ev.STREAM_CURSOR, frame
        # About ten; half of them is plenty on a busy machine.
        assert pings >= 2.5 * IDLE_TIMEOUT_SECONDS / HEARTBEAT_SECONDS / 2, pings
        # Still the live stream: a generation's events come through it to the end.
        generation_id = (await gs.generate(project_id))["generation"]["id"]
        while True:
            event = await reader.event(timeout=10)
            if event.event == ev.GENERATION_COMPLETED:
                assert event.json["generation_id"] == generation_id
                break


@pytest.mark.parametrize("kind", ALL)
async def test_silent_stream_is_cut_by_the_proxy_idle_timeout(
    kind: Kind, make_server: MakeServer, front: Front
) -> None:
    """The control for the test above: the short timeout is in force, and it is the
    heartbeats that keep the stream open."""
    gs = await make_server(stream={"heartbeat_seconds": 30})
    proxy = await front(kind, gs, idle_timeout=IDLE_TIMEOUT)
    project_id = await gs.new_project()
    async with await open_stream(gs, f"{proxy.url}/api/projects/{project_id}/stream") as r:
        reader = SSEReader(r)
        await expect_opening(reader)
        with pytest.raises((EOFError, aiohttp.ClientPayloadError)):
            while True:
                frame = await reader.frame(timeout=10 * IDLE_TIMEOUT_SECONDS)
                assert frame.event == ev.STREAM_CURSOR, frame


@pytest.mark.parametrize("kind", ALL)
async def test_resume_through_the_proxy_gives_exactly_the_rest_of_the_log(
    kind: Kind, make_server: MakeServer, front: Front
) -> None:
    gs = await make_server(offline={"tokens_per_second": 1500})
    proxy = await front(kind, gs)
    project_id = await gs.new_project()
    generation_id = (await gs.generate(project_id))["generation"]["id"]
    url = f"{proxy.url}/api/generations/{generation_id}/stream"
    received: list[Frame] = []
    # The client drops mid-generation, once some text has streamed ...
    async with await open_stream(gs, url) as response:
        reader = SSEReader(response)
        while not received or received[-1].event != ev.MESSAGE_DELTA:
            received.append(await reader.event(timeout=5))
    # ... and comes back with the last id it saw, the way EventSource does.
    async with await open_stream(gs, url, last_event_id=received[-1].id) as response:
        reader = SSEReader(response)
        await expect_opening(reader)
        rest = await reader.events_until_end(timeout=20)
    assert rest, "nothing after the resume point"
    assert received[-1].event != ev.GENERATION_COMPLETED
    stored = await gs.events(project_id)
    assert [frame.json for frame in received + rest] == stored
    assert [frame.id for frame in received + rest] == [event["id"] for event in stored]
    assert rest[-1].event == ev.GENERATION_COMPLETED


@pytest.mark.parametrize("kind", HOLDING)
async def test_stream_request_is_held_while_genstream_restarts(
    kind: Kind, make_server: MakeServer, front: Front
) -> None:
    first = await make_server()
    proxy = await front(kind, first)
    project_id = await first.new_project()
    port = first.server.port
    await first.server.stop()

    url = f"{proxy.url}/api/projects/{project_id}/stream"
    opening = asyncio.create_task(open_stream(first, url, last_event_id=0))
    try:
        # The proxy has the request and has found genstream down at least once.
        await wait_until_upstream_refused(proxy)
        assert not opening.done()
        second = await make_server(port=port)
        async with asyncio.timeout(10), await opening as response:
            reader = SSEReader(response)
            await expect_opening(reader)
            # The held stream is the live one: a new generation's events come through it.
            generation_id = (await second.generate(project_id))["generation"]["id"]
            while True:
                event = await reader.event(timeout=10)
                if event.event == ev.GENERATION_COMPLETED:
                    assert event.json["generation_id"] == generation_id
                    break
    finally:
        opening.cancel()


@pytest.mark.parametrize("kind", installed(Kind.NGINX))
async def test_nginx_answers_502_while_genstream_is_down(
    kind: Kind, make_server: MakeServer, front: Front
) -> None:
    """What the README says of nginx: no holding, so the client must open a new stream."""
    gs = await make_server()
    proxy = await front(kind, gs)
    project_id = await gs.new_project()
    await gs.server.stop()
    async with gs.http.get(f"{proxy.url}/api/projects/{project_id}/stream") as response:
        assert response.status == 502
