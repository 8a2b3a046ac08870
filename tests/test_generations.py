"""Generations end to end on a real server with the offline provider."""

from __future__ import annotations

import asyncio
import hashlib
import signal
from pathlib import Path

import pytest

from service.eventlog import event as ev
from service.eventlog.journal import Emit
from service.storage.interface import Tx
from tests.backends import SHORT_LEASE_SECONDS, Store
from tests.conftest import Genstream, MakeServer
from tests.helpers import until_ended, wait_until
from tests.process import server_process
from tests.sse_reader import SSEReader

pytestmark = pytest.mark.backends


async def test_submit_returns_202_with_real_ids_and_the_row_is_updated_in_place(
    gs: Genstream,
) -> None:
    project_id = await gs.new_project()
    submitted = await gs.generate(project_id, "a todo api")
    generation = submitted["generation"]
    assistant = submitted["assistant_message"]
    assert submitted["stream_url"] == f"/api/generations/{generation['id']}/stream"
    assert submitted["created"] is True
    assert assistant["status"] == "pending"
    assert assistant["content"] == "Generating code..."
    assert submitted["user_message"]["content"] == "a todo api"

    final = await gs.wait_generation(generation["id"])
    assert final["status"] == "completed"
    assert final["stage"] == "complete" and final["progress"] == 100
    assert final["usage"]["completion_tokens"] > 0
    assert set(final["timings"]) >= {"total_ms", "first_token_ms", "stages"}

    messages = (await gs.json("GET", f"/api/projects/{project_id}/messages"))["messages"]
    assert [m["id"] for m in messages] == [submitted["user_message"]["id"], assistant["id"]]
    assert messages[1]["status"] == "success"
    assert messages[1]["content"] not in ("", "Generating code...")

    events = await gs.events(project_id)
    deltas = "".join(e["delta"] for e in events if e["type"] == ev.MESSAGE_DELTA)
    assert deltas.strip() == messages[1]["content"]
    assert all(e["message_id"] == assistant["id"] for e in events if e["type"] == "message.delta")
    created = [e["message"]["id"] for e in events if e["type"] == ev.MESSAGE_CREATED]
    assert created == [submitted["user_message"]["id"], assistant["id"]]

    files = (await gs.json("GET", f"/api/projects/{project_id}/files"))["files"]
    completed = {e["path"]: e for e in events if e["type"] == ev.FILE_COMPLETED}
    assert len(files) >= 3
    assert {f["path"] for f in files} == set(completed)
    for listed in files:
        file = await gs.json("GET", f"/api/projects/{project_id}/files/{listed['path']}")
        raw = file["content"].encode()
        assert (
            hashlib.sha256(raw).hexdigest() == file["sha256"] == completed[file["path"]]["sha256"]
        )
        assert len(raw) == file["size"] == completed[file["path"]]["size"]
        typed = "".join(
            e["delta"] for e in events if e["type"] == ev.FILE_DELTA and e["path"] == file["path"]
        )
        assert typed == file["content"]


async def test_stages_run_in_order_with_rising_progress(gs: Genstream) -> None:
    project_id = await gs.new_project()
    submitted = await gs.generate(project_id)
    await gs.wait_generation(submitted["generation"]["id"])
    events = await gs.events(project_id)
    started = next(e for e in events if e["type"] == ev.GENERATION_STARTED)
    assert [s["id"] for s in started["stages"]] == [
        "planning",
        "generating",
        "validating",
        "complete",
    ]
    stages = [e for e in events if e["type"] == ev.STAGE]
    progress = [e["progress"] for e in stages]
    assert progress == sorted(progress)
    assert progress[-1] == 100
    order = list(dict.fromkeys(e["stage"] for e in stages))
    assert order == ["planning", "generating", "validating", "complete"]
    checks = [e for e in events if e["type"] == ev.VALIDATION]
    assert checks and all(e["ok"] for e in checks)


