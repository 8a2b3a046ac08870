"""Graceful shutdown: goodbye to every stream, generations ended as `interrupted`, SQLite
checkpointed and closed, exit within the grace; a second signal exits at once."""

from __future__ import annotations

import asyncio
import signal
import socket
import time
from pathlib import Path

import aiohttp
import orjson
import pytest

from service.eventlog import event as ev
from service.web.server import EXIT_FORCED
from tests.backends import Store
from tests.conftest import Genstream, MakeServer
from tests.helpers import wait_until
from tests.process import ServerProcess, server_process
from tests.sse_reader import SSEReader

pytestmark = pytest.mark.backends
GRACE_SECONDS = 5.0
GOODBYE = b"server shutting down, reconnect"


async def _until_goodbye_and_eof(reader: SSEReader) -> list[bytes]:
    """Every comment until the server closes the stream."""
    comments: list[bytes] = []
    async with asyncio.timeout(GRACE_SECONDS):
        while True:
            try:
                frame = await reader.frame(timeout=GRACE_SECONDS)
            except EOFError:
                return comments
            comments.extend(frame.comments)


async def _running_generation(server: ServerProcess) -> tuple[str, aiohttp.ClientResponse]:
    """A generation under way, and its stream read up to its first delta."""
    project_id = await server.new_project()
    body = await server.json(
        "POST", f"/api/projects/{project_id}/generations", status=202, json={"prompt": "an api"}
    )
    generation_id: str = body["generation"]["id"]
    response = await server.http.get(f"{server.url}/api/generations/{generation_id}/stream")
    reader = SSEReader(response)
    while (await reader.event()).event != ev.MESSAGE_DELTA:
        pass
    return generation_id, response


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_signal_ends_streams_and_generations_then_exits_within_the_grace(
    tmp_path: Path, store: Store, sig: signal.Signals
) -> None:
    async with server_process(
        tmp_path,
        **store.process_settings(),
        offline_tokens_per_second="10",
        server_shutdown_grace_seconds=str(GRACE_SECONDS),
    ) as server:
        responses: list[aiohttp.ClientResponse] = []
        generations: list[str] = []
        try:
            for _ in range(2):
                generation_id, response = await _running_generation(server)
                generations.append(generation_id)
                responses.append(response)
                generation = await server.json("GET", f"/api/generations/{generation_id}")
                for _ in range(4):
                    project_stream = await server.http.get(
                        f"{server.url}/api/projects/{generation['project_id']}/stream"
                    )
                    await SSEReader(project_stream).frame()  # retry + connected: it is open
                    responses.append(project_stream)
            assert len(responses) == 10
            assert (await server.json("GET", "/api/connections"))["total"] == 10

            signalled = time.monotonic()
            server.signal(sig)
            endings = await asyncio.gather(
                *(_until_goodbye_and_eof(SSEReader(r)) for r in responses)
            )
            code = await server.wait(GRACE_SECONDS + 1)
            took = time.monotonic() - signalled
        finally:
            for response in responses:
                response.close()
    for comments in endings:
        assert comments[-1] == GOODBYE
    assert code == 0, server.log()
    assert took < GRACE_SECONDS
    assert "stopped" in server.log()

    if not store.postgres:  # SQLite's write-ahead log file; PostgreSQL's WAL is the server's
        # Checkpointed and closed: nothing left in the write-ahead log.
        assert _wal_bytes(server.db_path) == 0
    for generation_id in generations:
        ((status, code_, retryable),) = await store.rows(
            "SELECT status, error_code, retryable FROM generations WHERE id = ?",
            (generation_id,),
        )
        assert (status, code_, retryable) == ("failed", "interrupted", 1)  # True on postgres
        data = await store.value(
            "SELECT data FROM events WHERE generation_id = ? ORDER BY id DESC LIMIT 1",
            (generation_id,),
        )
        terminal = orjson.loads(data)
        assert terminal["type"] == ev.GENERATION_FAILED
        assert terminal["code"] == "interrupted" and terminal["retryable"] is True
    reasons = {row[0] for row in await store.rows("SELECT close_reason FROM stream_sessions")}
    assert reasons == {"shutdown"}


async def test_second_signal_exits_at_once(tmp_path: Path, store: Store) -> None:
    # A client that stops reading holds its handler in a write for the whole send
    # timeout, so the graceful shutdown would wait: the second signal cuts it short.
    async with server_process(
        tmp_path,
        **store.process_settings(),
        server_shutdown_grace_seconds="60",
        server_max_body_bytes="2000000",
        generation_max_prompt_chars="1000000",
        stream_send_timeout_seconds="60",
        stream_queue_size="1000000",
    ) as server:
        project_id = await server.new_project()
        # Over 8 MB of events to replay: more than every buffer on the way holds.
        for n in range(8):
            body = await server.json(
                "POST",
                f"/api/projects/{project_id}/generations",
                status=202,
                json={"prompt": str(n) * 1_000_000},
            )
            async with server.http.get(
                f"{server.url}/api/generations/{body['generation']['id']}/stream"
            ) as response:
                await response.read()
        port = int(server.url.rsplit(":", 1)[1])
        with socket.socket() as stuck:
            stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            stuck.connect(("127.0.0.1", port))
            stuck.sendall(
                f"GET /api/projects/{project_id}/stream?last_event_id=0 HTTP/1.1\r\n"
                "Host: x\r\n\r\n".encode()
            )

            async def stuck_is_open() -> bool:
                return bool((await server.json("GET", "/api/connections"))["total"] == 1)

            await wait_until(stuck_is_open, timeout=10, interval=0.05)
            server.signal(signal.SIGTERM)
            await _until_in_log(server, "shutting down")
            assert server.process.returncode is None  # still waiting on the stuck stream
            signalled = time.monotonic()
            server.signal(signal.SIGTERM)
            assert await server.wait(5) == EXIT_FORCED
            assert time.monotonic() - signalled < 5
    assert "second signal: exiting at once" in server.log()


def _wal_bytes(db_path: Path) -> int:
    wal = Path(f"{db_path}-wal")
    return wal.stat().st_size if wal.exists() else 0


async def _until_in_log(server: ServerProcess, text: str) -> None:
    """Wait for a line in the child's log (the only thing it tells from outside)."""
    await wait_until(lambda: text in server.log(), timeout=10, interval=0.05)


async def test_shutdown_says_goodbye_to_streams(make_server: MakeServer) -> None:
    gs: Genstream = await make_server()
    project_id = await gs.new_project()
    responses = [await gs.http.get(f"{gs.url}/api/projects/{project_id}/stream") for _ in range(3)]
    try:
        readers = [SSEReader(r) for r in responses]
        for reader in readers:
            await reader.frame()
        stopping = asyncio.create_task(gs.server.stop())
        endings = await asyncio.gather(*(_until_goodbye_and_eof(r) for r in readers))
        await asyncio.wait_for(stopping, GRACE_SECONDS)
    finally:
        for response in responses:
            response.close()
    assert [comments[-1] for comments in endings] == [GOODBYE] * 3
