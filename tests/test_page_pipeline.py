"""The `page` pipeline (issue 14 item 1) end to end on a real server over real sockets:
documents added through the API and found by the knowledge stage, the stages in order
with their bands, the answer streamed, the page sent section by section then whole, the
persona stored and updated by a second visit, the raw SSE bytes equal to the stored log,
every event valid against the schema GET /api/events/schemas serves; cancel and a server
stop in the middle each end the run with one terminal event; with the openai provider
(the real client against tests/fake_openai.py) a good reply is used and a hostile one
fails the run as bad_response, with no page sent."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
import pytest

from service.eventlog import event as ev
from service.pipelines import page, page_offline, page_schemas
from tests.conftest import Genstream, MakeServer
from tests.fake_openai import FakeOpenAI, Reply, answer
from tests.helpers import mismatches, schema_mismatches, served_schemas
from tests.sse_reader import SSEReader
from tests.test_openai_provider import api_key, fake, openai_server

pytestmark = pytest.mark.backends
__all__ = ["api_key", "fake"]  # fixtures: the fake OpenAI endpoint and its key

DOCUMENTS = {
    "pricing": (
        "Pricing plans",
        "Our pricing has three plans: Starter at 10 dollars a seat, Team at 25 and "
        "Enterprise on quote. Every plan has a free trial; annual billing costs less.",
    ),
    "slack": (
        "Slack integration",
        "Connect your Slack workspace in two clicks: alerts, digests and approvals in "
        "your channels. The integration uses our public API and webhooks.",
    ),
    "security": (
        "Security and compliance",
        "We are SOC 2 Type II audited, encrypt data at rest and in transit, and offer SSO.",
    ),
}
QUESTION = "How much do your pricing plans cost? Our current tool is too expensive."
SECOND = "Does it integrate with Slack? Our setup is slow."
VISITOR = "visitor-42"
BANDS = [
    ("intent", "active", 10),
    ("intent", "complete", 20),
    ("signals", "active", 30),
    ("signals", "complete", 40),
    ("knowledge", "active", 50),
    ("knowledge", "complete", 60),
    ("response", "active", 70),
    ("response", "complete", 80),
    ("page", "active", 85),
    ("page", "complete", 95),
    ("complete", "complete", 100),
]
PIPELINE_TYPES = {spec.type for spec in page.PIPELINE.events}


async def knowledge_base(gs: Genstream) -> tuple[str, dict[str, str]]:
    """A project with its knowledge base added through the API: the project's id and
    each document's by its key."""
    project_id = await gs.new_project()
    ids = {}
    for key, (title, content) in DOCUMENTS.items():
        created = await gs.json(
            "POST",
            f"/api/projects/{project_id}/documents",
            status=201,
            json={"title": title, "content": content},
        )
        ids[key] = created["id"]
    return project_id, ids


@asynccontextmanager
async def project_stream(gs: Genstream, project_id: str) -> AsyncIterator[SSEReader]:
    url = f"{gs.url}/api/projects/{project_id}/stream"
    async with gs.http.get(url, headers={"Last-Event-ID": "0"}) as response:
        assert response.status == 200
        yield SSEReader(response)


async def until_terminal(reader: SSEReader, timeout: float = 30) -> list[dict[str, Any]]:
    """The stream's events to the first terminal one, each frame's raw bytes checked
    against its parsed fields (one id line, one event line, one data line)."""
    received = []
    while True:
        frame = await reader.event(timeout=timeout)
        assert frame.data is not None and frame.id is not None
        assert frame.raw == b"id: %d\nevent: %s\ndata: %s\n\n" % (
            frame.id,
            (frame.event or "").encode(),
            frame.data,
        )
        received.append({"id": frame.id, "type": frame.event, "raw": frame.data})
        if frame.event in ev.TERMINAL_TYPES:
            return received


async def streamed_equals_stored(gs: Genstream, project_id: str) -> list[dict[str, Any]]:
    """The project stream from the start to the run's end, equal to the stored log: the
    same ids, types, and data lines byte for byte the stored events."""
    async with project_stream(gs, project_id) as reader:
        received = await until_terminal(reader)
    stored = await gs.events(project_id)
    assert [r["id"] for r in received] == [e["id"] for e in stored]
    assert [r["type"] for r in received] == [e["type"] for e in stored]
    assert [r["raw"] for r in received] == [orjson.dumps(e) for e in stored]
    return stored


def of_type(events: list[dict[str, Any]], type_: str) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == type_]


