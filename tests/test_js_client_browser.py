"""The JavaScript client and its React hook in Chromium, loaded as an app would: ES modules
and an import map, no bundler, against a real server.

The app's page is served at `<origin>/embed` by Playwright's routing (same origin as
genstream, or as the faulty proxy in front of it); `/vendor/` is React from the npm
registry (tests/node, pinned by its lockfile, `make node-deps`): its UMD builds, and two
one-line modules that hand their globals to the import map's `react` and
`react-dom/client`. Each test ends by comparing what the page got with the database.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Final

import pytest
from playwright.async_api import Browser, Page, Route

from tests.browser import chromium, requires_chromium
from tests.conftest import Genstream, MakeServer
from tests.helpers import wait_until
from tests.proxy import Faults, faulty_proxy

NODE_MODULES: Final = Path(__file__).resolve().parent / "node" / "node_modules"
WAIT_MS: Final = 20_000
SLOW: Final = {"tokens_per_second": 300}
VENDOR_FILES: Final = {
    "react.js": NODE_MODULES / "react" / "umd" / "react.development.js",
    "react-dom.js": NODE_MODULES / "react-dom" / "umd" / "react-dom.development.js",
}
VENDOR_MODULES: Final = {
    "react.mjs": "const R = window.React; export default R;\n"
    "export const { useCallback, useEffect, useMemo, useRef, useState, createElement } = R;\n",
    "react-dom-client.mjs": "export const { createRoot } = window.ReactDOM;\n",
}
IMPORTS: Final = {
    "react": "/vendor/react.mjs",
    "react-dom/client": "/vendor/react-dom-client.mjs",
    "@genstream/client": "/static/client/genstream.js",
    "@genstream/client/react": "/static/client/react.js",
}
EMBED_PAGE: Final = f"""<!doctype html><meta charset="utf-8"><title>an app</title>
<script type="importmap">{json.dumps({"imports": IMPORTS})}</script>
<script src="/vendor/react.js"></script>
<script src="/vendor/react-dom.js"></script>
<div id="root"></div>
<script type="module">
window.genstream = await import("@genstream/client");
window.genstreamReact = await import("@genstream/client/react");
document.body.dataset.ready = "true";
</script>"""

pytestmark = [
    requires_chromium,
    pytest.mark.skipif(
        not VENDOR_FILES["react.js"].is_file(),
        reason="tests/node/node_modules has no react: `make node-deps` installs it",
    ),
]


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with chromium() as browser:
        yield browser


async def app_page(browser: Browser, origin: str) -> Page:
    """The app's page at `origin`/embed, with the client and React imported."""
    context = await browser.new_context()
    page = await context.new_page()
    page.set_default_timeout(WAIT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))

    async def embed(route: Route) -> None:
        await route.fulfill(body=EMBED_PAGE, content_type="text/html")

    async def vendor(route: Route) -> None:
        name = route.request.url.rsplit("/", 1)[1]
        if name in VENDOR_FILES:
            await route.fulfill(path=VENDOR_FILES[name], content_type="text/javascript")
        else:
            await route.fulfill(body=VENDOR_MODULES[name], content_type="text/javascript")

    await page.route(f"{origin}/embed", embed)
    await page.route(f"{origin}/vendor/*", vendor)
    await page.goto(f"{origin}/embed")
    await page.wait_for_selector("body[data-ready=true]", state="attached")
    assert errors == []
    return page


def only(events: list[dict[str, Any]], generation_id: str) -> list[dict[str, Any]]:
    return [e for e in events if e["generation_id"] == generation_id]


GENERATE_JS: Final = """async ({projectId}) => {
  const client = genstream.createClient();
  const got = { events: [], created: [], deltas: "", files: 0, stages: 0, states: [] };
  const run = await client.generate(projectId, "a todo api", {
    onEvent: (event) => got.events.push(event),
    onMessageCreated: (message) => got.created.push(message.role),
    onDelta: (delta) => { got.deltas += delta; },
    onFile: () => { got.files += 1; },
    onStage: () => { got.stages += 1; },
    onState: (state) => got.states.push(state),
  });
  got.id = run.id;
  got.done = (await run.done).type;
  return got;
}"""


async def test_the_module_in_a_page_through_a_proxy_that_cuts_streams(
    make_server: MakeServer, browser: Browser
) -> None:
    gs = await make_server(offline=SLOW, stream={"retry_ms": 100})
    project_id = await gs.new_project()
    # Chromium's EventSource reconnects by itself; the proxy sends those Last-Event-ID: 0,
    # so the client must drop what it has already delivered.
    faults = Faults(cut_stream_after=3000, cut_streams=5, replay_from_zero=True)
    async with faulty_proxy(gs.url, faults) as (proxy_url, proxy):
        page = await app_page(browser, proxy_url)
        got = await page.evaluate(GENERATE_JS, {"projectId": project_id})
        assert proxy.seen.cut >= 2, proxy.seen
        await page.context.close()
    stored = only(await gs.events(project_id), got["id"])
    ids = [e["id"] for e in got["events"]]
    assert len(ids) == len(set(ids)), "an event delivered twice"
    assert got["events"] == stored
    assert got["done"] == "generation.completed"
    assert got["created"] == ["user", "assistant"]
    assert got["deltas"] == "".join(e["delta"] for e in stored if e["type"] == "message.delta")
    assert got["files"] == sum(e["type"].startswith("file.") for e in stored)
    assert got["states"].count("live") >= 2


