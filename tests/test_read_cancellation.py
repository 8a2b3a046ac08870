"""A read cancelled half-way must not leave a stale snapshot behind for the next reads."""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest import LOOPBACK, Genstream

pytestmark = pytest.mark.backends
ROUNDS = 6
STREAMS_PER_ROUND = 10


async def _open_and_drop(port: int, project_id: str) -> None:
    """Open a stream, read its first bytes, then reset the connection at once."""
    reader, writer = await asyncio.open_connection(LOOPBACK, port)
    writer.write(
        f"GET /api/projects/{project_id}/stream HTTP/1.1\r\nHost: {LOOPBACK}\r\n\r\n".encode()
    )
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    assert await reader.read(1)  # the first byte of the stream: the handler is past prepare
    writer.transport.abort()


async def test_project_created_after_clients_left_mid_read_is_found(gs: Genstream) -> None:
    # A stream whose client leaves at once has its handler cancelled during its first
    # reads; before reads were shielded from that, the next read could see a snapshot
    # from before the latest commit, and a project just created answered 404.
    project_id = await gs.new_project()
    port = gs.server.port
    async with asyncio.timeout(30):
        for _ in range(ROUNDS):
            for _ in range(STREAMS_PER_ROUND):
                await _open_and_drop(port, project_id)
            created = await gs.new_project()  # asserts 201
            assert (await gs.json("GET", f"/api/projects/{created}"))["id"] == created
