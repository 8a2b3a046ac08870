"""README "Embedding": its example page, the block under `<!-- embedding-example -->`,
pasted as it is into an app's page at genstream's origin (as behind the proxy), in
Chromium."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Final

import pytest
from playwright.async_api import Browser, Page, Route, expect

from tests.browser import chromium, requires_chromium
from tests.conftest import Genstream, MakeServer

README: Final = Path(__file__).resolve().parent.parent / "README.md"
WAIT_MS: Final = 20_000

pytestmark = requires_chromium


def example_page() -> str:
    text = README.read_text()
    found = re.search(r"<!-- embedding-example -->\n```html\n(.*?)```", text, re.DOTALL)
    assert found is not None, "README has no embedding example"
    return found.group(1)


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    expect.set_options(timeout=WAIT_MS)
    async with chromium() as browser:
        yield browser


async def open_example(browser: Browser, gs: Genstream, project_id: str) -> Page:
    page = await (await browser.new_context()).new_page()
    page.set_default_timeout(WAIT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    html = example_page()

    async def serve(route: Route) -> None:
        await route.fulfill(body=html, content_type="text/html")

    await page.route(f"{gs.url}/app*", serve)
    await page.goto(f"{gs.url}/app?project={project_id}")
    await expect(page.locator("#status")).to_have_text("idle")
    assert errors == []
    return page


async def test_the_readme_example_page_streams_a_generation(
    gs: Genstream, browser: Browser
) -> None:
    project_id = await gs.new_project()
    page = await open_example(browser, gs, project_id)
    await page.click("#ask button")
    await expect(page.locator("#status")).to_have_text(re.compile("^done: Wrote "))
    events = await gs.events(project_id)
    deltas = "".join(e["delta"] for e in events if e["type"] == "message.delta")
    assert await page.text_content("#text") == deltas
    started = [e["path"] for e in events if e["type"] == "file.started"]
    assert await page.locator("#files li").all_text_contents() == list(dict.fromkeys(started))
    await page.context.close()


async def test_the_readme_example_page_stops_a_generation(
    make_server: MakeServer, browser: Browser
) -> None:
    gs = await make_server(offline={"tokens_per_second": 100})
    project_id = await gs.new_project()
    page = await open_example(browser, gs, project_id)
    await page.click("#ask button")
    await expect(page.locator("#text")).not_to_be_empty()
    await page.click("#stop")
    await expect(page.locator("#status")).to_have_text("stopped: the generation was cancelled")
    events = await gs.events(project_id)
    assert events[-1]["type"] == "generation.cancelled"
    await page.context.close()