STREAM_JS: Final = """async ({projectId, after, count}) => {
  const client = genstream.createClient();
  const controller = new AbortController();
  const got = [];
  const events = client.stream(projectId, { lastEventId: after, signal: controller.signal });
  for await (const event of events) {
    got.push(event);
    if (got.length === count) controller.abort();
  }
  return got;
}"""


async def test_the_stream_iterator_in_a_page_ends_on_abort(gs: Genstream, browser: Browser) -> None:
    project_id = await gs.new_project()
    await gs.wait_generation((await gs.generate(project_id))["generation"]["id"])
    stored = await gs.events(project_id)
    page = await app_page(browser, gs.url)
    got = await page.evaluate(
        STREAM_JS, {"projectId": project_id, "after": stored[2]["id"], "count": 10}
    )
    assert got == stored[3:13]
    # The abort closed the stream.
    await wait_until(lambda: gs.services.connections.total == 0, 10)
    await page.context.close()


# A component on the hook: window.hook is its latest render's value; window.unmount() ends it.
HOOK_APP_JS: Final = """({projectId}) => {
  const { createElement: h } = window.React;
  const { createRoot } = window.ReactDOM;
  const client = genstream.createClient();
  function App() {
    const generation = genstreamReact.useGeneration(client, projectId);
    window.hook = generation;
    window.renders = (window.renders ?? 0) + 1;
    return h("div", null,
      h("span", { id: "status" }, generation.status),
      h("pre", { id: "text" }, generation.text));
  }
  const root = createRoot(document.getElementById("root"));
  root.render(h(App));
  window.unmount = () => root.unmount();
}"""


async def hook_app(browser: Browser, gs: Genstream, project_id: str) -> Page:
    page = await app_page(browser, gs.url)
    await page.evaluate(HOOK_APP_JS, {"projectId": project_id})
    await page.wait_for_function("window.hook && window.hook.status === 'idle'")
    return page


async def test_the_react_hook_follows_a_generation_to_the_database(
    make_server: MakeServer, browser: Browser
) -> None:
    gs = await make_server(offline=SLOW)
    project_id = await gs.new_project()
    page = await hook_app(browser, gs, project_id)
    await page.evaluate("() => { window.hook.generate('a todo api'); }")
    await page.wait_for_function("window.hook.status === 'running'")
    await page.wait_for_function("window.hook.status === 'completed'")
    hook = await page.evaluate(
        "() => ({ ...window.hook, generate: undefined, cancel: undefined, reset: undefined })"
    )
    messages = (await gs.json("GET", f"/api/projects/{project_id}/messages"))["messages"]
    assert hook["text"] == messages[-1]["content"]
    assert await page.text_content("#text") == messages[-1]["content"]
    assert [m["id"] for m in hook["messages"]] == [m["id"] for m in messages]
    files = (await gs.json("GET", f"/api/projects/{project_id}/files"))["files"]
    assert sorted(hook["files"]) == sorted(f["path"] for f in files)
    for file in files:
        stored = await gs.json("GET", f"/api/projects/{project_id}/files/{file['path']}")
        assert hook["files"][file["path"]]["content"] == stored["content"], file["path"]
        assert hook["files"][file["path"]]["writing"] is False
    generation = await gs.json("GET", f"/api/generations/{hook['generationId']}")
    assert hook["usage"] == generation["usage"] and hook["progress"] == 100
    assert hook["lastEventId"] == (await gs.events(project_id))[-1]["id"]
    await page.context.close()


async def test_the_react_hook_cancels_and_unmounting_closes_its_stream(
    make_server: MakeServer, browser: Browser
) -> None:
    # Slow: the second generation is still running well after the unmount.
    gs = await make_server(offline={"tokens_per_second": 50})
    project_id = await gs.new_project()
    page = await hook_app(browser, gs, project_id)
    await page.evaluate("() => { window.hook.generate('a todo api'); }")
    await page.wait_for_function("window.hook.text.length > 0")
    await page.evaluate("() => window.hook.cancel()")
    await page.wait_for_function("window.hook.status === 'cancelled'")
    generation = await gs.json(
        "GET", f"/api/generations/{await page.evaluate('window.hook.generationId')}"
    )
    assert generation["status"] == "cancelled"

    # A second generation, followed, then the component unmounted: the stream closes and
    # the generation goes on to its end.
    await page.evaluate("() => { window.hook.generate('a landing page'); }")
    await page.wait_for_function("window.hook.text.length > 0")
    assert gs.services.connections.total == 1
    second = await page.evaluate("window.hook.generationId")
    await page.evaluate("() => window.unmount()")
    await wait_until(lambda: gs.services.connections.total == 0, 10)
    # Closed by the unmount, not by the generation's end: it is still running.
    assert (await gs.json("GET", f"/api/generations/{second}"))["status"] == "running"
    await page.context.close()
