"""Clients that stop reading, never read, or vanish without a FIN are all released, each
streaming session closed with its reason."""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import pytest

from service.eventlog import event as ev
from service.eventlog.event import Draft
from tests.backends import Store
from tests.conftest import LOOPBACK, Genstream, MakeServer
from tests.helpers import wait_until
from tests.test_streams import open_streams, session_reasons

SMALL_BUFFER = 4096
# Enough bytes (6 MB) to fill every buffer between the server and a client that reads
# nothing, the kernel's send buffer (up to net.ipv4.tcp_wmem, 4 MB) included.
BURST_EVENTS = 40
PAYLOAD = "x" * 150_000

pytestmark = pytest.mark.backends

# A TCP relay in its own process: SIGSTOP it and the server's peer goes silent, no FIN
# and no RST, like a laptop whose network vanished.
RELAY = f"""
import socket, sys, threading
listener = socket.create_server(("{LOOPBACK}", 0))
print(listener.getsockname()[1], flush=True)
client, _ = listener.accept()
upstream = socket.socket()
upstream.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, {SMALL_BUFFER})
upstream.connect(("{LOOPBACK}", int(sys.argv[1])))
def pipe(a, b):
    while data := a.recv(65536):
        b.sendall(data)
threading.Thread(target=pipe, args=(client, upstream), daemon=True).start()
pipe(upstream, client)
"""


def _request(project_id: str) -> bytes:
    return f"GET /api/projects/{project_id}/stream HTTP/1.1\r\nHost: test\r\n\r\n".encode()


def _reader_socket() -> socket.socket:
    sock = socket.socket()
    # A small receive window, set before connect, so the server's writes back up soon.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_BUFFER)
    sock.settimeout(5)
    return sock


@asynccontextmanager
async def _never_reads(gs: Genstream, project_id: str) -> AsyncIterator[None]:
    with _reader_socket() as sock:
        sock.connect((LOOPBACK, gs.server.port))
        sock.sendall(_request(project_id))
        yield


@asynccontextmanager
async def _stops_reading(gs: Genstream, project_id: str) -> AsyncIterator[None]:
    with _reader_socket() as sock:
        sock.connect((LOOPBACK, gs.server.port))
        sock.sendall(_request(project_id))
        head = b""
        while b": connected" not in head:
            chunk = await asyncio.to_thread(sock.recv, 4096)
            assert chunk, head
            head += chunk
        assert head.startswith(b"HTTP/1.1 200")
        yield  # and from here on, reads nothing


@asynccontextmanager
async def _vanishes(gs: Genstream, project_id: str) -> AsyncIterator[None]:
    relay = await asyncio.create_subprocess_exec(
        sys.executable, "-c", RELAY, str(gs.server.port), stdout=asyncio.subprocess.PIPE
    )
    try:
        assert relay.stdout is not None
        port = int(await asyncio.wait_for(relay.stdout.readline(), 10))
        with socket.socket() as sock:
            sock.settimeout(5)
            sock.connect((LOOPBACK, port))
            sock.sendall(_request(project_id))
            assert (await asyncio.to_thread(sock.recv, 4096)).startswith(b"HTTP/1.1 200")
            relay.send_signal(signal.SIGSTOP)  # the network between us is gone
            yield
    finally:
        relay.send_signal(signal.SIGCONT)
        relay.kill()
        await relay.wait()


CLIENTS: dict[str, Callable[[Genstream, str], AbstractAsyncContextManager[None]]] = {
    "never-reads": _never_reads,
    "stops-reading": _stops_reading,
    "vanishes": _vanishes,
}


async def _burst(gs: Genstream, project_id: str) -> None:
    drafts = [Draft(project_id, None, ev.VALIDATION, {"pad": PAYLOAD}) for _ in range(BURST_EVENTS)]
    await gs.services.journal.append(*drafts)


async def _closes(gs: Genstream, reason: str) -> str:
    async with gs.http.get(f"{gs.url}/metrics") as response:
        for line in (await response.text()).splitlines():
            if line.startswith(f'genstream_stream_closes_total{{reason="{reason}"}}'):
                return line.split()[-1]
    return "0"


@pytest.mark.parametrize("client", list(CLIENTS))
async def test_stuck_client_is_cut_off_by_the_send_timeout(
    make_server: MakeServer, store: Store, client: str
) -> None:
    # A buffer big enough never to overflow: only the send timeout can free the stream.
    gs = await make_server(stream={"send_timeout_seconds": 0.5, "queue_size": 100_000})
    project_id = await gs.new_project()
    async with CLIENTS[client](gs, project_id):
        await wait_until(lambda: _is_open(gs))
        await _burst(gs, project_id)
        await wait_until(lambda: _is_released(gs))
    assert await session_reasons(store) == ["send_timeout"]
    assert await _closes(gs, "send_timeout") == "1.0"


async def test_client_reading_nothing_overflows_its_buffer_and_is_cut_off(
    make_server: MakeServer, store: Store
) -> None:
    gs = await make_server(stream={"send_timeout_seconds": 60, "queue_size": 8})
    project_id = await gs.new_project()
    async with _never_reads(gs, project_id):
        await wait_until(lambda: _is_open(gs))
        for _ in range(3):  # the first bursts fill the socket; a later one overflows
            await _burst(gs, project_id)
        await wait_until(lambda: _is_released(gs))
    assert await session_reasons(store) == ["slow_client"]
    assert await _closes(gs, "slow_client") == "1.0"


async def _is_open(gs: Genstream) -> bool:
    return await open_streams(gs) == 1


async def _is_released(gs: Genstream) -> bool:
    return await open_streams(gs) == 0
