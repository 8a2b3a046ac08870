"""Paths and text from the model, end to end: a real server on the real `openai` client,
tests/fake_openai.py serving the wire bytes (JSON escapes such as a lone "\\ud800"
included), the stream read as raw SSE bytes; and `genstream generate --out` as a real
process against a stream that carries paths our server would refuse."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

import pytest

from service.client.terminal import shown
from service.eventlog import event as ev
from service.eventlog.event import Draft
from tests import test_openai_provider
from tests.conftest import Genstream, MakeServer
from tests.fake_openai import (
    FakeOpenAI,
    Gate,
    Reply,
    Step,
    answer,
    chunk,
    event,
    text_events,
)
from tests.helpers import stored_files
from tests.sse_reader import Frame, parse_frame
from tests.test_cli import read_lines_until, start_cli, tree
from tests.test_openai_provider import openai_server

# That module's fixtures, found by their names here: the model's server, the API key.
fake = test_openai_provider.fake
api_key = test_openai_provider.api_key

OWNED = "#!/bin/sh\necho owned\n"

# (what the model names, how the validation event names it, why it is refused)
REFUSED = [
    pytest.param(".git/hooks/pre-commit", ".git/hooks/pre-commit", ".git directory", id="git"),
    pytest.param("src/.GIT/config", "src/.GIT/config", ".git directory", id="git-upper"),
    pytest.param("git~1/config", "git~1/config", ".git directory", id="git-short-name"),
    pytest.param("evil\u202etxt.exe", "evil\u202etxt.exe", "U+202E", id="bidi-override"),
    pytest.param("a\u2066b.txt", "a\u2066b.txt", "U+2066", id="bidi-isolate"),
    pytest.param("zero\u200bwidth.txt", "zero\u200bwidth.txt", "U+200B", id="zero-width"),
    pytest.param("\ufeffbom.txt", "\ufeffbom.txt", "U+FEFF", id="byte-order-mark"),
    pytest.param("line\u2028sep.txt", "line\u2028sep.txt", "U+2028", id="line-separator"),
    pytest.param("para\u2029sep.txt", "para\u2029sep.txt", "U+2029", id="para-separator"),
    # JSON carries a lone surrogate as an escape; no UTF-8 can: the event names the
    # path with U+FFFD in its place, the one form it can be journaled in.
    pytest.param("s\ud800.txt", "s\ufffd.txt", "U+FFFD", id="lone-high-surrogate"),
    pytest.param("t\udc00.txt", "t\ufffd.txt", "U+FFFD", id="lone-low-surrogate"),
]
# As the events name them: a journal holds no lone surrogate.
SHOWN_PATHS = [str(param.values[1]) for param in REFUSED]


def file_text(path: str, content: str) -> str:
    return f'<file path="{path}">\n{content}</file>\n'


async def stream_frames(gs: Genstream, generation_id: str) -> tuple[bytes, list[Frame]]:
    """The generation's whole stream as raw bytes, and its event frames."""
    url = f"{gs.url}/api/generations/{generation_id}/stream"
    async with asyncio.timeout(20), gs.http.get(url) as response:
        raw = await response.read()
    frames = [parse_frame(block + b"\n\n") for block in raw.split(b"\n\n") if block]
    return raw, [frame for frame in frames if frame.id is not None]


async def generate(gs: Genstream) -> tuple[str, bytes, list[dict[str, Any]]]:
    """Run one generation; its project, its raw stream and the events it carried."""
    project_id = await gs.new_project()
    submitted = await gs.generate(project_id, "hostile")
    raw, frames = await stream_frames(gs, submitted["generation"]["id"])
    return project_id, raw, [frame.json for frame in frames]


def refusals(events: list[dict[str, Any]]) -> dict[str, str]:
    return {
        e["path"]: e["detail"]
        for e in events
        if e["type"] == ev.VALIDATION and e["check"] == "path" and not e["ok"]
    }


@pytest.mark.parametrize(("path", "shown", "reason"), REFUSED)
async def test_a_path_the_model_must_not_write_is_refused_and_nothing_is_stored(
    make_server: MakeServer, fake: FakeOpenAI, path: str, shown: str, reason: str
) -> None:
    fake.script(answer(file_text(path, OWNED) + file_text("ok.txt", "fine\n"), piece=5))
    gs = await openai_server(make_server, fake)
    project_id, raw, events = await generate(gs)

    assert events[-1]["type"] == ev.GENERATION_COMPLETED
    refused = refusals(events)
    assert list(refused) == [shown]
    assert reason in refused[shown]
    assert [e["path"] for e in events if e["type"] == ev.FILE_STARTED] == ["ok.txt"]
    assert b"owned" not in raw  # its content went nowhere, not even into the chat
    assert await stored_files(gs, project_id) == {"ok.txt": "fine\n"}


