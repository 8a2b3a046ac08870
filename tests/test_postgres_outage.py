"""PostgreSQL lost while a genstream process runs on it (issue 13 item 7): every write
route answers 503 `storage_unavailable` at once (not a hang, not a 500), a stream open
across the outage keeps its heartbeats, and once the database is back the same writes
pass, a generation runs to its end, and a stream that stayed open and one resumed by
Last-Event-ID each get exactly the log. A real child server (tests/process.py) on the
session's throwaway cluster, stopped with `pg_ctl stop --mode=fast` (tests/postgres.py:
every connection dropped, new ones refused until it starts again); raw SSE bytes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import aiohttp
import orjson

from service.eventlog import event as ev
from tests.helpers import wait_until
from tests.postgres import Database
from tests.process import ServerProcess
from tests.sse_reader import Frame, SSEReader
from tests.test_shared_feed import Received, check, database_log, is_end, server

HEARTBEAT: Final = 0.2
# Slow enough that the first generation is mid-run when the database goes, fast enough
# that the one submitted after it ends in seconds.
TOKENS_PER_SECOND: Final = "150"
# A refused connection is answered at once; this bound only tells an answer from a hang
# (a request waiting on the database for as long as it stays away) on a loaded machine.
ANSWERED_WITHIN: Final = 5.0
# Pings a stream must send while the database is away: a heartbeat is no accident.
PINGS: Final = 3
TIMEOUT: Final = 120.0
BACK_WITHIN: Final = 30.0


async def _answer(
    process: ServerProcess, method: str, path: str, body: dict[str, Any]
) -> tuple[int, Any, float]:
    """One request (a JSON body unless a GET): its status, its JSON, how long it took."""
    started = time.monotonic()
    payload = None if method == "GET" else body
    async with asyncio.timeout(ANSWERED_WITHIN * 4):  # a hang fails here, not the suite
        async with process.http.request(method, process.url + path, json=payload) as response:
            payload = await response.json(content_type=None)
            return response.status, payload, time.monotonic() - started


async def _refused(process: ServerProcess, method: str, path: str, body: dict[str, Any]) -> None:
    status, payload, took = await _answer(process, method, path, body)
    assert (status, payload["error"]["code"]) == (503, "storage_unavailable"), (
        method,
        path,
        status,
        payload,
    )
    assert took < ANSWERED_WITHIN, (method, path, took)


async def _passes_when_back(
    process: ServerProcess, method: str, path: str, body: dict[str, Any], status: int
) -> Any:
    """The request, asked again while the database is not yet taking it (503), until it
    answers `status`; its JSON."""
    answer: Any = None

    async def passed() -> bool:
        nonlocal answer
        got, answer, _ = await _answer(process, method, path, body)
        if got == 503:
            return False
        assert got == status, (method, path, got, answer)
        return True

    await wait_until(passed, timeout=BACK_WITHIN, interval=0.2)
    return answer


async def _read_until(reader: SSEReader, received: Received, done: Callable[[Frame], bool]) -> None:
    while True:
        frame = await reader.event(timeout=30)
        received.take(frame)
        if done(frame):
            return


async def _heartbeats(reader: SSEReader, received: Received, pings: int) -> None:
    """Read the stream until it sent `pings` pings in a row; an event sent before the
    outage and still on its way counts as received, none may come between the pings."""
    seen = 0
    while seen < pings:
        frame = await reader.frame(timeout=5)
        if frame.event is not None:
            assert seen == 0, f"an event while the database was down: {frame.raw!r}"
            received.take(frame)
            continue
        seen += frame.comments.count(b"ping")


async def test_writes_answer_503_while_postgres_is_down_and_all_resumes_exactly_after(
    tmp_path: Path, pg_database: Database
) -> None:
    """A generation mid-run and a stream of its project open when PostgreSQL stops:
    each write (a project, a generation, the cancel) and a read answers 503
    storage_unavailable within ANSWERED_WITHIN, the stream sends pings throughout. Back:
    the first generation ends (failed, storage_unavailable, once), the writes pass, a second
    generation completes, and the stream that stayed open (from cursor 0) and one resumed
    from its cursor at the outage hold exactly the database's log, ids and bytes."""
    async with server(
        tmp_path,
        pg_database,
        stream_heartbeat_seconds=str(HEARTBEAT),
        offline_tokens_per_second=TOKENS_PER_SECOND,
    ) as process:
        async with asyncio.timeout(TIMEOUT):
            project_id = await process.new_project()
            running = (await process.generate(project_id))["generation"]["id"]
            url = f"{process.url}/api/projects/{project_id}/stream"
            async with process.http.get(url, headers={"Last-Event-ID": "0"}) as response:
                reader = SSEReader(response)
                stayed = Received()
                await _read_until(reader, stayed, lambda f: f.event == ev.MESSAGE_DELTA)
                refused: list[tuple[str, str, dict[str, Any]]] = [
                    ("POST", "/api/projects", {"name": "during"}),
                    ("POST", f"/api/projects/{project_id}/generations", {"prompt": "x"}),
                    ("POST", f"/api/generations/{running}/cancel", {}),
                    # Reads cannot be answered either: the same 503, not a 500.
                    ("GET", f"/api/projects/{project_id}", {}),
                    ("GET", f"/api/generations/{running}", {}),
                ]
                async with pg_database.cluster.down():
                    await _heartbeats(reader, stayed, PINGS)
                    for method, path, body in refused:
                        await _refused(process, method, path, body)
                    await _heartbeats(reader, stayed, PINGS)  # and still, after the writes
                    resume_at = stayed.last_id
                # Back: the stream that stayed open gets the first generation's end.
                await _read_until(reader, stayed, lambda f: is_end(f, running))
                # Its next append was refused, so it failed: that end landed once it was back.
                end = orjson.loads(stayed.events[-1][1])
                assert (end["type"], end["code"], end["retryable"]) == (
                    ev.GENERATION_FAILED,
                    "storage_unavailable",
                    True,
                ), end
                await _passes_when_back(process, "POST", "/api/projects", {"name": "after"}, 201)
                ended = await _passes_when_back(
                    process, "POST", f"/api/generations/{running}/cancel", {}, 200
                )
                assert ended["status"] == "failed", ended  # a cancel changes no ended one
                second = await _passes_when_back(
                    process,
                    "POST",
                    f"/api/projects/{project_id}/generations",
                    {"prompt": "a todo api"},
                    202,
                )
                generation_id = second["generation"]["id"]
                # Both read at once: a stream left unread would be cut off as slow.
                resumed, _ = await asyncio.gather(
                    _resumed(process.http, url, resume_at, generation_id),
                    _read_until(reader, stayed, lambda f: is_end(f, generation_id)),
                )
        log = await database_log(pg_database, project_id)
        final = await process.json("GET", f"/api/generations/{generation_id}")
    assert stayed.events[-1] == log[-1]
    check(stayed, log)
    assert final["status"] == "completed", final
    after = [event for event in log if event[0] > resume_at]
    assert resumed.events == after, (len(resumed.events), len(after))


async def _resumed(
    http: aiohttp.ClientSession, url: str, cursor: int, generation_id: str
) -> Received:
    received = Received()
    async with http.get(url, headers={"Last-Event-ID": str(cursor)}) as response:
        assert response.status == 200
        await _read_until(SSEReader(response), received, lambda f: is_end(f, generation_id))
    return received
