"""A pipeline from another package (issue 14 item 2): examples/genstream-quiz, installed
beside genstream (`make install`), found through its entry point by the same
load_pipelines() a server runs, and given every guarantee of the built-ins: end to end
over real sockets (raw SSE bytes equal to the log, each event valid against the served
schemas, the assistant message updated in place), cancel, and a server process killed
with SIGKILL in the middle of a run, then restarted."""

from __future__ import annotations

import signal
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import genstream_quiz
import orjson
import pytest

from service.eventlog import event as ev
from service.pipelines import GROUP, load_pipelines
from tests.backends import SHORT_LEASE_SECONDS, Store
from tests.conftest import Genstream, MakeServer
from tests.helpers import schema_mismatches
from tests.process import ServerProcess, server_process
from tests.sse_reader import Frame, SSEReader

pytestmark = pytest.mark.backends

TOPIC = "the solar system"
QUESTIONS = 3
# Slow enough that a run is still streaming its questions when the test acts (about 1 s
# a question); every wait is on an event, bounded.
SLOW_TOKENS_PER_SECOND = 25
TIMEOUT = 30.0

Client = Genstream | ServerProcess


def expected_questions(count: int = QUESTIONS) -> list[dict[str, Any]]:
    """The questions the offline provider's answer holds, as the pipeline emits them."""
    lines = genstream_quiz.offline_answer(TOPIC, count).splitlines()
    parsed = [genstream_quiz.parse_question(line) for line in lines]
    return [{"index": i, **q} for i, q in enumerate(parsed) if q is not None]


async def submit(client: Client, project_id: str, **inputs: Any) -> dict[str, Any]:
    body = {"prompt": TOPIC, "pipeline": "quiz", "inputs": {"questions": QUESTIONS, **inputs}}
    path = f"/api/projects/{project_id}/generations"
    submitted: dict[str, Any] = await client.json("POST", path, status=202, json=body)
    return submitted


async def frames_until(client: Client, project_id: str, last: str) -> list[Frame]:
    """The project stream from its start, raw frames, up to the first event of type `last`."""
    frames: list[Frame] = []
    url = f"{client.url}/api/projects/{project_id}/stream"
    async with client.http.get(url, headers={"Last-Event-ID": "0"}) as response:
        reader = SSEReader(response)
        while not frames or frames[-1].event != last:
            frames.append(await reader.event(timeout=TIMEOUT))
    return frames


async def to_the_end(client: Client, project_id: str) -> list[Frame]:
    """The project stream from its start to its generation's end."""
    frames: list[Frame] = []
    url = f"{client.url}/api/projects/{project_id}/stream"
    async with client.http.get(url, headers={"Last-Event-ID": "0"}) as response:
        reader = SSEReader(response)
        while not frames or frames[-1].event not in ev.TERMINAL_TYPES:
            frames.append(await reader.event(timeout=TIMEOUT))
    return frames


def frame_bytes(event: dict[str, Any]) -> bytes:
    """The SSE frame of a stored event, as the stream handler writes it."""
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (
        event["id"],
        event["type"].encode(),
        orjson.dumps(event),
    )


async def messages(client: Client, project_id: str) -> list[dict[str, Any]]:
    listed: list[dict[str, Any]] = (
        await client.json("GET", f"/api/projects/{project_id}/messages")
    )["messages"]
    return listed


# -- found where an installed package's entry point is ---------------------------------


@pytest.mark.sqlite_only("reading a package's metadata touches no storage")
def test_the_installed_package_s_entry_point_gives_its_pipeline() -> None:
    points = {point.name: point for point in entry_points(group=GROUP)}
    assert "quiz" in points, f"examples/genstream-quiz is not installed: make install ({points})"
    point = points["quiz"]
    assert point.value == "genstream_quiz:PIPELINE"
    assert point.dist is not None and point.dist.name == "genstream-quiz"
    loaded = load_pipelines()
    assert loaded["quiz"] is genstream_quiz.PIPELINE
    assert {"code", "quiz"} <= set(loaded)


async def test_a_server_lists_the_package_s_pipeline_and_serves_its_schemas(
    gs: Genstream,
) -> None:
    listed = await gs.json("GET", "/api/pipelines")
    quiz = {p["name"]: p for p in listed["pipelines"]}["quiz"]
    assert quiz["label"] == "Quiz"
    assert quiz["stages"] == [
        {"id": "topic", "label": "Reading the topic", "start": 0, "end": 10},
        {"id": "questions", "label": "Writing the questions", "start": 10, "end": 90},
        {"id": "complete", "label": "Complete", "start": 100, "end": 100},
    ]
    assert quiz["events"] == ["quiz.topic", "quiz.question"]
    assert quiz["inputs"] == genstream_quiz.INPUTS
    schemas = (await gs.json("GET", "/api/events/schemas"))["$defs"]
    assert {"quiz.topic", "quiz.question"} <= set(schemas)


# -- its runs ----------------------------------------------------------------------------


