"""Pipelines as plug-ins (service/generation/pipeline.py, service/pipelines): a pipeline of
the test's own runs on a real server with every guarantee code generation has: its
declared stages and events, stored first and streamed as raw SSE bytes equal to the log,
the assistant message created at once and updated in place, cancel, timeout, and
`interrupted` when the server stops; bad input and bad pipelines get clear errors."""

from __future__ import annotations

import asyncio
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any

import orjson
import pytest

from service.config import ConfigError
from service.eventlog import event as ev
from service.eventlog.event import Event
from service.eventlog.journal import Emit
from service.generation.pipeline import Context, EventSpec, Outcome, Pipeline, Stage
from service.generation.providers.base import ModelRequest
from service.pipelines import GROUP, PipelineError, RunFailed, builtins, load_pipelines
from service.storage.interface import Tx
from service.web.app import create_app
from tests.conftest import Genstream, MakeServer, base_settings
from tests.sse_reader import SSEReader

pytestmark = pytest.mark.backends

WORD: dict[str, Any] = {
    "type": "object",
    "properties": {"word": {"type": "string"}, "index": {"type": "integer", "minimum": 0}},
    "required": ["word", "index"],
    "additionalProperties": False,
}
INPUTS: dict[str, Any] = {
    "type": "object",
    "properties": {"times": {"type": "integer", "minimum": 1, "maximum": 3}},
    "additionalProperties": False,
}
STAGES = (
    Stage("reading", "Reading", 0, 20),
    Stage("echoing", "Echoing", 20, 90),
    Stage("done", "Done", 100, 100),
)
# The model's answer (the offline provider streams it: ModelRequest.offline_text).
ANSWER = "Echoed, as asked."


async def echo(ctx: Context) -> Outcome:
    """Each word of the prompt as an `echo.word` event, `times` times; the model's
    answer as the chat text; a note stored with its event in one transaction."""
    await ctx.stage("reading", "complete")
    await ctx.stage("echoing", "active", 0.0)
    words = ctx.generation.prompt.split()
    times = int(ctx.generation.inputs.get("times", 1))
    for _ in range(times):
        for index, word in enumerate(words):
            ctx.emit("echo.word", word=word, index=index)
    request = ModelRequest(prompt=ctx.generation.prompt, offline_text=ANSWER)
    async for chunk in ctx.model(request):
        ctx.say(chunk.text)

    async def note(tx: Tx, emit: Emit) -> Event:
        await tx.update_message(ctx.generation.assistant_message_id, "pending", "halfway")
        return await emit(ctx.draft("echo.noted", words=len(words)))

    await ctx.transact(note)
    await ctx.stage("echoing", "complete")
    return Outcome(summary=f"Echoed {len(words)} words.", result={"words": len(words)})


def echo_pipeline(run: Any = echo, name: str = "echo") -> Pipeline:
    return Pipeline(
        name=name,
        label="Echo",
        stages=STAGES,
        run=run,
        events=(
            EventSpec(f"{name}.word", WORD),
            EventSpec(f"{name}.noted", {"type": "object", "required": ["words"]}),
        ),
        inputs=INPUTS,
        pending="Echoing...",
    )


def with_builtins(*extra: Pipeline) -> dict[str, Pipeline]:
    return {p.name: p for p in (*builtins(), *extra)}


async def _project_stream(gs: Genstream, project_id: str) -> list[dict[str, Any]]:
    """The project stream from the start to the generation's end, raw SSE frames checked
    against the stored log: the same ids, types and bytes."""
    url = f"{gs.url}/api/projects/{project_id}/stream"
    async with gs.http.get(url, headers={"Last-Event-ID": "0"}) as response:
        reader = SSEReader(response)
        frames = []
        while True:
            frame = await reader.event(timeout=20)
            frames.append(frame)
            if frame.event in ev.TERMINAL_TYPES:
                break
    stored = await gs.events(project_id)
    assert [f.id for f in frames] == [e["id"] for e in stored]
    assert [f.event for f in frames] == [e["type"] for e in stored]
    assert [orjson.loads(f.data or b"") for f in frames] == stored
    return stored


