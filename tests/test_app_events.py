"""App events (issue 14 item 3): POST /api/projects/{pid}/events and service.embed.publish,
over a real server: stored, then on every stream of the project; namespaced, capped and
checked against declared schemas, a refusal leaving the log as it was; a token that may
publish and one that may only read."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from service import embed
from service.config import ConfigError, Settings
from service.errors import Invalid, NotFound
from service.eventlog.schemas import SchemaProblem
from service.web.app import create_app
from service.web.server import start
from tests.backends import Store
from tests.conftest import Genstream, MakeServer, base_settings, client_session
from tests.sse_reader import SSEReader
from tests.tokens import AUTH, MASTER, bearer, sign

pytestmark = pytest.mark.backends

TYPING_SCHEMA = {
    "type": "object",
    "required": ["user"],
    "properties": {"user": {"type": "string", "maxLength": 20}, "active": {"type": "boolean"}},
    "additionalProperties": False,
}
# A schema with a $ref inside itself: it must still resolve once served within the
# document of every schema.
PROGRESS_SCHEMA = {
    "type": "object",
    "required": ["job", "percent"],
    "properties": {"job": {"type": "string"}, "percent": {"$ref": "#/$defs/percent"}},
    "$defs": {"percent": {"type": "integer", "minimum": 0, "maximum": 100}},
}


def _path(project_id: str) -> str:
    return f"/api/projects/{project_id}/events"


async def _publish(
    gs: Genstream, project_id: str, body: Any, status: int = 201, **kwargs: Any
) -> dict[str, Any]:
    answer: dict[str, Any] = await gs.json(
        "POST", _path(project_id), status, data=orjson.dumps(body), **kwargs
    )
    return answer


def _declared(tmp_path: Path) -> Path:
    path = tmp_path / "events.json"
    path.write_bytes(
        orjson.dumps({"app.typing": TYPING_SCHEMA, "app.job.progress": PROGRESS_SCHEMA})
    )
    return path


async def test_an_app_event_is_stored_then_reaches_every_stream_of_its_project(
    make_server: MakeServer,
) -> None:
    gs = await make_server()
    project_id, other = await gs.new_project(), await gs.new_project()
    url = f"{gs.url}/api/projects/{project_id}/stream"
    async with gs.http.get(url) as first, gs.http.get(url) as second:
        readers = [SSEReader(first), SSEReader(second)]
        cursors = [await reader.event() for reader in readers]  # stream.cursor: subscribed
        assert {c.event for c in cursors} == {"stream.cursor"}
        stored = await _publish(gs, project_id, {"type": "app.notify", "data": {"to": "u:1"}})
        assert stored["type"] == "app.notify" and stored["data"] == {"to": "u:1"}
        assert stored["project_id"] == project_id and stored["generation_id"] is None
        (logged,) = await gs.events(project_id)
        assert logged == stored
        for reader in readers:
            frame = await reader.event()
            # The stored JSON, byte for byte, as the SSE data of the event's frame.
            assert frame.id == stored["id"] and frame.event == "app.notify"
            assert frame.data == orjson.dumps(logged)
    assert await gs.events(other) == []
    # A stream that resumes before it gets it once more, from the log.
    headers = {"Last-Event-ID": str(stored["id"] - 1)}
    async with gs.http.get(url, headers=headers) as resumed:
        frame = await SSEReader(resumed).event()
        assert (frame.id, frame.json) == (stored["id"], stored)


@pytest.mark.parametrize(
    ("body", "code", "field"),
    [
        ({"type": "generation.completed", "data": {}}, "reserved_event_type", "type"),
        ({"type": "message.created", "data": {}}, "reserved_event_type", "type"),
        ({"type": "stage", "data": {}}, "reserved_event_type", "type"),
        ({"type": "validation", "data": {}}, "reserved_event_type", "type"),
        ({"type": "stream.cursor", "data": {}}, "reserved_event_type", "type"),
        ({"type": "page.intent", "data": {}}, "reserved_event_type", "type"),
        ({"type": "app.", "data": {}}, "invalid_event_type", "type"),
        ({"type": "app.Typing", "data": {}}, "invalid_event_type", "type"),
        ({"type": "app..x", "data": {}}, "invalid_event_type", "type"),
        ({"type": "app." + "x" * 61, "data": {}}, "invalid_event_type", "type"),
        ({"type": 7, "data": {}}, "invalid_request", "type"),
        ({"type": "app.x", "data": [1]}, "invalid_request", "data"),
        ({"type": "app.x", "data": None}, "invalid_request", "data"),
        ({"type": "app.x"}, "invalid_request", "data"),
        ({"data": {}}, "invalid_request", "type"),
        (
            {"type": "app.x", "data": {}, "generation_id": "gen_1"},
            "invalid_request",
            "generation_id",
        ),
        ({"type": "app.x", "data": {"big": "x" * 300}}, "event_too_large", "data"),
        ({"type": "app.typing", "data": {"user": 42}}, "invalid_event_data", "data['user']"),
        ({"type": "app.typing", "data": {"user": "u", "x": 1}}, "invalid_event_data", "data"),
        ({"type": "app.typing", "data": {}}, "invalid_event_data", "data"),
        (
            {"type": "app.job.progress", "data": {"job": "j", "percent": 101}},
            "invalid_event_data",
            "data['percent']",
        ),
    ],
    ids=lambda value: orjson.dumps(value).decode()[:40] if isinstance(value, dict) else None,
)
async def test_a_refused_app_event_is_a_400_and_writes_nothing(
    make_server: MakeServer,
    store: Store,
    tmp_path: Path,
    body: dict[str, Any],
    code: str,
    field: str,
) -> None:
    gs = await make_server(events={"schemas": str(_declared(tmp_path)), "max_data_bytes": 256})
    project_id = await gs.new_project()
    before = await store.count("events")
    answer = await _publish(gs, project_id, body, 400)
    assert (answer["error"]["code"], answer["error"]["field"]) == (code, field), answer
    assert await store.count("events") == before


async def test_an_unknown_project_is_a_404_and_declared_types_pass(
    make_server: MakeServer, store: Store, tmp_path: Path
) -> None:
    gs = await make_server(events={"schemas": str(_declared(tmp_path))})
    answer = await _publish(gs, "prj_nope", {"type": "app.x", "data": {}}, 404)
    assert answer["error"]["code"] == "not_found"
    assert await store.count("events") == 0
    project_id = await gs.new_project()
    typing = {"type": "app.typing", "data": {"user": "u-1", "active": True}}
    progress = {"type": "app.job.progress", "data": {"job": "j", "percent": 100}}
    ids = [(await _publish(gs, project_id, body))["id"] for body in (typing, progress)]
    assert [e["id"] for e in await gs.events(project_id)] == ids


async def test_a_directory_of_schemas_declares_one_type_a_file(
    make_server: MakeServer, tmp_path: Path
) -> None:
    folder = tmp_path / "schemas"
    folder.mkdir()
    (folder / "app.typing.json").write_bytes(orjson.dumps(TYPING_SCHEMA))
    gs = await make_server(events={"schemas": str(folder)})
    project_id = await gs.new_project()
    await _publish(gs, project_id, {"type": "app.typing", "data": {"user": "u"}})
    await _publish(gs, project_id, {"type": "app.typing", "data": {"user": 1}}, 400)
    served = await gs.json("GET", "/api/events/schemas")
    assert served["$defs"]["app.typing"]["properties"]["data"]["required"] == ["user"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"{", "is not JSON"),
        (b'{"generation.done": {}}', "'app.' then dotted lowercase words"),
        (b'{"app.x": {"type": 12}}', "not a JSON Schema"),
        (b'{"app.x": []}', "must be a JSON object"),
    ],
    ids=["not-json", "not-app", "bad-schema", "not-an-object"],
)
def test_a_schema_file_that_cannot_be_used_stops_the_start(
    tmp_path: Path, content: bytes, message: str
) -> None:
    path = tmp_path / "events.json"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=r"events\.schemas") as caught:
        create_app(Settings().replace(events={"schemas": str(path)}))
    assert message in str(caught.value)


async def test_a_read_only_token_may_not_publish_a_publish_token_may(
    make_server: MakeServer, store: Store
) -> None:
    gs = await make_server(auth=AUTH)
    created = await gs.json(
        "POST", "/api/projects", 201, json={"name": "p"}, headers=bearer(MASTER)
    )
    project_id = created["id"]
    body = {"type": "app.ping", "data": {}}
    for rights in (["read"], ["read", "write"]):
        answer = await _publish(
            gs, project_id, body, 403, headers=bearer(sign([project_id], rights))
        )
        assert answer["error"]["code"] == "forbidden"
        assert "may not publish" in answer["error"]["message"]
    elsewhere = sign(["prj_other"], ["publish"])
    await _publish(gs, project_id, body, 403, headers=bearer(elsewhere))
    assert await store.count("events") == 0
    stored = await _publish(gs, project_id, body, headers=bearer(sign([project_id], ["publish"])))
    page = await gs.json("GET", _path(project_id), headers=bearer(MASTER))
    assert [e["id"] for e in page["events"]] == [stored["id"]]


async def test_embedding_code_declares_and_publishes_through_the_journal(
    make_server: MakeServer, store: Store
) -> None:
    gs = await make_server()
    app = gs.server.runner.app
    project_id = await gs.new_project()
    with pytest.raises(RuntimeError, match="before the application starts"):
        embed.declare_event(app, "app.typing", TYPING_SCHEMA)
    event = await embed.publish(app, project_id, "app.typing", {"user": 3})
    (logged,) = await gs.events(project_id)
    assert orjson.dumps(logged) == event.data and event.type == "app.typing"
    for type_, data, kind in (
        ("generation.failed", {}, Invalid),
        ("app.x", {"x": "y" * 70_000}, Invalid),
    ):
        with pytest.raises(kind):
            await embed.publish(app, project_id, type_, data)
    with pytest.raises(NotFound):
        await embed.publish(gs.services.journal, "prj_nope", "app.x", {})
    again = await embed.publish(gs.services.journal, project_id, "app.x", {"n": 1})
    assert [e["id"] for e in await gs.events(project_id)] == [event.id, again.id]
    assert await store.count("events") == 2


def test_declare_event_refuses_what_cannot_be_an_app_type() -> None:
    app = create_app(Settings())
    embed.declare_event(app, "app.typing", TYPING_SCHEMA)
    for type_, schema in (
        ("typing", TYPING_SCHEMA),
        ("app.typing", TYPING_SCHEMA),  # twice
        ("app.bad", {"type": "no-such-type"}),
    ):
        with pytest.raises(SchemaProblem):
            embed.declare_event(app, type_, schema)


async def test_a_declared_type_of_embedding_code_is_checked_and_served(
    tmp_path: Path, store: Store
) -> None:
    settings = base_settings(tmp_path).replace(storage=store.settings())
    app = create_app(settings)
    embed.declare_event(app, "app.job.progress", PROGRESS_SCHEMA)
    gs = Genstream(await start(settings, port=0, app=app), client_session())
    try:
        project_id = await gs.new_project()
        with pytest.raises(Invalid, match="percent"):
            await embed.publish(app, project_id, "app.job.progress", {"job": "j", "percent": -1})
        event = await embed.publish(app, project_id, "app.job.progress", {"job": "j", "percent": 5})
        assert orjson.loads(event.data)["data"] == {"job": "j", "percent": 5}
        served = await gs.json("GET", "/api/events/schemas")
        assert "app.job.progress" in served["$defs"]
        assert [e["id"] for e in await gs.events(project_id)] == [event.id]
    finally:
        await gs.http.close()
        await gs.server.stop()
