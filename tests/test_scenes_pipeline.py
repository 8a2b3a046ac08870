"""The `scenes` pipeline (service/pipelines/scenes.py) end to end on a real server: a
project's video edited turn by turn (add, edit, trim, delete), each turn's raw SSE bytes
equal to the stored log, GET /api/projects/{pid}/scenes equal to what the scene.* events
said, one assistant message per turn (created pending, updated in place), every event
valid against its served schema; the tool chosen through the real openai client (the
fake server of tests/fake_openai.py), hostile choices refused with nothing written, and a
cancel or a server stop in the middle leaving one terminal event and no half-applied
scene."""

from __future__ import annotations

import contextlib
import functools
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.eventlog import event as ev
from service.eventlog import sse
from service.pipelines import scenes
from service.pipelines.scene_brain import DECIDE_INSTRUCTIONS, offline_choice
from service.pipelines.scene_tools import MAX_REPLY_CHARS, MAX_TITLE_CHARS, parse_reply
from service.storage.interface import SceneRow
from tests.conftest import Genstream, MakeServer
from tests.fake_openai import FakeOpenAI, Gate, Reply, answer, text_events
from tests.helpers import schema_mismatches, wait_until
from tests.sse_reader import Frame, SSEReader
from tests.test_openai_provider import api_key, fake, openai_server

pytestmark = pytest.mark.backends
__all__ = ["api_key", "fake"]  # fixtures: the fake OpenAI endpoint and its key

TIMEOUT = 20.0
SCENE_TYPES = (scenes.ADDED, scenes.EDITED, scenes.TRIMMED, scenes.DELETED)
# Every turn's events but the chat text, in order (the scene.* one is the tool's).
TURN = [
    ev.MESSAGE_CREATED,
    ev.MESSAGE_CREATED,
    ev.GENERATION_STARTED,
    ev.STAGE,
    scenes.TOOL,
    ev.STAGE,
    ev.STAGE,
    "scene.*",
    ev.STAGE,
    ev.STAGE,
    ev.STAGE,
    ev.MESSAGE_UPDATED,
    ev.STAGE,
    ev.GENERATION_COMPLETED,
]


@dataclass
class Turn:
    """One generation of the scenes pipeline, as its project stream showed it."""

    submitted: dict[str, Any]
    events: list[dict[str, Any]]  # the stored log of the turn, equal to the frames

    @property
    def generation(self) -> dict[str, Any]:
        return self.events[-1]

    def of_type(self, *types: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] in types]

    @property
    def said(self) -> str:
        return "".join(e["delta"] for e in self.of_type(ev.MESSAGE_DELTA))


@contextlib.asynccontextmanager
async def project_stream(gs: Genstream, project_id: str, after: int) -> AsyncIterator[SSEReader]:
    url = f"{gs.url}/api/projects/{project_id}/stream"
    async with gs.http.get(url, headers={"Last-Event-ID": str(after)}) as response:
        yield SSEReader(response)


async def until(reader: SSEReader, done: Callable[[Frame], bool]) -> list[Frame]:
    """The stream's events up to and with the first that is `done`."""
    frames = []
    while True:
        frame = await reader.event(timeout=TIMEOUT)
        frames.append(frame)
        if done(frame):
            return frames


def terminal(frame: Frame) -> bool:
    return frame.event in ev.TERMINAL_TYPES


async def logged(gs: Genstream, project_id: str, after: int, frames: list[Frame]) -> list[Any]:
    """The stored log after `after`, checked to be byte for byte the frames streamed."""
    stored = await gs.events(project_id, after)
    expected = [sse.frame(orjson.dumps(e), event=e["type"], event_id=e["id"]) for e in stored]
    assert [f.raw for f in frames] == expected
    return stored


async def cursor(gs: Genstream, project_id: str) -> int:
    stored = await gs.events(project_id)
    return int(stored[-1]["id"]) if stored else 0


async def turn(gs: Genstream, project_id: str, prompt: str) -> Turn:
    after = await cursor(gs, project_id)
    async with project_stream(gs, project_id, after) as reader:
        submitted = await gs.generate(project_id, prompt, pipeline="scenes")
        frames = await until(reader, terminal)
    return Turn(submitted, await logged(gs, project_id, after, frames))