async def test_a_pipeline_of_its_own_runs_with_its_stages_events_and_result(
    make_server: MakeServer,
) -> None:
    gs = await make_server(pipelines=with_builtins(echo_pipeline()))
    project_id = await gs.new_project()
    submitted = await gs.generate(project_id, "one two three", pipeline="echo", inputs={"times": 2})
    assert submitted["generation"]["pipeline"] == "echo"
    assert submitted["generation"]["inputs"] == {"times": 2}
    assistant = submitted["assistant_message"]
    assert assistant["status"] == "pending" and assistant["content"] == "Echoing..."

    events = await _project_stream(gs, project_id)
    types = [e["type"] for e in events]
    started = events[types.index(ev.GENERATION_STARTED)]
    assert started["pipeline"] == "echo"
    assert started["stages"] == [{"id": s.id, "label": s.label} for s in STAGES]
    stages = [(e["stage"], e["status"], e["progress"]) for e in events if e["type"] == ev.STAGE]
    assert stages == [
        ("reading", "active", 0),
        ("reading", "complete", 20),
        ("echoing", "active", 20),
        ("echoing", "complete", 90),
        ("done", "complete", 100),
    ]
    words = [(e["word"], e["index"]) for e in events if e["type"] == "echo.word"]
    assert words == [("one", 0), ("two", 1), ("three", 2)] * 2
    said = "".join(e["delta"] for e in events if e["type"] == ev.MESSAGE_DELTA)
    assert said == ANSWER
    assert [e["words"] for e in events if e["type"] == "echo.noted"] == [3]
    completed = events[-1]
    assert completed["type"] == ev.GENERATION_COMPLETED
    assert completed["result"] == {"words": 3} and completed["summary"] == "Echoed 3 words."
    # The message created at once is the one updated in place: one assistant message.
    messages = (await gs.json("GET", f"/api/projects/{project_id}/messages"))["messages"]
    assert [(m["id"], m["status"], m["content"]) for m in messages[1:]] == [
        (assistant["id"], "success", ANSWER)
    ]
    final = await gs.json("GET", f"/api/generations/{submitted['generation']['id']}")
    assert (final["status"], final["stage"], final["progress"]) == ("completed", "done", 100)


async def test_the_pipelines_are_listed_with_their_stages_events_and_inputs(
    make_server: MakeServer,
) -> None:
    gs = await make_server(pipelines=with_builtins(echo_pipeline()))
    listed = await gs.json("GET", "/api/pipelines")
    assert listed["default"] == "code"
    by_name = {p["name"]: p for p in listed["pipelines"]}
    assert {"code", "echo"} <= set(by_name)
    assert by_name["echo"]["stages"] == [
        {"id": "reading", "label": "Reading", "start": 0, "end": 20},
        {"id": "echoing", "label": "Echoing", "start": 20, "end": 90},
        {"id": "done", "label": "Done", "start": 100, "end": 100},
    ]
    assert by_name["echo"]["events"] == ["echo.word", "echo.noted"]
    assert by_name["echo"]["inputs"] == INPUTS
    assert [s["id"] for s in by_name["code"]["stages"]] == [
        "planning",
        "generating",
        "validating",
        "complete",
    ]


@pytest.mark.parametrize(
    ("body", "code", "field"),
    [
        ({"pipeline": "nope"}, "unknown_pipeline", None),
        ({"pipeline": 7}, "invalid_request", "pipeline"),
        ({"pipeline": "echo", "inputs": []}, "invalid_request", "inputs"),
        ({"pipeline": "echo", "inputs": {"times": 9}}, "invalid_inputs", "inputs['times']"),
        ({"pipeline": "echo", "inputs": {"other": 1}}, "invalid_inputs", "inputs"),
        ({"pipeline": "code", "inputs": {"times": 1}}, "invalid_inputs", "inputs"),
    ],
)
async def test_a_bad_pipeline_or_inputs_is_a_400_and_nothing_is_stored(
    make_server: MakeServer, body: dict[str, Any], code: str, field: str | None
) -> None:
    gs = await make_server(pipelines=with_builtins(echo_pipeline()))
    project_id = await gs.new_project()
    before = await gs.events(project_id)
    reply = await gs.json(
        "POST",
        f"/api/projects/{project_id}/generations",
        status=400,
        json={"prompt": "one two", **body},
    )
    assert reply["error"]["code"] == code, reply
    if field is not None:
        assert reply["error"].get("field") == field, reply
    assert await gs.events(project_id) == before
    assert (await gs.json("GET", f"/api/projects/{project_id}/messages"))["messages"] == []


