"""The database in trouble: locked by another process, out of space, read-only. The caller
gets a clear 503 and the log says why; no stream hangs and no generation stays stuck; the
process goes on once the trouble is over, or, when it cannot write at all from the start,
stops with a clear error.

SQLite's troubles, each marked sqlite_only with why: a file lock, a file-size limit and
a file's mode are SQLite's; PostgreSQL's are in tests/test_postgres_storage.py
(unreachable at start, a lost connection) and tests/test_postgres_outage.py (stopped while
a process runs on it)."""

from __future__ import annotations

import asyncio
import os
import resource
import shutil
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import aiohttp
import pytest

from service.eventlog import event as ev
from tests.backends import Store
from tests.conftest import MakeServer
from tests.helpers import db_count, db_rows, wait_until
from tests.process import run_to_exit, server_process
from tests.sse_reader import Frame, SSEReader

HOLD_LOCK = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
sys.stdin.readline()
"""


@asynccontextmanager
async def _write_lock(db_path: str) -> AsyncIterator[None]:
    """Another process holds the database's write lock until the block ends."""
    holder = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        HOLD_LOCK,
        db_path,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert holder.stdin is not None and holder.stdout is not None
    try:
        assert await asyncio.wait_for(holder.stdout.readline(), 10) == b"locked\n"
        yield
    finally:
        holder.stdin.write(b"\n")
        await holder.stdin.drain()
        async with asyncio.timeout(10):
            await holder.wait()


async def _running_stream(
    http: aiohttp.ClientSession, url: str, generation_id: str
) -> tuple[aiohttp.ClientResponse, SSEReader]:
    response = await http.get(f"{url}/api/generations/{generation_id}/stream")
    reader = SSEReader(response)
    while (await reader.event()).event != ev.MESSAGE_DELTA:
        pass
    return response, reader


async def _terminal(reader: SSEReader) -> Frame:
    """The generation's last event; the stream must end right after it."""
    frames = await reader.events_until_end(timeout=30)
    assert frames and frames[-1].event in ev.TERMINAL_TYPES
    return frames[-1]


@pytest.mark.sqlite_only("SQLite's write lock on the file, held by another process")
async def test_database_locked_by_another_process(
    make_server: MakeServer, caplog: pytest.LogCaptureFixture
) -> None:
    gs = await make_server(storage={"busy_timeout_ms": 100}, offline={"tokens_per_second": 20})
    db_path = gs.services.settings.storage.path
    project_id = await gs.new_project()
    generation_id = (await gs.generate(project_id))["generation"]["id"]
    response, reader = await _running_stream(gs.http, gs.url, generation_id)
    try:
        projects = db_count(db_path, "projects")
        async with _write_lock(db_path):
            error = await gs.json("POST", "/api/projects", 503, json={"name": "x"})
            assert error["error"]["code"] == "storage_unavailable"
            assert "database is locked" in error["error"]["message"]
            # Reads go on: WAL readers do not wait for the writer's lock.
            await gs.json("GET", f"/api/projects/{project_id}")
            await gs.json("GET", f"/api/generations/{generation_id}")
            # Hold the lock until the generation has failed to write its next events.
            await wait_until(lambda: _logged(caplog, "could not be journaled"), timeout=10)
        # Its end could not be written either, until now: it ends, and its stream too.
        terminal = await _terminal(reader)
    finally:
        response.close()
    assert terminal.event == ev.GENERATION_FAILED
    assert terminal.json["code"] == "storage_unavailable"
    assert terminal.json["retryable"] is True
    assert db_count(db_path, "projects") == projects
    assert _logged(caplog, "database is locked")
    # And the process goes on.
    await gs.new_project()


def _logged(caplog: pytest.LogCaptureFixture, text: str) -> bool:
    return any(text in record.getMessage() for record in caplog.records)


@contextmanager
def _file_size_limit(pid: int, limit: int) -> Iterator[None]:
    """The child may write no file past `limit` bytes: as good as a full disk to SQLite."""
    soft, hard = resource.prlimit(pid, resource.RLIMIT_FSIZE)
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.prlimit(pid, resource.RLIMIT_FSIZE, (soft, hard))


@pytest.mark.sqlite_only("RLIMIT_FSIZE caps the files the server writes: SQLite's, not a server's")
@pytest.mark.skipif(not hasattr(resource, "prlimit"), reason="needs Linux prlimit")
async def test_disk_full_fails_the_write_and_the_generation_then_recovers(
    tmp_path: Path, store: Store
) -> None:
    async with server_process(
        tmp_path, offline_tokens_per_second="20", **store.process_settings()
    ) as server:
        project_id = await server.new_project()
        body = await server.json(
            "POST", f"/api/projects/{project_id}/generations", status=202, json={"prompt": "x"}
        )
        generation_id = body["generation"]["id"]
        response, reader = await _running_stream(server.http, server.url, generation_id)
        try:
            with _file_size_limit(server.pid, 1):
                error = await server.json("POST", "/api/projects", 503, json={})
                assert error["error"]["code"] == "storage_unavailable"
                await server.json("GET", f"/api/projects/{project_id}")
                # Keep the disk full until the generation has failed to write.
                await wait_until(
                    lambda: "could not be journaled" in server.log(), timeout=10, interval=0.05
                )
            terminal = await _terminal(reader)
        finally:
            response.close()
        assert terminal.event == ev.GENERATION_FAILED
        assert terminal.json["code"] == "storage_unavailable"
        assert "journal commit of 1 jobs failed: disk I/O error" in server.log()
        await server.new_project()  # space again: the process went on
        server.signal(signal.SIGTERM)
        assert await server.wait(10) == 0
    assert db_rows(tmp_path / "genstream.db", "PRAGMA integrity_check") == [("ok",)]


# Root writes to any file whatever its mode: drop the capabilities that let it.
AS_ORDINARY_USER = ("setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner", "--")


@pytest.mark.sqlite_only("a read-only database file: the mode of SQLite's file")
@pytest.mark.skipif(os.geteuid() == 0 and not shutil.which("setpriv"), reason="needs setpriv")
async def test_read_only_database_stops_the_start_with_a_clear_error(
    make_server: MakeServer, tmp_path: Path
) -> None:
    seed = await make_server()
    project_id = await seed.new_project()
    await seed.server.stop()
    db_path = tmp_path / "genstream.db"
    db_path.chmod(0o444)
    wrapper = AS_ORDINARY_USER if os.geteuid() == 0 else ()
    # Nothing can be written, not even the startup bookkeeping: it stops, saying why.
    code, stderr = await run_to_exit(tmp_path, wrapper=wrapper)
    assert code == 1
    assert "cannot serve" in stderr and "attempt to write a readonly database" in stderr
    assert str(db_path) in stderr
    assert "Traceback" not in stderr
    db_path.chmod(0o644)
    gs = await make_server()
    assert (await gs.json("GET", f"/api/projects/{project_id}"))["id"] == project_id
