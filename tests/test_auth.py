"""The token on every route, and no listening beyond loopback without one."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from service.config import ConfigError, Settings
from service.web.app import create_app
from service.web.server import check_exposure
from tests.conftest import MakeServer
from tests.process import run_to_exit

TOKEN = "s3cret-token"
OPEN_PATHS = frozenset({"/healthz", "/"})
# Clearing the session cookie needs no credential (tests/test_scoped_tokens.py).
OPEN_ROUTES = frozenset({("DELETE", "/api/session")})


def _routes() -> list[tuple[str, str]]:
    """Every (method, path) the application routes, with placeholders filled in."""
    app = create_app(Settings().replace(auth={"token": TOKEN}))
    found = set()
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter") or info.get("prefix")
        if path is None or route.method == "HEAD":
            continue
        path = re.sub(r"\{[^}]+\}", "x", str(path))
        found.add((route.method, path))
    return sorted(found)


ROUTES = _routes()
GUARDED = [
    (m, p)
    for m, p in ROUTES
    if p not in OPEN_PATHS and (m, p) not in OPEN_ROUTES and not p.startswith("/static")
]


def test_every_api_route_and_metrics_are_guarded() -> None:
    paths = {p for _, p in GUARDED}
    assert "/metrics" in paths and "/api/openapi.json" in paths
    assert all(p.startswith("/api/") or p == "/metrics" for p in paths)


@pytest.mark.parametrize(("method", "path"), GUARDED, ids=[f"{m} {p}" for m, p in GUARDED])
async def test_route_needs_the_token(make_server: MakeServer, method: str, path: str) -> None:
    gs = await make_server(auth={"token": TOKEN})
    for headers in (
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": f"Bearer {TOKEN}x"},
    ):
        async with gs.http.request(method, gs.url + path, headers=headers, json={}) as response:
            assert response.status == 401, (headers, await response.text())
            assert response.headers["WWW-Authenticate"] == "Bearer"
            assert (await response.json())["error"]["code"] == "unauthorized"
    good = {"Authorization": f"Bearer {TOKEN}"}
    async with gs.http.request(method, gs.url + path, headers=good, json={}) as response:
        assert response.status != 401
        assert response.status < 500


async def test_healthz_needs_no_token(make_server: MakeServer) -> None:
    gs = await make_server(auth={"token": TOKEN})
    async with gs.http.get(f"{gs.url}/healthz") as response:
        assert response.status == 200


@pytest.mark.parametrize(
    ("host", "token", "allowed", "refused"),
    [
        ("127.0.0.1", "", False, False),
        ("127.0.0.2", "", False, False),
        ("::1", "", False, False),
        ("localhost", "", False, False),
        ("0.0.0.0", "", False, True),
        ("", "", False, True),
        ("::", "", False, True),
        ("192.0.2.10", "", False, True),
        ("example.org", "", False, True),
        ("0.0.0.0", "t", False, False),
        ("0.0.0.0", "", True, False),
    ],
)
def test_remote_host_without_token_is_refused(
    host: str, token: str, allowed: bool, refused: bool
) -> None:
    settings = Settings().replace(
        server={"host": host, "allow_remote_without_token": allowed}, auth={"token": token}
    )
    if refused:
        with pytest.raises(ConfigError, match="GENSTREAM_AUTH_TOKEN"):
            check_exposure(settings)
    else:
        check_exposure(settings)


async def test_serve_on_a_remote_host_without_token_exits_with_a_clear_error(
    tmp_path: Path,
) -> None:
    code, message = await run_to_exit(tmp_path, server_host="0.0.0.0")
    assert code == 2
    assert "server.host = '0.0.0.0'" in message
    assert "allow_remote_without_token" in message
    assert not (tmp_path / "genstream.db").exists()  # refused before opening anything