async def test_the_same_request_id_with_another_pipeline_is_a_409(
    make_server: MakeServer,
) -> None:
    gs = await make_server(pipelines=with_builtins(echo_pipeline()))
    project_id = await gs.new_project()
    first = await gs.generate(project_id, "one", pipeline="echo", client_request_id="r1")
    await gs.wait_generation(first["generation"]["id"])
    again = await gs.generate(project_id, "one", pipeline="echo", client_request_id="r1")
    assert again["created"] is False
    assert again["generation"]["id"] == first["generation"]["id"]
    reply = await gs.json(
        "POST",
        f"/api/projects/{project_id}/generations",
        status=409,
        json={"prompt": "one", "pipeline": "code", "client_request_id": "r1"},
    )
    assert reply["error"]["code"] == "client_request_id_reused"


@pytest.mark.parametrize(
    ("emitted", "detail"),
    [
        ({"type": "echo.word", "word": 5, "index": 0}, "echo.word payload['word']"),
        ({"type": "echo.word", "word": "x"}, "'index' is a required property"),
        ({"type": "nope.never", "x": 1}, "does not declare event type 'nope.never'"),
        ({"type": "generation.completed"}, "does not declare event type"),
    ],
)
async def test_an_event_its_pipeline_did_not_declare_as_it_is_fails_the_run_not_the_log(
    make_server: MakeServer,
    caplog: pytest.LogCaptureFixture,
    emitted: dict[str, Any],
    detail: str,
) -> None:
    async def hostile(ctx: Context) -> Outcome:
        ctx.say("before ")
        payload = dict(emitted)
        ctx.emit(payload.pop("type"), **payload)
        return Outcome()

    gs = await make_server(pipelines=with_builtins(echo_pipeline(hostile)))
    project_id = await gs.new_project()
    submitted = await gs.generate(project_id, "x", pipeline="echo")
    final = await gs.wait_generation(submitted["generation"]["id"])
    assert final["status"] == "failed"
    assert final["error"]["code"] == "internal_error"
    events = await gs.events(project_id)
    assert [e["type"] for e in events if e["type"] not in ("stage",)] == [
        ev.MESSAGE_CREATED,
        ev.MESSAGE_CREATED,
        ev.GENERATION_STARTED,
        ev.MESSAGE_DELTA,
        ev.MESSAGE_UPDATED,
        ev.GENERATION_FAILED,
    ]
    assert any(detail in r.getMessage() or detail in str(r.exc_info) for r in caplog.records)


async def test_a_pipeline_is_cancelled_and_timed_out_like_code_generation(
    make_server: MakeServer,
) -> None:
    reached = asyncio.Event()

    async def waits(ctx: Context) -> Outcome:
        ctx.say("thinking ")
        await ctx.flush()
        reached.set()
        await asyncio.Event().wait()  # a model that never answers
        return Outcome()

    gs = await make_server(
        pipelines=with_builtins(echo_pipeline(waits)), generation={"timeout_seconds": 60}
    )
    project_id = await gs.new_project()
    submitted = await gs.generate(project_id, "x", pipeline="echo")
    await asyncio.wait_for(reached.wait(), 10)
    gid = submitted["generation"]["id"]
    cancelled = await gs.json("POST", f"/api/generations/{gid}/cancel")
    assert cancelled["status"] == "cancelled"
    events = await gs.events(project_id)
    assert events[-1]["type"] == ev.GENERATION_CANCELLED
    messages = (await gs.json("GET", f"/api/projects/{project_id}/messages"))["messages"]
    assert (messages[1]["status"], messages[1]["content"]) == ("cancelled", "thinking")

    short = await make_server(
        pipelines=with_builtins(echo_pipeline(waits)), generation={"timeout_seconds": 0.5}
    )
    other = await short.new_project()
    reached.clear()
    timed = await short.generate(other, "x", pipeline="echo")
    final = await short.wait_generation(timed["generation"]["id"])
    assert (final["status"], final["error"]["code"]) == ("failed", "timeout")


