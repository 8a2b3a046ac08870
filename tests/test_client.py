"""The Python client against a real server: calls, streams, reconnection, retries."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from typing import Any

import pytest

from service.client.api import Backoff, Event, GenstreamClient, GenstreamError
from service.eventlog import event as ev
from tests.backends import Store
from tests.conftest import Genstream, MakeServer
from tests.helpers import wait_until
from tests.proxy import Faults, faulty_proxy

pytestmark = pytest.mark.backends

TIMEOUT = 30.0
# The server asks for quick reconnects so that tests of reconnection stay fast.
FAST_RETRY = {"retry_ms": 20}
FAST_BACKOFF = Backoff(base_seconds=0.02, max_seconds=0.5)


def client(url: str, **options: Any) -> GenstreamClient:
    return GenstreamClient(url, backoff=FAST_BACKOFF, **options)


async def collect_until(
    stream: AsyncIterator[Event], done: Callable[[Event], bool], timeout: float = TIMEOUT
) -> list[Event]:
    """Events from `stream` up to and including the first for which done(event)."""
    events: list[Event] = []
    async with asyncio.timeout(timeout):
        async for event in stream:
            events.append(event)
            if done(event):
                return events
    return events


def as_dicts(events: list[Event]) -> list[dict[str, Any]]:
    return [event.as_dict() for event in events]


async def test_generation_stream_yields_its_events_typed_and_ends_after_the_terminal_one(
    gs: Genstream,
) -> None:
    async with GenstreamClient(gs.url) as api:
        project = await api.create_project("demo")
        submitted = await api.generate(project["id"], "a todo api")
        generation_id = submitted["generation"]["id"]
        async with asyncio.timeout(TIMEOUT):
            events = [event async for event in api.stream_generation(generation_id)]
        final = await api.generation(generation_id)
    assert final["status"] == "completed"
    stored = [e for e in await gs.events(project["id"]) if e["generation_id"] == generation_id]
    assert as_dicts(events) == stored
    assert events[-1].type == ev.GENERATION_COMPLETED and events[-1].terminal
    assert not any(e.terminal for e in events[:-1])
    delta = next(e for e in events if e.type == ev.MESSAGE_DELTA)
    assert delta.generation_id == generation_id and delta.project_id == project["id"]
    assert set(delta.data) == {"message_id", "delta"}


async def test_generation_stream_resumed_after_its_end_stops_at_once(gs: Genstream) -> None:
    async with GenstreamClient(gs.url) as api:
        project = await api.create_project()
        submitted = await api.generate(project["id"], "a todo api")
        generation_id = submitted["generation"]["id"]
        async with asyncio.timeout(TIMEOUT):
            events = [event async for event in api.stream_generation(generation_id)]
            resumed = [
                event
                async for event in api.stream_generation(generation_id, last_event_id=events[-1].id)
            ]
            middle = events[len(events) // 2].id
            rest = [
                event async for event in api.stream_generation(generation_id, last_event_id=middle)
            ]
    assert resumed == []
    assert rest == [e for e in events if e.id > middle]


async def test_project_stream_resumes_across_a_server_restart_with_nothing_lost_or_repeated(
    store: Store, make_server: MakeServer
) -> None:
    first = await make_server(offline={"tokens_per_second": 200}, stream=FAST_RETRY)
    port = first.server.port
    project_id = await first.new_project()
    received: list[Event] = []
    async with client(first.url) as api, aclosing(api.stream(project_id, 0)) as stream:
        submitted = await api.generate(project_id, "a todo api")
        interrupted_id = submitted["generation"]["id"]
        # Some text has streamed: the restart lands in the middle of the generation.
        received += await collect_until(stream, lambda e: e.type == ev.MESSAGE_DELTA)
        cursor_at_stop = received[-1].id
        await first.server.stop()

        second = await make_server(port=port, stream=FAST_RETRY)
        # The old process ended the generation as interrupted; the client must get that
        # terminal event from the new one, then what the new one does next.
        received += await collect_until(
            stream, lambda e: e.type == ev.GENERATION_FAILED and e.generation_id == interrupted_id
        )
        again = await api.generate(project_id, "a todo api")
        received += await collect_until(
            stream,
            lambda e: e.terminal and e.generation_id == again["generation"]["id"],
        )

    stored = await second.events(project_id)
    assert as_dicts(received) == stored
    assert [e.id for e in received] == sorted({e.id for e in received})
    failed = next(e for e in received if e.type == ev.GENERATION_FAILED)
    assert failed.data["code"] == "interrupted"
    assert received[-1].type == ev.GENERATION_COMPLETED
    # It resumed with Last-Event-ID (no replay from the start) on the new server.
    cursors = [
        row[0]
        for row in await store.rows(
            # started_at apart: the second session began after the first server stopped
            "SELECT cursor FROM stream_sessions WHERE key = ? ORDER BY started_at, cursor",
            (f"project:{project_id}",),
        )
    ]
    assert cursors[0] == 0
    assert cursors[1] is not None and cursors[1] >= cursor_at_stop


async def test_streams_cut_mid_frame_are_resumed_until_every_event_arrived_once(
    make_server: MakeServer,
) -> None:
    gs = await make_server(stream=FAST_RETRY)
    project_id = await gs.new_project()
    faults = Faults(cut_stream_after=700, cut_streams=5)
    async with faulty_proxy(gs.url, faults) as (url, proxy), client(url) as api:
        submitted = await api.generate(project_id, "a todo api")
        generation_id = submitted["generation"]["id"]
        async with asyncio.timeout(TIMEOUT):
            events = [event async for event in api.stream_generation(generation_id)]
    assert as_dicts(events) == await gs.events(project_id)
    assert proxy.seen.cut == 5
    # Every reconnection carried the id of the last event it had yielded.
    resumed_at = {int(c) for c in proxy.seen.stream_cursors if c is not None}
    assert resumed_at <= {e.id for e in events}
    assert len(resumed_at) == proxy.seen.cut


async def test_a_proxy_replaying_from_the_start_never_makes_an_event_yield_twice(
    make_server: MakeServer,
) -> None:
    gs = await make_server(stream=FAST_RETRY)
    project_id = await gs.new_project()
    faults = Faults(cut_stream_after=900, cut_streams=1, replay_from_zero=True)
    async with faulty_proxy(gs.url, faults) as (url, proxy), client(url) as api:
        submitted = await api.generate(project_id, "a todo api")
        async with asyncio.timeout(TIMEOUT):
            events = [e async for e in api.stream_generation(submitted["generation"]["id"])]
    assert proxy.seen.cut == 1 and len(proxy.seen.stream_cursors) == 2
    assert as_dicts(events) == await gs.events(project_id)


async def test_a_stream_gone_silent_is_dropped_after_two_heartbeats_and_resumed(
    make_server: MakeServer,
) -> None:
    heartbeat = 0.2
    gs = await make_server(stream={**FAST_RETRY, "heartbeat_seconds": heartbeat})
    project_id = await gs.new_project()
    faults = Faults(cut_stream_after=2000, cut_streams=1, freeze=True)
    async with (
        faulty_proxy(gs.url, faults) as (url, proxy),
        client(url, heartbeat_seconds=heartbeat) as api,
    ):
        submitted = await api.generate(project_id, "a todo api")
        async with asyncio.timeout(TIMEOUT):
            events = [e async for e in api.stream_generation(submitted["generation"]["id"])]
    assert proxy.seen.cut == 1 and len(proxy.seen.stream_cursors) == 2
    assert as_dicts(events) == await gs.events(project_id)


async def test_a_finished_generation_cut_before_any_event_is_still_delivered_whole(
    make_server: MakeServer,
) -> None:
    gs = await make_server(stream=FAST_RETRY)
    project_id = await gs.new_project()
    submitted = await gs.generate(project_id)
    generation_id = submitted["generation"]["id"]
    await gs.wait_generation(generation_id)
    # The cut falls right after the `retry:` line and the first comment: the stream
    # closes with nothing new for a generation that has ended. That is not its end.
    preamble = len(b"retry: 20\n\n: connected\n\n")
    faults = Faults(cut_stream_after=preamble, cut_streams=1)
    async with faulty_proxy(gs.url, faults) as (url, proxy), client(url) as api:
        async with asyncio.timeout(TIMEOUT):
            events = [e async for e in api.stream_generation(generation_id)]
            faults.cut_streams = 2  # and once more, resuming from the middle
            middle = events[len(events) // 2].id
            rest = [e async for e in api.stream_generation(generation_id, last_event_id=middle)]
        page = await api.events(project_id, after=0, limit=1000)
    assert proxy.seen.cut == 2
    assert as_dicts(events) == await gs.events(project_id) == as_dicts(page.events)
    assert rest == events[len(events) // 2 + 1 :]
    assert page.last_event_id == events[-1].id and page.has_more is False


async def test_a_submit_whose_reply_was_lost_is_retried_with_the_same_request_id(
    gs: Genstream,
) -> None:
    project_id = await gs.new_project()
    faults = Faults(lose_first_submit_reply=True)
    async with faulty_proxy(gs.url, faults) as (url, proxy), client(url) as api:
        submitted = await api.generate(project_id, "a todo api")
        await gs.wait_generation(submitted["generation"]["id"])
    assert proxy.seen.submits == 2
    assert submitted["created"] is False  # the first attempt made it, the retry found it
    messages = (await gs.json("GET", f"/api/projects/{project_id}/messages"))["messages"]
    assert [m["id"] for m in messages] == [
        submitted["user_message"]["id"],
        submitted["assistant_message"]["id"],
    ]
    events = await gs.events(project_id)
    assert sum(e["type"] == ev.GENERATION_STARTED for e in events) == 1


async def test_api_errors_are_one_exception_type_with_status_code_and_message(
    gs: Genstream,
) -> None:
    async with GenstreamClient(gs.url) as api:
        with pytest.raises(GenstreamError) as missing:
            await api.project("prj_nope")
        project = await api.create_project()
        with pytest.raises(GenstreamError) as empty:
            await api.generate(project["id"], " ")
        with pytest.raises(GenstreamError) as stream_missing:
            async with aclosing(api.stream_generation("gen_nope")) as stream:
                await anext(stream)
    assert (missing.value.status, missing.value.code) == (404, "not_found")
    assert "prj_nope" in missing.value.message
    assert (empty.value.status, empty.value.code) == (400, "invalid_request")
    assert empty.value.details["field"] == "prompt"
    assert (stream_missing.value.status, stream_missing.value.code) == (404, "not_found")


async def test_a_second_generation_while_one_runs_raises_409_naming_it(
    make_server: MakeServer,
) -> None:
    gs = await make_server(offline={"tokens_per_second": 20})
    async with GenstreamClient(gs.url) as api:
        project = await api.create_project()
        running = await api.generate(project["id"], "one")
        with pytest.raises(GenstreamError) as conflict:
            await api.generate(project["id"], "two")
        cancelled = await api.cancel(running["generation"]["id"])
    assert (conflict.value.status, conflict.value.code) == (409, "generation_running")
    assert conflict.value.details["generation_id"] == running["generation"]["id"]
    assert cancelled["status"] == "cancelled"


async def test_token_is_sent_on_calls_and_streams(make_server: MakeServer) -> None:
    gs = await make_server(auth={"token": "s3cret"})
    async with GenstreamClient(gs.url) as anonymous:
        with pytest.raises(GenstreamError) as refused:
            await anonymous.create_project()
    assert (refused.value.status, refused.value.code) == (401, "unauthorized")
    async with GenstreamClient(gs.url, token="s3cret") as api:
        project = await api.create_project()
        submitted = await api.generate(project["id"], "a todo api")
        async with asyncio.timeout(TIMEOUT):
            events = [e async for e in api.stream_generation(submitted["generation"]["id"])]
        files = await api.files(project["id"])
        first = await api.file(project["id"], files[0]["path"])
        messages = await api.messages(project["id"])
    assert events[-1].type == ev.GENERATION_COMPLETED
    assert first["path"] == files[0]["path"] and first["content"]
    assert [m["role"] for m in messages] == ["user", "assistant"]


async def test_an_unreachable_server_raises_after_the_attempts_allowed(
    make_server: MakeServer,
) -> None:
    gs = await make_server()
    url = gs.url
    await gs.server.stop()
    async with client(url, max_attempts=3) as api:
        with pytest.raises(GenstreamError) as unreachable:
            await api.generation("gen_x")
        with pytest.raises(GenstreamError) as stream_unreachable:
            async with aclosing(api.stream_generation("gen_x")) as stream:
                await anext(stream)
    assert (unreachable.value.status, unreachable.value.code) == (0, "unreachable")
    assert stream_unreachable.value.code == "unreachable"


@pytest.mark.parametrize(
    ("failures", "retry_ms", "rand", "expected"),
    [
        pytest.param(0, None, 0.0, 1.0, id="before-the-server-said-retry"),
        pytest.param(0, 3000, 0.0, 3.0, id="server-retry-first"),
        pytest.param(2, 3000, 0.0, 12.0, id="doubled-per-failure"),
        pytest.param(2, 3000, 1.0, 18.0, id="jitter-stretches-never-shortens"),
        pytest.param(10, 3000, 0.0, 30.0, id="capped"),
        pytest.param(10_000, 3000, 1.0, 45.0, id="no-overflow"),
    ],
)
def test_backoff_delay(failures: int, retry_ms: int | None, rand: float, expected: float) -> None:
    assert Backoff().delay(failures, retry_ms, lambda: rand) == pytest.approx(expected)


async def test_a_stream_opened_without_a_cursor_takes_its_start_from_the_cursor_frame(
    make_server: MakeServer,
) -> None:
    # The public calls always send a cursor; the follow loop itself must still treat a
    # stream.cursor frame as its starting point, not as an event, and resume from it.
    gs = await make_server(stream=FAST_RETRY)
    project_id = await gs.new_project()

    async def stream_open() -> bool:
        return bool((await gs.json("GET", "/api/connections"))["total"] != 0)

    async with client(gs.url) as api:
        follow = api._follow(f"/api/projects/{project_id}/stream", None, None)
        async with aclosing(follow) as stream:
            first_event = asyncio.ensure_future(anext(stream))
            async with asyncio.timeout(10):
                await wait_until(stream_open, timeout=10)
                generation = await api.generate(project_id, "a todo api")
                event = await first_event
    assert event.type == ev.MESSAGE_CREATED
    assert event.generation_id == generation["generation"]["id"]