async def test_the_package_s_pipeline_runs_end_to_end_over_real_sockets(gs: Genstream) -> None:
    project_id = await gs.new_project()
    submitted = await submit(gs, project_id)
    generation = submitted["generation"]
    assert (generation["pipeline"], generation["inputs"]) == ("quiz", {"questions": QUESTIONS})
    assistant = submitted["assistant_message"]
    assert (assistant["status"], assistant["content"]) == ("pending", "Writing a quiz...")

    frames = await to_the_end(gs, project_id)
    stored = await gs.events(project_id)
    # Byte for byte what the log holds, every event once, in order.
    assert [f.raw for f in frames] == [frame_bytes(e) for e in stored]
    assert await schema_mismatches(gs.json, stored) == []

    types = [e["type"] for e in stored]
    started = stored[types.index(ev.GENERATION_STARTED)]
    assert started["pipeline"] == "quiz"
    assert [s["id"] for s in started["stages"]] == ["topic", "questions", "complete"]
    assert [(e["topic"], e["questions"]) for e in stored if e["type"] == "quiz.topic"] == [
        (TOPIC, QUESTIONS)
    ]
    questions = [
        {k: e[k] for k in ("index", "question", "choices", "answer")}
        for e in stored
        if e["type"] == "quiz.question"
    ]
    assert questions == expected_questions()
    stages = [(e["stage"], e["status"], e["progress"]) for e in stored if e["type"] == ev.STAGE]
    assert stages == [
        ("topic", "active", 0),
        ("topic", "complete", 10),
        ("questions", "active", 10),
        ("questions", "active", 36),
        ("questions", "active", 63),
        ("questions", "active", 90),
        ("questions", "complete", 90),
        ("complete", "complete", 100),
    ]
    completed = stored[-1]
    assert completed["type"] == ev.GENERATION_COMPLETED
    assert completed["result"] == {
        "topic": TOPIC,
        "questions": [{k: q[k] for k in ("question", "choices", "answer")} for q in questions],
        "skipped": 0,
    }
    # The message created at once is the one updated in place, with what was said.
    said = "".join(e["delta"] for e in stored if e["type"] == ev.MESSAGE_DELTA)
    assert said.startswith(f"A quiz on {TOPIC}:") and "Answers: 1 b, 2 a, 3 d." in said
    assert [(m["id"], m["status"], m["content"]) for m in await messages(gs, project_id)][1:] == [
        (assistant["id"], "success", said.strip())
    ]
    final = await gs.json("GET", f"/api/generations/{generation['id']}")
    assert (final["status"], final["stage"], final["progress"]) == ("completed", "complete", 100)


async def test_the_package_s_pipeline_refuses_inputs_its_schema_does_not_allow(
    gs: Genstream,
) -> None:
    project_id = await gs.new_project()
    for inputs, where in (({"questions": 0}, "inputs['questions']"), ({"x": 1}, "inputs")):
        reply = await gs.json(
            "POST",
            f"/api/projects/{project_id}/generations",
            status=400,
            json={"prompt": TOPIC, "pipeline": "quiz", "inputs": inputs},
        )
        assert (reply["error"]["code"], reply["error"]["field"]) == ("invalid_inputs", where)
    assert await gs.events(project_id) == []


async def test_cancelling_the_package_s_pipeline_mid_run(make_server: MakeServer) -> None:
    gs = await make_server(offline={"tokens_per_second": SLOW_TOKENS_PER_SECOND})
    project_id = await gs.new_project()
    submitted = await submit(gs, project_id)
    await frames_until(gs, project_id, "quiz.question")  # streaming its questions
    cancelled = await gs.json("POST", f"/api/generations/{submitted['generation']['id']}/cancel")
    assert cancelled["status"] == "cancelled"

    stored = await gs.events(project_id)
    terminal = [e for e in stored if e["type"] in ev.TERMINAL_TYPES]
    assert [e["type"] for e in terminal] == [ev.GENERATION_CANCELLED] and terminal[0] is stored[-1]
    assert ev.GENERATION_COMPLETED not in {e["type"] for e in stored}
    assert await schema_mismatches(gs.json, stored) == []
    said = "".join(e["delta"] for e in stored if e["type"] == ev.MESSAGE_DELTA)
    assistant = (await messages(gs, project_id))[1]
    assert (assistant["id"], assistant["status"]) == (
        submitted["assistant_message"]["id"],
        "cancelled",
    )
    assert assistant["content"] == said.strip() != ""


async def test_a_server_killed_mid_run_of_the_package_s_pipeline_ends_it_interrupted(
    tmp_path: Path, store: Store
) -> None:
    lease = str(SHORT_LEASE_SECONDS)
    async with server_process(
        tmp_path,
        offline_tokens_per_second=str(SLOW_TOKENS_PER_SECOND),
        generation_lease_seconds=lease,
        **store.process_settings(),
    ) as server:
        project_id = await server.new_project()
        submitted = await submit(server, project_id)
        before = await frames_until(server, project_id, "quiz.question")
        server.signal(signal.SIGKILL)
        assert await server.wait(10) == -signal.SIGKILL
        port = server.port
    generation_id = submitted["generation"]["id"]

    # The same database, the same port: this start (SQLite) or its reaper once the lease
    # lapses (PostgreSQL) ends the run; the stream waits for that end.
    async with server_process(
        tmp_path, port=port, generation_lease_seconds=lease, **store.process_settings()
    ) as again:
        after = await to_the_end(again, project_id)
        final = await again.json("GET", f"/api/generations/{generation_id}")
        assert (final["status"], final["error"]["code"]) == ("failed", "interrupted")
        stored = await again.events(project_id)
        assert [f.raw for f in after] == [frame_bytes(e) for e in stored]
        # What a client saw before the kill replays byte for byte; then one end, the last.
        assert [f.raw for f in after[: len(before)]] == [f.raw for f in before]
        terminal = [f.event for f in after if f.event in ev.TERMINAL_TYPES]
        assert terminal == [ev.GENERATION_FAILED] and after[-1].event == ev.GENERATION_FAILED
        assert 1 <= sum(f.event == "quiz.question" for f in after) < QUESTIONS
        assert await schema_mismatches(again.json, stored) == []
        said = "".join(f.json["delta"] for f in after if f.event == ev.MESSAGE_DELTA)
        assistant = (await messages(again, project_id))[1]
        assert (assistant["id"], assistant["status"]) == (
            submitted["assistant_message"]["id"],
            "error",
        )
        assert assistant["content"] == said.strip() != ""
