"""What the tests share: waiting on a condition with a timeout, reading the database a
server writes, and the files a project holds."""

from __future__ import annotations

import asyncio
import random
import sqlite3
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match

from service.eventlog.schemas import DIALECT
from service.protocol import ANY_APP_EVENT, APP_PREFIX
from tests.conftest import Genstream, JsonCall
from tests.sse_reader import Frame, SSEReader

POLL_SECONDS = 0.02

# A check made again until it holds: plain, or a coroutine (one over HTTP).
Condition = Callable[[], Awaitable[bool] | bool]


async def wait_until(
    condition: Condition, timeout: float = 5.0, interval: float = POLL_SECONDS
) -> None:
    """Check `condition` every `interval` seconds until it holds, for at most `timeout`.
    Only for what gives no event to await (a stream released, a line in a child's log,
    a row written after the response): asking again is the only way to know."""
    async with asyncio.timeout(timeout):
        while not await _holds(condition):  # noqa: ASYNC110 - there is no event to await
            await asyncio.sleep(interval)


async def _holds(condition: Condition) -> bool:
    result = condition()
    if isinstance(result, bool):
        return result
    return await result


DbPath = str | Path


@contextmanager
def database(path: DbPath) -> Iterator[sqlite3.Connection]:
    """A connection of the test's own to a server's SQLite file, beside the server's:
    committed (or rolled back) and closed when the block ends."""
    db = sqlite3.connect(path)
    try:
        with db:
            yield db
    finally:
        db.close()


def db_rows(path: DbPath, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
    """Every row of one query, as tuples."""
    with database(path) as db:
        return db.execute(sql, params).fetchall()


def db_value(path: DbPath, sql: str, params: tuple[Any, ...] = ()) -> Any:
    """The one value of a query that gives one row of one column (a count, a status)."""
    ((value,),) = db_rows(path, sql, params)
    return value


def db_count(path: DbPath, table: str) -> int:
    """How many rows `table` holds (a table name the test wrote, never input)."""
    return int(db_value(path, f"SELECT COUNT(*) FROM {table}"))


async def until_ended(gs: Genstream, generation_id: str, timeout: float) -> dict[str, Any]:
    """Wait until a generation is no longer `running` (a killed server's: ended by the next
    at its start on SQLite, once the lease lapses on postgres); return its state."""
    generation: dict[str, Any] = {}

    async def ended() -> bool:
        nonlocal generation
        generation = await gs.json("GET", f"/api/generations/{generation_id}")
        return bool(generation["status"] != "running")

    await wait_until(ended, timeout=timeout)
    return generation


async def stored_files(gs: Genstream, project_id: str) -> dict[str, str]:
    """Each file of the project (path: content), read back through the API."""
    listed = (await gs.json("GET", f"/api/projects/{project_id}/files"))["files"]
    files = {}
    for entry in listed:
        file = await gs.json("GET", f"/api/projects/{project_id}/files/{entry['path']}")
        files[entry["path"]] = file["content"]
    return files


async def follow_with_cuts(
    gs: Genstream,
    project_id: str,
    rng: random.Random,
    cut_after: tuple[int, int],
    last: Callable[[Frame], bool],
) -> list[int]:
    """Follow the project's stream from the start, cutting it every `cut_after` events
    (a random count in that range) and resuming with Last-Event-ID, until `last(frame)`;
    every id received, in order (the tests of exactly once compare them with the log)."""
    received: list[int] = []
    while True:
        headers = {"Last-Event-ID": str(received[-1] if received else 0)}
        url = f"{gs.url}/api/projects/{project_id}/stream"
        async with gs.http.get(url, headers=headers) as response:
            assert response.status == 200
            reader = SSEReader(response)
            for _ in range(rng.randint(*cut_after)):
                frame = await reader.event(timeout=30)
                assert frame.id is not None
                received.append(frame.id)
                if last(frame):
                    return received
        # leaving the block closes the connection mid-stream: the cut


async def served_schemas(json: JsonCall) -> dict[str, Draft202012Validator]:
    """A validator per event type, as GET /api/events/schemas serves them (the document
    itself checked to be a Draft 2020-12 schema). `json`: a Genstream's or a process's."""
    document = await json("GET", "/api/events/schemas")
    assert document["$schema"] == DIALECT
    Draft202012Validator.check_schema(document)
    return {type_: Draft202012Validator(schema) for type_, schema in document["$defs"].items()}


def mismatches(
    validators: dict[str, Draft202012Validator], events: list[dict[str, Any]]
) -> list[str]:
    """Each event its type's served schema refuses (an app type with none of its own: the
    schema of any app event; another type with none: a mismatch too)."""
    found = []
    for event in events:
        type_ = event["type"]
        fallback = ANY_APP_EVENT if type_.startswith(APP_PREFIX) else None
        validator = validators.get(type_) or (validators.get(fallback) if fallback else None)
        if validator is None:
            found.append(f"{type_} #{event['id']}: no schema served")
            continue
        error = best_match(validator.iter_errors(event))
        if error is not None:
            where = list(error.absolute_path)
            found.append(f"{type_} #{event['id']}: {where} {error.message[:200]}")
    return found


async def schema_mismatches(json: JsonCall, events: list[dict[str, Any]]) -> list[str]:
    """mismatches() against the schemas the server serves now."""
    return mismatches(await served_schemas(json), events)
