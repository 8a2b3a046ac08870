"""genstream as a real child process (`python -m service serve`), for signals and crashes."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from tests.conftest import LOOPBACK, client_session, stored_events
from tests.helpers import wait_until
from tests.net import free_port as free_port  # re-exported: tests import it from here

START_TIMEOUT = 20.0


@dataclass
class ServerProcess:
    process: asyncio.subprocess.Process
    url: str
    http: aiohttp.ClientSession
    db_path: Path
    # The child's stderr, read from a pipe as it comes (a file would be subject to the
    # child's own file-size limit in the disk-full test).
    output: bytearray

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def log(self) -> str:
        return self.output.decode(errors="replace")

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

    async def generate(self, project_id: str, prompt: str = "a todo api", **body: Any) -> Any:
        """Submit a generation, as `Genstream.generate` does in process."""
        path = f"/api/projects/{project_id}/generations"
        return await self.json("POST", path, status=202, json={"prompt": prompt, **body})

    async def events(self, project_id: str, after: int = 0) -> list[dict[str, Any]]:
        """Every stored event of the project after `after`, paging through /events."""
        return await stored_events(self.json, project_id, after)


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
async def server_process(
    tmp_path: Path,
    *,
    port: int = 0,
    wrapper: Sequence[str] = (),
    command: Sequence[str] = ("serve",),
    **settings: str,
) -> AsyncIterator[ServerProcess]:
    """Start a server (`python -m service serve`, under `wrapper`, a command that runs the
    one after it), wait until /healthz answers, and kill it at the end if still alive.
    `port`: 0 for a free one, or a stopped server's port to restart it where its clients
    were (same `tmp_path`: same database)."""
    port = port or free_port()
    env = server_env(tmp_path, port, **settings)
    process = await asyncio.create_subprocess_exec(
        *wrapper,
        sys.executable,
        "-m",
        "service",
        *command,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    output = bytearray()
    assert process.stderr is not None
    reading = asyncio.create_task(_collect(process.stderr, output))
    url = f"http://{LOOPBACK}:{port}"
    try:
        async with client_session() as http:
            db_path = Path(env["GENSTREAM_STORAGE_PATH"])
            running = ServerProcess(process, url, http, db_path, output)
            await _wait_listening(running)
            yield running
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()
        await reading


async def _collect(stream: asyncio.StreamReader, into: bytearray) -> None:
    while chunk := await stream.read(65536):
        into.extend(chunk)


async def run_to_exit(
    tmp_path: Path, *, wrapper: Sequence[str] = (), args: Sequence[str] = (), **settings: str
) -> tuple[int, str]:
    """Run a server that is expected to refuse to start (`serve`, then `args`): its exit
    code and stderr."""
    process = await asyncio.create_subprocess_exec(
        *wrapper,
        sys.executable,
        "-m",
        "service",
        "serve",
        *args,
        env=server_env(tmp_path, free_port(), **settings),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(START_TIMEOUT):
        _, stderr = await process.communicate()
    assert process.returncode is not None
    return process.returncode, stderr.decode(errors="replace")


async def _wait_listening(server: ServerProcess) -> None:
    async def listening() -> bool:
        if server.process.returncode is not None:
            raise AssertionError(f"the server exited at start:\n{server.log()}")
        try:
            async with server.http.get(f"{server.url}/healthz") as response:
                return response.status == 200
        except aiohttp.ClientConnectionError:
            return False

    await wait_until(listening, START_TIMEOUT, interval=0.05)
