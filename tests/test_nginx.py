"""Streams through Debian's nginx with the documented location block: nothing buffered."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from service import events as ev
from tests.conftest import LOOPBACK, Genstream, MakeServer
from tests.process import free_port
from tests.sse_reader import SSEReader

ROOT = Path(__file__).resolve().parent.parent
SNIPPET = ROOT / "deploy" / "nginx-streams.conf"
# Debian puts it in /usr/sbin, which an ordinary user's PATH may not hold.
NGINX = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")

pytestmark = pytest.mark.skipif(NGINX is None, reason="nginx is not installed (make test does)")


def _config(tmp_path: Path, port: int, upstream: int) -> str:
    location = SNIPPET.read_text().replace("127.0.0.1:8080", f"{LOOPBACK}:{upstream}")
    temp = {name: tmp_path / name for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")}
    for path in temp.values():
        path.mkdir()
    return f"""
daemon off;
master_process off;  # one process, as the user running the test
pid {tmp_path}/nginx.pid;
error_log {tmp_path}/error.log info;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {temp["client_body"]};
    proxy_temp_path {temp["proxy"]};
    fastcgi_temp_path {temp["fastcgi"]};
    uwsgi_temp_path {temp["uwsgi"]};
    scgi_temp_path {temp["scgi"]};
    server {{
        listen {LOOPBACK}:{port};
{location}
    }}
}}
"""


@pytest.fixture
async def nginx_in_front(
    tmp_path: Path, make_server: MakeServer
) -> AsyncIterator[tuple[Genstream, str]]:
    """A server with slow generations behind nginx: the server and nginx's URL."""
    gs = await make_server(offline={"tokens_per_second": 20})
    port = free_port()
    conf = tmp_path / "nginx.conf"
    conf.write_text(_config(tmp_path, port, gs.server.port))
    assert NGINX is not None
    process = await asyncio.create_subprocess_exec(
        NGINX, "-c", str(conf), "-p", str(tmp_path), stderr=asyncio.subprocess.DEVNULL
    )
    url = f"http://{LOOPBACK}:{port}"
    try:
        async with asyncio.timeout(10):
            while True:
                if process.returncode is not None:
                    raise AssertionError((tmp_path / "error.log").read_text())
                try:
                    _, writer = await asyncio.open_connection(LOOPBACK, port)
                except OSError:
                    await asyncio.sleep(0.02)
                    continue
                writer.close()
                await writer.wait_closed()
                break
        yield gs, url
    finally:
        process.terminate()
        await process.wait()


def test_readme_documents_the_same_location_block() -> None:
    assert SNIPPET.read_text().strip() in (ROOT / "README.md").read_text()


async def test_stream_passes_through_nginx_unbuffered(
    nginx_in_front: tuple[Genstream, str],
) -> None:
    gs, proxied = nginx_in_front
    project_id = await gs.new_project()
    generation_id = (await gs.generate(project_id))["generation"]["id"]
    async with gs.http.get(f"{proxied}/api/generations/{generation_id}/stream") as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "text/event-stream; charset=utf-8"
        reader = SSEReader(response)
        # The first bytes come at once, before any event exists to push them along.
        assert (await reader.frame(timeout=5)).retry == 3000
        assert (await reader.frame(timeout=5)).comments == (b"connected",)
        deltas = 0
        while deltas < 5:
            frame = await reader.event(timeout=5)
            deltas += frame.event == ev.MESSAGE_DELTA
            # Each event is through nginx before the generation ends: not held back. (Its
            # first events are written before its task starts: still `pending` then.)
            generation = await gs.json("GET", f"/api/generations/{generation_id}")
            assert generation["status"] in ("pending", "running"), frame
    await gs.json("POST", f"/api/generations/{generation_id}/cancel")
