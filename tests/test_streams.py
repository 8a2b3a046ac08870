"""Streams on a real server: headers, first bytes, resume, heartbeats, release, slow clients."""

from __future__ import annotations

import asyncio
import socket

import aiohttp
import pytest

from service.eventlog import event as ev
from service.eventlog.event import Draft
from tests.backends import Store
from tests.conftest import LOOPBACK, Genstream, MakeServer
from tests.helpers import wait_until
from tests.sse_reader import SSEReader

pytestmark = pytest.mark.backends


async def session_reasons(store: Store, count: int = 1) -> list[str]:
    """Why each of the first `count` streaming sessions closed, once all are closed."""
    reasons: list[str] = []

    async def closed() -> bool:
        nonlocal reasons
        rows = await store.rows(
            "SELECT close_reason FROM stream_sessions WHERE ended_at IS NOT NULL "
            "ORDER BY started_at, id",
        )
        reasons = [row[0] for row in rows]
        return len(reasons) >= count

    await wait_until(closed)
    return reasons


async def open_streams(gs: Genstream) -> int:
    body = await gs.json("GET", "/api/connections")
    total: int = body["total"]
    return total


async def test_stream_headers_and_first_bytes_come_at_once(gs: Genstream) -> None:
    project_id = await gs.new_project()
    async with gs.http.get(f"{gs.url}/api/projects/{project_id}/stream") as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "text/event-stream; charset=utf-8"
        assert response.headers["Cache-Control"] == "no-cache, no-transform"
        assert response.headers["X-Accel-Buffering"] == "no"
        assert "Content-Encoding" not in response.headers
        # No event exists yet, and still the first bytes arrive.
        first = await SSEReader(response).frame(timeout=2)
        assert first.raw == b"retry: 3000\n\n"
        second = await SSEReader(response).frame(timeout=2)
        assert second.raw == b": connected\n\n"


async def test_event_frame_bytes_match_the_polled_event(gs: Genstream) -> None:
    project_id = await gs.new_project()
    submitted = await gs.generate(project_id)
    await gs.wait_generation(submitted["generation"]["id"])
    first = (await gs.events(project_id))[0]
    async with gs.http.get(
        f"{gs.url}/api/projects/{project_id}/stream", headers={"Last-Event-ID": "0"}
    ) as response:
        reader = SSEReader(response)
        frame = await reader.event()
    body = await _raw_event(gs, project_id, first["id"])
    assert frame.raw == b"id: %d\nevent: message.created\ndata: %s\n\n" % (first["id"], body)
    assert frame.json == first


async def _raw_event(gs: Genstream, project_id: str, event_id: int) -> bytes:
    url = f"{gs.url}/api/projects/{project_id}/events?after={event_id - 1}&limit=1"
    async with gs.http.get(url) as response:
        raw = await response.read()
    # {"events":[<event>],...}: the event's bytes as stored.
    start = raw.index(b"[") + 1
    end = raw.index(b'],"last_event_id"')
    return raw[start:end]


async def test_project_stream_without_cursor_starts_live(gs: Genstream) -> None:
    project_id = await gs.new_project()
    first = await gs.generate(project_id, "first")
    await gs.wait_generation(first["generation"]["id"])
    last = (await gs.events(project_id))[-1]["id"]
    async with gs.http.get(f"{gs.url}/api/projects/{project_id}/stream") as response:
        reader = SSEReader(response)
        await reader.frame()  # retry
        await reader.frame()  # connected
        cursor = await reader.event()
        second = await gs.generate(project_id, "second")
        frame = await reader.event()
    assert (
        cursor.raw
        == b'id: %d\nevent: stream.cursor\ndata: {"type":"stream.cursor","last_event_id":%d}\n\n'
        % (last, last)
    )
    assert frame.json["generation_id"] == second["generation"]["id"]
    assert frame.event == ev.MESSAGE_CREATED


