"""The page's vocabulary is service/protocol.py: /static/protocol.js, written from it when
the server starts (service/web/protocol_js.py), exports exactly its members, and the
page's own files keep no copy of them."""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Any, Final

import orjson

from service import protocol
from service.web import protocol_js
from service.web.app import STATIC_DIR
from tests.browser import chromium, requires_chromium
from tests.conftest import Genstream

# One export a line: `export const NAME = Object.freeze(<JSON>);` or `= <JSON>;`.
EXPORT: Final = re.compile(r"export const (\w+) = (?:Object\.freeze\((.+)\)|(.+));")
# Every export of the module as the browser has it, and whether it is frozen.
IMPORT_JS: Final = """async (path) => Object.fromEntries(
  Object.entries(await import(path)).map(([name, value]) => [
    name,
    { value, frozen: Object.isFrozen(value) },
  ]),
)"""


def vocabulary() -> dict[str, Any]:
    """Every public name protocol.py defines, found in the module itself (not through its
    `__all__`), as JSON holds it: a StrEnum as its members by name, a frozenset as its
    sorted values, a string as it is."""
    found: dict[str, Any] = {}
    for name, value in vars(protocol).items():
        if name.startswith("_"):
            continue
        if isinstance(value, type) and value.__module__ == protocol.__name__:
            assert issubclass(value, StrEnum), name
            found[name] = {member.name: member.value for member in value}
        elif isinstance(value, frozenset):
            found[name] = sorted(str(member) for member in value)
        elif isinstance(value, str):
            found[name] = value
    return found


def test_all_names_every_member_of_the_vocabulary() -> None:
    # What the module exports is protocol.__all__: a name left out of it would be missing.
    assert sorted(protocol.__all__) == sorted(vocabulary())
    assert {"EventType", "TERMINAL_TYPES", "GenerationStatus", "CloseReason"} <= set(
        protocol.__all__
    )


async def test_the_served_module_exports_exactly_protocol_py(gs: Genstream) -> None:
    async with gs.http.get(gs.url + protocol_js.PATH) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "text/javascript; charset=utf-8"
        assert response.headers["Cache-Control"] == "no-cache"
        text = await response.text()
    exports: dict[str, Any] = {}
    for line in text.splitlines():
        if line.startswith("//"):
            continue
        match = EXPORT.fullmatch(line)
        assert match is not None, line
        name, frozen, plain = match.groups()
        assert name not in exports, name
        exports[name] = orjson.loads(frozen if frozen is not None else plain)
    assert exports == vocabulary()


@requires_chromium
async def test_the_page_imports_the_module_with_every_member_frozen(gs: Genstream) -> None:
    errors: list[str] = []
    async with chromium() as browser:
        page = await browser.new_page()
        page.on("pageerror", lambda error: errors.append(str(error)))
        await page.goto(gs.url + "/")
        # app.js runs (and marks the body ready) only if every module it imports loaded.
        await page.wait_for_selector("body[data-ready=true]", timeout=20_000)
        exported = await page.evaluate(IMPORT_JS, protocol_js.PATH)
    assert exported == {
        name: {"value": value, "frozen": True} for name, value in vocabulary().items()
    }
    assert errors == []


def test_no_page_file_spells_an_event_type_of_its_own() -> None:
    # Generation statuses are not checked: a message's statuses share some of their words.
    words = [*protocol.EventType, protocol.STREAM_CURSOR]
    # The client module too (client/protocol.js is the vocabulary itself; the .d.ts spells
    # the names as types, held to protocol.py by tests/test_js_client_package.py).
    client = [p for p in sorted((STATIC_DIR / "client").glob("*.js")) if p.name != "protocol.js"]
    for path in [*sorted(STATIC_DIR.glob("*.js")), *client, STATIC_DIR / "index.html"]:
        text = path.read_text()
        quoted = [word for word in words if re.search(f"[\"'`]{re.escape(word)}[\"'`]", text)]
        assert quoted == [], path.name
