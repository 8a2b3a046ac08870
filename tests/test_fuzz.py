"""Hypothesis against every route of the served OpenAPI description: random paths, query
strings, headers, cursors and bodies. Never a 500, never a stack trace in a reply, and a
rejected request leaves the database as it was."""

from __future__ import annotations

import asyncio
import http.client
import json
import re
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.config import Settings
from service.web.app import create_app
from service.web.openapi import describe
from tests.conftest import LOOPBACK, MakeServer
from tests.helpers import database, db_rows

TOKEN = "fuzz-token"
EXAMPLES = 800
SETTLE_CHECKS, SETTLE_PAUSE = 250, 0.02
SOCKET_TIMEOUT = 10.0
# Tables a rejected request must not touch. stream_sessions is left out: it is written
# in the background after an accepted stream ends, whenever that lands.
TABLES = ("projects", "messages", "generations", "events", "files")
LEAKS = (b"Traceback", b'File "/', b"site-packages")


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    spec: dict[str, Any]


SPEC = describe(Settings().replace(auth={"token": TOKEN}))
OPERATIONS = [
    Operation(method.upper(), path, op)
    for path, methods in SPEC["paths"].items()
    for method, op in methods.items()
]


def test_the_description_covers_every_route() -> None:
    app = create_app(Settings())
    routed = set()
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter")
        # The page is not the API: `/`, and its files under /static/ (a prefix, with no
        # path, but for the generated /static/protocol.js).
        if path is None or route.method == "HEAD" or path == "/" or path.startswith("/static/"):
            continue
        routed.add((route.method, re.sub(r"\{(\w+)(:[^}]*)?\}", r"{\1}", str(path))))
    described = {(op.method, op.path) for op in OPERATIONS}
    assert routed == described


# -- strategies ------------------------------------------------------------------------

header_text = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0xFF, blacklist_characters="\x7f"),
    max_size=40,
)
numbers = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.sampled_from(["", " 1", "1 ", "0x10", "1e3", "٣", "+5", "00", "-0", "9" * 40]),
    header_text,
)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=60),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner),
    max_leaves=10,
)


def shaped_bodies(op: Operation) -> st.SearchStrategy[bytes]:
    """Objects with the described fields, each of any type, and random extras."""
    content = op.spec.get("requestBody", {}).get("content", {}).get("application/json", {})
    reference = content.get("schema", {}).get("$ref", "")
    schema = SPEC["components"]["schemas"].get(reference.rpartition("/")[2], {})
    fields = list(schema.get("properties", {}))
    field_values = st.one_of(
        json_values,
        st.text(max_size=300),
        st.lists(st.text(max_size=80), max_size=12),
        st.sampled_from(["a todo api", "https://x/y.png", "data:image/png;base64,AA"]),
    )
    return st.dictionaries(
        st.sampled_from(fields) if fields else st.text(max_size=8), field_values, max_size=4
    ).map(lambda body: json.dumps(body).encode())


@st.composite
def requests(
    draw: st.DrawFn, known: dict[str, list[str]]
) -> tuple[Operation, str, dict[str, str], bytes]:
    op = draw(st.sampled_from(OPERATIONS))
    path = op.path
    for name in re.findall(r"\{(\w+)\}", path):
        raw = draw(
            st.one_of(
                st.sampled_from(known.get(name) or ["x"]),
                st.text(max_size=30),
                st.sampled_from(["..", "%2e%2e", "a/../../etc/passwd", "\x00", "prj_" + "0" * 20]),
            )
        )
        safe = "/" if name == "path" else ""
        path = path.replace("{" + name + "}", quote(raw, safe=safe) or "x")
    query: dict[str, str] = {}
    for param in op.spec.get("parameters", []):
        if param["in"] == "query" and draw(st.booleans()):
            query[param["name"]] = draw(numbers)
    if draw(st.booleans()):
        query[draw(st.text(min_size=1, max_size=8))] = draw(st.text(max_size=20))
    target = path + ("?" + urlencode(query) if query else "")

    headers: dict[str, str] = {}
    auth = draw(st.sampled_from(["good", "good", "good", "none", "random"]))
    if auth == "good":
        headers["Authorization"] = f"Bearer {TOKEN}"
    elif auth == "random":
        headers["Authorization"] = draw(header_text)
    if draw(st.booleans()):
        headers["Last-Event-ID"] = draw(numbers)
    if draw(st.booleans()):
        headers["Content-Type"] = draw(
            st.sampled_from(["application/json", "text/plain", "multipart/form-data; boundary=x"])
        )
    if draw(st.booleans()):
        headers["X-Request-ID"] = draw(header_text)
    if draw(st.booleans()):
        headers["Accept"] = draw(st.sampled_from(["text/event-stream", "*/*", "application/json"]))
    body = draw(
        st.one_of(
            st.just(b""),
            st.binary(max_size=200),
            shaped_bodies(op),
            json_values.map(lambda v: json.dumps(v).encode()),
        )
    )
    return op, target, headers, body