def said(events: list[dict[str, Any]]) -> str:
    return "".join(e["delta"] for e in of_type(events, ev.MESSAGE_DELTA))


def terminal(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] in ev.TERMINAL_TYPES]


async def visit(gs: Genstream, project_id: str, question: str, **inputs: str) -> dict[str, Any]:
    submitted: dict[str, Any] = await gs.generate(
        project_id, question, pipeline="page", inputs=inputs
    )
    return submitted


async def test_a_visit_searches_the_knowledge_base_answers_and_builds_a_page(
    gs: Genstream,
) -> None:
    validators = await served_schemas(gs.json)
    assert set(validators) >= PIPELINE_TYPES
    project_id, ids = await knowledge_base(gs)

    submitted = await visit(gs, project_id, QUESTION, visitor_id=VISITOR)
    generation = submitted["generation"]
    assert (generation["pipeline"], generation["inputs"]) == ("page", {"visitor_id": VISITOR})
    assistant = submitted["assistant_message"]
    assert (assistant["status"], assistant["content"]) == ("pending", page.PIPELINE.pending)

    events = await streamed_equals_stored(gs, project_id)
    assert mismatches(validators, events) == []
    started = of_type(events, ev.GENERATION_STARTED)[0]
    assert started["pipeline"] == "page"
    assert [s["id"] for s in started["stages"]] == [s.id for s in page.STAGES]
    stages = [(e["stage"], e["status"], e["progress"]) for e in of_type(events, ev.STAGE)]
    assert stages == BANDS
    # The pipeline's events, each in its stage: after the stage's start, before its end.
    order = [
        e["type"] if e["type"] != ev.STAGE else f"{e['stage']}:{e['status']}"
        for e in events
        if e["type"] in PIPELINE_TYPES or e["type"] == ev.STAGE
    ]
    sections = of_type(events, page_schemas.SECTION)
    assert order == [
        "intent:active",
        page_schemas.INTENT,
        "intent:complete",
        "signals:active",
        page_schemas.SIGNALS,
        "signals:complete",
        "knowledge:active",
        page_schemas.KNOWLEDGE,
        "knowledge:complete",
        "response:active",
        "response:complete",
        "page:active",
        *[page_schemas.SECTION] * len(sections),
        page_schemas.PAGE,
        "page:complete",
        "complete:complete",
    ]

    (intent,) = of_type(events, page_schemas.INTENT)
    assert intent["intent"] == "pricing" and 0.5 < intent["confidence"] <= 1
    (signals,) = of_type(events, page_schemas.SIGNALS)
    assert signals["visitor_id"] == VISITOR and signals["pain_points"] == ["cost"]
    assert signals["persona"]["visits"] == 1
    (knowledge,) = of_type(events, page_schemas.KNOWLEDGE)
    assert knowledge["query"] == page_offline.search_query(QUESTION)
    assert "pricing" in knowledge["query"].split() and "do" not in knowledge["query"].split()
    found = [hit["document_id"] for hit in knowledge["results"]]
    assert found[0] == ids["pricing"] and ids["security"] not in found
    assert knowledge["results"][0]["title"] == "Pricing plans"

    # The answer streamed in pieces, then the message created at once updated in place.
    deltas = of_type(events, ev.MESSAGE_DELTA)
    assert len(deltas) > 1 and {d["message_id"] for d in deltas} == {assistant["id"]}
    text = said(events).strip()
    assert "Pricing plans" in text
    (page_event,) = of_type(events, page_schemas.PAGE)
    built = page_event["page"]
    assert [s["index"] for s in sections] == list(range(len(sections)))
    assert [s["section"] for s in sections] == built["sections"]
    assert built["sections"][0]["kind"] == "hero" and built["sections"][-1]["kind"] == "cta"
    assert "Pricing plans" in built["title"]
    completed = events[-1]
    assert completed["type"] == ev.GENERATION_COMPLETED
    assert completed["result"] == {"answer": text, "page": built}
    messages = (await gs.json("GET", f"/api/projects/{project_id}/messages"))["messages"]
    assert [(m["id"], m["status"], m["content"]) for m in messages if m["role"] == "assistant"] == [
        (assistant["id"], "success", text)
    ]
    (updated,) = of_type(events, ev.MESSAGE_UPDATED)
    assert updated["message"] == {"id": assistant["id"], "status": "success", "content": text}

    persona = await gs.json("GET", f"/api/projects/{project_id}/personas/{VISITOR}")
    assert (persona["visits"], persona["pain_points"], persona["interests"]) == (
        1,
        ["cost"],
        ["pricing"],
    )
    assert persona["updated_at"] == signals["persona"]["updated_at"]


