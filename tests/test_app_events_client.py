"""The Python client and the CLI with app events and typed events: `publish`, events
checked against the served schemas (opt-in), and `genstream publish` as a real process."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from aiohttp import web

from service.client.api import GenstreamClient, GenstreamError
from tests.conftest import LOOPBACK, Genstream, MakeServer
from tests.test_cli import cli_env, run_cli
from tests.tokens import AUTH, MASTER, sign


async def test_publish_returns_the_stored_event_and_a_validating_client_takes_the_log(
    gs: Genstream,
) -> None:
    project_id = await gs.new_project()
    async with GenstreamClient(gs.url, validate_events=True) as client:
        stored = await client.publish(project_id, "app.notify", {"to": "user:7"})
        assert (stored.type, stored.data, stored.generation_id) == (
            "app.notify",
            {"data": {"to": "user:7"}},
            None,
        )
        submitted = await client.generate(project_id, "a todo api")
        seen = [e async for e in client.stream_generation(submitted["generation"]["id"])]
        assert seen[-1].type == "generation.completed"
        page = await client.events(project_id, limit=1000)
        assert [e.as_dict() for e in page.events] == await gs.events(project_id)
        with pytest.raises(GenstreamError) as refused:
            await client.publish(project_id, "generation.completed", {})
        assert (refused.value.status, refused.value.code) == (400, "reserved_event_type")


async def _lying_server(events: list[dict[str, Any]], schemas: dict[str, Any]) -> web.AppRunner:
    """A server that answers /events with what it is given: a peer that breaks the schema."""

    async def page(request: web.Request) -> web.Response:
        body = {"events": events, "last_event_id": events[-1]["id"], "has_more": False}
        return web.json_response(body)

    async def served(request: web.Request) -> web.Response:
        return web.json_response(schemas)

    app = web.Application()
    app.router.add_get("/api/projects/{pid}/events", page)
    app.router.add_get("/api/events/schemas", served)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, LOOPBACK, 0).start()
    return runner


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"progress": 140}, "140 is greater than the maximum of 100"),
        ({"colour": "red"}, "Additional properties are not allowed"),
        ({"type": "stage.unknown"}, "no schema for type 'stage.unknown'"),
    ],
    ids=["out-of-range", "extra-field", "unknown-type"],
)
async def test_a_validating_client_refuses_an_event_off_its_schema(
    gs: Genstream, change: dict[str, Any], message: str
) -> None:
    project_id = await gs.new_project()
    await gs.json(
        "POST", f"/api/projects/{project_id}/events", 201, json={"type": "app.x", "data": {}}
    )
    submitted = await gs.generate(project_id)
    await gs.wait_generation(submitted["generation"]["id"])
    events = await gs.events(project_id)
    stage = next(e for e in events if e["type"] == "stage")
    schemas = await gs.json("GET", "/api/events/schemas")
    runner = await _lying_server([events[0], {**stage, **change}], schemas)
    try:
        port = runner.addresses[0][1]
        url = f"http://{LOOPBACK}:{port}"
        async with GenstreamClient(url) as trusting:  # off by default: taken as sent
            assert len((await trusting.events(project_id)).events) == 2
        async with GenstreamClient(url, validate_events=True) as client:
            with pytest.raises(GenstreamError) as caught:
                await client.events(project_id)
        assert caught.value.code == "invalid_event" and message in caught.value.message
    finally:
        await runner.cleanup()


async def test_genstream_publish_prints_the_stored_event(make_server: MakeServer) -> None:
    gs = await make_server(auth=AUTH)
    created = await gs.json(
        "POST",
        "/api/projects",
        201,
        json={"name": "p"},
        headers={"Authorization": f"Bearer {MASTER}"},
    )
    project_id = created["id"]
    publisher = sign([project_id], ["publish"])
    done = await run_cli(
        "publish",
        project_id,
        "app.job.progress",
        '{"percent": 40}',
        "--url",
        gs.url,
        env=cli_env(GENSTREAM_TOKEN=publisher),
    )
    assert done.code == 0, done.stderr
    printed = orjson.loads(done.stdout)
    assert printed["type"] == "app.job.progress" and printed["data"] == {"percent": 40}
    page = await gs.json(
        "GET", f"/api/projects/{project_id}/events", headers={"Authorization": f"Bearer {MASTER}"}
    )
    assert page["events"] == [printed]

    reader = sign([project_id], ["read"])
    refused = await run_cli(
        "publish", project_id, "app.x", "{}", "--url", gs.url, env=cli_env(GENSTREAM_TOKEN=reader)
    )
    assert refused.code == 1 and "403 forbidden" in refused.stderr
    reserved = await run_cli(
        "publish",
        project_id,
        "message.created",
        "{}",
        "--url",
        gs.url,
        env=cli_env(GENSTREAM_TOKEN=publisher),
    )
    assert reserved.code == 1 and "400 reserved_event_type" in reserved.stderr
    for bad in ("[1]", "{nope"):
        usage = await run_cli("publish", project_id, "app.x", bad, "--url", gs.url)
        assert usage.code == 2 and "DATA-JSON" in usage.stderr
