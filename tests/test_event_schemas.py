"""Typed events (issue 14 item 4): every event the code pipeline stores, in real runs over
a real server (completed, failed at each output cap, cancelled, interrupted by a stop,
validation verdicts both ways, and an app event), matches its type's schema as GET
/api/events/schemas serves it; and the document is one a JSON Schema tool reads."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from service.eventlog import event as ev
from tests.conftest import Genstream, MakeServer
from tests.fake_openai import FakeOpenAI, answer
from tests.helpers import mismatches, served_schemas
from tests.sse_reader import SSEReader
from tests.test_openai_provider import api_key, fake, openai_server

pytestmark = pytest.mark.backends
__all__ = ["api_key", "fake"]  # fixtures: the fake OpenAI endpoint and its key

# The model's answer for the validation verdicts: a path refused, JSON that does not
# parse, Python that does, and a file the model never closed.
VERDICTS = (
    "Here.\n"
    '<file path="../escape.txt">\nno\n</file>\n'
    '<file path="bad.json">\n{"a": \n</file>\n'
    '<file path="ok.py">\nprint(1)\n</file>\n'
    '<file path="cut.py">\nprint(2)\n'
)


async def _run(gs: Genstream, project_id: str) -> dict[str, Any]:
    submitted = await gs.generate(project_id)
    return await gs.wait_generation(submitted["generation"]["id"])


async def test_every_event_of_code_generations_matches_its_schema(
    make_server: MakeServer,
) -> None:
    gs = await make_server()
    validators = await served_schemas(gs.json)
    project_id = await gs.new_project()
    assert (await _run(gs, project_id))["status"] == "completed"
    # The same project again: file.started replaces, and the earlier turns go along.
    assert (await _run(gs, project_id))["status"] == "completed"
    await gs.json(
        "POST", f"/api/projects/{project_id}/events", 201, json={"type": "app.x", "data": {}}
    )
    events = await gs.events(project_id)
    assert mismatches(validators, events) == []
    types = Counter(e["type"] for e in events)
    for type_ in (
        ev.MESSAGE_CREATED,
        ev.MESSAGE_DELTA,
        ev.MESSAGE_UPDATED,
        ev.GENERATION_STARTED,
        ev.STAGE,
        ev.FILE_STARTED,
        ev.FILE_DELTA,
        ev.FILE_COMPLETED,
        ev.VALIDATION,
        ev.GENERATION_COMPLETED,
        "app.x",
    ):
        assert types[type_] > 0, (type_, types)
    assert any(e["type"] == ev.FILE_STARTED and e["replaces"] for e in events)


@pytest.mark.parametrize(
    "cap",
    [{"max_output_chars": 40}, {"max_files": 1}, {"max_file_bytes": 8}],
    ids=["max_output_chars", "max_files", "max_file_bytes"],
)
async def test_a_generation_failed_at_each_cap_emits_only_what_its_schemas_allow(
    make_server: MakeServer, cap: dict[str, int]
) -> None:
    gs = await make_server(generation=cap)
    validators = await served_schemas(gs.json)
    project_id = await gs.new_project()
    generation = await _run(gs, project_id)
    assert (generation["status"], generation["error"]["code"]) == ("failed", "output_too_large")
    events = await gs.events(project_id)
    assert events[-1]["type"] == ev.GENERATION_FAILED
    assert mismatches(validators, events) == []


async def test_cancelled_and_interrupted_generations_match_their_schemas(
    make_server: MakeServer,
) -> None:
    gs = await make_server(offline={"tokens_per_second": 200})
    validators = await served_schemas(gs.json)
    cancelled, stopped = await gs.new_project(), await gs.new_project()
    for project_id in (cancelled, stopped):
        submitted = await gs.generate(project_id)
        generation_id = submitted["generation"]["id"]
        # Under way: wait for its first text on its own stream, then end it.
        url = f"{gs.url}/api/generations/{generation_id}/stream"
        async with gs.http.get(url) as response:
            reader = SSEReader(response)
            while (await reader.event()).event != ev.MESSAGE_DELTA:
                pass
        if project_id == cancelled:
            ended = await gs.json("POST", f"/api/generations/{generation_id}/cancel")
            assert ended["status"] == "cancelled"
    port = gs.server.port
    await gs.server.stop()  # the second still runs: it ends as failed, interrupted
    gs = await make_server(port=port)
    events = {pid: await gs.events(pid) for pid in (cancelled, stopped)}
    assert events[cancelled][-1]["type"] == ev.GENERATION_CANCELLED
    assert events[stopped][-1]["type"] == ev.GENERATION_FAILED
    assert events[stopped][-1]["code"] == "interrupted"
    for project_events in events.values():
        assert mismatches(validators, project_events) == []


async def test_validation_verdicts_both_ways_match_their_schema(
    make_server: MakeServer, fake: FakeOpenAI
) -> None:
    fake.script(answer(VERDICTS, piece=7))
    gs = await openai_server(make_server, fake)
    validators = await served_schemas(gs.json)
    project_id = await gs.new_project()
    assert (await _run(gs, project_id))["status"] == "completed"
    events = await gs.events(project_id)
    verdicts = {(e["check"], e["ok"]) for e in events if e["type"] == ev.VALIDATION}
    assert {("path", False), ("json", False), ("python", True), ("closed", False)} <= verdicts
    assert mismatches(validators, events) == []


async def test_a_payload_off_its_schema_is_caught(make_server: MakeServer) -> None:
    """The check itself: a stored event with a field its schema does not allow, or one
    missing, is reported (so a passing run above means something)."""
    gs = await make_server()
    validators = await served_schemas(gs.json)
    project_id = await gs.new_project()
    await _run(gs, project_id)
    events = await gs.events(project_id)
    stage = next(e for e in events if e["type"] == ev.STAGE)
    completed = events[-1]
    wrong = [
        {**stage, "progress": 101},
        {**stage, "extra": 1},
        {k: v for k, v in completed.items() if k != "usage"},
        {**completed, "generation_id": None},
    ]
    assert len(mismatches(validators, wrong)) == len(wrong)