async def test_a_second_visit_updates_the_persona_the_first_stored(gs: Genstream) -> None:
    project_id, ids = await knowledge_base(gs)
    first = await visit(gs, project_id, QUESTION, visitor_id=VISITOR)
    await gs.wait_generation(first["generation"]["id"])
    after = (await gs.events(project_id))[-1]["id"]

    second = await visit(gs, project_id, SECOND, visitor_id=VISITOR)
    assert (await gs.wait_generation(second["generation"]["id"]))["status"] == "completed"
    events = await gs.events(project_id, after=after)
    assert await schema_mismatches(gs.json, events) == []
    (intent,) = of_type(events, page_schemas.INTENT)
    assert intent["intent"] == "integration"
    (signals,) = of_type(events, page_schemas.SIGNALS)
    assert signals["pain_points"] == ["performance", "integration effort", "complexity"]
    expected = {
        "visitor_id": VISITOR,
        "pain_points": ["cost", "performance", "integration effort", "complexity"],
        "interests": ["pricing", "integration"],
        "visits": 2,
    }
    assert {k: v for k, v in signals["persona"].items() if k != "updated_at"} == expected
    (knowledge,) = of_type(events, page_schemas.KNOWLEDGE)
    assert knowledge["results"][0]["document_id"] == ids["slack"]
    assert said(events).startswith("Welcome back!")
    persona = await gs.json("GET", f"/api/projects/{project_id}/personas/{VISITOR}")
    assert {k: v for k, v in persona.items() if k not in ("updated_at", "project_id")} == expected
    assert persona["project_id"] == project_id
    # Another visitor has a persona of their own; none given is "anonymous".
    other = await visit(gs, project_id, SECOND)
    await gs.wait_generation(other["generation"]["id"])
    anonymous = await gs.json("GET", f"/api/projects/{project_id}/personas/anonymous")
    assert anonymous["visits"] == 1
    assert (await gs.json("GET", f"/api/projects/{project_id}/personas/{VISITOR}"))["visits"] == 2


async def test_a_project_without_documents_still_gets_an_answer_and_a_page(
    gs: Genstream,
) -> None:
    project_id = await gs.new_project()
    submitted = await visit(gs, project_id, "hello there")
    assert (await gs.wait_generation(submitted["generation"]["id"]))["status"] == "completed"
    events = await gs.events(project_id)
    assert of_type(events, page_schemas.INTENT)[0]["intent"] == "other"
    assert of_type(events, page_schemas.KNOWLEDGE)[0]["results"] == []
    assert "nothing on that yet" in said(events)
    assert len(of_type(events, page_schemas.PAGE)) == 1


@pytest.mark.parametrize(
    "inputs",
    [{"visitor_id": ""}, {"visitor_id": "x" * 129}, {"visitor_id": "a/b"}, {"visitor_id": 7}],
    ids=["empty", "too-long", "slash", "not-a-string"],
)
async def test_a_bad_visitor_id_is_a_400_and_nothing_is_stored(
    gs: Genstream, inputs: dict[str, Any]
) -> None:
    project_id = await gs.new_project()
    reply = await gs.json(
        "POST",
        f"/api/projects/{project_id}/generations",
        status=400,
        json={"prompt": QUESTION, "pipeline": "page", "inputs": inputs},
    )
    assert reply["error"]["code"] == "invalid_inputs"
    assert reply["error"]["field"] == "inputs['visitor_id']"
    assert await gs.events(project_id) == []


async def _first_delta(reader: SSEReader) -> list[dict[str, Any]]:
    """The stream's events up to the answer's first piece: the run is in its response."""
    received = []
    while True:
        frame = await reader.event(timeout=30)
        received.append(frame.json)
        if frame.event == ev.MESSAGE_DELTA:
            return received