async def test_a_pipeline_running_when_the_server_stops_ends_interrupted(
    make_server: MakeServer,
) -> None:
    reached = asyncio.Event()

    async def waits(ctx: Context) -> Outcome:
        ctx.say("partial ")
        await ctx.flush()
        reached.set()
        await asyncio.Event().wait()
        return Outcome()

    pipelines = with_builtins(echo_pipeline(waits))
    gs = await make_server(pipelines=pipelines)
    project_id = await gs.new_project()
    submitted = await gs.generate(project_id, "x", pipeline="echo")
    await asyncio.wait_for(reached.wait(), 10)
    port = gs.server.port
    await gs.server.stop()
    again = await make_server(port=port, pipelines=pipelines)
    final = await again.json("GET", f"/api/generations/{submitted['generation']['id']}")
    assert (final["status"], final["error"]["code"]) == ("failed", "interrupted")
    events = await again.events(project_id)
    assert events[-1]["type"] == ev.GENERATION_FAILED
    messages = (await again.json("GET", f"/api/projects/{project_id}/messages"))["messages"]
    assert (messages[1]["status"], messages[1]["content"]) == ("error", "partial")


# -- loading ----------------------------------------------------------------------------

# Entry points of the test's own (real EntryPoint objects, loaded by importlib as an
# installed package's would be): what they name is defined here.
GOOD = echo_pipeline(name="good")
CLASH = echo_pipeline(name="code")
NOT_A_PIPELINE = {"name": "dict"}


def make_good() -> Pipeline:
    return echo_pipeline(name="made")


def _point(name: str, attribute: str) -> EntryPoint:
    return EntryPoint(name, f"{__name__}:{attribute}", GROUP)


@pytest.mark.sqlite_only("loading entry points touches no storage")
def test_entry_points_give_pipelines_objects_or_factories() -> None:
    loaded = load_pipelines([_point("good", "GOOD"), _point("made", "make_good")])
    assert set(loaded) == {p.name for p in builtins()} | {"good", "made"}


@pytest.mark.sqlite_only("loading entry points touches no storage")
@pytest.mark.parametrize(
    ("attribute", "message"),
    [
        ("CLASH", "pipeline 'code' (entry point 'x' "),
        ("NOT_A_PIPELINE", "gave dict, not a Pipeline"),
        ("MISSING", "could not be loaded"),
    ],
)
def test_a_pipeline_that_cannot_load_stops_the_start_with_its_name(
    attribute: str, message: str
) -> None:
    with pytest.raises(PipelineError, match=message.replace("(", r"\(")):
        load_pipelines([_point("x", attribute)])


@pytest.mark.sqlite_only("declaring a pipeline touches no storage")
@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"name": "Bad Name"}, "its name must be"),
        ({"stages": ()}, "declares no stage"),
        ({"stages": (Stage("a", "A", 0, 50), Stage("a", "A", 50, 100))}, "stage ids repeat"),
        ({"stages": (Stage("a", "A", 50, 60), Stage("b", "B", 10, 100))}, "band must rise"),
        ({"stages": (Stage("a", "A", 0, 50),)}, "last stage must end at 100"),
        ({"events": (EventSpec("generation.completed", {}),)}, "is the service's own"),
        ({"events": (EventSpec("message.x", {}),)}, "is the service's own"),
        ({"events": (EventSpec("app.x", {}),)}, "is the service's own"),
        ({"events": (EventSpec("stage", {}),)}, "is the service's own"),
        ({"events": (EventSpec("file.delta", {}),)}, "is the service's own"),
        ({"events": (EventSpec("Not A Type", {}),)}, "dotted lowercase words"),
    ],
)
def test_a_pipeline_declared_wrong_is_refused_at_once(change: dict[str, Any], message: str) -> None:
    fields: dict[str, Any] = {"name": "x", "label": "X", "stages": STAGES, "run": echo}
    with pytest.raises(ValueError, match=message):
        Pipeline(**{**fields, **change})


@pytest.mark.sqlite_only("loading entry points touches no storage")
def test_two_pipelines_declaring_one_event_type_is_refused() -> None:
    with pytest.raises(PipelineError, match="already declared by pipeline 'good'"):
        load_pipelines([_point("good", "GOOD"), _point("twin", "TWIN")])


