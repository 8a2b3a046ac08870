"""A runaway model is bounded: how much it may send, how many files and how large, and
how much of the project goes back to it in the next request (issue 11, items 1 and 3)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.common import peak_rss_bytes, reset_peak_rss
from service.eventlog import event as ev
from service.files import FileRecord
from service.generation.prompts import SYSTEM_PROMPT, build_messages, request_text, select_files
from service.generation.providers.base import ModelRequest
from tests.conftest import Genstream, MakeServer
from tests.fake_openai import (
    MODEL,
    FakeOpenAI,
    Gate,
    Reply,
    answer,
    chunk,
    event,
    huge_line,
    split,
    text_events,
)
from tests.helpers import stored_files
from tests.process import ServerProcess, server_process
from tests.test_openai_provider import KEY, Outcome, run

TIMEOUT = 60.0
MIB = 1024 * 1024

# 40 MB of chat text in 64 KiB deltas, as the runaway model sent: lines of prose,
# so the parser sees line ends as it would in a real answer.
DELTA_CHARS = 64 * 1024
RUNAWAY_DELTAS = 640
LINE = "the model goes on and on and on about nothing in particular, for ever\n"


@pytest.fixture
async def fake(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeOpenAI]:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)  # read by the child servers too
    model = FakeOpenAI()
    await model.start()
    try:
        yield model
    finally:
        await model.close()


def _runaway_reply() -> Reply:
    """One delta object repeated: the fake holds 64 KiB, however long the stream."""
    text = (LINE * (DELTA_CHARS // len(LINE) + 1))[:DELTA_CHARS]
    delta = event(chunk({"content": text}))
    first = event(chunk({"role": "assistant", "content": ""}))
    return Reply(steps=(first, *(delta,) * RUNAWAY_DELTAS, event(chunk({}, "stop"))))


async def _generate(server: ServerProcess, project_id: str) -> dict[str, Any]:
    """Submit; once the generation's stream has closed (after its terminal event), the
    generation as the server has it."""
    path = f"/api/projects/{project_id}/generations"
    submitted = await server.json("POST", path, status=202, json={"prompt": "an essay"})
    generation_path = f"/api/generations/{submitted['generation']['id']}"
    async with server.http.get(f"{server.url}{generation_path}/stream") as response:
        await asyncio.wait_for(response.read(), TIMEOUT)
    generation: dict[str, Any] = await server.json("GET", generation_path)
    return generation


async def _peak_growth(
    tmp_path: Path, fake: FakeOpenAI, reply: Reply
) -> tuple[int, dict[str, Any], list[dict[str, Any]]]:
    """How far the server's peak RSS grows in a generation the model answers with
    `reply`, that generation, and its project's events."""
    fake.script(Reply(steps=(event(chunk({"content": "Warm.\n"})), event(chunk({}, "stop")))))
    fake.script(reply)
    async with server_process(
        tmp_path,
        generation_provider="openai",
        openai_base_url=fake.url,
        openai_model=MODEL,
        openai_max_retries="0",
    ) as server:
        project_id = await server.new_project()
        # A first, small generation loads what any generation needs (the openai client,
        # its TLS context, the SQL statements): the peak below is the reply's own.
        assert (await _generate(server, project_id))["status"] == "completed"
        reset_peak_rss(server.pid)
        idle = peak_rss_bytes(server.pid)
        generation = await _generate(server, project_id)
        grown = peak_rss_bytes(server.pid) - idle
        print(f"peak RSS grew by {grown / MIB:.1f} MiB over {idle / MIB:.1f} MiB")
        print(f"{generation['status']} {generation['error']}")
        return grown, generation, await server.events(project_id)


async def test_a_runaway_model_does_not_grow_the_servers_memory(
    tmp_path: Path, fake: FakeOpenAI
) -> None:
    grown, generation, events = await _peak_growth(tmp_path, fake, _runaway_reply())
    streamed = sum(
        len(e["delta"])
        for e in events
        if e["type"] == ev.MESSAGE_DELTA and e["generation_id"] == generation["id"]
    )
    print(f"{streamed} characters streamed")
    assert grown < 64 * MIB
    assert (generation["status"], generation["error"]["code"]) == ("failed", "output_too_large")
    assert 0 < streamed <= 1_000_000  # the default generation.max_output_chars


async def test_one_huge_sse_line_is_refused_before_it_is_held_whole(
    tmp_path: Path, fake: FakeOpenAI
) -> None:
    # One content delta of 40 MB in one `data:` line. The SDK's decoder held the whole
    # line, then its JSON, then the chunk: the peak grew by 153 MiB before the output cap
    # could see the text.
    grown, generation, events = await _peak_growth(tmp_path, fake, huge_line(40_000_000))
    assert grown < 32 * MIB
    error = generation["error"]
    assert (generation["status"], error["code"], error["retryable"]) == (
        "failed",
        "output_too_large",
        False,
    )
    assert error["message"] == (
        "an event of the model's stream passed 12,065,536 bytes, more than"
        " generation.max_output_chars (1,000,000) can fill; it was stopped there"
    )
    assert not [
        e
        for e in events
        if e["type"] == ev.MESSAGE_DELTA and e["generation_id"] == generation["id"]
    ]