async def test_a_visit_cancelled_while_it_answers_ends_cancelled_once(
    make_server: MakeServer,
) -> None:
    # Slow tokens: the answer takes seconds, and the cancel lands in the middle of it.
    gs = await make_server(offline={"tokens_per_second": 20})
    project_id, _ = await knowledge_base(gs)
    submitted = await visit(gs, project_id, QUESTION, visitor_id=VISITOR)
    gid = submitted["generation"]["id"]
    async with project_stream(gs, project_id) as reader:
        await _first_delta(reader)
        cancelled = await gs.json("POST", f"/api/generations/{gid}/cancel")
        assert cancelled["status"] == "cancelled"
        rest = await until_terminal(reader)
    assert rest[-1]["type"] == ev.GENERATION_CANCELLED
    events = await gs.events(project_id)
    assert [e["type"] for e in terminal(events)] == [ev.GENERATION_CANCELLED]
    assert of_type(events, page_schemas.SECTION) == of_type(events, page_schemas.PAGE) == []
    assert await schema_mismatches(gs.json, events) == []
    messages = (await gs.json("GET", f"/api/projects/{project_id}/messages"))["messages"]
    assert (messages[-1]["status"], messages[-1]["content"]) == ("cancelled", said(events).strip())
    # The persona was stored with its event before the cancel; it stays.
    persona = await gs.json("GET", f"/api/projects/{project_id}/personas/{VISITOR}")
    assert persona["visits"] == 1


async def test_a_visit_running_when_the_server_stops_ends_interrupted_once(
    make_server: MakeServer,
) -> None:
    gs = await make_server(offline={"tokens_per_second": 20})
    project_id = await gs.new_project()
    submitted = await visit(gs, project_id, QUESTION, visitor_id=VISITOR)
    async with project_stream(gs, project_id) as reader:
        await _first_delta(reader)
    port = gs.server.port
    await gs.server.stop()
    again = await make_server(port=port)
    final = await again.json("GET", f"/api/generations/{submitted['generation']['id']}")
    assert (final["status"], final["error"]["code"]) == ("failed", "interrupted")
    events = await streamed_equals_stored(again, project_id)
    (end,) = terminal(events)
    assert (end["type"], end["code"]) == (ev.GENERATION_FAILED, "interrupted")
    assert end is events[-1]
    assert of_type(events, page_schemas.PAGE) == []
    assert await schema_mismatches(again.json, events) == []
    messages = (await again.json("GET", f"/api/projects/{project_id}/messages"))["messages"]
    assert (messages[-1]["status"], messages[-1]["content"]) == ("error", said(events).strip())


# -- the openai provider: the model's replies are untrusted ------------------------------

GOOD_PAGE: dict[str, Any] = {
    "title": "Plans for your team",
    "sections": [
        {"kind": "hero", "heading": "Plans for your team", "body": "Save on seats.", "items": []},
        {"kind": "features", "heading": "Plans", "body": "", "items": ["Starter", "Team"]},
        {"kind": "cta", "heading": "Talk to sales", "body": "<b>not HTML</b>", "items": []},
    ],
}
MODEL_ANSWER = "Starter is 10 dollars a seat; Team is 25."


def _intent(intent: str = "pricing", confidence: float = 0.9) -> Reply:
    return answer(json.dumps({"intent": intent, "confidence": confidence}))


def _page_with(**change: Any) -> Reply:
    return answer(json.dumps({**GOOD_PAGE, **change}), piece=500)


def _section_with(**change: Any) -> Reply:
    section = {**GOOD_PAGE["sections"][0], **change}
    return _page_with(sections=[section])


async def test_with_the_openai_provider_the_models_replies_make_the_page(
    make_server: MakeServer, fake: FakeOpenAI
) -> None:
    fake.script(_intent(), answer(MODEL_ANSWER), _page_with())
    gs = await openai_server(make_server, fake)
    project_id, _ = await knowledge_base(gs)
    submitted = await visit(gs, project_id, QUESTION, visitor_id=VISITOR)
    assert (await gs.wait_generation(submitted["generation"]["id"]))["status"] == "completed"
    events = await streamed_equals_stored(gs, project_id)
    assert await schema_mismatches(gs.json, events) == []
    (intent,) = of_type(events, page_schemas.INTENT)
    assert (intent["intent"], intent["confidence"]) == ("pricing", 0.9)
    assert said(events) == MODEL_ANSWER
    assert [s["section"] for s in of_type(events, page_schemas.SECTION)] == GOOD_PAGE["sections"]
    assert events[-1]["result"] == {"answer": MODEL_ANSWER, "page": GOOD_PAGE}
    # Each call had its own system prompt; the later ones were told the excerpts found.
    systems = [r.body["messages"][0]["content"] for r in fake.requests]
    assert systems == [
        page.INTENT_INSTRUCTIONS,
        page.RESPONSE_INSTRUCTIONS,
        page.PAGE_INSTRUCTIONS,
    ]
    asked = [r.body["messages"][-1]["content"] for r in fake.requests]
    assert asked[0] == QUESTION
    assert DOCUMENTS["pricing"][0] in asked[1] and QUESTION in asked[1]
    assert MODEL_ANSWER in asked[2] and DOCUMENTS["pricing"][0] in asked[2]