TWIN = Pipeline(
    name="twin", label="Twin", stages=STAGES, run=echo, events=(EventSpec("good.word", WORD),)
)


@pytest.mark.sqlite_only("reading the config touches no storage")
def test_a_default_pipeline_that_does_not_exist_stops_the_start(tmp_path: Path) -> None:
    settings = base_settings(tmp_path).replace(generation={"pipeline": "nope"})
    with pytest.raises(ConfigError, match=r"generation\.pipeline: no pipeline named 'nope'"):
        create_app(settings)


async def test_a_project_s_default_pipeline_runs_when_a_submit_names_none(
    make_server: MakeServer,
) -> None:
    gs = await make_server(pipelines=with_builtins(echo_pipeline()))
    created = await gs.json(
        "POST", "/api/projects", status=201, json={"name": "echoes", "pipeline": "echo"}
    )
    assert created["pipeline"] == "echo"
    project_id = created["id"]
    first = await gs.generate(project_id, "one two")
    assert first["generation"]["pipeline"] == "echo"
    assert first["assistant_message"]["content"] == "Echoing..."
    await gs.wait_generation(first["generation"]["id"])

    cleared = await gs.json("PATCH", f"/api/projects/{project_id}", json={"pipeline": None})
    assert cleared["pipeline"] is None
    second = await gs.generate(project_id, "a todo api")
    assert second["generation"]["pipeline"] == "code"  # generation.pipeline, the config's
    await gs.wait_generation(second["generation"]["id"])

    again = await gs.json("PATCH", f"/api/projects/{project_id}", json={"pipeline": "echo"})
    assert again["pipeline"] == "echo"
    assert (await gs.json("GET", f"/api/projects/{project_id}"))["pipeline"] == "echo"


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code"),
    [
        ("POST", "/api/projects", {"name": "x", "pipeline": "nope"}, 400, "unknown_pipeline"),
        ("POST", "/api/projects", {"name": "x", "pipeline": None}, 400, "invalid_request"),
        ("PATCH", "{project}", {"pipeline": "nope"}, 400, "unknown_pipeline"),
        ("PATCH", "{project}", {"pipeline": 3}, 400, "invalid_request"),
        ("PATCH", "{project}", {}, 400, "invalid_request"),
        ("PATCH", "{project}", {"pipeline": "echo", "name": "y"}, 400, "invalid_request"),
        ("PATCH", "/api/projects/prj_missing", {"pipeline": "echo"}, 404, "not_found"),
    ],
)
async def test_a_default_pipeline_that_is_not_one_is_refused_and_nothing_changes(
    make_server: MakeServer,
    method: str,
    path: str,
    body: dict[str, Any],
    status: int,
    code: str,
) -> None:
    gs = await make_server(pipelines=with_builtins(echo_pipeline()))
    project_id = await gs.new_project()
    before = await gs.json("GET", "/api/projects")
    url = f"/api/projects/{project_id}" if path == "{project}" else path
    reply = await gs.json(method, url, status=status, json=body)
    assert reply["error"]["code"] == code, reply
    assert await gs.json("GET", "/api/projects") == before


async def test_a_pipeline_fails_its_run_with_its_own_error_code(make_server: MakeServer) -> None:
    async def refuses(ctx: Context) -> Outcome:
        ctx.say("looked, ")
        raise RunFailed("nothing_to_echo", "the prompt held nothing to echo", retryable=False)

    gs = await make_server(pipelines=with_builtins(echo_pipeline(refuses)))
    project_id = await gs.new_project()
    submitted = await gs.generate(project_id, "x", pipeline="echo")
    final = await gs.wait_generation(submitted["generation"]["id"])
    assert final["error"] == {
        "code": "nothing_to_echo",
        "message": "the prompt held nothing to echo",
        "retryable": False,
    }
    failed = (await gs.events(project_id))[-1]
    assert (failed["type"], failed["code"]) == (ev.GENERATION_FAILED, "nothing_to_echo")
    messages = (await gs.json("GET", f"/api/projects/{project_id}/messages"))["messages"]
    assert (messages[1]["status"], messages[1]["content"]) == ("error", "looked,")
