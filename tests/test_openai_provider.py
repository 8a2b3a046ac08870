"""The openai provider end to end: a real genstream server and the real `openai` client,
talking to a local fake of the chat-completions API (tests/fake_openai.py)."""

from __future__ import annotations

import hashlib
import re
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson
import pytest

from service.config import ConfigError, Settings, load
from service.eventlog import event as ev
from service.files import FileRecord
from service.generation.prompts import SYSTEM_PROMPT, build_messages, file_rank, select_files
from service.generation.providers import make_provider
from service.generation.providers.base import ModelRequest
from service.generation.providers.offline import OfflineProvider
from service.generation.providers.openai_provider import OpenAIProvider
from tests.conftest import Genstream, MakeServer
from tests.fake_openai import (
    LITELLM,
    MODEL,
    OPENAI,
    Cut,
    FakeOpenAI,
    Flavor,
    Framer,
    Gate,
    Reply,
    Stall,
    Usage,
    answer,
    chunk,
    error,
    event,
    rewrite,
    split,
    stream_error,
    text_chunks,
    text_events,
    usage_chunk,
)
from tests.helpers import stored_files
from tests.sse_reader import SSEReader

KEY = "sk-test-0123456789"
MAX_RETRIES = 2
TRIES = MAX_RETRIES + 1

ANSWER = (
    "I'll build a tiny service.\n"
    '<file path="pyproject.toml">\n[project]\nname = "tiny"\nversion = "0.1.0"\n</file>\n'
    '<file path="app/main.py">\ndef main() -> None:\n    print("hi")\n</file>\n'
    '<file path="data/seed.json">\n{"items": [1, 2, 3]}\n</file>\n'
    "Run it with `python -m app.main`.\n"
)
ANSWER_TEXT = "I'll build a tiny service.\nRun it with `python -m app.main`."
ANSWER_FILES = {
    "pyproject.toml": '[project]\nname = "tiny"\nversion = "0.1.0"\n',
    "app/main.py": 'def main() -> None:\n    print("hi")\n',
    "data/seed.json": '{"items": [1, 2, 3]}\n',
}


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    server = FakeOpenAI()
    await server.start()
    yield server
    await server.close()


