"""The JavaScript client's package (service/web/static/client/): served by genstream, ready
to publish, its vocabulary protocol.py's, its types those of the API's schemas and of the
events a real generation writes."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, Final

import pytest

from service.protocol import EventType
from service.web import protocol_js
from tests.conftest import Genstream

CLIENT_DIR: Final = protocol_js.PACKAGE_COPY.parent
NODE_DIR: Final = Path(__file__).resolve().parent / "node"
TSC: Final = NODE_DIR / "node_modules" / ".bin" / "tsc"
NPM: Final = shutil.which("npm")
TYPES: Final = (CLIENT_DIR / "genstream.d.ts").read_text()
# `export interface Name extends EventBase<"type"> { field: ...; field?: ...; }`; the
# interfaces hold no nested braces (each nested object is an interface of its own).
INTERFACE: Final = re.compile(
    r'export interface (\w+)(?: extends EventBase<"([^"]+)">)?(?:<[^>]*>)? \{([^}]*)\}'
)
FIELD: Final = re.compile(r"^\s*(\w+)\??:", re.MULTILINE)


def interfaces() -> dict[str, tuple[str | None, set[str]]]:
    """Each interface's event type (if it is one's) and field names."""
    return {
        name: (event_type or None, set(FIELD.findall(body)))
        for name, event_type, body in INTERFACE.findall(TYPES)
    }


def fields(name: str) -> set[str]:
    return interfaces()[name][1]


def test_the_package_copy_of_the_vocabulary_is_protocol_py() -> None:
    # Written by `python -m service.web.protocol_js`; the page's own copy is served.
    assert protocol_js.PACKAGE_COPY.read_bytes() == protocol_js.render(protocol_js.PACKAGE_HEAD)


def test_the_package_json_is_ready_to_publish() -> None:
    package = json.loads((CLIENT_DIR / "package.json").read_text())
    assert package["name"] == "@genstream/client" and package["type"] == "module"
    assert "private" not in package and "dependencies" not in package
    # React for the hook alone: the app's own, never a copy of it.
    assert set(package["peerDependencies"]) == {"react"}
    assert package["peerDependenciesMeta"]["react"]["optional"] is True
    for name in package["files"]:
        assert (CLIENT_DIR / name).is_file(), name
    targets = [package["main"], package["types"]]
    for entry in package["exports"].values():
        targets.extend(entry.values() if isinstance(entry, dict) else [entry])
    for target in targets:
        assert (CLIENT_DIR / target).is_file(), target
        assert target == "./package.json" or target.removeprefix("./") in package["files"]


async def test_genstream_serves_the_package_as_es_modules(gs: Genstream) -> None:
    for name in ("genstream.js", "protocol.js", "react.js"):
        async with gs.http.get(f"{gs.url}/static/client/{name}") as response:
            assert response.status == 200, name
            # A JavaScript MIME type, or a browser refuses the module (WHATWG HTML).
            assert response.content_type in {"text/javascript", "application/javascript"}, name
            assert await response.read() == (CLIENT_DIR / name).read_bytes()


def test_the_event_type_names_are_protocol_py() -> None:
    union = re.search(r"export type EventTypeName =([^;]*);", TYPES)
    assert union is not None
    assert set(re.findall(r'"([^"]+)"', union.group(1))) == {t.value for t in EventType}
    typed = {event_type for event_type, _ in interfaces().values() if event_type}
    assert typed == {t.value for t in EventType}


async def test_the_types_are_the_api_schemas(gs: Genstream) -> None:
    schemas = (await gs.json("GET", "/api/openapi.json"))["components"]["schemas"]
    for name, schema in (("Message", "Message"), ("Generation", "Generation")):
        assert fields(name) == set(schemas[schema]["properties"]), name
    assert fields("EventBase") == set(schemas["Event"]["properties"])


async def test_the_event_types_are_what_generations_write(gs: Genstream) -> None:
    project_id = await gs.new_project()
    await gs.wait_generation((await gs.generate(project_id))["generation"]["id"])
    cancelled = (await gs.generate(project_id, "a landing page"))["generation"]["id"]
    await gs.json("POST", f"/api/generations/{cancelled}/cancel")
    await gs.wait_generation(cancelled)
    by_type = {event_type: (name, names) for name, (event_type, names) in interfaces().items()}
    base = fields("EventBase")
    seen: set[str] = set()
    for event in await gs.events(project_id):
        name, names = by_type[event["type"]]
        assert set(event) == base | names, (name, sorted(event))
        nested: dict[str, Any] = {
            "message": "Message" if event["type"] == EventType.MESSAGE_CREATED else "MessageUpdate",
            "usage": "Usage",
            "timings": "Timings",
        }
        for key, interface in nested.items():
            if key in event:
                assert set(event[key]) == fields(interface), (event["type"], key)
        seen.add(event["type"])
    # Every type but a failure's, whose fields are code, message, retryable.
    assert seen == {t.value for t in EventType} - {EventType.GENERATION_FAILED}
    assert fields("GenerationFailedEvent") == {"code", "message", "retryable"}


@pytest.mark.skipif(not TSC.exists(), reason="no typescript in tests/node: `make node-deps`")
def test_the_declarations_compile_for_an_app_that_uses_them() -> None:
    # tests/node/types/consumer.ts: the client and the hook used as an app would, strict.
    compiled = subprocess.run(
        [str(TSC), "-p", "types/tsconfig.json"],
        cwd=NODE_DIR,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert compiled.returncode == 0, compiled.stdout + compiled.stderr


@pytest.mark.skipif(NPM is None, reason="npm is missing: `make test` installs Debian's npm")
def test_npm_would_publish_the_package_with_its_files() -> None:
    assert NPM is not None
    packed = subprocess.run(
        [NPM, "pack", "--dry-run", "--json"],
        cwd=CLIENT_DIR,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    [tarball] = json.loads(packed.stdout)
    package = json.loads((CLIENT_DIR / "package.json").read_text())
    assert tarball["name"] == package["name"] and tarball["version"] == package["version"]
    assert sorted(f["path"] for f in tarball["files"]) == sorted(
        [*package["files"], "package.json"]
    )
