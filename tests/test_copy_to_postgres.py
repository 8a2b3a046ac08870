"""`genstream copy-to-postgres` (service/storage/copy.py): an SQLite database built by the
real app, copied into a real PostgreSQL, served again from there: the same API answers,
the same bytes from cursor 0, a cursor from the SQLite era resumed exactly, new ids after
the copied ones; and a copy that fails leaves the target as it was."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sqlite3
import sys
from pathlib import Path
from typing import Any

import asyncpg
import orjson

from service.protocol import EventType
from tests.helpers import wait_until
from tests.postgres import Database
from tests.process import ServerProcess, server_process
from tests.sse_reader import SSEReader

TIMEOUT = 20.0
TABLES = (
    "projects",
    "messages",
    "generations",
    "files",
    "events",
    "stream_sessions",
    "documents",
    "personas",
    "scenes",
)
VISITOR = "v-1"


async def copy_command(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "service",
        "copy-to-postgres",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(TIMEOUT):
        out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def raw(server: ServerProcess, path: str) -> bytes:
    async with server.http.get(server.url + path) as response:
        assert response.status == 200, path
        return await response.read()


async def resumed(server: ServerProcess, path: str, cursor: int, last: int) -> list[bytes]:
    """The event frames, exact bytes, of a stream resumed with Last-Event-ID `cursor`,
    up to the event `last` (a project stream stays open after it)."""
    headers = {"Last-Event-ID": str(cursor)}
    async with server.http.get(server.url + path, headers=headers) as response:
        assert response.status == 200
        reader = SSEReader(response)
        frames: list[bytes] = []
        while not frames or int(frames[-1].split(b"\n", 1)[0][4:]) < last:
            frames.append((await reader.event(TIMEOUT)).raw)
        return frames


async def build(server: ServerProcess) -> dict[str, Any]:
    """Projects, generations (files rewritten by a second one, a client_request_id),
    and stream sessions, through the API."""
    first, second = await server.new_project(), await server.new_project()
    generations = [
        (await server.generate(first, "a todo api"))["generation"]["id"],
        (await server.generate(second, "a landing page", client_request_id="r-1"))["generation"][
            "id"
        ],
    ]

    async def ended() -> bool:
        views = [await server.json("GET", f"/api/generations/{g}") for g in generations]
        return all(view["status"] == "completed" for view in views)

    await wait_until(ended, TIMEOUT)
    generations.append((await server.generate(first, "now add tests"))["generation"]["id"])
    await wait_until(ended, TIMEOUT)
    # The pipelines' own state: a knowledge base, the persona a page visit stores, scenes.
    for title, content in (("Pricing", "Plans start at ten dollars"), ("Setup", "Install it")):
        document = {"title": title, "content": content}
        await server.json("POST", f"/api/projects/{second}/documents", status=201, json=document)
    visit = await server.generate(
        second, "what do the plans cost?", pipeline="page", inputs={"visitor_id": VISITOR}
    )
    generations.append(visit["generation"]["id"])
    await wait_until(ended, TIMEOUT)
    generations.append(
        (await server.generate(first, "add an intro scene", pipeline="scenes"))["generation"]["id"]
    )
    await wait_until(ended, TIMEOUT)
    return {"projects": [first, second], "generations": generations}


def give_pipelines(db: Path, built: dict[str, Any]) -> None:
    """A project's default pipeline and a generation's inputs, set in the file (the API
    of this version sets neither), so the copy has values other than the defaults."""
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        conn.execute("UPDATE projects SET pipeline = 'page' WHERE id = ?", (built["projects"][0],))
        conn.execute(
            "UPDATE generations SET pipeline = 'page', inputs = ? WHERE id = ?",
            (orjson.dumps({"visitor_id": "v-1", "n": [1, 2]}), built["generations"][0]),
        )


async def answers(server: ServerProcess, built: dict[str, Any]) -> dict[str, Any]:
    """Every read of the API over what `build` made, parsed, and /events as bytes."""
    seen: dict[str, Any] = {"projects": await server.json("GET", "/api/projects")}
    for pid in built["projects"]:
        seen[pid] = await server.json("GET", f"/api/projects/{pid}")
        seen[f"{pid}/messages"] = await server.json("GET", f"/api/projects/{pid}/messages")
        files = await server.json("GET", f"/api/projects/{pid}/files")
        seen[f"{pid}/files"] = files
        for listed in files["files"]:
            path = f"/api/projects/{pid}/files/{listed['path']}"
            seen[path] = await raw(server, path)
        seen[f"{pid}/events"] = await raw(server, f"/api/projects/{pid}/events?after=0&limit=1000")
        for part in ("documents", "scenes"):
            seen[f"{pid}/{part}"] = await server.json("GET", f"/api/projects/{pid}/{part}")
        # Found by each engine's own ranking (FTS5's bm25, PostgreSQL's ts_rank_cd): the
        # documents found are the same, their ranks and order need not be.
        search = f"/api/projects/{pid}/documents/search?q=plans%20install"
        hits = (await server.json("GET", search))["results"]
        seen[f"{pid}/found"] = sorted(hit["document_id"] for hit in hits)
    persona = f"/api/projects/{built['projects'][1]}/personas/{VISITOR}"
    seen[persona] = await server.json("GET", persona)
    for gid in built["generations"]:
        seen[gid] = await server.json("GET", f"/api/generations/{gid}")
    return seen


async def table_contents(url: str) -> dict[str, list[Any]]:
    conn = await asyncpg.connect(url)
    try:
        contents = {t: list(await conn.fetch(f"SELECT * FROM {t} ORDER BY 1, 2")) for t in TABLES}
        contents["head"] = [await conn.fetchval("SELECT last_event_id FROM event_log_head")]
        return contents
    finally:
        await conn.close()


async def test_a_copy_serves_the_same_answers_cursors_and_ids(
    tmp_path: Path, pg_database: Database
) -> None:
    db = tmp_path / "genstream.db"
    async with server_process(tmp_path) as lite:
        built = await build(lite)
        give_pipelines(db, built)
        before = await answers(lite, built)
        first, second = built["projects"]
        assert len(before[f"{second}/documents"]["documents"]) == 2
        assert len(before[f"{second}/found"]) == 2
        assert len(before[f"{first}/scenes"]["scenes"]) == 1
        assert before[f"/api/projects/{second}/personas/{VISITOR}"]["visits"] == 1
        assert before[built["generations"][0]]["inputs"] == {"visitor_id": "v-1", "n": [1, 2]}
        assert before[built["projects"][0]]["pipeline"] == "page"
        project = built["projects"][0]
        events = await lite.events(project)
        last = events[-1]["id"]
        middle = events[len(events) // 2]["id"]
        stream = f"/api/projects/{project}/stream"
        lite_resumed = await resumed(lite, stream, middle, last)
        generation = built["generations"][-1]
        lite_generation_stream = await resumed(
            lite, f"/api/generations/{generation}/stream", middle, last
        )
        lite.signal(signal.SIGTERM)
        assert await lite.wait(TIMEOUT) == 0
    newest = max(event["id"] for pid in built["projects"] for event in listed_events(before, pid))

    code, out, err = await copy_command("--from", str(db), "--to", pg_database.url)
    assert code == 0, err
    assert f"the next event id is {newest + 1}" in out
    assert (await table_contents(pg_database.url))["head"] == [newest]

    async with server_process(
        tmp_path, storage_backend="postgres", storage_url=pg_database.url
    ) as pg:
        assert await answers(pg, built) == before
        assert await resumed(pg, stream, middle, last) == lite_resumed
        assert (
            await resumed(pg, f"/api/generations/{generation}/stream", middle, last)
            == lite_generation_stream
        )
        submitted = await pg.generate(built["projects"][1], "a blog")
        assert submitted["generation"]["first_event_id"] == newest + 1
        after = await pg.events(built["projects"][1], after=newest)
        assert after[0]["id"] == newest + 1
        assert after[0]["type"] == EventType.MESSAGE_CREATED


def listed_events(answered: dict[str, Any], pid: str) -> list[dict[str, Any]]:
    page: dict[str, Any] = orjson.loads(answered[f"{pid}/events"])
    assert not page["has_more"]
    events: list[dict[str, Any]] = page["events"]
    return events


async def test_a_copy_into_a_database_that_is_not_empty_is_refused_and_writes_nothing(
    tmp_path: Path, pg_database: Database
) -> None:
    async with server_process(tmp_path) as lite:
        await build(lite)
    async with server_process(
        tmp_path / "pg", storage_backend="postgres", storage_url=pg_database.url
    ) as pg:
        await pg.new_project()
    held = await table_contents(pg_database.url)

    code, _, err = await copy_command(
        "--from", str(tmp_path / "genstream.db"), "--to", pg_database.url
    )
    assert code == 1
    assert "is not empty (projects)" in err
    assert await table_contents(pg_database.url) == held


async def test_a_copy_that_fails_midway_leaves_the_target_empty(
    tmp_path: Path, pg_database: Database
) -> None:
    db = tmp_path / "genstream.db"
    async with server_process(tmp_path) as lite:
        await build(lite)
    # A message whose project is not there: SQLite without foreign_keys takes it, and
    # PostgreSQL refuses it when the messages are copied, after projects and generations.
    with sqlite3.connect(db) as broken:
        broken.execute(
            "INSERT INTO messages VALUES ('m-orphan', 'no-such-project', NULL, 'user', "
            "'complete', 'hi', 1, 1)"
        )
    code, _, err = await copy_command("--from", str(db), "--to", pg_database.url)
    assert code == 1
    assert "nothing written" in err and "messages_project_id_fkey" in err
    contents = await table_contents(pg_database.url)
    assert contents == {**{t: [] for t in TABLES}, "head": [0]}


async def test_a_password_on_the_command_line_is_refused(tmp_path: Path) -> None:
    url = "postgresql://genstream:s3cret@127.0.0.1:1/db"
    code, _, err = await copy_command("--from", str(tmp_path / "x.db"), "--to", url)
    assert code == 2
    assert "PGPASSWORD" in err and "s3cret" not in err


async def test_a_generation_running_in_the_sqlite_file_is_ended_by_the_first_start_on_the_copy(
    tmp_path: Path, pg_database: Database
) -> None:
    async with server_process(tmp_path, offline_tokens_per_second="5") as lite:
        project = await lite.new_project()
        gid = (await lite.generate(project))["generation"]["id"]

        async def running() -> bool:
            view = await lite.json("GET", f"/api/generations/{gid}")
            return bool(view["status"] == "running")

        await wait_until(running, TIMEOUT)
        lite.signal(signal.SIGKILL)  # no shutdown: the file keeps it running
        await lite.wait(TIMEOUT)
    code, out, err = await copy_command(
        "--from", str(tmp_path / "genstream.db"), "--to", pg_database.url
    )
    assert code == 0, err
    assert "1 generation(s) were running in the SQLite file" in out
    async with server_process(
        tmp_path, storage_backend="postgres", storage_url=pg_database.url
    ) as pg:

        async def ended() -> bool:
            view = await pg.json("GET", f"/api/generations/{gid}")
            return bool(view["status"] == "failed" and view["error"]["code"] == "interrupted")

        await wait_until(ended, TIMEOUT)
        assert (await pg.events(project))[-1]["type"] == EventType.GENERATION_FAILED
