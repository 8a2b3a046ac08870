"""The browser's six connections per host: over HTTP/1.1 a page with six open streams
cannot make a seventh request; through each proxy's HTTPS recipe (HTTP/2, every stream on
one connection) seven EventSources and a fetch all run at once. Debian's Chromium through
Playwright (tests/browser.py), against real proxies on loopback ports."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Final

import pytest
from playwright.async_api import Browser, Page
from playwright.async_api import TimeoutError as PlaywrightTimeoutError

from service.eventlog import event as ev
from tests.browser import chromium, requires_chromium
from tests.conftest import Genstream, MakeServer
from tests.proxies import BINARIES, OPENSSL, Kind, make_certificate, run_proxy

WAIT_MS: Final = 20_000
# Chromium's limit of connections per host over HTTP/1.1 (net::ClientSocketPoolManager).
CONNECTIONS_PER_HOST: Final = 6
STREAMS: Final = CONNECTIONS_PER_HOST + 1
# How long a request that cannot get a connection is watched, to show it does not answer.
STALL_MS: Final = 1_500

pytestmark = [
    requires_chromium,
    pytest.mark.skipif(OPENSSL is None, reason="openssl is missing (make test)"),
]

# Open `count` EventSources on the project's stream from `cursor`; each keeps the events
# it receives, by type, in window.received[i]; window.opened counts the open ones.
OPEN_STREAMS_JS: Final = """({url, count, types}) => {
  window.received = [];
  window.opened = 0;
  window.sources = [];
  for (let i = 0; i < count; i++) {
    const events = [];
    const source = new EventSource(url);
    source.addEventListener("open", () => { window.opened += 1; }, {once: true});
    for (const type of types) {
      source.addEventListener(type, (message) => events.push(JSON.parse(message.data)));
    }
    window.received.push(events);
    window.sources.push(source);
  }
}"""
# Start a request on the page's origin; window.answer is its status once it answers.
FETCH_JS: Final = """({path, body}) => {
  window.answer = null;
  const init = body === null ? {} : {
    method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body),
  };
  fetch(path, init).then((response) => { window.answer = response.status; });
}"""
ALL_ENDED_JS: Final = """(end) => window.received.length > 0
  && window.received.every((events) => events.some((event) => event.type === end))"""
# The protocol each API request of the page went over (a stream shows once closed).
PROTOCOLS_JS: Final = """() => [
  ...performance.getEntriesByType("navigation"), ...performance.getEntriesByType("resource"),
].map((entry) => [new URL(entry.name).pathname, entry.nextHopProtocol])
  .filter(([path]) => path.startsWith("/api/"))"""
STREAM_ENTRIES_JS: Final = """() => performance.getEntriesByType("resource")
  .filter((entry) => new URL(entry.name).pathname.endsWith("/stream")).length"""


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with chromium() as browser:
        yield browser


async def open_page(browser: Browser, url: str) -> Page:
    # The certificate is self-signed: the browser is told to take it.
    context = await browser.new_context(ignore_https_errors=True)
    page = await context.new_page()
    page.set_default_timeout(WAIT_MS)
    response = await page.goto(url)
    assert response is not None and response.status == 200
    return page


async def open_streams(page: Page, gs: Genstream, project_id: str, count: int) -> int:
    """Open `count` EventSources on the project from its newest event: that cursor."""
    cursor: int = (await gs.json("GET", f"/api/projects/{project_id}"))["last_event_id"]
    url = f"/api/projects/{project_id}/stream?last_event_id={cursor}"
    await page.evaluate(
        OPEN_STREAMS_JS, {"url": url, "count": count, "types": sorted(ev.ALL_TYPES)}
    )
    return cursor


async def protocols(page: Page) -> list[Any]:
    return list(await page.evaluate(PROTOCOLS_JS))


@pytest.mark.parametrize(
    "kind",
    [
        pytest.param(
            kind,
            id=str(kind),
            marks=pytest.mark.skipif(BINARIES[kind] is None, reason=f"{kind} is not installed"),
        )
        for kind in Kind
    ],
)
async def test_seven_streams_and_a_fetch_share_one_origin_over_http2(
    kind: Kind, tmp_path: Path, make_server: MakeServer, browser: Browser
) -> None:
    gs = await make_server()
    certificate = make_certificate(tmp_path / "tls")
    async with run_proxy(kind, tmp_path / str(kind), gs.server.port, certificate=certificate) as p:
        project_id = await gs.new_project()
        page = await open_page(browser, f"{p.url}/api/projects/{project_id}")
        cursor = await open_streams(page, gs, project_id, STREAMS)
        await page.wait_for_function(f"() => window.opened === {STREAMS}")
        connections = await gs.json("GET", "/api/connections")
        assert connections["by_key"] == {f"project:{project_id}": STREAMS}
        # With seven streams open, the page can still talk to the API: it submits.
        body = {"prompt": "a todo api"}
        submit = {"path": f"/api/projects/{project_id}/generations", "body": body}
        await page.evaluate(FETCH_JS, submit)
        await page.wait_for_function("() => window.answer !== null")
        assert await page.evaluate("window.answer") == 202
        await page.wait_for_function(ALL_ENDED_JS, arg=ev.GENERATION_COMPLETED)

        received = await page.evaluate("window.received")
        await page.evaluate("window.sources.forEach((source) => source.close())")
        stored = await gs.events(project_id, after=cursor)
        assert len(received) == STREAMS
        for events in received:
            assert events == stored
        # Every request went over HTTP/2: the page, the submit, the streams once closed.
        await page.wait_for_function(f"() => ({STREAM_ENTRIES_JS})() === {STREAMS}")
        seen = await protocols(page)
        assert {protocol for _, protocol in seen} == {"h2"}, seen
        paths = sorted(path.rpartition("/")[2] for path, _ in seen)
        assert paths == ["generations", project_id] + ["stream"] * STREAMS, seen


async def test_over_http1_six_open_streams_stall_the_next_request(
    make_server: MakeServer, browser: Browser
) -> None:
    """Why the HTTPS recipes: without HTTP/2 the seventh request of a page waits for one
    of its six connections, all held by streams."""
    gs = await make_server()
    project_id = await gs.new_project()
    page = await open_page(browser, f"{gs.url}/api/projects/{project_id}")
    await open_streams(page, gs, project_id, CONNECTIONS_PER_HOST)
    await page.wait_for_function(f"() => window.opened === {CONNECTIONS_PER_HOST}")
    await page.evaluate(FETCH_JS, {"path": f"/api/projects/{project_id}", "body": None})
    # A bounded watch, long against a loopback answer (milliseconds): no answer comes.
    with pytest.raises(PlaywrightTimeoutError):
        await page.wait_for_function("() => window.answer !== null", timeout=STALL_MS)
    # One stream closed frees its connection, and the request that waited goes through.
    await page.evaluate("window.sources[0].close()")
    await page.wait_for_function("() => window.answer !== null")
    assert await page.evaluate("window.answer") == 200
    await page.evaluate("window.sources.forEach((source) => source.close())")
    assert {protocol for _, protocol in await protocols(page)} == {"http/1.1"}