def replayed(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The scenes the scene.* events say the project has, by position then id."""
    held: dict[str, dict[str, Any]] = {}
    for event in events:
        if event["type"] == scenes.DELETED:
            del held[event["scene_id"]]
        elif event["type"] in SCENE_TYPES:
            held[event["scene"]["id"]] = event["scene"]
    return sorted(held.values(), key=lambda scene: (scene["position"], scene["id"]))


async def stored_scenes(gs: Genstream, project_id: str) -> list[dict[str, Any]]:
    listed: list[dict[str, Any]] = (await gs.json("GET", f"/api/projects/{project_id}/scenes"))[
        "scenes"
    ]
    return listed


async def assert_scenes_as_told(gs: Genstream, project_id: str) -> list[dict[str, Any]]:
    listed = await stored_scenes(gs, project_id)
    assert listed == replayed(await gs.events(project_id))
    return listed


async def assistant_messages(gs: Genstream, project_id: str) -> list[dict[str, Any]]:
    messages = (await gs.json("GET", f"/api/projects/{project_id}/messages"))["messages"]
    return [m for m in messages if m["role"] == "assistant"]


def check_turn(turn: Turn, tool: str) -> dict[str, Any]:
    """The turn's events in their order, its one assistant message created pending and
    updated in place to success with the answer; the scene the tool's event carries."""
    changed = scenes.CHANGED[tool]
    types = [e["type"] for e in turn.events if e["type"] != ev.MESSAGE_DELTA]
    assert types == [changed if t == "scene.*" else t for t in TURN]
    stages = [(e["stage"], e["status"], e["progress"]) for e in turn.of_type(ev.STAGE)]
    assert stages == [
        ("deciding", "active", 0),
        ("deciding", "complete", 20),
        ("editing", "active", 20),
        ("editing", "complete", 80),
        ("answering", "active", 80),
        ("answering", "complete", 99),
        ("complete", "complete", 100),
    ]
    assert [e["tool"] for e in turn.of_type(scenes.TOOL)] == [tool]
    assistant = turn.submitted["assistant_message"]
    assert (assistant["status"], assistant["content"]) == ("pending", "Editing the scenes...")
    created = turn.of_type(ev.MESSAGE_CREATED)[1]
    assert (created["message"]["id"], created["message"]["status"]) == (assistant["id"], "pending")
    (updated,) = turn.of_type(ev.MESSAGE_UPDATED)
    assert updated["message"] == {"id": assistant["id"], "status": "success", "content": turn.said}
    assert turn.said
    (event,) = turn.of_type(changed)
    scene_id = event["scene_id"] if tool == "delete" else event["scene"]["id"]
    assert turn.generation["result"] == {"tool": tool, "scene_id": scene_id}
    return event


# -- offline: the whole editor, turn by turn ----------------------------------------------


async def test_add_edit_trim_delete_each_end_to_end(gs: Genstream) -> None:
    project_id = await gs.new_project()
    turns = []

    first = await turn(gs, project_id, "Add a scene of a sunset over the bay, 4 seconds")
    sunset = check_turn(first, "add")["scene"]
    assert (sunset["title"], sunset["duration_ms"], sunset["position"]) == (
        "A sunset over the bay",
        4000,
        1,
    )
    assert first.said == (
        'Added scene 1, "A sunset over the bay" (4 s). The video now has 1 scene, 4 s in all.'
    )
    assert await assert_scenes_as_told(gs, project_id) == [sunset]
    turns.append(first)

    second = await turn(gs, project_id, "add a scene of the city at night")
    city = check_turn(second, "add")["scene"]
    assert (city["title"], city["duration_ms"], city["position"]) == ("The city at night", 5000, 2)
    assert await assert_scenes_as_told(gs, project_id) == [sunset, city]
    turns.append(second)

    third = await turn(gs, project_id, "rename scene 1 to 'Golden hour'")
    renamed = check_turn(third, "edit")["scene"]
    assert third.of_type(scenes.TOOL)[0]["arguments"] == {
        "scene_id": sunset["id"],
        "title": "Golden hour",
    }
    assert renamed == {**sunset, "title": "Golden hour", "updated_at": renamed["updated_at"]}
    assert await assert_scenes_as_told(gs, project_id) == [renamed, city]
    turns.append(third)

    fourth = await turn(gs, project_id, "trim the city at night to 2.5 seconds")
    trimmed = check_turn(fourth, "trim")["scene"]
    assert (trimmed["id"], trimmed["duration_ms"]) == (city["id"], 2500)
    assert (
        fourth.said == 'Trimmed scene 2, "The city at night" to 2.5 s. The video is now 6.5 s long.'
    )
    assert await assert_scenes_as_told(gs, project_id) == [renamed, trimmed]
    turns.append(fourth)

    fifth = await turn(gs, project_id, "delete scene 1")
    assert check_turn(fifth, "delete")["scene_id"] == sunset["id"]
    assert await assert_scenes_as_told(gs, project_id) == [trimmed]
    turns.append(fifth)

    # Refreshing shows each turn's two messages once: the assistant's, updated in place.
    assistants = await assistant_messages(gs, project_id)
    assert [(m["id"], m["status"], m["content"]) for m in assistants] == [
        (t.submitted["assistant_message"]["id"], "success", t.said) for t in turns
    ]
    everything = await gs.events(project_id)
    assert await schema_mismatches(gs.json, everything) == []


async def test_the_scenes_pipeline_is_listed_with_its_stages_and_events(gs: Genstream) -> None:
    listed = {p["name"]: p for p in (await gs.json("GET", "/api/pipelines"))["pipelines"]}
    assert listed["scenes"]["stages"] == [
        {"id": "deciding", "label": "Choosing an edit", "start": 0, "end": 20},
        {"id": "editing", "label": "Editing the scenes", "start": 20, "end": 80},
        {"id": "answering", "label": "Writing the answer", "start": 80, "end": 99},
        {"id": "complete", "label": "Complete", "start": 100, "end": 100},
    ]
    assert listed["scenes"]["events"] == [scenes.TOOL, *SCENE_TYPES]
    served = (await gs.json("GET", "/api/events/schemas"))["$defs"]
    assert {scenes.TOOL, *SCENE_TYPES} <= set(served)


# -- the openai provider: the same tools, chosen by a model over the wire -----------------


def choice(tool: str, **arguments: Any) -> str:
    return json.dumps({"tool": tool, "arguments": arguments})


async def scripted_turn(
    gs: Genstream, fake: FakeOpenAI, project_id: str, reply: str, said: str = "Done."
) -> Turn:
    fake.script(answer(reply), answer(said))
    return await turn(gs, project_id, "do it")


async def test_the_model_chooses_the_tool_through_the_openai_provider(
    make_server: MakeServer, fake: FakeOpenAI
) -> None:
    gs = await openai_server(make_server, fake)
    project_id = await gs.new_project()
    first = await scripted_turn(
        gs, fake, project_id, choice("add", title="  Opening  ", duration_ms=3000.0), "Added it."
    )
    opening = check_turn(first, "add")["scene"]
    assert (opening["title"], opening["description"], opening["duration_ms"]) == (
        "Opening",
        "",
        3000,
    )
    assert first.said == "Added it."
    decide, answering = fake.requests[0].body["messages"], fake.requests[1].body["messages"]
    assert decide[0] == {"role": "system", "content": DECIDE_INSTRUCTIONS}
    assert "The user asks:\ndo it" in decide[-1]["content"]
    assert "What was done:\nAdded scene 1" in answering[-1]["content"]

    # The next choice names the scene it was shown.
    edit = choice("edit", scene_id=opening["id"], description="Fade in\nslowly")
    second = await scripted_turn(gs, fake, project_id, edit)
    assert check_turn(second, "edit")["scene"]["description"] == "Fade in\nslowly"
    assert f'"scene_id":"{opening["id"]}"' in fake.requests[2].body["messages"][-1]["content"]
    assert await assert_scenes_as_told(gs, project_id) == [
        second.of_type(scenes.EDITED)[0]["scene"]
    ]
    assert await schema_mismatches(gs.json, await gs.events(project_id)) == []


# Each a model's tool choice that must be refused: (the reply, given the project's scene
# id and another project's; what the failure says).
HOSTILE: dict[str, tuple[Callable[[str, str], str], str]] = {
    "unknown tool": (lambda own, other: choice("explode", scene_id=own), "tool: is not one of"),
    "another project's scene": (
        lambda own, other: choice("delete", scene_id=other),
        "this project has no scene {other}",
    ),
    "a scene that does not exist": (
        lambda own, other: choice("trim", scene_id="scn_0000", duration_ms=1),
        "this project has no scene scn_0000",
    ),
    "a huge title": (
        lambda own, other: choice("edit", scene_id=own, title="x" * 10_000),
        f"arguments.title: is longer than {MAX_TITLE_CHARS} characters",
    ),
    "a title of control characters": (
        lambda own, other: choice("add", title="a\u0000b", duration_ms=1),
        "arguments.title: holds control characters",
    ),
    "a title on two lines": (
        lambda own, other: choice("edit", scene_id=own, title="Intro\n"),
        "arguments.title: holds control characters",
    ),
    "a blank title": (
        lambda own, other: choice("edit", scene_id=own, title=" \u3000 "),
        "arguments.title: has nothing visible in it",
    ),
    "a lone surrogate": (
        lambda own, other: choice("edit", scene_id=own, description="a\ud800"),
        "arguments.description: holds control characters or lone surrogates",
    ),
    "not JSON": (lambda own, other: "Sure! I'll add a scene for you.", "is not JSON"),
    "prose and a code fence": (
        lambda own, other: "Done:\n```json\n" + choice("delete", scene_id=own) + "\n```",
        "is not JSON",
    ),
    "JSON that is not an object": (lambda own, other: "[1, 2]", "not a JSON object"),
    "a key twice": (
        lambda own, other: '{"tool": "delete", "tool": "add", "arguments": {}}',
        "repeated",
    ),
    "an argument the tool does not take": (
        lambda own, other: choice("add", title="a", duration_ms=1, position=0),
        "arguments: Additional properties are not allowed",
    ),
    "a duration out of bounds": (
        lambda own, other: choice("add", title="a", duration_ms=10**12),
        "arguments.duration_ms: is more than 600000",
    ),
    "a boolean duration": (
        lambda own, other: choice("add", title="a", duration_ms=True),
        "arguments.duration_ms: is not of type integer",
    ),
    "a trim that lengthens": (
        lambda own, other: choice("trim", scene_id=own, duration_ms=9000),
        "a trim shortens a scene",
    ),
    "an edit that changes nothing": (
        lambda own, other: choice("edit", scene_id=own),
        "arguments: names nothing to change",
    ),
    "a reply past the bound": (
        lambda own, other: choice("add", title="a", duration_ms=1) + " " * MAX_REPLY_CHARS,
        f"longer than {MAX_REPLY_CHARS:,} characters",
    ),
}


@pytest.mark.parametrize("case", list(HOSTILE))
async def test_a_hostile_tool_choice_fails_the_run_and_writes_nothing(
    make_server: MakeServer, fake: FakeOpenAI, case: str
) -> None:
    gs = await openai_server(make_server, fake)
    other_project = await gs.new_project("other")
    other = await scripted_turn(gs, fake, other_project, choice("add", title="B", duration_ms=1))
    other_scene = other.of_type(scenes.ADDED)[0]["scene"]["id"]
    project_id = await gs.new_project()
    own = await scripted_turn(gs, fake, project_id, choice("add", title="A", duration_ms=5000))
    own_scene = own.of_type(scenes.ADDED)[0]["scene"]["id"]
    before = await stored_scenes(gs, project_id)
    others_before = await stored_scenes(gs, other_project)

    build, says = HOSTILE[case]
    fake.script(answer(build(own_scene, other_scene)))
    failed = await turn(gs, project_id, "do it")

    error = failed.generation
    message = error["message"]
    assert (error["type"], error["code"]) == (ev.GENERATION_FAILED, "bad_response"), message
    assert says.format(other=other_scene) in message, message
    assert len(error["message"]) < 500  # said in words, not the model's text
    assert [e["type"] for e in failed.events if e["type"] in ev.TERMINAL_TYPES] == [
        ev.GENERATION_FAILED
    ]
    assert failed.of_type(scenes.TOOL, *SCENE_TYPES) == []
    assert await stored_scenes(gs, project_id) == before
    assert await stored_scenes(gs, other_project) == others_before
    assistant = (await assistant_messages(gs, project_id))[-1]
    assert (assistant["id"], assistant["status"]) == (
        failed.submitted["assistant_message"]["id"],
        "error",
    )
    assert len(fake.requests) == 5  # no answer asked for after a refused choice
    assert await schema_mismatches(gs.json, failed.events) == []


# -- a cancel or a stop in the middle ---------------------------------------------------

# Where the model is held (a Gate the test never opens): in the middle of its tool choice,
# or in the middle of the answer, once the scene is stored.
PHASES = ("deciding", "answering")


async def held_run(make_server: MakeServer, fake: FakeOpenAI, phase: str) -> HeldRun:
    """A server and a scenes run on it, held at `phase` (returned once it is there)."""
    gs = await openai_server(make_server, fake)
    project_id = await gs.new_project()
    reply = choice("add", title="Held", duration_ms=2000)
    async with project_stream(gs, project_id, 0) as reader:
        if phase == "deciding":
            fake.script(Reply(steps=(*text_events([reply[:10]], finish=None), Gate())))
            submitted = await gs.generate(project_id, "hold", pipeline="scenes")
            # The choice is read whole before anything is said: its request is the sign.
            await wait_until(lambda: len(fake.requests) == 1, TIMEOUT)
        else:
            held = Reply(steps=(*text_events(["I added "], finish=None), Gate()))
            fake.script(answer(reply), held)
            submitted = await gs.generate(project_id, "hold", pipeline="scenes")
            await until(reader, lambda frame: frame.event == ev.MESSAGE_DELTA)
    return HeldRun(gs, project_id, submitted["generation"]["id"])


@dataclass
class HeldRun:
    gs: Genstream
    project_id: str
    generation_id: str


async def check_ended(
    gs: Genstream, project_id: str, frames: list[Frame], final: str, phase: str
) -> None:
    """One terminal event, the log as streamed, and the scenes whole: none before the
    edit, the one added (with its event) once past it."""
    events = await logged(gs, project_id, 0, frames)
    assert [e["type"] for e in events if e["type"] in ev.TERMINAL_TYPES] == [final]
    listed = await assert_scenes_as_told(gs, project_id)
    assert [s["title"] for s in listed] == ([] if phase == "deciding" else ["Held"])
    assert await schema_mismatches(gs.json, events) == []


@pytest.mark.parametrize("phase", PHASES)
async def test_a_cancel_in_the_middle_ends_once_with_no_half_applied_scene(
    make_server: MakeServer, fake: FakeOpenAI, phase: str
) -> None:
    run = await held_run(make_server, fake, phase)
    gs, project_id = run.gs, run.project_id
    cancelled = await gs.json("POST", f"/api/generations/{run.generation_id}/cancel")
    assert cancelled["status"] == "cancelled"
    async with project_stream(gs, project_id, 0) as reader:
        frames = await until(reader, terminal)
    await check_ended(gs, project_id, frames, ev.GENERATION_CANCELLED, phase)
    (assistant,) = await assistant_messages(gs, project_id)
    assert assistant["status"] == "cancelled"
    assert assistant["content"] == ("" if phase == "deciding" else "I added")


@pytest.mark.parametrize("phase", PHASES)
async def test_a_server_stop_in_the_middle_ends_interrupted_with_no_half_applied_scene(
    make_server: MakeServer, fake: FakeOpenAI, phase: str
) -> None:
    run = await held_run(make_server, fake, phase)
    project_id, port = run.project_id, run.gs.server.port
    await run.gs.server.stop()
    again = await openai_server(functools.partial(make_server, port=port), fake)
    final = await again.json("GET", f"/api/generations/{run.generation_id}")
    assert (final["status"], final["error"]["code"]) == ("failed", "interrupted")
    async with project_stream(again, project_id, 0) as reader:
        frames = await until(reader, terminal)
    await check_ended(again, project_id, frames, ev.GENERATION_FAILED, phase)
    (assistant,) = await assistant_messages(again, project_id)
    assert assistant["status"] == "error"


# -- the offline brain ---------------------------------------------------------------


def _scene(number: int, title: str, duration_ms: int) -> SceneRow:
    return SceneRow(f"scn_{number:020x}", "prj", number, title, "", duration_ms, 1, 1)


@settings(max_examples=200, deadline=None)
@given(
    prompt=st.text(min_size=1, max_size=400),
    titles=st.lists(st.text(min_size=1, max_size=40).filter(str.strip), max_size=4),
    verb=st.sampled_from(["", "delete ", "trim ", "rename scene 1 to ", "describe it as "]),
)
def test_the_offline_choice_is_always_one_the_strict_reader_takes(
    prompt: str, titles: list[str], verb: str
) -> None:
    rows = [_scene(n, " ".join(t.split()) or "x", 1000 * n) for n, t in enumerate(titles, 1)]
    reply = orjson.dumps(offline_choice(verb + prompt, rows)).decode()
    call = parse_reply(reply, rows, "prj")
    assert call.tool in ("add", "edit", "delete", "trim")
    assert offline_choice(verb + prompt, rows) == offline_choice(verb + prompt, rows)
