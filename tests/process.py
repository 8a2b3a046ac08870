"""genstream as a real child process (`python -m service serve`), for signals and crashes."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from tests.conftest import LOOPBACK, client_session

START_TIMEOUT = 20.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class ServerProcess:
    process: asyncio.subprocess.Process
    url: str
    http: aiohttp.ClientSession
    log_path: Path
    db_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: signal.Signals) -> None:
        self.process.send_signal(sig)

    async def wait(self, timeout: float) -> int:
        async with asyncio.timeout(timeout):
            return await self.process.wait()

    async def json(self, method: str, path: str, status: int = 200, **kwargs: Any) -> Any:
        async with self.http.request(method, self.url + path, **kwargs) as response:
            body = await response.json()
            assert response.status == status, (response.status, body)
            return body

    async def new_project(self) -> str:
        project_id: str = (await self.json("POST", "/api/projects", status=201, json={}))["id"]
        return project_id


def server_env(tmp_path: Path, port: int, **settings: str) -> dict[str, str]:
    """The environment of a child server: GENSTREAM_<SECTION>_<KEY> from `settings`
    given as section_key=value (storage_path=...)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GENSTREAM_")}
    env.update(
        GENSTREAM_STORAGE_PATH=str(tmp_path / "genstream.db"),
        GENSTREAM_SERVER_HOST=LOOPBACK,
        GENSTREAM_SERVER_PORT=str(port),
        GENSTREAM_OFFLINE_TOKENS_PER_SECOND="0",
    )
    env.update({f"GENSTREAM_{key.upper()}": value for key, value in settings.items()})
    return env


@asynccontextmanager
async def server_process(tmp_path: Path, **settings: str) -> AsyncIterator[ServerProcess]:
    """Start a server, wait until /healthz answers, and kill it at the end if still alive."""
    port = free_port()
    env = server_env(tmp_path, port, **settings)
    log_path = tmp_path / f"server-{port}.log"
    with log_path.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "service", "serve", env=env, stdout=log, stderr=log
        )
    url = f"http://{LOOPBACK}:{port}"
    try:
        async with client_session() as http:
            db_path = Path(env["GENSTREAM_STORAGE_PATH"])
            running = ServerProcess(process, url, http, log_path, db_path)
            await _wait_listening(running)
            yield running
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def _wait_listening(server: ServerProcess) -> None:
    async with asyncio.timeout(START_TIMEOUT):
        while True:
            if server.process.returncode is not None:
                raise AssertionError(f"the server exited at start:\n{server.log()}")
            try:
                async with server.http.get(f"{server.url}/healthz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.05)