async def test_accept_event_stream_makes_the_response_the_stream(gs: Genstream) -> None:
    project_id = await gs.new_project()
    async with gs.http.post(
        f"{gs.url}/api/projects/{project_id}/generations",
        json={"prompt": "a landing page"},
        headers={"Accept": "text/event-stream"},
    ) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        frames = await SSEReader(response).events_until_end()
    assert frames[0].event == ev.MESSAGE_CREATED
    assert frames[0].json["message"]["role"] == "user"
    assert frames[1].json["message"]["content"] == "Generating code..."
    assert frames[-1].event == ev.GENERATION_COMPLETED
    ids = [f.id or 0 for f in frames]
    assert ids == sorted(ids) and len(set(ids)) == len(ids) and 0 not in ids


async def test_same_client_request_id_returns_the_same_ids_and_starts_nothing(
    gs: Genstream,
) -> None:
    project_id = await gs.new_project()
    first = await gs.generate(project_id, "a cli tool", client_request_id="req-1")
    again = await gs.generate(project_id, "a cli tool", client_request_id="req-1")
    assert again["created"] is False
    for key in ("user_message", "assistant_message"):
        assert again[key]["id"] == first[key]["id"]
    assert again["generation"]["id"] == first["generation"]["id"]
    await gs.wait_generation(first["generation"]["id"])
    after_done = await gs.generate(project_id, "a cli tool", client_request_id="req-1")
    assert after_done["generation"]["id"] == first["generation"]["id"]
    messages = (await gs.json("GET", f"/api/projects/{project_id}/messages"))["messages"]
    assert len(messages) == 2
    events = await gs.events(project_id)
    assert sum(e["type"] == ev.GENERATION_STARTED for e in events) == 1


async def test_same_client_request_id_with_another_prompt_is_a_409(gs: Genstream) -> None:
    project_id = await gs.new_project()
    first = await gs.generate(project_id, "one", client_request_id="req-1")
    body = await gs.json(
        "POST",
        f"/api/projects/{project_id}/generations",
        status=409,
        json={"prompt": "two", "client_request_id": "req-1"},
    )
    assert body["error"]["code"] == "client_request_id_reused"
    await gs.wait_generation(first["generation"]["id"])


async def test_second_generation_while_one_runs_is_a_409_naming_it(
    make_server: MakeServer,
) -> None:
    gs = await make_server(offline={"tokens_per_second": 20})
    project_id = await gs.new_project()
    running = await gs.generate(project_id)
    body = await gs.json(
        "POST", f"/api/projects/{project_id}/generations", status=409, json={"prompt": "again"}
    )
    assert body["error"]["code"] == "generation_running"
    assert body["error"]["generation_id"] == running["generation"]["id"]
    assert running["generation"]["id"] in body["error"]["message"]
    messages = (await gs.json("GET", f"/api/projects/{project_id}/messages"))["messages"]
    assert len(messages) == 2
    await gs.json("POST", f"/api/generations/{running['generation']['id']}/cancel")


async def test_cancel_ends_in_cancelled_and_is_idempotent(make_server: MakeServer) -> None:
    gs = await make_server(offline={"tokens_per_second": 20})
    project_id = await gs.new_project()
    submitted = await gs.generate(project_id)
    generation_id = submitted["generation"]["id"]
    async with gs.http.get(f"{gs.url}/api/generations/{generation_id}/stream") as response:
        reader = SSEReader(response)
        # Wait until text is streaming, so the cancel lands mid-generation.
        while (await reader.event()).event != ev.MESSAGE_DELTA:
            pass
        cancelled = await gs.json("POST", f"/api/generations/{generation_id}/cancel")
        rest = await reader.events_until_end()
    assert cancelled["status"] == "cancelled"
    assert rest[-1].event == ev.GENERATION_CANCELLED
    again = await gs.json("POST", f"/api/generations/{generation_id}/cancel")
    assert again["status"] == "cancelled"
    events = await gs.events(project_id)
    assert sum(e["type"] == ev.GENERATION_CANCELLED for e in events) == 1
    messages = (await gs.json("GET", f"/api/projects/{project_id}/messages"))["messages"]
    assert messages[1]["status"] == "cancelled"
    # The project is free again.
    next_one = await gs.generate(project_id, "next")
    assert next_one["created"] is True
    await gs.json("POST", f"/api/generations/{next_one['generation']['id']}/cancel")