async def test_stream_without_cursor_dropped_before_its_first_event_loses_nothing(
    gs: Genstream,
) -> None:
    # The client's only id is the stream.cursor frame's: it resumes from it, as an
    # EventSource does with its lastEventId, and gets what was committed while it was away.
    project_id = await gs.new_project()
    async with gs.http.get(f"{gs.url}/api/projects/{project_id}/stream") as response:
        cursor = await SSEReader(response).event()
    assert cursor.event == ev.STREAM_CURSOR and cursor.id is not None
    generation = await gs.generate(project_id)
    await gs.wait_generation(generation["generation"]["id"])
    headers = {"Last-Event-ID": str(cursor.id)}
    async with gs.http.get(
        f"{gs.url}/api/projects/{project_id}/stream", headers=headers
    ) as response:
        reader = SSEReader(response)
        frames = [await reader.event() for _ in range(len(await gs.events(project_id)))]
    assert [f.json for f in frames] == await gs.events(project_id)


@pytest.mark.parametrize(
    ("headers", "query", "field"),
    [
        pytest.param({"Last-Event-ID": "abc"}, "", "Last-Event-ID", id="header-not-a-number"),
        pytest.param({"Last-Event-ID": "-1"}, "", "Last-Event-ID", id="header-negative"),
        pytest.param({}, "?last_event_id=1.5", "last_event_id", id="query-not-an-integer"),
        pytest.param({}, "?last_event_id=", "last_event_id", id="query-empty"),
        pytest.param(
            {"Last-Event-ID": "9223372036854775808"}, "", "Last-Event-ID", id="past-sqlite-int64"
        ),
        pytest.param(
            {}, "?last_event_id=" + "9" * 5000, "last_event_id", id="five-thousand-digits"
        ),
        pytest.param({"Last-Event-ID": "١٢"}, "", "Last-Event-ID", id="non-ascii-digits"),
    ],
)
async def test_bad_cursor_is_a_400_naming_the_field(
    gs: Genstream, headers: dict[str, str], query: str, field: str
) -> None:
    project_id = await gs.new_project()
    body = await gs.json(
        "GET", f"/api/projects/{project_id}/stream{query}", status=400, headers=headers
    )
    assert body["error"]["code"] == "invalid_request"
    assert body["error"]["field"] == field


async def test_header_cursor_wins_over_query(gs: Genstream) -> None:
    project_id = await gs.new_project()
    submitted = await gs.generate(project_id)
    await gs.wait_generation(submitted["generation"]["id"])
    events = await gs.events(project_id)
    url = f"{gs.url}/api/projects/{project_id}/stream?last_event_id=0"
    async with gs.http.get(url, headers={"Last-Event-ID": str(events[2]["id"])}) as response:
        frame = await SSEReader(response).event()
    assert frame.id == events[3]["id"]


async def test_resume_in_the_middle_many_times_delivers_each_event_once_in_order(
    make_server: MakeServer,
) -> None:
    gs = await make_server(offline={"tokens_per_second": 400})
    project_id = await gs.new_project()
    # Connect at the project's current end, then start the generation: everything from
    # here on must arrive exactly once across all the reconnections.
    start = (await gs.json("GET", f"/api/projects/{project_id}"))["last_event_id"]
    submitted = await gs.generate(project_id)
    generation_id = submitted["generation"]["id"]
    received: list[int] = []
    last_type = ""
    cursor = start
    reconnections = 0
    url = f"{gs.url}/api/generations/{generation_id}/stream"
    async with asyncio.timeout(60):
        while last_type != ev.GENERATION_COMPLETED:
            async with gs.http.get(url, headers={"Last-Event-ID": str(cursor)}) as response:
                reader = SSEReader(response)
                # Take a few events, then drop the connection mid-stream.
                for _ in range(7):
                    frame = await reader.event()
                    assert frame.id is not None and frame.event is not None
                    received.append(frame.id)
                    cursor, last_type = frame.id, frame.event
                    if last_type == ev.GENERATION_COMPLETED:
                        break
            reconnections += 1
    stored_ids = [e["id"] for e in await gs.events(project_id, after=start)]
    assert reconnections > 5
    assert received == stored_ids
    assert len(set(received)) == len(received)


