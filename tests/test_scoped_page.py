"""Scoped tokens in Chromium (issue 17): the built-in page holding a read token for A
streams A and is refused B, saying why; an app on a second loopback port (another
origin) reads the API and streams with `withCredentials` through CORS."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Final

import orjson
import pytest
from aiohttp import web
from playwright.async_api import Browser, expect

from tests.browser import chromium, requires_chromium
from tests.conftest import LOOPBACK, Genstream, MakeServer
from tests.tokens import AUTH, MASTER, bearer, sign

pytestmark = requires_chromium

WAIT_MS: Final = 15_000
TOKEN_KEY: Final = "genstream.token"


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    expect.set_options(timeout=WAIT_MS)
    async with chromium() as browser:
        yield browser


async def two_projects(gs: Genstream) -> tuple[str, str]:
    master = bearer(MASTER)
    a = (await gs.json("POST", "/api/projects", 201, json={"name": "A"}, headers=master))["id"]
    b = (await gs.json("POST", "/api/projects", 201, json={"name": "B"}, headers=master))["id"]
    return a, b


async def test_the_page_with_a_read_token_for_a_streams_a_and_is_refused_b(
    make_server: MakeServer, browser: Browser
) -> None:
    gs = await make_server(auth=AUTH)
    a, b = await two_projects(gs)
    context = await browser.new_context(viewport={"width": 1280, "height": 800})
    # The token an app would hand the page, where the page keeps it.
    await context.add_init_script(f"sessionStorage.setItem({TOKEN_KEY!r}, {sign([a])!r})")
    try:
        page = await context.new_page()
        page.set_default_timeout(WAIT_MS)
        await page.goto(f"{gs.url}/?project={a}")
        await page.wait_for_selector("body[data-ready=true]")
        await expect(page.locator("#connection")).to_have_text("Live")
        # A generation the app's server started in A streams into the page.
        path = f"/api/projects/{a}/generations"
        await gs.json("POST", path, 202, json={"prompt": "a cli"}, headers=bearer(MASTER))
        last = page.locator("#messages li.message.assistant").last
        await expect(last).to_have_attribute("data-status", "success")
        await expect(page.locator("#ask")).to_be_hidden()
        # B is outside the token's scope: said so, and no token is asked for.
        await page.goto(f"{gs.url}/?project={b}")
        await page.wait_for_selector("body[data-ready=true]")
        await expect(page.locator("#composer-note")).to_contain_text("outside its scope")
        await expect(page.locator("#ask")).to_be_hidden()
    finally:
        await context.close()


async def test_the_page_with_an_expired_token_says_it_expired(
    make_server: MakeServer, browser: Browser
) -> None:
    gs = await make_server(auth=AUTH)
    a, _ = await two_projects(gs)
    context = await browser.new_context()
    expired = sign([a], expires_in=-60)
    await context.add_init_script(f"sessionStorage.setItem({TOKEN_KEY!r}, {expired!r})")
    try:
        page = await context.new_page()
        page.set_default_timeout(WAIT_MS)
        await page.goto(f"{gs.url}/?project={a}")
        await expect(page.locator("#ask")).to_be_visible()
        await expect(page.locator("#ask-text")).to_contain_text("expired")
        await page.fill("#ask-input", sign([a]))
        await page.click("#ask-ok")
        await page.wait_for_selector("body[data-ready=true]")
        await expect(page.locator("#connection")).to_have_text("Live")
    finally:
        await context.close()


# The app's own page, on another origin: a fetch with the token in its header (a
# preflight), then an EventSource withCredentials, each result in window.results.
APP_PAGE: Final = """<!doctype html><meta charset="utf-8"><title>app</title>
<script type="module">
const api = %(api)s, token = %(token)s, project = %(project)s;
window.results = {};
try {
  const answer = await fetch(`${api}/api/projects/${project}/messages`, {
    headers: {Authorization: `Bearer ${token}`}, credentials: "include"});
  window.results.fetch = answer.status;
} catch (error) { window.results.fetch = String(error); }
const source = new EventSource(
  `${api}/api/projects/${project}/stream?last_event_id=0&token=${token}`, {withCredentials: true});
source.addEventListener("stream.cursor", () => {});
source.onopen = () => { window.results.stream = "open"; source.close(); };
source.onerror = () => { window.results.stream ??= "error"; source.close(); };
</script>"""


async def app_server(page: dict[str, str]) -> tuple[web.AppRunner, str]:
    """The app's own server: `/` answers page["html"], read when asked (the page names
    genstream's address, known only once that server runs)."""

    async def index(request: web.Request) -> web.Response:
        return web.Response(text=page["html"], content_type="text/html")

    app = web.Application()
    app.router.add_get("/", index)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, LOOPBACK, 0).start()
    return runner, f"http://{LOOPBACK}:{runner.addresses[0][1]}"


@pytest.mark.parametrize("listed", [True, False], ids=["origin listed", "origin not listed"])
async def test_an_app_on_another_origin_reads_and_streams_through_cors(
    make_server: MakeServer, browser: Browser, listed: bool
) -> None:
    page_html = {"html": ""}
    runner, origin = await app_server(page_html)
    try:
        origins = origin if listed else "http://127.0.0.1:1"
        gs = await make_server(auth=AUTH, server={"cors_origins": origins})
        a, _ = await two_projects(gs)
        values: dict[str, Any] = {"api": gs.url, "token": sign([a]), "project": a}
        page_html["html"] = APP_PAGE % {k: orjson.dumps(v).decode() for k, v in values.items()}
        page = await browser.new_page()
        page.set_default_timeout(WAIT_MS)
        await page.goto(origin + "/")
        await page.wait_for_function(
            "() => window.results && 'fetch' in window.results && 'stream' in window.results"
        )
        results = await page.evaluate("() => window.results")
        if listed:
            assert results == {"fetch": 200, "stream": "open"}
        else:  # the browser refuses both: no Access-Control-Allow-Origin for this origin
            assert results["fetch"] != 200 and results["stream"] == "error"
        await page.close()
    finally:
        await runner.cleanup()
