"""Limits, each a setting: open streams, prompt size, images, concurrent generations,
event retention."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from service.eventlog import event as ev
from service.eventlog import retention
from tests.backends import Store
from tests.conftest import Genstream, MakeServer
from tests.helpers import wait_until
from tests.sse_reader import SSEReader

pytestmark = pytest.mark.backends


async def _open(gs: Genstream, project_id: str) -> aiohttp.ClientResponse:
    return await gs.http.get(f"{gs.url}/api/projects/{project_id}/stream")


async def test_open_streams_are_limited_per_project_and_in_all(make_server: MakeServer) -> None:
    gs = await make_server(stream={"max_streams": 3, "max_streams_per_project": 2})
    first, second = await gs.new_project(), await gs.new_project()
    held = [await _open(gs, first), await _open(gs, first)]
    try:
        for response in held:
            assert response.status == 200
        refused = await _open(gs, first)
        assert refused.status == 503
        assert refused.headers["Retry-After"] == "5"
        error = (await refused.json())["error"]
        assert error["code"] == "too_many_streams"
        assert f"project {first} has 2 open streams" in error["message"]

        held.append(await _open(gs, second))
        assert held[-1].status == 200
        refused = await _open(gs, second)
        assert refused.status == 503
        assert "the server has 3 open streams" in (await refused.json())["error"]["message"]

        # A stream that ends frees its place.
        held.pop(0).close()

        async def reopened() -> bool:
            again = await _open(gs, second)
            if again.status == 200:
                held.append(again)
                return True
            again.close()
            return False

        await wait_until(reopened, timeout=5)
    finally:
        for response in held:
            response.close()


@pytest.mark.parametrize(
    ("section", "body", "message"),
    [
        ({"max_prompt_chars": 10}, {"prompt": "x" * 11}, "prompt: must be at most 10 characters"),
        (
            {"max_image_urls": 1},
            {"prompt": "x", "image_urls": ["https://a/1.png", "https://a/2.png"]},
            "image_urls: at most 1 images per request",
        ),
    ],
    ids=["prompt-length", "image-urls"],
)
async def test_generation_limits_are_settings(
    make_server: MakeServer, section: dict[str, Any], body: dict[str, Any], message: str
) -> None:
    gs = await make_server(generation=section)
    project_id = await gs.new_project()
    error = await gs.json("POST", f"/api/projects/{project_id}/generations", 400, json=body)
    assert error["error"]["code"] == "invalid_request"
    assert error["error"]["message"] == message
    assert await gs.events(project_id) == []


async def test_generations_over_max_concurrent_wait_their_turn_as_pending(
    make_server: MakeServer,
) -> None:
    gs = await make_server(generation={"max_concurrent": 1}, offline={"tokens_per_second": 20})
    first_project, second_project = await gs.new_project(), await gs.new_project()
    first = (await gs.generate(first_project))["generation"]["id"]
    async with gs.http.get(f"{gs.url}/api/generations/{first}/stream") as response:
        reader = SSEReader(response)
        while (await reader.event()).event != ev.MESSAGE_DELTA:
            pass
    second = (await gs.generate(second_project))["generation"]
    assert second["status"] == "pending"
    # The slot is taken: the second stays queued, not started, while the first runs.
    queued = await gs.json("GET", f"/api/generations/{second['id']}")
    assert (queued["status"], queued["started_at"]) == ("pending", None)
    project = await gs.json("GET", f"/api/projects/{second_project}")
    assert project["status"] == "generating"

    # The first ends: the second takes its slot.
    ended = await gs.json("POST", f"/api/generations/{first}/cancel")
    async with gs.http.get(f"{gs.url}/api/generations/{second['id']}/stream") as response:
        reader = SSEReader(response)
        while (await reader.event()).event != ev.GENERATION_STARTED:
            pass
    started = await gs.json("GET", f"/api/generations/{second['id']}")
    assert started["status"] == "running"
    assert started["started_at"] >= ended["finished_at"]
    await gs.json("POST", f"/api/generations/{second['id']}/cancel")


async def _event_generations(
    store: Store, up_to: int | None = None
) -> list[tuple[int, str | None]]:
    """Each stored event's id and generation, in id order; with `up_to`, up to that id
    alone (the running generation goes on writing while the test compares)."""
    rows = await store.rows("SELECT id, generation_id FROM events ORDER BY id")
    return [(row[0], row[1]) for row in rows if up_to is None or row[0] <= up_to]


async def test_retention_keeps_the_newest_events_and_never_an_active_generation(
    make_server: MakeServer, store: Store
) -> None:
    keep = {"retention_events_per_project": 5, "retention_interval_seconds": 0}
    fast = await make_server(storage=keep)
    project_id = await fast.new_project()
    old = (await fast.generate(project_id))["generation"]["id"]
    await fast.wait_generation(old)
    other_project = await fast.new_project()
    done_elsewhere = (await fast.generate(other_project))["generation"]["id"]
    await fast.wait_generation(done_elsewhere)
    await fast.server.stop()
    # The same database, now with a generation slow enough to prune while it runs.
    gs = await make_server(storage=keep, offline={"tokens_per_second": 20})
    services = gs.services
    running = (await gs.generate(project_id))["generation"]["id"]
    async with gs.http.get(f"{gs.url}/api/generations/{running}/stream") as response:
        reader = SSEReader(response)
        while (await reader.event()).event != ev.MESSAGE_DELTA:
            pass
    before_rows = await _event_generations(store)
    before = [generation for _, generation in before_rows]

    deleted = await retention.prune(services.journal, services.metrics, services.settings.storage)

    after = [g for _, g in await _event_generations(store, up_to=before_rows[-1][0])]
    assert deleted == len(before) - len(after) > 0
    # The running generation keeps every event, though it has more than five.
    assert after.count(running) >= before.count(running) > 5
    assert old not in after
    # Five kept in the other project, the newest of the whole database among them.
    assert after.count(done_elsewhere) == 5
    async with gs.http.get(f"{gs.url}/metrics") as response:
        text = await response.text()
    assert f"genstream_events_pruned_total {float(deleted)}" in text
    assert 'genstream_retention_runs_total{result="ok"} 1.0' in text
    await gs.json("POST", f"/api/generations/{running}/cancel")


async def test_retention_runs_on_its_interval(make_server: MakeServer) -> None:
    gs = await make_server(
        storage={"retention_events_per_project": 1, "retention_interval_seconds": 0.05}
    )
    project_id = await gs.new_project()
    await gs.wait_generation((await gs.generate(project_id))["generation"]["id"])

    async def pruned() -> bool:
        return len(await gs.events(project_id)) <= 1

    await wait_until(pruned, timeout=5)
    async with gs.http.get(f"{gs.url}/metrics") as response:
        assert "genstream_events_pruned_total 0.0" not in await response.text()