async def test_heartbeat_after_quiet(make_server: MakeServer) -> None:
    gs = await make_server(stream={"heartbeat_seconds": 0.2})
    project_id = await gs.new_project()
    async with gs.http.get(f"{gs.url}/api/projects/{project_id}/stream") as response:
        reader = SSEReader(response)
        await reader.frame()  # retry
        await reader.frame()  # connected
        assert (await reader.frame()).event == ev.STREAM_CURSOR
        for _ in range(2):
            ping = await reader.frame(timeout=2)
            assert ping.raw == b": ping\n\n"


async def test_stream_when_client_disconnects_then_subscriber_is_released(
    make_server: MakeServer,
    store: Store,
) -> None:
    gs = await make_server(stream={"heartbeat_seconds": 15}, offline={"tokens_per_second": 50})
    project_id = await gs.new_project()
    submitted = await gs.generate(project_id)
    generation_id = submitted["generation"]["id"]
    response = await gs.http.get(f"{gs.url}/api/projects/{project_id}/stream")
    reader = SSEReader(response)
    await reader.frame()
    assert await open_streams(gs) == 1
    assert gs.services.broker.subscriber_count() == 1
    response.close()  # the client goes away without a word

    loop = asyncio.get_running_loop()
    left = loop.time()

    async def released() -> bool:
        return await open_streams(gs) == 0 and gs.services.broker.subscriber_count() == 0

    await wait_until(released, timeout=1.0)
    assert loop.time() - left < 1.0
    assert await session_reasons(store) == ["client_gone"]
    # The generation goes on without its watcher: new events keep coming.
    before = (await gs.json("GET", f"/api/projects/{project_id}"))["last_event_id"]
    url = f"{gs.url}/api/generations/{generation_id}/stream"
    async with gs.http.get(url, headers={"Last-Event-ID": str(before)}) as response:
        later = await SSEReader(response).event()
    assert later.id is not None and later.id > before
    await gs.json("POST", f"/api/generations/{generation_id}/cancel")


async def test_connections_counts_streams_per_key(gs: Genstream) -> None:
    project_id = await gs.new_project()
    submitted = await gs.generate(project_id)
    generation_id = submitted["generation"]["id"]
    first = await gs.http.get(f"{gs.url}/api/projects/{project_id}/stream")
    second = await gs.http.get(f"{gs.url}/api/projects/{project_id}/stream")
    try:
        for response in (first, second):
            await SSEReader(response).frame()
        body = await gs.json("GET", "/api/connections")
        assert body == {"total": 2, "by_key": {f"project:{project_id}": 2}}
    finally:
        first.close()
        second.close()
    await gs.wait_generation(generation_id)


