"""CORS for an app on another origin (server.cors_origins): preflights answered before
any credential, only listed origins echoed, credentials allowed for them alone."""

from __future__ import annotations

import pytest

from service.config import ConfigError
from service.web.cors import parse_origins
from tests.conftest import MakeServer
from tests.tokens import AUTH, bearer, sign

APP = "http://127.0.0.1:9999"
OTHER = "http://evil.example"
PREFLIGHT = {"Origin": APP, "Access-Control-Request-Method": "POST"}


async def test_a_preflight_from_a_listed_origin_is_answered_without_a_credential(
    make_server: MakeServer,
) -> None:
    gs = await make_server(auth=AUTH, server={"cors_origins": f"{APP}, http://b.example"})
    headers = {**PREFLIGHT, "Access-Control-Request-Headers": "authorization, content-type"}
    async with gs.http.options(f"{gs.url}/api/projects/p/generations", headers=headers) as r:
        assert r.status == 204
        assert r.headers["Access-Control-Allow-Origin"] == APP
        assert r.headers["Access-Control-Allow-Credentials"] == "true"
        assert r.headers["Access-Control-Allow-Methods"] == "GET, POST, DELETE"
        allowed = {h.strip().lower() for h in r.headers["Access-Control-Allow-Headers"].split(",")}
        assert {"authorization", "content-type", "last-event-id", "x-genstream-csrf"} <= allowed
        assert r.headers["Access-Control-Max-Age"] == "600"
        assert "Origin" in r.headers.getall("Vary")


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({**PREFLIGHT, "Origin": OTHER}, "origin_not_allowed"),
        ({**PREFLIGHT, "Access-Control-Request-Method": "PUT"}, "method_not_allowed"),
    ],
)
async def test_a_preflight_from_another_origin_or_for_another_method_is_a_403(
    make_server: MakeServer, headers: dict[str, str], code: str
) -> None:
    gs = await make_server(auth=AUTH, server={"cors_origins": APP})
    async with gs.http.options(f"{gs.url}/api/projects", headers=headers) as response:
        assert response.status == 403
        assert (await response.json())["error"]["code"] == code
        assert "Access-Control-Allow-Methods" not in response.headers
        if code == "origin_not_allowed":
            assert "Access-Control-Allow-Origin" not in response.headers


async def test_answers_name_a_listed_origin_only_errors_and_streams_included(
    make_server: MakeServer,
) -> None:
    gs = await make_server(auth=AUTH, server={"cors_origins": APP})
    token = bearer(sign(["prj_x"]))
    cases = [
        ("/api/projects", token, 200),
        ("/api/projects/prj_y", token, 403),
        ("/api/projects", {}, 401),
        ("/api/projects/prj_x/stream", token, 404),
    ]
    for path, credential, status in cases:
        for origin, allowed in ((APP, True), (OTHER, False)):
            headers = {**credential, "Origin": origin}
            async with gs.http.get(gs.url + path, headers=headers) as response:
                assert response.status == status, path
                assert "Origin" in response.headers.getall("Vary")
                if allowed:
                    assert response.headers["Access-Control-Allow-Origin"] == origin
                    assert response.headers["Access-Control-Allow-Credentials"] == "true"
                    exposed = response.headers["Access-Control-Expose-Headers"]
                    assert "X-Request-ID" in exposed and "WWW-Authenticate" in exposed
                else:
                    assert "Access-Control-Allow-Origin" not in response.headers


async def test_with_no_origins_listed_there_are_no_cors_headers(make_server: MakeServer) -> None:
    gs = await make_server(auth=AUTH)
    async with gs.http.options(f"{gs.url}/api/projects", headers=PREFLIGHT) as response:
        assert response.status == 401  # no preflight handling at all: an OPTIONS like any
        assert "Access-Control-Allow-Origin" not in response.headers


@pytest.mark.parametrize("raw", ["*", "http://a.example/", "a.example", "ftp://a.example"])
def test_an_allow_list_entry_that_is_no_origin_is_refused(raw: str) -> None:
    with pytest.raises(ConfigError, match=r"server\.cors_origins"):
        parse_origins(raw)


def test_origins_are_split_on_commas_and_spaces() -> None:
    assert parse_origins(" https://A.example, http://127.0.0.1:5173  http://[::1]:80") == {
        "https://a.example",
        "http://127.0.0.1:5173",
        "http://[::1]:80",
    }