async def test_project_shows_its_active_generation_and_last_event(
    make_server: MakeServer,
) -> None:
    gs = await make_server(offline={"tokens_per_second": 20})
    project_id = await gs.new_project()
    submitted = await gs.generate(project_id)
    project = await gs.json("GET", f"/api/projects/{project_id}")
    assert project["status"] == "generating"
    assert project["active_generation"]["id"] == submitted["generation"]["id"]
    assert project["last_event_id"] >= submitted["generation"]["first_event_id"] + 1
    listed = await gs.json("GET", "/api/projects")
    assert [p["id"] for p in listed["projects"]] == [project_id]
    await gs.json("POST", f"/api/generations/{submitted['generation']['id']}/cancel")
    project = await gs.json("GET", f"/api/projects/{project_id}")
    assert project["status"] == "idle" and project["active_generation"] is None


async def test_restart_finishes_a_generation_left_running_as_interrupted(
    tmp_path: Path, make_server: MakeServer, store: Store
) -> None:
    # A real process, killed with SIGKILL in the middle of a generation.
    async with server_process(
        tmp_path,
        offline_tokens_per_second="20",
        generation_lease_seconds=str(SHORT_LEASE_SECONDS),
        **store.process_settings(),
    ) as server:
        project_id = await server.new_project()
        generation_id = (await server.generate(project_id, "an api"))["generation"]["id"]
        url = f"{server.url}/api/generations/{generation_id}/stream"
        async with server.http.get(url) as response:
            reader = SSEReader(response)
            while (await reader.event()).event != ev.MESSAGE_DELTA:
                pass
            server.signal(signal.SIGKILL)
            await server.wait(10)
    status = await store.value("SELECT status FROM generations WHERE id = ?", (generation_id,))
    assert status == "running"

    gs = await make_server(generation={"lease_seconds": SHORT_LEASE_SECONDS})  # same database
    generation = await until_ended(gs, generation_id, timeout=10 * SHORT_LEASE_SECONDS)
    assert generation["status"] == "failed"
    assert generation["error"] == {
        "code": "interrupted",
        "message": generation["error"]["message"],
        "retryable": True,
    }
    async with gs.http.get(f"{gs.url}/api/generations/{generation_id}/stream") as response:
        frames = await SSEReader(response).events_until_end()
    assert frames[-1].event == ev.GENERATION_FAILED
    assert frames[-1].json["code"] == "interrupted"
    assert any(f.event == ev.MESSAGE_DELTA for f in frames)  # what was committed survived
    messages = (await gs.json("GET", f"/api/projects/{project_id}/messages"))["messages"]
    assert messages[1]["status"] == "error"


async def test_submit_cancelled_while_committing_still_starts_its_generation(
    gs: Genstream,
) -> None:
    """A client that leaves mid-submit cancels the handler (handler_cancellation), but the
    rows still commit: the generation must run and end, not wait pending for ever."""
    project_id = await gs.new_project()
    journal = gs.services.journal
    gate = asyncio.Event()

    async def hold(tx: Tx, emit: Emit) -> None:
        await gate.wait()

    held = journal.transact(hold)
    await _journal_queue_reaches(gs, 0)  # the writer is inside `hold`, holding the line
    submit = asyncio.create_task(
        gs.services.generations.submit(project_id, "an api", [], "req-left")
    )
    await _journal_queue_reaches(gs, 1)  # the submission waits behind it
    submit.cancel()
    with pytest.raises(asyncio.CancelledError):
        await submit
    gate.set()
    await held
    again = await gs.generate(project_id, "an api", client_request_id="req-left")
    assert again["created"] is False
    final = await gs.wait_generation(again["generation"]["id"])
    assert final["status"] == "completed"


async def _journal_queue_reaches(gs: Genstream, jobs: int) -> None:
    await wait_until(lambda: gs.services.journal.pending == jobs, timeout=5, interval=0.01)