@pytest.fixture(autouse=True)
def api_key(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    return KEY


async def openai_server(make_server: MakeServer, fake: FakeOpenAI, **openai: Any) -> Genstream:
    settings = {
        "base_url": fake.url,
        "model": MODEL,
        "max_retries": MAX_RETRIES,
        "retry_backoff_seconds": 0.01,
        "request_timeout_seconds": 5,
        **openai,
    }
    return await make_server(generation={"provider": "openai"}, openai=settings)


@dataclass
class Outcome:
    project_id: str
    generation: dict[str, Any]
    events: list[dict[str, Any]]
    assistant: dict[str, Any] = field(default_factory=dict)

    def of_type(self, type_: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == type_]

    @property
    def chat(self) -> str:
        return "".join(e["delta"] for e in self.of_type(ev.MESSAGE_DELTA))

    def typed(self, path: str) -> str:
        return "".join(e["delta"] for e in self.of_type(ev.FILE_DELTA) if e["path"] == path)


async def run(
    gs: Genstream, prompt: str = "a tiny service", project_id: str = "", **body: Any
) -> Outcome:
    project_id = project_id or await gs.new_project()
    submitted = await gs.generate(project_id, prompt, **body)
    generation = await gs.wait_generation(submitted["generation"]["id"])
    events = [e for e in await gs.events(project_id) if e["generation_id"] == generation["id"]]
    messages = (await gs.json("GET", f"/api/projects/{project_id}/messages"))["messages"]
    assistant = next(m for m in messages if m["id"] == generation["assistant_message_id"])
    return Outcome(project_id, generation, events, assistant)


# --- a normal run ---------------------------------------------------------------------


async def test_openai_run_streams_chat_and_files_and_stores_usage_and_timings(
    make_server: MakeServer, fake: FakeOpenAI
) -> None:
    fake.script(answer(ANSWER, piece=3, usage=Usage(120, 45)))
    gs = await openai_server(make_server, fake, temperature=0.7, max_tokens=777)
    outcome = await run(gs, "a tiny service")

    assert outcome.generation["status"] == "completed", outcome.generation["error"]
    assert outcome.generation["provider"] == "openai" and outcome.generation["model"] == MODEL
    assert outcome.chat.strip() == outcome.assistant["content"] == ANSWER_TEXT
    assert outcome.assistant["status"] == "success"
    assert await stored_files(gs, outcome.project_id) == ANSWER_FILES
    completed = {e["path"]: e for e in outcome.of_type(ev.FILE_COMPLETED)}
    for path, content in ANSWER_FILES.items():
        assert outcome.typed(path) == content
        assert completed[path]["sha256"] == hashlib.sha256(content.encode()).hexdigest()
        assert completed[path]["size"] == len(content.encode())
    assert [e["replaces"] for e in outcome.of_type(ev.FILE_STARTED)] == [False] * 3

    usage = {"prompt_tokens": 120, "completion_tokens": 45, "total_tokens": 165}
    assert outcome.generation["usage"] == usage
    final = outcome.events[-1]
    assert final["type"] == ev.GENERATION_COMPLETED
    assert final["usage"] == usage
    timings = final["timings"]
    assert timings == outcome.generation["timings"]
    assert 0 <= timings["first_token_ms"] <= timings["total_ms"]
    assert timings["tokens_per_second"] > 0
    assert set(timings["stages"]) >= {"planning", "generating", "validating"}

    (request,) = fake.requests
    assert request.headers["Authorization"] == f"Bearer {KEY}"
    body = request.body
    assert body["model"] == MODEL and body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["temperature"] == 0.7 and body["max_tokens"] == 777
    assert body["messages"] == [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": "a tiny service"},
    ]


async def test_without_a_usage_chunk_completion_tokens_are_counted_from_deltas(
    make_server: MakeServer, fake: FakeOpenAI
) -> None:
    fake.script(answer("Just text.\n", piece=2, usage=None))
    gs = await openai_server(make_server, fake)
    outcome = await run(gs)
    assert outcome.generation["status"] == "completed"
    assert outcome.generation["usage"]["completion_tokens"] == len(split("Just text.\n", 2))


async def test_validating_stage_parses_json_toml_and_python(
    make_server: MakeServer, fake: FakeOpenAI
) -> None:
    files = {
        "good.json": '{"a": 1}\n',
        "bad.json": '{"a": \n',
        "good.toml": 'a = "b"\n',
        "bad.toml": "a = \n",
        "good.py": "x = 1\n",
        "bad.py": "def (:\n",
        "notes.txt": "anything {\n",
    }
    text = "".join(f'<file path="{p}">\n{c}</file>\n' for p, c in files.items())
    fake.script(answer(text))
    gs = await openai_server(make_server, fake)
    outcome = await run(gs)
    checks = {e["path"]: (e["check"], e["ok"]) for e in outcome.of_type(ev.VALIDATION)}
    assert checks == {
        "good.json": ("json", True),
        "bad.json": ("json", False),
        "good.toml": ("toml", True),
        "bad.toml": ("toml", False),
        "good.py": ("python", True),
        "bad.py": ("python", False),
    }
    assert all(e["detail"] for e in outcome.of_type(ev.VALIDATION))


async def test_a_file_cut_off_by_max_tokens_is_kept_and_flagged(
    make_server: MakeServer, fake: FakeOpenAI
) -> None:
    text = '<file path="a.py">\nx = 1\n</file>\n<file path="b.py">\ndef f(\n'
    fake.script(Reply(steps=tuple(text_events(split(text, 4), finish="length"))))
    gs = await openai_server(make_server, fake)
    outcome = await run(gs)
    assert outcome.generation["status"] == "completed"
    assert await stored_files(gs, outcome.project_id) == {"a.py": "x = 1\n", "b.py": "def f(\n"}
    checks = {(e["path"], e["check"]): e["ok"] for e in outcome.of_type(ev.VALIDATION)}
    assert checks == {
        ("a.py", "python"): True,
        ("b.py", "closed"): False,
        ("b.py", "python"): False,
    }


# --- editing a project ----------------------------------------------------------------


async def test_second_generation_sees_the_files_and_rewrites_one_in_place(
    make_server: MakeServer, fake: FakeOpenAI
) -> None:
    first = 'Version one.\n<file path="app/main.py">\nprint("v1")\n</file>\n'
    first += '<file path="pyproject.toml">\n[project]\nname = "x"\n</file>\n'
    second = 'Now v2.\n<file path="app/main.py">\nprint("v2")\n</file>\n'
    second += '<file path="app/util.py">\nHELP = 1\n</file>\n'
    fake.script(answer(first), answer(second))
    gs = await openai_server(make_server, fake)
    one = await run(gs, "make v1")
    two = await run(gs, "make it v2", project_id=one.project_id)

    assert two.generation["status"] == "completed"
    assert {e["path"]: e["replaces"] for e in two.of_type(ev.FILE_STARTED)} == {
        "app/main.py": True,
        "app/util.py": False,
    }
    assert await stored_files(gs, one.project_id) == {
        "app/main.py": 'print("v2")\n',
        "app/util.py": "HELP = 1\n",
        "pyproject.toml": '[project]\nname = "x"\n',
    }
    messages = fake.requests[1].body["messages"]
    assert messages[:3] == [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": "make v1"},
        {"role": "assistant", "content": "Version one."},
    ]
    request = messages[3]["content"]
    # The manifest first, then the entry point; the request last.
    manifest = request.index('<file path="pyproject.toml">\n[project]\nname = "x"\n</file>\n')
    entry = request.index('<file path="app/main.py">\nprint("v1")\n</file>\n')
    assert manifest < entry < request.index("make it v2")
    assert request.endswith("make it v2")


# --- images ---------------------------------------------------------------------------


async def test_image_urls_go_to_the_model_as_image_content_parts(
    make_server: MakeServer, fake: FakeOpenAI
) -> None:
    fake.script(answer("Looks like a cat.\n"))
    gs = await openai_server(make_server, fake)
    urls = ["https://example.com/cat.png", "data:image/png;base64,iVBORw0KGgo="]
    outcome = await run(gs, "describe these", image_urls=urls)
    assert outcome.generation["status"] == "completed"
    assert fake.requests[0].body["messages"][-1] == {
        "role": "user",
        "content": [
            {"type": "text", "text": "describe these"},
            {"type": "image_url", "image_url": {"url": urls[0]}},
            {"type": "image_url", "image_url": {"url": urls[1]}},
        ],
    }


# --- failures -------------------------------------------------------------------------


RATE_LIMITED = (
    "litellm.RateLimitError: Deployment has all max_parallel_requests slots in use. "
    "Received Model Group=fake-model"
)


def stream_then(*steps: Any, text: str = "", finish: str | None = None, **reply: Any) -> Reply:
    return Reply(steps=(*text_events(split(text, 4), finish=finish), *steps), **reply)


FAILURES = [
    pytest.param(
        [error(401, f"Incorrect API key provided: {KEY}", kind="invalid_request_error")],
        "auth_failed", False, 1, "", id="401-bad-key-not-retried",
    ),
    pytest.param(
        [error(429, "slow down", kind="requests", headers={"retry-after-ms": "5"})] * TRIES,
        "rate_limited", True, TRIES, "", id="429-retried-until-the-budget-is-spent",
    ),
    pytest.param(
        [error(429, "come back in an hour", kind="requests", headers={"retry-after": "3600"})],
        "rate_limited", True, 1, "", id="429-with-a-retry-after-too-long-not-waited-for",
    ),
    pytest.param(
        [error(500, "boom", kind="server_error")] * TRIES,
        "provider_error", True, TRIES, "", id="500-retried",
    ),
    pytest.param(
        [error(400, "context too long", kind="invalid_request_error")],
        "bad_request", False, 1, "", id="400-not-retried",
    ),
    pytest.param(
        [error(404, "model 'x' not found", kind="not_found")],
        "model_not_found", False, 1, "", id="404-unknown-model",
    ),
    pytest.param(
        [stream_then(Stall())] * TRIES,
        "timeout", True, TRIES, "", id="timeout-before-first-token-retried",
    ),
    pytest.param(
        [stream_then(Stall(), text="Hello there, ")],
        "timeout", True, 1, "Hello there, ", id="timeout-after-tokens-not-retried",
    ),
    pytest.param(
        [stream_then(Cut(), text="Partial answer, ")],
        "connection_lost", True, 1, "Partial answer, ", id="connection-cut-mid-stream",
    ),
    pytest.param(
        [stream_then(text="Cut short", done=False)],
        "connection_lost", True, 1, "Cut short", id="body-ends-before-finish-reason",
    ),
    pytest.param(
        [stream_then(b'data: {"choices": [\n\n', text="Some text ")],
        "bad_response", False, 1, "Some text ", id="chunk-not-json",
    ),
    pytest.param(
        [stream_then(event({"choices": [{"delta": {"content": 5}}]}))],
        "bad_response", False, 1, "", id="chunk-of-the-wrong-shape",
    ),
    pytest.param(
        [stream_then(b"data:\n\n", text="Some text ")],
        "bad_response", False, 1, "Some text ", id="an-empty-data-line-is-an-event-not-json",
    ),
    pytest.param(
        [stream_then(event({"error": {"message": "overloaded", "type": "server_error"}}))]
        * TRIES,
        "provider_error", True, TRIES, "", id="error-object-in-the-stream",
    ),
    # LiteLLM's proxy reports a rate limit after its 200 and a ping, code as a string
    # and no Retry-After; the code says what happened, as an HTTP status would.
    pytest.param(
        [stream_error(RATE_LIMITED, kind="throttling_error", code="429", flavor=LITELLM)]
        * TRIES,
        "rate_limited", True, TRIES, "", id="litellm-rate-limit-inside-a-200-stream",
    ),
    pytest.param(
        [stream_error("Rate limit reached", kind="requests", code="rate_limit_exceeded")]
        * TRIES,
        "rate_limited", True, TRIES, "", id="openai-rate-limit-code-inside-a-stream",
    ),
    pytest.param(
        [stream_error(f"invalid key {KEY}", kind="auth_error", code="401", flavor=LITELLM)],
        "auth_failed", False, 1, "", id="401-code-inside-a-stream-not-retried",
    ),
    pytest.param(
        [stream_error("no such model", kind="None", code="404", flavor=LITELLM)],
        "model_not_found", False, 1, "", id="404-code-inside-a-stream",
    ),
    pytest.param(
        [stream_error("context too long", kind="invalid_request_error", code="400")],
        "bad_request", False, 1, "", id="400-code-inside-a-stream-not-retried",
    ),
    pytest.param(
        [stream_error("upstream failed", kind="None", code="500", flavor=LITELLM)] * TRIES,
        "provider_error", True, TRIES, "", id="500-code-inside-a-stream-retried",
    ),
    pytest.param(
        [stream_then(event({"error": {"message": "teapot", "code": "418"}}), text="Hi, ")],
        "bad_request", False, 1, "Hi, ", id="error-code-after-text-not-retried",
    ),
    # An HTTP error whose body gives the code as a string: the status decides.
    pytest.param(
        [error(429, RATE_LIMITED, kind="throttling_error", code="429")] * TRIES,
        "rate_limited", True, TRIES, "", id="litellm-429-body-code-as-a-string",
    ),
    pytest.param(
        [error(401, f"Authentication Error, {KEY}", kind="auth_error", code="401")],
        "auth_failed", False, 1, "", id="litellm-401-body-code-as-a-string",
    ),
    pytest.param(
        [error(400, "bad param", kind="invalid_request_error", code="429")],
        "bad_request", False, 1, "", id="the-status-wins-over-the-body-code",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("replies", "code", "retryable", "requests", "streamed"), FAILURES)
async def test_failure_ends_the_generation_with_its_code_and_keeps_the_streamed_text(
    make_server: MakeServer,
    fake: FakeOpenAI,
    replies: list[Reply],
    code: str,
    retryable: bool,
    requests: int,
    streamed: str,
) -> None:
    fake.script(*replies)
    gs = await openai_server(make_server, fake, request_timeout_seconds=0.3)
    outcome = await run(gs)

    failed = outcome.events[-1]
    assert failed["type"] == ev.GENERATION_FAILED
    assert (failed["code"], failed["retryable"]) == (code, retryable), failed["message"]
    assert failed["message"] and KEY not in failed["message"]
    assert outcome.generation["status"] == "failed"
    assert outcome.generation["error"] == {
        "code": code,
        "message": failed["message"],
        "retryable": retryable,
    }
    assert outcome.assistant["status"] == "error"
    assert outcome.chat == streamed
    assert outcome.assistant["content"] == streamed.strip()
    assert len(fake.requests) == requests
    assert await streamed_events(gs, outcome.generation["id"]) == outcome.events


async def test_retryable_errors_before_the_first_token_are_retried_then_it_completes(
    make_server: MakeServer, fake: FakeOpenAI
) -> None:
    fake.script(
        error(429, "slow down", kind="requests", headers={"retry-after-ms": "300"}),
        # The stream opens and dies before any text: nothing was shown, so it is retried.
        stream_then(Cut()),
        answer(ANSWER, usage=Usage(10, 20)),
    )
    gs = await openai_server(make_server, fake)
    outcome = await run(gs)
    assert outcome.generation["status"] == "completed"
    assert len(fake.requests) == 3
    # The server's Retry-After was honoured (a lower bound: a slow machine only adds).
    assert fake.requests[1].at - fake.requests[0].at >= 0.3
    # Nothing was streamed twice.
    assert outcome.chat.strip() == ANSWER_TEXT
    assert await stored_files(gs, outcome.project_id) == ANSWER_FILES


async def test_an_unreachable_server_fails_as_connection_failed_after_retries(
    make_server: MakeServer, fake: FakeOpenAI
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # Nothing listens on `port` now: every connect is refused.
    gs = await openai_server(make_server, fake, base_url=f"http://127.0.0.1:{port}/v1")
    outcome = await run(gs)
    failed = outcome.events[-1]
    assert (failed["code"], failed["retryable"]) == ("connection_failed", True)
    assert outcome.assistant["status"] == "error"


# --- chunking -------------------------------------------------------------------------

UNICODE_ANSWER = (
    "Voilà: a café menu 漢字 😀.\r\n"
    '<file path="menu/é.md">\r\n# Café 😀\r\n- crème brûlée\n</file>\r\n'
    '<file path="a.json">\n{"k": "漢"}\n</file>\n'
    "Fin 😀"
)


@pytest.mark.parametrize(
    "writes",
    [
        pytest.param((1,), id="one-byte-per-write"),
        pytest.param((7, 300, 2, 1, 64), id="bursty-writes-splitting-events-and-utf8"),
        pytest.param((1 << 20,), id="everything-in-one-write"),
    ],
)
async def test_any_split_of_the_wire_bytes_gives_the_same_result(
    make_server: MakeServer, fake: FakeOpenAI, writes: tuple[int, ...]
) -> None:
    pieces = [UNICODE_ANSWER[i : i + n] for i, n in _cuts(len(UNICODE_ANSWER))]
    wire = b"".join(text_events(pieces))
    fake.script(Reply(steps=tuple(rewrite(wire, writes)), usage=Usage(1, len(pieces))))
    gs = await openai_server(make_server, fake)
    outcome = await run(gs)
    assert outcome.generation["status"] == "completed", outcome.generation["error"]
    assert outcome.chat == "Voilà: a café menu 漢字 😀.\r\nFin 😀"
    assert await stored_files(gs, outcome.project_id) == {
        "menu/é.md": "# Café 😀\r\n- crème brûlée\n",
        "a.json": '{"k": "漢"}\n',
    }


def _cuts(length: int) -> list[tuple[int, int]]:
    """Content deltas of 1, 2, 3, ... characters, so tags and paths fall across them."""
    cuts, start, size = [], 0, 1
    while start < length:
        cuts.append((start, size))
        start += size
        size = size % 9 + 1
    return cuts


async def test_file_events_reach_the_client_while_the_model_is_still_writing(
    make_server: MakeServer, fake: FakeOpenAI
) -> None:
    gate = Gate()
    head = 'Writing.\n<file path="app.py">\nx = 1\n'
    tail = "y = 2\n</file>\nDone.\n"
    fake.script(
        Reply(
            steps=(
                *text_events(split(head, 5), finish=None),
                gate,
                *[event(chunk({"content": p})) for p in split(tail, 5)],
                event(chunk({}, "stop")),
            )
        )
    )
    gs = await openai_server(make_server, fake)
    project_id = await gs.new_project()
    submitted = await gs.generate(project_id, "slow please")
    url = f"{gs.url}/api/generations/{submitted['generation']['id']}/stream"
    async with gs.http.get(url) as response:
        reader = SSEReader(response)
        typed = ""
        while typed != "x = 1\n":
            frame = await reader.event()
            assert frame.event != ev.GENERATION_COMPLETED
            if frame.event == ev.FILE_DELTA:
                typed += frame.json["delta"]
        # The model is held at the gate: what arrived so far was streamed, not buffered.
        assert not gate.opened.is_set()
        gate.open()
        rest = await reader.events_until_end()
    assert rest[-1].event == ev.GENERATION_COMPLETED
    assert await stored_files(gs, project_id) == {"app.py": "x = 1\ny = 2\n"}


# --- what real peers send ------------------------------------------------------------

PEERS = [
    pytest.param(OPENAI, id="openai"),
    pytest.param(LITELLM, id="litellm-role-in-content-no-finish-key-usage-choice-ping"),
    pytest.param(Flavor(retry_ms=3000), id="a-retry-block-before-the-data"),
    pytest.param(Flavor(ids=True), id="id-lines-then-ping-comments"),
    pytest.param(replace(LITELLM, retry_ms=3000, ids=True), id="all-of-them-at-once"),
]


@pytest.mark.parametrize("flavor", PEERS)
async def test_a_stream_in_each_peers_wording_completes(
    make_server: MakeServer, fake: FakeOpenAI, flavor: Flavor
) -> None:
    fake.script(answer(ANSWER, piece=5, usage=Usage(120, 45), flavor=flavor))
    gs = await openai_server(make_server, fake)
    project_id = await gs.new_project()
    submitted = await gs.generate(project_id, "a tiny service")
    generation_id = submitted["generation"]["id"]
    streamed = await streamed_events(gs, generation_id)

    assert streamed[-1]["type"] == ev.GENERATION_COMPLETED, streamed[-1].get("message")
    stored = [e for e in await gs.events(project_id) if e["generation_id"] == generation_id]
    assert streamed == stored
    chat = "".join(e["delta"] for e in streamed if e["type"] == ev.MESSAGE_DELTA)
    assert chat.strip() == ANSWER_TEXT
    assert await stored_files(gs, project_id) == ANSWER_FILES
    assert streamed[-1]["usage"] == {
        "prompt_tokens": 120,
        "completion_tokens": 45,
        "total_tokens": 165,
    }
    assert len(fake.requests) == 1


async def test_blocks_without_data_are_not_events(
    make_server: MakeServer, fake: FakeOpenAI
) -> None:
    # WHATWG HTML 9.2.6: a block without a data line dispatches nothing, whatever else
    # it holds; the id is remembered, so every later blank line must not dispatch either.
    blocks = (b"event: ping\n\n", b"id: 7\n\n", b"retry: 10\n\n", b"\n", b": hi\n\n")
    steps = [step for e in text_events(split(ANSWER, 6)) for step in (e, *blocks)]
    fake.script(Reply(steps=tuple(steps), usage=Usage(1, 2)))
    gs = await openai_server(make_server, fake)
    outcome = await run(gs)
    assert outcome.generation["status"] == "completed", outcome.generation["error"]
    assert outcome.chat.strip() == ANSWER_TEXT
    assert await stored_files(gs, outcome.project_id) == ANSWER_FILES


async def test_a_rate_limit_inside_a_litellm_stream_is_retried_then_it_completes(
    make_server: MakeServer, fake: FakeOpenAI
) -> None:
    fake.script(
        stream_error(RATE_LIMITED, kind="throttling_error", code="429", flavor=LITELLM),
        answer(ANSWER, usage=Usage(10, 20), flavor=LITELLM),
    )
    gs = await openai_server(make_server, fake)
    outcome = await run(gs)
    assert outcome.generation["status"] == "completed", outcome.generation["error"]
    assert len(fake.requests) == 2
    assert outcome.chat.strip() == ANSWER_TEXT


def test_the_fake_frames_each_peers_shapes() -> None:
    framer = Framer(Flavor(retry_ms=3000, pings=2, ids=True))
    assert framer.frame("[DONE]") == [
        b"retry: 3000\n\n",
        b": ping\n\n",
        b": ping\n\n",
        b"id: 1\ndata: [DONE]\n\n",
        b": ping\n\n",
    ]
    assert framer.frame({"a": 1}) == [b'id: 2\ndata: {"a": 1}\n\n', b": ping\n\n"]
    assert Framer(OPENAI).frame({"a": 1}) == [b'data: {"a": 1}\n\n']

    role, content, final = (c["choices"] for c in text_chunks(["Hi"]))
    assert role == [
        {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
    ]
    assert content == [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": None}]
    assert final == [{"index": 0, "delta": {}, "finish_reason": "stop"}]
    first, last = (c["choices"] for c in text_chunks(["Hi"], flavor=LITELLM))
    assert first == [{"index": 0, "delta": {"role": "assistant", "content": "Hi"}}]
    assert last == [{"index": 0, "delta": {}, "finish_reason": "stop"}]

    assert usage_chunk(Usage(1, 2))["choices"] == []
    litellm = usage_chunk(Usage(1, 2), LITELLM)
    assert litellm["choices"] == [{"index": 0, "delta": {}}]
    assert set(litellm["usage"]) == {
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "prompt_tokens_details",
        "completion_tokens_details",
    }


# --- untrusted output -----------------------------------------------------------------

HOSTILE_PATHS = ["../evil.py", "/etc/passwd", "a\\b.txt", "C:evil.txt", "src/\x00x.py", "CON.txt"]


async def test_hostile_paths_are_refused_and_never_stored(
    make_server: MakeServer, fake: FakeOpenAI
) -> None:
    text = "".join(f'<file path="{p}">\nowned\n</file>\n' for p in HOSTILE_PATHS)
    text += '<file path="ok.txt">\nfine\n</file>\n'
    fake.script(answer(text))
    gs = await openai_server(make_server, fake)
    outcome = await run(gs)
    refused = [e for e in outcome.of_type(ev.VALIDATION) if e["check"] == "path"]
    # The model's NUL arrives as U+FFFD (generation/text.py), which a path may not hold.
    assert [e["path"] for e in refused] == [as_stored(p) for p in HOSTILE_PATHS]
    assert not any(e["ok"] for e in refused) and all(e["detail"] for e in refused)
    assert [e["path"] for e in outcome.of_type(ev.FILE_STARTED)] == ["ok.txt"]
    assert await stored_files(gs, outcome.project_id) == {"ok.txt": "fine\n"}
    assert "owned" not in outcome.chat


HOSTILE_TEXT = (
    "carriage\rreturn, nul\x00byte\n"
    "\n\ndata: injected\n"
    "id: 5\n"
    "event: generation.completed\n"
    "retry: 1\n"
    ": a comment\r\n\r\n"
)
FIELD = re.compile(rb"(id|event|data|retry): |:")


def as_stored(text: str) -> str:
    """A model's text as genstream keeps it: a NUL made U+FFFD (PostgreSQL's text cannot
    hold one; generation/text.py)."""
    return text.replace("\x00", "\ufffd")


async def streamed_events(gs: Genstream, generation_id: str) -> list[dict[str, Any]]:
    """The generation's events as its SSE stream carries them, read as raw bytes and
    checked line by line: only known fields, `id`, `event`, then `data` lines whose JSON
    repeats the id and the type."""
    url = f"{gs.url}/api/generations/{generation_id}/stream"
    async with gs.http.get(url) as response:
        raw = await response.read()
    # WHATWG HTML 9.2.6: CR is a line break too, and NUL has no place on the wire.
    assert b"\r" not in raw and b"\x00" not in raw
    assert raw.endswith(b"\n\n")
    streamed = []
    for block in raw[:-2].split(b"\n\n"):
        lines = block.split(b"\n")
        assert all(FIELD.match(line) for line in lines), block
        if not lines[0].startswith(b"id: "):
            assert all(line.startswith((b":", b"retry: ")) for line in lines), block
            continue
        assert lines[1].startswith(b"event: ")
        assert all(line.startswith(b"data: ") for line in lines[2:]) and len(lines) > 2
        data = orjson.loads(b"\n".join(line[len(b"data: ") :] for line in lines[2:]))
        assert data["id"] == int(lines[0][len(b"id: ") :])
        assert data["type"] == lines[1][len(b"event: ") :].decode()
        streamed.append(data)
    return streamed


async def test_hostile_text_never_breaks_the_sse_framing(
    make_server: MakeServer, fake: FakeOpenAI
) -> None:
    text = HOSTILE_TEXT + f'<file path="evil.txt">\n{HOSTILE_TEXT}</file>\n' + HOSTILE_TEXT
    fake.script(answer(text, piece=3))
    gs = await openai_server(make_server, fake)
    project_id = await gs.new_project()
    submitted = await gs.generate(project_id, "hostile")
    streamed = await streamed_events(gs, submitted["generation"]["id"])

    stored = [e for e in await gs.events(project_id) if e["id"] >= streamed[0]["id"]]
    assert streamed == stored
    assert [e["type"] for e in streamed].count(ev.GENERATION_COMPLETED) == 1
    assert streamed[-1]["type"] == ev.GENERATION_COMPLETED
    chat = "".join(e["delta"] for e in streamed if e["type"] == ev.MESSAGE_DELTA)
    assert chat == as_stored(HOSTILE_TEXT) * 2
    assert await stored_files(gs, project_id) == {"evil.txt": as_stored(HOSTILE_TEXT)}


# --- choosing the provider; the prompt ------------------------------------------------


def test_auto_picks_openai_only_when_a_key_is_set() -> None:
    settings = Settings().replace(generation={"provider": "auto"})
    assert isinstance(make_provider(settings, {"OPENAI_API_KEY": KEY}), OpenAIProvider)
    assert isinstance(make_provider(settings, {}), OfflineProvider)


def test_openai_without_a_key_is_a_config_error() -> None:
    settings = Settings().replace(generation={"provider": "openai"})
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        make_provider(settings, {})


def test_the_key_cannot_come_from_the_config_file(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[openai]\napi_key = "sk-in-a-file"\n')
    with pytest.raises(ConfigError, match=r"openai\.api_key"):
        load(config, environ={})


def _file(path: str, size: int) -> FileRecord:
    return FileRecord.of(path, "x" * size)


def test_files_are_ranked_manifest_then_entry_points_then_the_rest() -> None:
    paths = ["src/util.py", "app/main.py", "README.md", "pyproject.toml", "index.html", "a.py"]
    assert sorted(paths, key=file_rank) == [
        "README.md",
        "pyproject.toml",
        "index.html",
        "app/main.py",
        "a.py",
        "src/util.py",
    ]


def test_files_over_the_budget_are_named_not_cut() -> None:
    files = [_file("pyproject.toml", 50), _file("big.py", 500), _file("small.py", 10)]
    context = select_files(files, budget=400)  # the listing's own text included
    assert [f.path for f in context.shown] == ["pyproject.toml", "small.py"]
    assert context.named == ("big.py",)


def test_history_keeps_the_latest_turns_within_its_share_of_the_budget() -> None:
    history = (("user", "a" * 30), ("assistant", "b" * 30), ("user", "c" * 10), ("system", "x"))
    request = ModelRequest(prompt="now", history=history)
    # 200 besides the system prompt and the request, of which history gets 50.
    messages = build_messages(request, context_chars=len(SYSTEM_PROMPT) + len("now") + 200)
    assert messages[1:] == [
        {"role": "assistant", "content": "b" * 30},
        {"role": "user", "content": "c" * 10},
        {"role": "user", "content": "now"},
    ]