# --- the caps, one by one ---------------------------------------------------------------


async def _bounded_server(make_server: MakeServer, fake: FakeOpenAI, **caps: int) -> Genstream:
    return await make_server(
        generation={"provider": "openai", **caps},
        openai={"base_url": fake.url, "model": MODEL, "max_retries": 0},
    )


def _held_open(text: str, piece: int) -> Reply:
    """`text` in deltas of `piece` characters, then a stream that never goes on: only a
    reader that stops on its own ends this generation before the request timeout."""
    return Reply(steps=(*text_events(split(text, piece), finish=None), Gate()))


async def _stopped(
    make_server: MakeServer, fake: FakeOpenAI, reply: Reply, cap: str, **caps: int
) -> tuple[Genstream, Outcome]:
    """`reply` (a model that then holds its stream open) against a server with `caps`:
    the generation must fail as output_too_large, saying `cap`."""
    fake.script(reply)
    gs = await _bounded_server(make_server, fake, **caps)
    outcome = await run(gs)
    message = f"{cap}; it was stopped there"
    error = {"code": "output_too_large", "message": message, "retryable": False}
    assert (outcome.generation["status"], outcome.generation["error"]) == ("failed", error)
    return gs, outcome


def _block(path: str, content: str) -> str:
    return f'<file path="{path}">\n{content}</file>\n'


async def test_output_over_max_output_chars_fails_and_the_model_is_not_read_further(
    make_server: MakeServer, fake: FakeOpenAI
) -> None:
    block = _block("a.txt", "a\n" * 50)
    text = "Here it comes.\n" + block + "b" * 2000
    cap = "the model's answer passed generation.max_output_chars (1,000)"
    gs, outcome = await _stopped(
        make_server, fake, _held_open(text, 40), cap, max_output_chars=1000
    )
    # The 25 deltas that fit were taken, the one that crossed the cap was not.
    assert outcome.chat == text[:1000].replace(block, "")
    assert outcome.assistant["status"] == "error"
    assert outcome.assistant["content"] == outcome.chat.strip()
    # A file completed before the cap is in the log; a failed generation leaves the
    # project's files as they were, as after any failure.
    assert [e["path"] for e in outcome.of_type(ev.FILE_COMPLETED)] == ["a.txt"]
    assert await stored_files(gs, outcome.project_id) == {}
    assert outcome.events[-1]["type"] == ev.GENERATION_FAILED


async def test_more_files_than_max_files_fails_at_the_first_one_too_many(
    make_server: MakeServer, fake: FakeOpenAI
) -> None:
    text = (
        "Three files.\n"
        + _block("a.txt", "1\n")
        + _block("b.txt", "2\n")
        + _block("a.txt", "3\n")  # written again: still two files
        + "Now the third.\n"
        + _block("c.txt", "4\n")
        + "The end.\n"
    )
    cap = "the model wrote more than generation.max_files (2)"
    _, outcome = await _stopped(make_server, fake, _held_open(text, 7), cap, max_files=2)
    assert [e["path"] for e in outcome.of_type(ev.FILE_STARTED)] == ["a.txt", "b.txt", "a.txt"]
    assert outcome.chat == "Three files.\nNow the third.\n"
    assert not outcome.typed("c.txt")


async def test_a_file_over_max_file_bytes_fails_counting_utf8_bytes(
    make_server: MakeServer, fake: FakeOpenAI
) -> None:
    exact = "x" * 99 + "\n"  # 100 bytes: at the cap, not over it
    big = "é" * 60  # 60 characters, 120 bytes
    text = _block("exact.txt", exact) + _block("big.txt", big) + "After.\n"
    cap = "the file big.txt passed generation.max_file_bytes (100 bytes)"
    _, outcome = await _stopped(make_server, fake, _held_open(text, 10), cap, max_file_bytes=100)
    assert [e["path"] for e in outcome.of_type(ev.FILE_COMPLETED)] == ["exact.txt"]
    assert outcome.typed("exact.txt") == exact
    typed = outcome.typed("big.txt")
    assert big.startswith(typed) and len(typed.encode()) <= 100
    assert outcome.chat == ""


def _spread_event(content: str, size: int) -> bytes:
    """One event of a content chunk in `size` bytes of lines (line ends not counted):
    its JSON on the first line, then `data:` lines of spaces, which the SSE decoder
    joins with newlines and JSON reads as whitespace."""
    first = b"data: " + orjson.dumps(chunk({"content": content}))
    pads, rest = divmod(size - len(first), 1000)
    lines = [first + b" " * rest, *[b"data:" + b" " * 995] * pads]
    return b"\n".join(lines) + b"\n\n"