HOSTILE_INTENTS = {
    "prose": (answer("Sure! The intent is pricing."), "is not JSON"),
    "prose-and-fence": (
        answer('Here it is:\n```json\n{"intent": "pricing", "confidence": 1}\n```'),
        "is not JSON",
    ),
    "a-list": (answer('["pricing"]'), "is list, not a JSON object"),
    "unknown-intent": (_intent("hack"), "'hack' is not one of"),
    "confidence-2": (_intent(confidence=2), "2 is greater than the maximum of 1"),
    "nan": (answer('{"intent": "pricing", "confidence": NaN}'), "NaN is not a JSON value"),
    "repeated-key": (
        answer('{"intent": "other", "intent": "pricing", "confidence": 1}'),
        "the key 'intent' is repeated",
    ),
    "extra-field": (
        answer('{"intent": "pricing", "confidence": 1, "admin": true}'),
        "Additional properties are not allowed",
    ),
    "too-long": (answer(" " * 2000 + "{}", piece=500), "longer than 1,000 characters"),
}
HOSTILE_PAGES = {
    "heading-too-long": (_section_with(heading="h" * 121), "is too long"),
    "nul-in-body": (_section_with(body="a\u0000b"), "does not match"),
    # JSON may spell half a character; the text holds it once parsed.
    "lone-surrogate": (_section_with(body="\ud800"), "does not match"),
    "nine-sections": (
        _page_with(sections=GOOD_PAGE["sections"] * 3),
        "['sections']: breaks maxItems 8",
    ),
    "no-sections": (_page_with(sections=[]), "should be non-empty"),
    "unknown-kind": (_section_with(kind="script"), "'script' is not one of"),
    "items-not-strings": (_section_with(items=[{"html": "<script>"}]), "is not of type 'string'"),
    "cut-short": (answer(json.dumps(GOOD_PAGE)[:40]), "is not JSON"),
    "huge": (_section_with(body="b" * 50_000), "longer than 40,000 characters"),
}


@pytest.mark.parametrize(
    ("reply", "detail"), list(HOSTILE_INTENTS.values()), ids=list(HOSTILE_INTENTS)
)
async def test_a_hostile_intent_reply_fails_the_visit_as_bad_response(
    make_server: MakeServer, fake: FakeOpenAI, reply: Reply, detail: str
) -> None:
    fake.script(reply)
    await _fails_clearly(make_server, fake, "the intent the model sent", detail, sent=set())


@pytest.mark.parametrize(("reply", "detail"), list(HOSTILE_PAGES.values()), ids=list(HOSTILE_PAGES))
async def test_a_hostile_page_reply_fails_the_visit_with_no_page_sent(
    make_server: MakeServer, fake: FakeOpenAI, reply: Reply, detail: str
) -> None:
    fake.script(_intent(), answer(MODEL_ANSWER), reply)
    sent = {page_schemas.INTENT, page_schemas.SIGNALS, page_schemas.KNOWLEDGE}
    await _fails_clearly(make_server, fake, "the page spec the model sent", detail, sent=sent)


async def _fails_clearly(
    make_server: MakeServer, fake: FakeOpenAI, what: str, detail: str, sent: set[str]
) -> None:
    """The run fails as bad_response naming the reply and what is wrong with it; of the
    pipeline's events only those before the reply were stored; one terminal event."""
    gs = await openai_server(make_server, fake)
    project_id = await gs.new_project()
    submitted = await visit(gs, project_id, QUESTION, visitor_id=VISITOR)
    final = await gs.wait_generation(submitted["generation"]["id"])
    assert (final["status"], final["error"]["code"]) == ("failed", "bad_response"), final
    message = final["error"]["message"]
    assert message.startswith(what) and detail in message, message
    events = await streamed_equals_stored(gs, project_id)
    assert {e["type"] for e in events} & PIPELINE_TYPES == sent
    (end,) = terminal(events)
    assert end is events[-1] and end["code"] == "bad_response" and end["retryable"] is True
    assert await schema_mismatches(gs.json, events) == []
    messages = (await gs.json("GET", f"/api/projects/{project_id}/messages"))["messages"]
    assert messages[-1]["status"] == "error"