async def test_a_lone_surrogate_in_a_path_is_refused_not_stored_under_another_name(
    make_server: MakeServer, fake: FakeOpenAI
) -> None:
    # The case: one delta, the escape inside the tag line.
    fake.script(Reply(steps=tuple(text_events([file_text("s\ud800.txt", "x\n")]))))
    gs = await openai_server(make_server, fake)
    project_id, _, events = await generate(gs)
    assert list(refusals(events)) == ["s\ufffd.txt"]
    assert await stored_files(gs, project_id) == {}  # not `s?.txt`, not `s\ufffd.txt`


async def test_a_surrogate_pair_split_across_two_deltas_is_one_character(
    make_server: MakeServer, fake: FakeOpenAI
) -> None:
    # U+1F600 is "\ud83d\ude00" in JSON; a server may cut the pair between two chunks,
    # in chat text, in a path and in a file's content. What is left alone is U+FFFD.
    pieces = [
        "Hi \ud83d",
        "\ude00 there\n",
        '<file path="smile\ud83d',
        '\ude00.txt">\n',
        "a\ud83d",
        "\ude00b\n",
        "</file>\n",
        "lone \ud800 and \udc00, last\ud83d",
    ]
    fake.script(Reply(steps=tuple(text_events(pieces))))
    gs = await openai_server(make_server, fake)
    project_id, raw, events = await generate(gs)

    chat = "".join(e["delta"] for e in events if e["type"] == ev.MESSAGE_DELTA)
    assert chat == "Hi \U0001f600 there\nlone \ufffd and \ufffd, last\ufffd"
    assert b"?" not in raw
    assert await stored_files(gs, project_id) == {"smile\U0001f600.txt": "a\U0001f600b\n"}
    completed = next(e for e in events if e["type"] == ev.FILE_COMPLETED)
    content = "a\U0001f600b\n".encode()
    assert (completed["size"], completed["sha256"]) == (
        len(content),
        hashlib.sha256(content).hexdigest(),
    )


async def test_generate_out_refuses_and_says_so_for_paths_a_server_let_through(
    make_server: MakeServer, fake: FakeOpenAI, tmp_path: Path
) -> None:
    # A server that is not ours (or an older one) streams files our server refuses: the
    # test journals them itself while the model is held at the gate.
    gate = Gate()
    steps: list[Step] = [*text_events(["Working on it.\n"], finish=None), gate]
    steps += [event(chunk({"content": file_text("ok.txt", "fine\n")})), event(chunk({}, "stop"))]
    fake.script(Reply(steps=tuple(steps)))
    gs = await openai_server(make_server, fake)
    project_id = await gs.new_project()
    out = tmp_path / "out"
    process = await start_cli("generate", project_id, "x", "--out", str(out), "--url", gs.url)
    try:
        first = await read_lines_until(process, lambda line: line.startswith("generation "))
        generation_id = first[-1].split()[1]
        await read_lines_until(process, lambda line: line == "Working on it.")
        hostile = [d for path in SHOWN_PATHS for d in file_drafts(project_id, generation_id, path)]
        await gs.services.journal.append(*hostile)
        gate.open()
        async with asyncio.timeout(30):
            stdout, _ = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()

    lines = stdout.decode().splitlines()
    assert process.returncode == 1  # the directory does not hold what was asked for
    assert tree(out) == {"ok.txt": "fine\n"}
    refused = [line for line in lines if line.startswith("✗ ")]
    # Each with its reason, and named with escapes for what a terminal would hide.
    assert [line.split(": refused (")[0] for line in refused] == [
        f"✗ {shown(path)}" for path in SHOWN_PATHS
    ]
    assert "✗ 'evil\\u202etxt.exe': refused (bidirectional control U+202E" in stdout.decode()
    assert all(line.endswith(")") for line in refused)
    assert [line for line in lines if line.startswith("✓ ")] == ["✓ ok.txt  5 bytes"]
    assert f"wrote 1 of {len(SHOWN_PATHS) + 1} files under {out}" in lines


def file_drafts(project_id: str, generation_id: str, path: str) -> list[Draft]:
    """A whole file's events, as a server whose parser let `path` through would send."""
    raw = OWNED.encode()
    payloads = [
        (ev.FILE_STARTED, {"path": path, "replaces": False}),
        (ev.FILE_DELTA, {"path": path, "delta": OWNED, "line": 1}),
        (
            ev.FILE_COMPLETED,
            {"path": path, "size": len(raw), "sha256": hashlib.sha256(raw).hexdigest()},
        ),
    ]
    return [Draft(project_id, generation_id, type_, payload) for type_, payload in payloads]