async def test_an_event_of_many_lines_past_the_bound_fails_and_is_not_read_further(
    make_server: MakeServer, fake: FakeOpenAI
) -> None:
    # 1,000 characters of output: no event past 12 * 1,000 + 64 KiB bytes can fit.
    reply = Reply(steps=(*text_events([], finish=None), _spread_event("Hi.\n", 77_537), Gate()))
    cap = (
        "an event of the model's stream passed 77,536 bytes, more than"
        " generation.max_output_chars (1,000) can fill"
    )
    _, outcome = await _stopped(make_server, fake, reply, cap, max_output_chars=1000)
    assert outcome.chat == ""


async def test_an_event_at_the_bound_is_taken(make_server: MakeServer, fake: FakeOpenAI) -> None:
    event_at_bound = _spread_event("Hi.\n", 77_536)
    fake.script(
        Reply(steps=(*text_events([], finish=None), event_at_bound, event(chunk({}, "stop"))))
    )
    gs = await _bounded_server(make_server, fake, max_output_chars=1000)
    outcome = await run(gs)
    assert outcome.generation["status"] == "completed", outcome.generation["error"]
    assert outcome.chat == "Hi.\n"


async def test_the_completed_summary_counts_files_and_names_a_few(
    make_server: MakeServer, fake: FakeOpenAI
) -> None:
    paths = [f"pkg/module_{n:03}.py" for n in range(300)]
    fake.script(answer("".join(_block(p, "x = 1\n") for p in paths), piece=4096))
    gs = await _bounded_server(make_server, fake)
    outcome = await run(gs)
    assert outcome.generation["status"] == "completed"
    (completed,) = outcome.of_type(ev.GENERATION_COMPLETED)
    summary = completed["summary"]
    assert summary == f"Wrote 300 files: {', '.join(paths[:10])}, and 290 more"


# --- the next request's context budget --------------------------------------------------


def _request_chars(messages: Sequence[Mapping[str, Any]]) -> int:
    """The characters of text in a chat-completions request's messages."""
    total = 0
    for message in messages:
        content = message["content"]
        if isinstance(content, str):
            total += len(content)
        else:
            total += sum(len(part.get("text", "")) for part in content)
    return total


async def test_after_20000_files_the_next_request_keeps_the_context_budget(
    make_server: MakeServer, fake: FakeOpenAI
) -> None:
    paths = [f"src/part_{n // 100:03}/file_{n:05}.txt" for n in range(20_000)]
    project = "".join(_block(p, f"VALUE = {n}\n") for n, p in enumerate(paths))
    fake.script(answer(project, piece=65536), answer("Nothing to change.\n"))
    gs = await _bounded_server(make_server, fake, max_files=20_000, max_output_chars=2_000_000)
    first = await run(gs, "twenty thousand files")
    assert first.generation["status"] == "completed", first.generation["error"]
    (completed,) = first.of_type(ev.GENERATION_COMPLETED)
    print(f"summary: {len(completed['summary'])} characters")
    assert len(completed["summary"]) < 1000
    await run(gs, "and now?", project_id=first.project_id)
    request = fake.requests[1]
    context_chars = gs.services.settings.openai.context_chars
    chars = _request_chars(request.body["messages"])
    size = len(orjson.dumps(request.body))
    print(f"next request: {chars} characters of text, {size} bytes of JSON")
    assert chars <= context_chars
    listing = request.body["messages"][-1]["content"]
    shown = listing.count('<file path="')
    names = listing.split("Also in the project, not shown: ", 1)[1].split("\n", 1)[0]
    named, more = names.rsplit(" and ", 1)
    assert more.endswith(" more files")
    counted = int(more.removesuffix(" more files").replace(",", ""))
    assert shown > 0 and named
    assert shown + len(named.split(", ")) + counted == 20_000


_PATHS = st.text(alphabet="ab/._é", min_size=1, max_size=24)
_FILES = st.lists(
    st.builds(FileRecord.of, _PATHS, st.text(alphabet="xy\n", max_size=300)),
    max_size=60,
    unique_by=lambda f: f.path,
)
_TURNS = st.lists(st.tuples(st.sampled_from(["user", "assistant"]), st.text(max_size=200)))


@settings(max_examples=300, deadline=None)
@given(files=_FILES, history=_TURNS, prompt=st.text(max_size=200), spare=st.integers(0, 4000))
def test_a_request_keeps_its_budget_and_accounts_for_every_file(
    files: list[FileRecord], history: list[tuple[str, str]], prompt: str, spare: int
) -> None:
    budget = len(SYSTEM_PROMPT) + len(prompt) + spare
    request = ModelRequest(prompt, files=tuple(files), history=tuple(history))
    messages = build_messages(request, budget)
    assert _request_chars(messages) <= budget
    text = messages[-1]["content"]
    assert isinstance(text, str) and text.endswith(prompt)
    context = select_files(files, spare)
    assert len(request_text(prompt, context)) <= len(prompt) + spare
    by_path = {f.path: f for f in files}
    assert all(by_path[f.path] == f for f in context.shown)  # whole files, never cut
    if not context.empty:
        assert len(context.shown) + len(context.named) + context.unnamed == len(files)
    if spare >= 400:  # the listing's frame for 60 files fits: something is said
        assert bool(files) != context.empty
