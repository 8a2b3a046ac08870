"""No token in logs (issue 17 item 5): genstream's own logs (its access log and its
errors, as a real child process writes them to stderr) and nginx's access log, run with
the recipe of deploy/, after a generation streamed with `?token=` through nginx."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from service import logs
from tests.process import server_process
from tests.proxies import (
    BINARIES,
    NGINX_ACCESS_LOG,
    NGINX_LOG_FORMAT,
    NGINX_STREAMS_LOG,
    README,
    Kind,
    recipe,
    run_proxy,
)
from tests.tokens import MASTER, SECRET, bearer, sign

STREAM_TIMEOUT = 20.0

nginx = pytest.mark.skipif(
    BINARIES[Kind.NGINX] is None, reason="nginx is not installed (make test does)"
)


def test_readme_documents_the_log_format() -> None:
    assert recipe(NGINX_LOG_FORMAT).strip() in README.read_text()


@pytest.mark.parametrize(
    ("line", "redacted"),
    [
        ("GET /api/projects/p/stream?token=abc.def-ghi 200", "?token=[redacted] 200"),
        ("?last_event_id=3&token=x&y=1", "?last_event_id=3&token=[redacted]&y=1"),
        ('{"message": "GET /s?TOKEN=secret"}', '{"message": "GET /s?TOKEN=[redacted]"}'),
        ("a access_token=zzz b", "a access_token=[redacted] b"),
        ("Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln", "Bearer [redacted]"),
    ],
)
def test_every_token_in_a_log_line_is_redacted(line: str, redacted: str) -> None:
    assert logs.redact(line).endswith(redacted)


@nginx
async def test_no_token_in_genstreams_logs_or_nginxs_after_a_streamed_generation(
    tmp_path: Path,
) -> None:
    async with server_process(
        tmp_path / "genstream", auth_token=MASTER, auth_jwt_secret=SECRET, log_level="debug"
    ) as server:
        master = bearer(MASTER)
        project = (await server.json("POST", "/api/projects", 201, json={}, headers=master))["id"]
        token = sign([project], subject="user-7")
        async with run_proxy(Kind.NGINX, tmp_path / "nginx", server.port) as proxy:
            submit = f"{proxy.url}/api/projects/{project}/generations"
            async with server.http.post(submit, json={"prompt": "x"}, headers=master) as answer:
                assert answer.status == 202
                generation = (await answer.json())["generation"]["id"]
            stream = f"{proxy.url}/api/generations/{generation}/stream?token={token}"
            async with asyncio.timeout(STREAM_TIMEOUT), server.http.get(stream) as response:
                assert response.status == 200
                body = await response.read()
            assert b"event: generation.completed" in body
            # A refused one too: a token nobody signed, in a stream's URL.
            forged = sign([project], key="x" * 64)
            refused = f"{proxy.url}/api/projects/{project}/stream?token={forged}"
            async with server.http.get(refused) as response:
                assert response.status == 401
            entries = await proxy.answered(200, f"/api/generations/{generation}/stream", 1, 5)
            assert entries[0][2] == f"/api/generations/{generation}/stream"  # no query
            await proxy.answered(401, f"/api/projects/{project}/stream", 1, 5)
            nginx_logs = {
                name: proxy.access_log_text(name) for name in (NGINX_ACCESS_LOG, NGINX_STREAMS_LOG)
            }
    genstream_log = server.log()
    # What is looked for: the whole token, and its signature alone (the part that is secret).
    secrets = [token, token.rsplit(".", 1)[1], forged, forged.rsplit(".", 1)[1]]
    for name, text in {"genstream": genstream_log, **nginx_logs}.items():
        for secret in secrets:
            assert secret not in text, (name, text)
    # Not vacuous: the streams are in both logs, with the subject in genstream's.
    assert f"/api/generations/{generation}/stream?token=[redacted] 200" in genstream_log
    assert "subject=user-7" in genstream_log
    assert f"/api/projects/{project}/stream?token=[redacted] 401" in genstream_log
    assert (
        f'GET /api/generations/{generation}/stream HTTP/1.1" 200' in nginx_logs[NGINX_STREAMS_LOG]
    )
