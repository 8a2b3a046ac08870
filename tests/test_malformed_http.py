"""Requests HTTP itself cannot read, sent as raw bytes over a socket: each gets a 400 in
genstream's JSON error shape and one WARNING line in the log, never a traceback (aiohttp
answered text/plain and logged an ERROR with a traceback for each, so a client could
flood the log), and the database stays as it was."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import orjson
import pytest
from aiohttp import web

from service.config import Settings
from service.web.server import start
from tests.conftest import LOOPBACK, Genstream
from tests.test_errors import snapshot

TIMEOUT = 10.0
HEAD_END = b"\r\n\r\n"
HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
FROB = b"FROB /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
CHUNKED_POST = (
    b"POST /api/projects HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    b"Transfer-Encoding: chunked\r\n"
)


@dataclass(frozen=True)
class Step:
    """Bytes to send, then what to read before the next step (b"": to the end)."""

    send: bytes
    until: bytes = b""


CASES = [
    pytest.param(
        [Step(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n")],
        "Invalid header value char",
        id="nul-in-a-header",
    ),
    pytest.param(
        [Step(CHUNKED_POST + b"\r\nzz\r\n{}\r\n0\r\n\r\n")],
        "Invalid character in chunk size",
        id="bad-chunk-size",
    ),
    # The handler is already reading the body when the bad chunk comes: aiohttp's C
    # parser dropped that body unfailed, and the request hung until the client left.
    pytest.param(
        [
            Step(CHUNKED_POST + b"Expect: 100-continue\r\n\r\n", until=b"100 Continue" + HEAD_END),
            Step(b"zz\r\n{}\r\n0\r\n\r\n"),
        ],
        "Invalid character in chunk size",
        id="bad-chunk-size-mid-body",
    ),
    pytest.param(
        [Step(FROB)],
        "Invalid method encountered",
        id="unknown-method",
    ),
    # aiohttp logs a bad method on a connection's first request at DEBUG (with its
    # traceback), and on any later one as an ERROR.
    pytest.param(
        [Step(HEALTHZ, until=b'{"status":"ok","pid":'), Step(FROB)],
        "Invalid method encountered",
        id="unknown-method-after-a-good-request",
    ),
    pytest.param(
        [Step(b"\x16\x03\x01\x00\xa5\x01\x00\x00" + HEAD_END)],
        "Received HTTPS traffic on an HTTP port",
        id="tls-on-the-http-port",
    ),
    pytest.param(
        [
            Step(
                b"POST /api/projects HTTP/1.1\r\nHost: x\r\nContent-Encoding: gzip\r\n"
                b"Content-Length: 10\r\n\r\n0123456789"
            )
        ],
        "Can not decode content-encoding: gzip",
        id="body-that-does-not-decode",
    ),
]


async def exchange(port: int, steps: list[Step]) -> bytes:
    """Run the steps on one connection; the bytes after the last step's send, to EOF."""
    reader, writer = await asyncio.open_connection(LOOPBACK, port)
    try:
        async with asyncio.timeout(TIMEOUT):
            for step in steps:
                writer.write(step.send)
                await writer.drain()
                if step.until:
                    await reader.readuntil(step.until)
            return await reader.read()  # to EOF: the server closes after the 400
    finally:
        writer.close()


def parse_response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(HEAD_END)
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, body


@pytest.mark.parametrize(("steps", "reason"), CASES)
async def test_malformed_request_is_a_json_400_with_one_warning_line(
    gs: Genstream, caplog: pytest.LogCaptureFixture, steps: list[Step], reason: str
) -> None:
    caplog.set_level(logging.DEBUG)
    before = snapshot(gs)
    caplog.clear()

    status, headers, body = parse_response(await exchange(gs.server.port, steps))

    assert status == 400, body
    assert headers["content-type"] == "application/json"
    assert orjson.loads(body) == {
        "error": {"code": "malformed_request", "message": f"malformed HTTP request: {reason}"}
    }
    loud = [
        (r.name, r.levelname, r.getMessage())
        for r in caplog.records
        if r.levelno >= logging.WARNING
    ]
    assert loud == [
        ("service.web.errors", "WARNING", f"malformed HTTP request from {LOOPBACK}: {reason}")
    ]
    assert not [r for r in caplog.records if r.exc_info], caplog.text
    assert "Traceback" not in caplog.text
    assert snapshot(gs) == before
    assert (await gs.json("GET", "/healthz"))["status"] == "ok"


async def test_an_error_no_middleware_caught_is_a_json_500_and_logged_in_full(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The other way into aiohttp's handle_error: an exception that escaped the handler.
    That is a bug, so its traceback is logged; the client still gets the JSON shape."""

    async def broken(request: web.Request) -> web.Response:
        raise RuntimeError("a bug")

    app = web.Application()
    app.router.add_get("/broken", broken)
    server = await start(Settings().replace(server={"host": LOOPBACK}), port=0, app=app)
    try:
        raw = await exchange(
            server.port, [Step(b"GET /broken HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")]
        )
    finally:
        await server.stop()
    status, headers, body = parse_response(raw)
    assert status == 500
    assert headers["content-type"] == "application/json"
    assert orjson.loads(body)["error"]["code"] == "internal_error"
    assert next(r.exc_info for r in caplog.records if r.levelno >= logging.ERROR) is not None
