"""Fixtures: a real genstream server on a loopback port, over a real SQLite file or, for
a test marked `backends` (tests/backends.py), each backend in turn."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest

from service.config import Settings
from service.generation.pipeline import Pipeline
from service.web.app import create_app
from service.web.context import SERVICES, Services
from service.web.server import RunningServer, start
from tests.backends import BACKENDS, SQLITE_FILE, Store

if TYPE_CHECKING:
    from tests.postgres import Cluster, Database

LOOPBACK = "127.0.0.1"


class Genstream:
    """A running server and an HTTP client pointed at it."""

    def __init__(self, server: RunningServer, session: aiohttp.ClientSession) -> None:
        self.server = server
        self.http = session
        self.url = f"http://{LOOPBACK}:{server.port}"

    @property
    def services(self) -> Services:
        return self.server.runner.app[SERVICES]

    async def json(self, method: str, path: str, status: int = 200, **kwargs: Any) -> Any:
        async with self.http.request(method, self.url + path, **kwargs) as response:
            body = await response.json()
            assert response.status == status, (response.status, body)
            return body

    async def new_project(self, name: str = "test") -> str:
        project = await self.json("POST", "/api/projects", status=201, json={"name": name})
        project_id: str = project["id"]
        return project_id

    async def generate(self, project_id: str, prompt: str = "a todo api", **body: Any) -> Any:
        return await self.json(
            "POST",
            f"/api/projects/{project_id}/generations",
            status=202,
            json={"prompt": prompt, **body},
        )

    async def events(self, project_id: str, after: int = 0) -> list[dict[str, Any]]:
        """Every stored event of the project after `after`, paging through /events."""
        return await stored_events(self.json, project_id, after)

    async def wait_generation(self, generation_id: str, timeout: float = 20.0) -> dict[str, Any]:
        """Follow the generation's stream to its end; return its final state."""
        async with (
            asyncio.timeout(timeout),
            self.http.get(f"{self.url}/api/generations/{generation_id}/stream") as response,
        ):
            await response.read()
        generation: dict[str, Any] = await self.json("GET", f"/api/generations/{generation_id}")
        return generation


JsonCall = Callable[..., Awaitable[Any]]


async def stored_events(json: JsonCall, project_id: str, after: int = 0) -> list[dict[str, Any]]:
    """Every stored event of the project after `after`, paging through /events with
    `json(method, path)` (a server's `json`, in process or a child)."""
    collected: list[dict[str, Any]] = []
    while True:
        page = await json("GET", f"/api/projects/{project_id}/events?after={after}&limit=1000")
        collected.extend(page["events"])
        after = page["last_event_id"]
        if not page["has_more"]:
            return collected


def base_settings(tmp_path: Path) -> Settings:
    return Settings().replace(
        server={"host": LOOPBACK, "shutdown_grace_seconds": 2},
        storage={"path": str(tmp_path / SQLITE_FILE)},
        offline={"tokens_per_second": 0},
    )


def client_session() -> aiohttp.ClientSession:
    # limit=0: aiohttp's connector stalls the 101st concurrent stream; total=None: its
    # default 300 s total timeout would cut long streams.
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=30),
    )


MakeServer = Callable[..., Awaitable[Genstream]]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "backends: run the test once per storage backend (tests/backends.py)"
    )
    config.addinivalue_line(
        "markers", "sqlite_only(reason): a test of an SQLite mechanism, run on SQLite alone"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """`backends` gives a test one run per backend; `sqlite_only(reason)` one on SQLite,
    the reason required; a test with neither runs on SQLite unparametrized."""
    if "backend" not in metafunc.fixturenames:
        return
    only = metafunc.definition.get_closest_marker("sqlite_only")
    if only is not None:
        if not (only.args and isinstance(only.args[0], str) and only.args[0]):
            raise pytest.UsageError(f"{metafunc.definition.nodeid}: sqlite_only needs a reason")
        metafunc.parametrize("backend", ["sqlite"], indirect=True)
    elif metafunc.definition.get_closest_marker("backends") is not None:
        metafunc.parametrize("backend", BACKENDS, indirect=True)


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    """The storage backend of this run: its parameter, SQLite when it has none."""
    name: str = getattr(request, "param", "sqlite")
    return name


@pytest.fixture
def store(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Store:
    """Where this test's servers keep their data; on postgres a database of its own
    (the cluster started only when a postgres run first needs it)."""
    path = tmp_path / SQLITE_FILE
    if backend == "postgres":
        database: Database = request.getfixturevalue("pg_database")
        return Store(backend, path, database.url)
    return Store(backend, path)


@pytest.fixture
async def make_server(tmp_path: Path, store: Store) -> AsyncIterator[MakeServer]:
    """Start a server on the test's store; keyword arguments are settings sections to
    change. `port`: 0 for any free one, or a stopped server's port to restart it where
    its clients were."""
    started: list[Genstream] = []

    async def make(
        port: int = 0, pipelines: Mapping[str, Pipeline] | None = None, **sections: dict[str, Any]
    ) -> Genstream:
        settings = base_settings(tmp_path).replace(storage=store.settings())
        if sections:
            settings = settings.replace(**sections)
        app = None if pipelines is None else create_app(settings, pipelines)
        server = await start(settings, port=port, app=app)
        genstream = Genstream(server, client_session())
        started.append(genstream)
        return genstream

    yield make
    for genstream in reversed(started):
        await genstream.http.close()
        await genstream.server.stop()


@pytest.fixture
async def gs(make_server: MakeServer) -> Genstream:
    return await make_server()


@pytest.fixture(scope="session")
def postgres() -> Iterator[Cluster]:
    """The session's throwaway PostgreSQL cluster (tests/postgres.py), started when a test
    first asks for it; skipped where PostgreSQL is not installed (`make test` as root
    installs it)."""
    from tests.postgres import Cluster, PostgresMissing  # only when a test asks for it

    try:
        cluster = Cluster.create()
    except PostgresMissing as exc:
        pytest.skip(str(exc))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.remove()


@pytest.fixture
async def pg_database(postgres: Cluster) -> AsyncIterator[Database]:
    """A database of this test's own, dropped after it."""
    from tests.postgres import Database

    database = Database(postgres, await postgres.create_database())
    yield database
    await postgres.drop_database(database.name)
