"""/api/openapi.json tells the truth: schemathesis against the real server (every check,
every phase, a fixed seed and example count), each kind of stream read and checked
against the described events, and the description's rules held to the handlers' own."""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import given
from hypothesis import strategies as st

from service.config import Settings
from service.eventlog import event as events
from service.web import api
from service.web.errors import ApiError
from service.web.openapi import describe
from service.web.params import MAX_INTEGER, decimal_pattern, non_negative_int
from tests.conftest import MakeServer

TOKEN = "openapi-token"
JWT_SECRET = "openapi-jwt-secret-of-32-bytes-or-more"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CONFIG = Path(__file__).with_name("schemathesis.toml")
# The run takes 10-20 s here; the bound is for a machine busy with other tests.
RUN_TIMEOUT = 240.0
# Streams read in the explicit cases below: cut after this many events, which come at
# once; the timeout is only for a server that stopped sending.
STREAM_EVENTS = 50
STREAM_TIMEOUT = 30.0


async def test_schemathesis_finds_the_server_as_described(
    make_server: MakeServer, tmp_path: Path
) -> None:
    gs = await make_server(auth={"token": TOKEN, "jwt_secret": JWT_SECRET})
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "schemathesis.cli",
        "--config-file",
        str(CONFIG),
        "run",
        f"{gs.url}/api/openapi.json",
        "--checks",
        "all",
        "--header",
        f"Authorization: Bearer {TOKEN}",
        "--no-color",
        cwd=tmp_path,  # whatever it writes (a cache, reports) stays out of the tree
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    async with asyncio.timeout(RUN_TIMEOUT):
        output, _ = await process.communicate()
    assert process.returncode == 0, output.decode(errors="replace")


async def test_each_kind_of_stream_carries_the_described_events(make_server: MakeServer) -> None:
    """The fuzzing above rarely opens a stream on a real generation from a real cursor;
    these cases do, and schemathesis checks every event against the described one."""
    gs = await make_server()  # no token: the other way the description is served
    project_id = await gs.new_project()
    generation_id = (await gs.generate(project_id, "x"))["generation"]["id"]
    assert (await gs.wait_generation(generation_id))["status"] == "completed"
    last = (await gs.json("GET", f"/api/projects/{project_id}"))["last_event_id"]
    assert last > STREAM_EVENTS

    def check() -> list[str]:
        cases: list[tuple[str, int, dict[str, Any]]] = [
            ("streamGeneration", STREAM_EVENTS, {"query": {"last_event_id": 0}}),
            ("streamGeneration", STREAM_EVENTS, {"query": {"last_event_id": last - 5}}),
            ("streamProject", STREAM_EVENTS, {"query": {"last_event_id": 0}}),
            ("streamProject", 1, {}),  # live from now: its stream.cursor frame
            (
                "submitGeneration",
                STREAM_EVENTS,
                {"body": {"prompt": "again"}, "headers": {"Accept": "text/event-stream"}},
            ),
        ]
        ids = {"gid": generation_id, "pid": project_id}
        bodies = []
        for op_id, max_events, data in cases:
            config = schemathesis.Config.from_dict(
                {"max-stream-events": max_events, "request-timeout": STREAM_TIMEOUT}
            )
            schema = schemathesis.openapi.from_url(f"{gs.url}/api/openapi.json", config=config)
            operation = schema.find_operation_by_id(op_id)
            path = {p: ids[p] for p in ids if "{" + p + "}" in operation.path}
            response = operation.Case(path_parameters=path, **data).call_and_validate()
            assert response.status_code == 200, response.text
            assert response.headers["content-type"][0].startswith("text/event-stream")
            bodies.append(response.text)
        return bodies

    bodies = await asyncio.to_thread(check)
    # What was checked: whole generations to their terminal event, the cursor frame.
    assert f"event: {events.GENERATION_COMPLETED}\n" in bodies[1]
    assert f"event: {events.STREAM_CURSOR}\n" in bodies[3]
    assert all(body.count("\ndata: ") >= 1 for body in bodies)


def test_without_a_token_the_description_declares_no_auth() -> None:
    open_spec = describe(Settings())
    assert "securitySchemes" not in open_spec["components"]
    assert "security" not in open_spec
    statuses = {
        status
        for methods in open_spec["paths"].values()
        for op in methods.values()
        for status in op["responses"]
    }
    assert "401" not in statuses
    guarded = describe(Settings().replace(auth={"token": TOKEN}))
    assert guarded["security"] == [{"bearer": []}]
    open_ops = set()
    for path, methods in guarded["paths"].items():
        for method, op in methods.items():
            assert ("401" in op["responses"]) == (op.get("security") != []), path
            if op.get("security") == []:
                open_ops.add((method, path))
    # Clearing the session cookie needs no credential (tests/test_scoped_tokens.py).
    assert open_ops == {("get", "/healthz"), ("delete", "/api/session")}


def test_the_body_schemas_hold_the_fields_the_handlers_take() -> None:
    schemas = describe(Settings())["components"]["schemas"]
    assert set(schemas["ProjectBody"]["properties"]) == api.PROJECT_FIELDS
    assert set(schemas["GenerationBody"]["properties"]) == api.GENERATION_FIELDS
    assert schemas["ProjectBody"]["additionalProperties"] is False
    assert schemas["GenerationBody"]["additionalProperties"] is False


def test_blank_is_the_same_white_space_to_the_pattern_and_to_strip() -> None:
    # The pattern spells the characters out, so ECMA-262 and Python read it alike; here
    # it is held to Python's own idea of white space, which strip() uses.
    assert set(api.SPACES) == {chr(c) for c in range(sys.maxunicode + 1) if chr(c).isspace()}
    assert re.search(api.NOT_BLANK, "\ufeff")  # not white space to Python: a character
    assert not re.search(api.NOT_BLANK, " \t\u3000\x1c")


def _accepts(raw: str, maximum: int) -> bool:
    try:
        non_negative_int(raw, "x", maximum)
    except ApiError:
        return False
    return True


cursors = st.one_of(
    st.integers(min_value=0, max_value=2**64).map(str),
    st.integers(min_value=0, max_value=2**64).map(lambda n: "0" * (n % 4) + str(n)),
    st.text(st.sampled_from("0123456789 +-x٣"), max_size=22),
)
maxima = st.one_of(
    st.just(MAX_INTEGER), st.integers(min_value=0, max_value=10**6), st.integers(min_value=0)
)


@given(raw=cursors, maximum=maxima)
def test_the_described_cursor_pattern_accepts_what_the_parser_accepts(
    raw: str, maximum: int
) -> None:
    assert bool(re.fullmatch(decimal_pattern(maximum), raw)) == _accepts(raw, maximum)


@pytest.mark.parametrize(
    "raw",
    [str(MAX_INTEGER), str(MAX_INTEGER + 1), "0", "00", "", "9" * 19, "0" * 30 + "7", "1" * 20],
)
def test_the_described_cursor_pattern_at_its_bounds(raw: str) -> None:
    assert bool(re.fullmatch(decimal_pattern(), raw)) == _accepts(raw, MAX_INTEGER)


def _ids(spec: dict[str, Any]) -> set[str]:
    return {op["operationId"] for methods in spec["paths"].values() for op in methods.values()}


def test_every_link_leads_to_a_described_operation() -> None:
    spec = describe(Settings())
    ids = _ids(spec)
    for methods in spec["paths"].values():
        for op in methods.values():
            for response in op["responses"].values():
                for link in response.get("links", {}).values():
                    assert link["operationId"] in ids