# -- the run ---------------------------------------------------------------------------


def _snapshot(db_path: str) -> list[Any]:
    with database(db_path) as db:
        return [db.execute(f"SELECT * FROM {table} ORDER BY rowid").fetchall() for table in TABLES]


def _active(db_path: str) -> bool:
    return bool(
        db_rows(db_path, "SELECT 1 FROM generations WHERE status IN ('pending', 'running')")
    )


def _send(
    port: int, method: str, target: str, headers: dict[str, str], body: bytes
) -> tuple[int, str, bytes]:
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=SOCKET_TIMEOUT)
    try:
        conn.putrequest(method, target, skip_accept_encoding=True)
        for name, value in headers.items():
            conn.putheader(name, value.encode())  # raw UTF-8 bytes, as a careless client sends
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        response = conn.getresponse()
        kind = response.getheader("Content-Type", "")
        # An accepted stream never ends by itself: its first bytes are enough.
        data = response.read1(64) if kind.startswith("text/event-stream") else response.read()
        return response.status, kind, data
    finally:
        conn.close()


async def test_fuzz_every_route(make_server: MakeServer) -> None:
    gs = await make_server(auth={"token": TOKEN})
    auth = {"Authorization": f"Bearer {TOKEN}"}
    project_id = (await gs.json("POST", "/api/projects", 201, json={}, headers=auth))["id"]
    submitted = await gs.json(
        "POST", f"/api/projects/{project_id}/generations", 202, json={"prompt": "x"}, headers=auth
    )
    generation_id = submitted["generation"]["id"]
    await gs.json("POST", f"/api/generations/{generation_id}/cancel", headers=auth)
    known = {"pid": [project_id], "gid": [generation_id], "path": ["README.md", "a.py"]}
    db_path = gs.services.settings.storage.path
    port = gs.server.port
    statuses: set[int] = set()

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(request=requests(known))
    def check(request: tuple[Operation, str, dict[str, str], bytes]) -> None:
        op, target, headers, body = request
        settle(db_path)
        before = _snapshot(db_path)
        status, kind, data = _send(port, op.method, target, headers, body)
        statuses.add(status)
        # Every answer is one the description names for that route: schemathesis checks
        # this too (tests/test_openapi.py), but cannot follow a stream that never ends.
        assert str(status) in op.spec["responses"], (request, status, data)
        assert status < 500, (request, data)
        assert not any(leak in data for leak in LEAKS), (request, data)
        if status >= 400:
            assert kind.startswith("application/json"), (request, status, kind)
            error = json.loads(data)["error"]
            assert isinstance(error["code"], str) and isinstance(error["message"], str)
            assert _snapshot(db_path) == before, request

    await asyncio.to_thread(check)
    # The run reached past the guards, not only into them.
    assert {200, 400, 401, 404} <= statuses, statuses


def settle(db_path: str) -> None:
    """Let an accepted generation end before the next request, so that what it writes
    is not taken for the next request's doing. It runs at full speed (a moment); this
    thread has no event of the server's to wait on, so it asks the database again."""
    for _ in range(SETTLE_CHECKS):
        if not _active(db_path):
            return
        time.sleep(SETTLE_PAUSE)
    raise AssertionError("a generation did not end")
