"""U+0000 (NUL), which PostgreSQL's text cannot hold ("the character with code zero
cannot be stored", PostgreSQL docs, Character Types), on both backends: a client's text
with one is a 400 that stores nothing; a model's becomes U+FFFD, as a lone surrogate
does (service/generation/text.py), so the run still ends, and both backends store the
same text."""

from __future__ import annotations

from typing import Any

import pytest

from service.eventlog import event as ev
from tests.conftest import Genstream, MakeServer
from tests.fake_openai import FakeOpenAI, answer
from tests.test_openai_provider import api_key, fake, openai_server

__all__ = ["api_key", "fake"]  # fixtures

pytestmark = pytest.mark.backends

NUL = "\x00"


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/api/projects", {"name": f"a{NUL}b"}, "name"),
        ("{project}/generations", {"prompt": f"a todo{NUL} api"}, "prompt"),
        (
            "{project}/generations",
            {"prompt": "a todo api", "client_request_id": f"r{NUL}"},
            "client_request_id",
        ),
        ("{project}/documents", {"title": f"t{NUL}", "content": "c"}, "title"),
        ("{project}/documents", {"title": "t", "content": f"c{NUL}c"}, "content"),
    ],
)
async def test_a_client_s_text_holding_nul_is_a_400_and_nothing_is_stored(
    gs: Genstream, path: str, body: dict[str, Any], field: str
) -> None:
    project_id = await gs.new_project()
    before = await gs.json("GET", "/api/projects")
    url = path.replace("{project}", f"/api/projects/{project_id}")
    reply = await gs.json("POST", url, status=400, json=body)
    assert (reply["error"]["code"], reply["error"]["field"]) == ("invalid_request", field)
    assert "U+0000" in reply["error"]["message"]
    assert await gs.json("GET", "/api/projects") == before
    assert await gs.events(project_id) == []


async def test_a_model_s_nul_becomes_the_replacement_character_and_the_run_ends(
    make_server: MakeServer, fake: FakeOpenAI
) -> None:
    gs = await openai_server(make_server, fake)
    fake.script(answer(f'Here{NUL} it is.\n<file path="a.txt">\nx{NUL}y\n</file>\nDone.', piece=3))
    project_id = await gs.new_project()
    submitted = await gs.generate(project_id, "a file")
    final = await gs.wait_generation(submitted["generation"]["id"])
    assert final["status"] == "completed", final
    messages = (await gs.json("GET", f"/api/projects/{project_id}/messages"))["messages"]
    assert messages[1]["content"] == "Here\ufffd it is.\nDone."
    file = await gs.json("GET", f"/api/projects/{project_id}/files/a.txt")
    assert file["content"] == "x\ufffdy\n"
    events = await gs.events(project_id)
    assert NUL not in "".join(e.get("delta", "") for e in events if e["type"] == ev.FILE_DELTA)


@pytest.mark.parametrize(
    "path",
    [
        "/api/projects/prj_a%00b",
        "/api/projects/prj_a%00b/messages",
        "/api/projects/prj_a%00b/stream",
        "/api/generations/gen_a%00b",
        "/api/projects/{project}/files/a%00b.txt",
        "/api/projects/{project}/personas/v%00",
    ],
)
async def test_an_id_holding_nul_is_a_404(gs: Genstream, path: str) -> None:
    project_id = await gs.new_project()
    reply = await gs.json("GET", path.replace("{project}", project_id), status=404)
    assert reply["error"]["code"] == "not_found"
