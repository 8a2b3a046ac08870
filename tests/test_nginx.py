"""Streams through Debian's nginx with the documented location block: nothing buffered."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from service import events as ev
from tests.conftest import Genstream, MakeServer
from tests.nginx import NGINX, ROOT, SNIPPET, nginx
from tests.sse_reader import SSEReader

pytestmark = pytest.mark.skipif(NGINX is None, reason="nginx is not installed (make test does)")


@pytest.fixture
async def nginx_in_front(
    tmp_path: Path, make_server: MakeServer
) -> AsyncIterator[tuple[Genstream, str]]:
    """A server with slow generations behind nginx: the server and nginx's URL."""
    gs = await make_server(offline={"tokens_per_second": 20})
    async with nginx(tmp_path, gs.server.port) as url:
        yield gs, url


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
