"""The JavaScript client (service/web/static/client/) in Node, against a real genstream.

Each case runs one test of `tests/node/client.test.mjs` (`node --test`, the npm
`eventsource` package pinned in `tests/node/package-lock.json`) against a genstream child
process, the faulty proxy of `tests/proxy.py` in front of it, and a control server through
which the Node test sets the proxy's faults, reads what went through it, and restarts
genstream (the proxy answers 502 while it is down, as nginx does).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import shutil
import signal
import socket
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Final

import pytest
from aiohttp import web

from tests.conftest import LOOPBACK
from tests.helpers import wait_until
from tests.process import ServerProcess, server_process
from tests.proxy import Faults, FaultyProxy, faulty_proxy

NODE_DIR: Final = Path(__file__).resolve().parent / "node"
CLIENT_TESTS: Final = NODE_DIR / "client.test.mjs"
NODE: Final = shutil.which("node")
# What a JavaScript RegExp (the --test-name-pattern) reads as other than itself.
JS_SPECIAL: Final = re.compile(r"[.*+?^${}()|[\]\\/]")
NODE_TIMEOUT: Final = 90.0
STOP_TIMEOUT: Final = 10.0
TOKEN: Final = "node-client-master-token"
# Slow enough that a generation is still running when the test acts on it (a restart, an
# abort): a few seconds for the offline project; a short retry: so a reconnect during the
# restart meets the proxy's 502s.
SERVER: Final = {"offline_tokens_per_second": "400", "stream_retry_ms": "200"}

pytestmark = [
    pytest.mark.skipif(
        NODE is None, reason="node is missing: `make test` installs Debian's nodejs"
    ),
    pytest.mark.skipif(
        not (NODE_DIR / "node_modules" / "eventsource").is_dir(),
        reason="tests/node/node_modules is missing: `make node-deps` installs it from the lockfile",
    ),
]


class Harness:
    """genstream, restartable on its port, with the proxy's faults under the test's control."""

    def __init__(self, tmp_path: Path, settings: dict[str, str]) -> None:
        self.tmp_path = tmp_path
        self.settings = settings
        self.servers = AsyncExitStack()
        self.server: ServerProcess | None = None
        self.proxy: FaultyProxy | None = None

    async def start(self, port: int = 0) -> ServerProcess:
        self.server = await self.servers.enter_async_context(
            server_process(self.tmp_path, port=port, **self.settings)
        )
        return self.server

    async def restart(self, request: web.Request) -> web.Response:
        assert self.server is not None and self.proxy is not None
        port = self.server.port
        self.server.signal(signal.SIGTERM)
        assert await self.server.wait(STOP_TIMEOUT) == 0, self.server.log()
        await self.servers.aclose()
        # Down until the client's reconnects have met the proxy's 502 twice.
        gateways = self.proxy.seen.bad_gateway
        await wait_until(
            lambda: self.proxy is not None and self.proxy.seen.bad_gateway >= gateways + 2, 20
        )
        await self.start(port)
        return web.json_response({"port": port})

    async def faults(self, request: web.Request) -> web.Response:
        assert self.proxy is not None
        changes = await request.json()
        self.proxy.faults = dataclasses.replace(self.proxy.faults, **changes)
        return web.json_response(dataclasses.asdict(self.proxy.faults))

    async def seen(self, request: web.Request) -> web.Response:
        assert self.proxy is not None
        return web.json_response(dataclasses.asdict(self.proxy.seen))


@asynccontextmanager
async def control_server(harness: Harness) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_post("/restart", harness.restart)
    app.router.add_post("/faults", harness.faults)
    app.router.add_get("/seen", harness.seen)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    sock = socket.socket()
    sock.bind((LOOPBACK, 0))
    await web.SockSite(runner, sock).start()
    try:
        yield f"http://{LOOPBACK}:{sock.getsockname()[1]}"
    finally:
        await runner.cleanup()


def js_literal(text: str) -> str:
    """`text` as a RegExp that matches it alone."""
    return JS_SPECIAL.sub(lambda match: "\\" + match.group(), text)


async def run_node_test(name: str, env: dict[str, str]) -> tuple[int, str]:
    assert NODE is not None
    process = await asyncio.create_subprocess_exec(
        NODE,
        "--test",
        f"--test-name-pattern=^{js_literal(name)}$",
        str(CLIENT_TESTS),
        cwd=NODE_DIR,
        env={**os.environ, **env},
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        async with asyncio.timeout(NODE_TIMEOUT):
            output, _ = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, output.decode(errors="replace")


CASES: Final = {
    "generate": "generate routes each event of the generation to its callbacks, once",
    "cutting proxy": "stream delivers every event once through a proxy that cuts connections",
    "restart": "stream delivers every event once across a restart that answers 502s",
    "cancel": "an aborted signal cancels the generation",
    "polling": "streams refused: the client polls, then streams again once it can",
    "submit retry": "a submit whose answer was lost is sent again with the same client_request_id",
    "token": "a token goes as ?token= on the stream and a 401 takes a fresh one",
}


@pytest.mark.parametrize("case", list(CASES))
async def test_node_client(tmp_path: Path, case: str) -> None:
    settings = dict(SERVER)
    env: dict[str, str] = {}
    if case == "token":
        settings["auth_token"] = TOKEN
        env["GENSTREAM_TOKEN"] = TOKEN
    harness = Harness(tmp_path, settings)
    async with harness.servers:
        server = await harness.start()
        async with (
            faulty_proxy(server.url, Faults()) as (proxy_url, proxy),
            control_server(harness) as control_url,
        ):
            harness.proxy = proxy
            # The restart gives the harness a new server at the same address.
            code, output = await run_node_test(
                CASES[case],
                {
                    **env,
                    "GENSTREAM_URL": server.url,
                    "GENSTREAM_PROXY_URL": proxy_url,
                    "GENSTREAM_CONTROL_URL": control_url,
                },
            )
    assert code == 0, output
    assert "# pass 1" in output, output