async def test_slow_client_is_cut_off_then_resumes_with_nothing_lost(
    make_server: MakeServer,
    store: Store,
) -> None:
    # A client that stops reading: the handler's write backs up (small receive window,
    # 150 KB events), later commits pile up in its buffer, and past queue_size untaken
    # events it is cut off; it resumes from SQLite with nothing lost.
    gs = await make_server(stream={"queue_size": 8})
    project_id = await gs.new_project()
    start = (await gs.json("GET", f"/api/projects/{project_id}"))["last_event_id"]
    url = f"{gs.url}/api/projects/{project_id}/stream"
    burst = 60
    request = (
        f"GET /api/projects/{project_id}/stream HTTP/1.1\r\nHost: test\r\n"
        f"Last-Event-ID: {start}\r\n\r\n"
    ).encode()
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(5)
        sock.connect((LOOPBACK, gs.server.port))
        sock.sendall(request)
        head = b""
        while b": connected" not in head:
            chunk = await asyncio.to_thread(sock.recv, 4096)
            assert chunk, head
            head += chunk
        # From here on it reads nothing. One commit per event, so the buffer fills
        # across commits, as it does behind a client that fell behind.
        for n in range(burst):
            await gs.services.journal.append(
                Draft(project_id, None, ev.VALIDATION, {"n": n, "pad": "x" * 150_000})
            )
            if await open_streams(gs) == 0:
                break
        assert await session_reasons(store, count=1) == ["slow_client"]
    received: list[int] = []
    async with gs.http.get(url, headers={"Last-Event-ID": str(start)}) as response:
        reader = SSEReader(response)
        while len(received) < n + 1:
            frame = await reader.event(timeout=5)
            assert frame.id is not None
            received.append(frame.id)
    stored = await gs.events(project_id, after=start)
    assert received == [e["id"] for e in stored]
    assert [e["n"] for e in stored] == list(range(n + 1))


async def test_a_commit_larger_than_the_buffer_does_not_cut_off_clients_that_keep_up(
    gs: Genstream,
    store: Store,
) -> None:
    # One model delta holding 500 files is about 1,500 events in one append: more than
    # stream.queue_size (1,024), yet each client that keeps up takes it whole.
    project_id = await gs.new_project()
    start = (await gs.json("GET", f"/api/projects/{project_id}"))["last_event_id"]
    url = f"{gs.url}/api/projects/{project_id}/stream"
    batch = gs.services.settings.stream.queue_size + 500
    streams = [await gs.http.get(url, headers={"Last-Event-ID": str(start)}) for _ in range(20)]
    try:
        readers = [SSEReader(response) for response in streams]
        # Each follows live: a first event proves its handler is past its replay.
        await gs.services.journal.append(Draft(project_id, None, ev.VALIDATION, {"n": -1}))
        for reader in readers:
            assert (await reader.event()).json["n"] == -1
        drafts = [Draft(project_id, None, ev.VALIDATION, {"n": n}) for n in range(batch)]
        await gs.services.journal.append(*drafts)
        for reader in readers:
            assert [(await reader.event()).json["n"] for _ in range(batch)] == list(range(batch))
        assert await open_streams(gs) == 20
    finally:
        for response in streams:
            response.close()
    assert "slow_client" not in await session_reasons(store, count=20)


async def test_generation_stream_ends_after_terminal_event(gs: Genstream) -> None:
    project_id = await gs.new_project()
    submitted = await gs.generate(project_id)
    url = f"{gs.url}/api/generations/{submitted['generation']['id']}/stream"
    async with gs.http.get(url) as response:
        frames = await SSEReader(response).events_until_end()
    types = [f.event for f in frames]
    assert types[0] == ev.MESSAGE_CREATED
    assert types[-1] == ev.GENERATION_COMPLETED
    assert types.count(ev.GENERATION_COMPLETED) == 1
    # Resuming after the terminal event closes at once with nothing more.
    async with gs.http.get(url, headers={"Last-Event-ID": str(frames[-1].id)}) as response:
        assert await SSEReader(response).events_until_end(timeout=5) == []


async def test_stream_failing_after_its_first_bytes_is_dropped_not_answered_twice(
    gs: Genstream, store: Store
) -> None:
    project_id = await gs.new_project()
    # The replay's read now fails inside the stream, after the headers went out.
    await store.rows("ALTER TABLE events RENAME TO events_elsewhere")
    url = f"{gs.url}/api/projects/{project_id}/stream"
    body = b""
    async with gs.http.get(url, headers={"Last-Event-ID": "0"}) as response:
        assert response.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            async with asyncio.timeout(5):
                async for chunk in response.content.iter_any():
                    body += chunk
    assert body == b"retry: 3000\n\n: connected\n\n"
