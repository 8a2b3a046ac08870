"""The built-in web page at `/`, driven in a real headless Chromium against a real server.

Each test waits on what the page shows (Playwright's expect / wait_for_function, with
timeouts) and ends by comparing the page with what the database holds, read over the API.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import zipfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, Final

import pytest
from playwright.async_api import Browser, BrowserContext, Page, Route, expect
from playwright.async_api import TimeoutError as PlaywrightTimeoutError

from service.protocol import CloseReason
from tests.browser import chromium, requires_chromium
from tests.conftest import Genstream, MakeServer
from tests.proxies import BINARIES, Kind, run_proxy

ARTIFACTS: Final = Path(__file__).resolve().parent.parent / "test-artifacts"
WAIT_MS: Final = 20_000
# Slow enough to act in the middle of a generation (a few seconds for the offline project).
SLOW: Final = {"tokens_per_second": 200}
# A page whose stream failed opens a new one within this (its longest backoff, and more).
RECOVERY_MS: Final = 12_000

pytestmark = requires_chromium

# What the page shows, in the shapes the API uses, so it compares with the database.
SNAPSHOT_JS: Final = """() => ({
  messages: [...document.querySelectorAll("#messages li.message")].map((li) => ({
    id: li.dataset.messageId,
    status: li.dataset.status,
    content: li.querySelector(".body").textContent,
  })),
  files: [...document.querySelectorAll("#tree .file")].map((b) => b.dataset.path).sort(),
  writing: document.querySelectorAll("#tree .file[data-state=writing]").length,
})"""
VIEWER_TEXT_JS: Final = """() => [...document.querySelectorAll("#code .line")]
  .map((line) => line.textContent).join("\\n")"""

# What the debug drawer lists: each event's id and how it came (stream, poll, replay).
DRAWER_ROWS_JS: Final = """rows => rows.map((row) => ({
  id: Number(row.dataset.id),
  via: row.querySelector(".via").textContent,
}))"""

DURATION: Final = re.compile(r"^\d+(\.\d+)? m?s$")

PageFactory = Callable[..., Awaitable[Page]]


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    expect.set_options(timeout=WAIT_MS)
    async with chromium() as browser:
        yield browser


@pytest.fixture
async def new_page(browser: Browser) -> AsyncIterator[PageFactory]:
    """Open a page at a URL in a fresh context (1280x800 unless told otherwise); an
    uncaught script error in any page fails the test."""
    contexts: list[BrowserContext] = []
    errors: list[str] = []

    async def make(url: str, **options: Any) -> Page:
        options.setdefault("viewport", {"width": 1280, "height": 800})
        context = await browser.new_context(**options)
        contexts.append(context)
        page = await context.new_page()
        page.set_default_timeout(WAIT_MS)
        page.on("pageerror", lambda error: errors.append(str(error)))
        await page.goto(url)
        await page.wait_for_selector("body[data-ready=true]")
        return page

    yield make
    for context in contexts:
        await context.close()
    assert errors == []


async def send(page: Page, prompt: str) -> None:
    await page.fill("#prompt", prompt)
    await page.press("#prompt", "Enter")


def assistant(page: Page) -> Any:
    return page.locator("#messages li.message.assistant").last


async def database_view(gs: Genstream, project_id: str) -> dict[str, Any]:
    messages = await gs.json("GET", f"/api/projects/{project_id}/messages")
    files = await gs.json("GET", f"/api/projects/{project_id}/files")
    return {
        "messages": [
            {"id": m["id"], "status": m["status"], "content": m["content"]}
            for m in messages["messages"]
        ],
        "files": sorted(f["path"] for f in files["files"]),
        "writing": 0,
    }


async def expect_page_shows_database(page: Page, gs: Genstream, project_id: str) -> None:
    """Wait until the page shows exactly the database's messages and files."""
    expected = await database_view(gs, project_id)
    try:
        await page.wait_for_function(
            f"(expected) => JSON.stringify(({SNAPSHOT_JS})()) === JSON.stringify(expected)",
            arg=expected,
            timeout=WAIT_MS,
        )
    except PlaywrightTimeoutError:
        assert await page.evaluate(SNAPSHOT_JS) == expected
        raise


async def expect_viewer_shows_file(page: Page, gs: Genstream, project_id: str, path: str) -> None:
    stored = await gs.json("GET", f"/api/projects/{project_id}/files/{path}")
    # The viewer draws one element per line; a final newline does not start another.
    expected = stored["content"].removesuffix("\n")
    await page.locator(f'#tree .file[data-path="{path}"]').click()
    await expect(page.locator("#code")).to_have_attribute("data-path", path)
    try:
        await page.wait_for_function(
            f"(expected) => ({VIEWER_TEXT_JS})() === expected", arg=expected, timeout=WAIT_MS
        )
    except PlaywrightTimeoutError:
        assert await page.evaluate(VIEWER_TEXT_JS) == expected
        raise


def project_of(page: Page) -> str:
    query = page.url.partition("?")[2]
    params = dict(part.split("=", 1) for part in query.split("&") if "=" in part)
    return params["project"]


async def test_prompt_streams_into_the_page_then_matches_the_database(
    make_server: MakeServer, new_page: PageFactory
) -> None:
    # One slot: a generation started first holds it, so the page's one waits, pending.
    gs = await make_server(offline=SLOW, generation={"max_concurrent": 1})
    page = await new_page(gs.url + "/")

    await page.click("#new-project")
    await page.fill("#ask-input", "Word counter")
    await page.click("#ask-ok")
    await expect(page.locator("body")).to_have_attribute("data-project", re.compile("^prj_"))
    project_id = project_of(page)
    assert (await gs.json("GET", f"/api/projects/{project_id}"))["name"] == "Word counter"

    blocker = await gs.generate(await gs.new_project("blocker"), "a slow package")
    await send(page, "a command-line tool that counts words")
    await expect(assistant(page).locator(".body")).to_have_text("Generating code...")
    await expect(page.locator("#prompt")).to_be_disabled()
    await expect(page.locator("#cancel")).to_be_visible()
    await gs.json("POST", f"/api/generations/{blocker['generation']['id']}/cancel")

    # Files appear in the tree and are typed into the viewer, cursor and current line.
    await expect(page.locator("#tree .file[data-state=writing]")).to_have_count(1)
    await expect(page.locator("#code .line.current .caret")).to_have_count(1)
    await expect(page.locator("#stepper .step[data-status=active]")).to_have_attribute(
        "data-stage", "generating"
    )
    await expect(page.locator("#current-file")).to_contain_text("Writing ")
    await expect(assistant(page).locator(".body")).to_contain_text("I'll build")
    # The third file (cli.py, the longest) is being typed: a good moment for a picture.
    await expect(page.locator("#tree .file")).to_have_count(3)
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=ARTIFACTS / "web-page-generating.png")
    # A finished file opens while another is written, and the viewer stays on it.
    code = page.locator("#code")
    await page.locator('#tree .file[data-path="pyproject.toml"]').click()
    await expect(code).to_have_attribute("data-path", "pyproject.toml")
    await expect(code).to_have_attribute("data-state", "done")

    await expect(assistant(page)).to_have_attribute("data-status", "success")
    await expect(code).to_have_attribute("data-path", "pyproject.toml")
    await expect_page_shows_database(page, gs, project_id)
    final = (await database_view(gs, project_id))["messages"][-1]["content"]
    await expect(assistant(page).locator(".body")).to_have_text(final)
    await expect(page.locator("#percent")).to_have_text("100%")
    await expect(page.locator("#stepper .step[data-status=done]")).to_have_count(4)
    await expect(page.locator("#prompt")).to_be_enabled()
    for path in ("pyproject.toml", "README.md"):
        await expect_viewer_shows_file(page, gs, project_id, path)
    await page.screenshot(path=ARTIFACTS / "web-page.png")


async def test_reload_mid_generation_shows_the_same_state_then_the_database(
    make_server: MakeServer, new_page: PageFactory
) -> None:
    gs = await make_server(offline={"tokens_per_second": 100})
    project_id = await gs.new_project("reload")
    page = await new_page(f"{gs.url}/?project={project_id}")
    await send(page, "a small package for tasks")
    await expect(page.locator("#tree .file[data-state=done]")).not_to_have_count(0)

    await page.reload()
    await page.wait_for_selector("body[data-ready=true]")
    # Rebuilt from REST and the generation's replayed events: partial text, a file in
    # progress, the stage; and it carries on streaming.
    await expect(page.locator("body")).to_have_attribute("data-generating", "true")
    await expect(assistant(page).locator(".body")).to_contain_text("I'll build")
    await expect(page.locator("#stepper .step[data-status=active]")).to_have_attribute(
        "data-stage", "generating"
    )
    await expect(page.locator("#tree .file[data-state=writing]")).to_have_count(1)
    await expect(page.locator("#messages li.message")).to_have_count(2)

    await expect(assistant(page)).to_have_attribute("data-status", "success")
    await expect_page_shows_database(page, gs, project_id)
    await expect_viewer_shows_file(page, gs, project_id, "small_package_tasks/core.py")


async def test_cancel_stops_the_generation_and_the_page_shows_the_database(
    make_server: MakeServer, new_page: PageFactory
) -> None:
    # Slower still: the cancel must land while it runs, however busy the machine is.
    gs = await make_server(offline={"tokens_per_second": 50})
    project_id = await gs.new_project("cancel")
    page = await new_page(f"{gs.url}/?project={project_id}")
    await send(page, "a package")
    await expect(page.locator("#tree .file[data-state=writing]")).to_have_count(1)

    await page.click("#cancel")
    await expect(assistant(page)).to_have_attribute("data-status", "cancelled")
    await expect(assistant(page).locator(".status-note")).to_have_text("Cancelled")
    await expect(page.locator("#stepper .step[data-status=stopped]")).to_have_count(1)
    await expect(page.locator("#current-file")).to_have_text("Cancelled")
    await expect(page.locator("#send")).to_be_visible()
    await expect(page.locator("#cancel")).to_be_hidden()
    await expect(page.locator("#prompt")).to_be_enabled()
    # A cancelled generation stores no files: the half-written ones leave the tree.
    await expect_page_shows_database(page, gs, project_id)
    assert (await database_view(gs, project_id))["files"] == []


async def test_debug_drawer_opens_with_the_shortcut_and_lists_every_event(
    gs: Genstream, new_page: PageFactory
) -> None:
    project_id = await gs.new_project("debug")
    page = await new_page(f"{gs.url}/?project={project_id}")
    drawer = page.locator("#debug")
    await expect(drawer).to_be_hidden()

    await page.keyboard.press("Control+Shift+D")
    await expect(drawer).to_be_visible()
    await expect(page.locator("#debug-connection")).to_have_text("Live")
    # One EventSource for the page: the server counts one stream on the project.
    connections = await gs.json("GET", "/api/connections")
    assert connections["by_key"] == {f"project:{project_id}": 1}
    await send(page, "an api")
    await expect(drawer.locator('li[data-type="generation.completed"]')).to_have_count(1)

    stored = [event["id"] for event in await gs.events(project_id)]
    shown = await drawer.locator("#debug-events li").evaluate_all(
        "rows => rows.map((row) => Number(row.dataset.id))"
    )
    assert shown == stored
    row = drawer.locator('#debug-events li[data-type="generation.started"]')
    await row.locator("summary").click()
    started = json.loads(await row.locator("pre.json").text_content() or "")
    assert started["type"] == "generation.started"
    assert started["stages"][0]["id"] == "planning"
    for stage in ("planning", "generating", "validating"):
        cell = drawer.locator(f'#debug-timings tr[data-stage="{stage}"] td')
        await expect(cell).to_have_text(DURATION)

    # Remembered across a reload, closed again by the shortcut, opened by ?debug=true.
    await page.reload()
    await expect(page.locator("#debug")).to_be_visible()
    await page.keyboard.press("Control+Shift+D")
    await expect(page.locator("#debug")).to_be_hidden()
    await page.reload()
    await expect(page.locator("#debug")).to_be_hidden()
    await page.goto(f"{gs.url}/?project={project_id}&debug=true")
    await expect(page.locator("#debug")).to_be_visible()


async def test_script_in_prompt_and_model_output_shows_as_text(
    gs: Genstream, new_page: PageFactory
) -> None:
    project_id = await gs.new_project("xss")
    page = await new_page(f"{gs.url}/?project={project_id}")
    first = "a landing page <script>window.__pwned = 1</script>"
    second = '<img src=x onerror="window.__pwned = 2">'
    # Shift+Enter is a new line in the prompt, not a send; Enter sends.
    await page.fill("#prompt", first)
    await page.press("#prompt", "Shift+Enter")
    await page.locator("#prompt").press_sequentially(second)
    prompt = f"{first}\n{second}"
    await expect(page.locator("#prompt")).to_have_value(prompt)
    assert await page.locator("#messages li.message").count() == 0
    await page.press("#prompt", "Enter")
    await expect(assistant(page)).to_have_attribute("data-status", "success")
    await expect_page_shows_database(page, gs, project_id)

    await expect(page.locator("#messages li.message.user .body")).to_have_text(prompt)
    # The model wrote an HTML file with a <script> tag: the viewer shows it as text.
    await expect_viewer_shows_file(page, gs, project_id, "index.html")
    await expect(page.locator("#code")).to_contain_text('<script src="script.js"></script>')
    assert await page.locator("#messages script, #messages img, #code script").count() == 0
    assert await page.evaluate("typeof window.__pwned") == "undefined"


async def test_stream_drop_shows_reconnecting_then_resumes_without_gap_or_duplicate(
    make_server: MakeServer, new_page: PageFactory
) -> None:
    # retry_ms: the browser's EventSource waits this long before reconnecting.
    gs = await make_server(offline=SLOW, stream={"retry_ms": 100})
    project_id = await gs.new_project("reconnect")
    page = await new_page(f"{gs.url}/?project={project_id}&debug=true")
    await expect(page.locator("#connection")).to_have_text("Live")
    await send(page, "a package")
    await expect(page.locator("#tree .file[data-state=writing]")).to_have_count(1)

    gs.services.broker.close_all(CloseReason.SLOW_CLIENT)
    await expect(page.locator("#debug-connlog li[data-state=reconnecting]")).not_to_have_count(0)
    await expect(page.locator("#debug-connlog li").last).to_have_attribute("data-state", "live")
    await expect(page.locator("#connection")).to_have_text("Live")

    await expect(assistant(page)).to_have_attribute("data-status", "success")
    await expect_page_shows_database(page, gs, project_id)
    # Every stored event reached the page once: the count, and the ids of the rows kept.
    stored = [event["id"] for event in await gs.events(project_id)]
    await expect(page.locator("#debug-count")).to_have_text(f"({len(stored)})")
    shown = await page.locator("#debug-events li").evaluate_all(
        "rows => rows.map((row) => Number(row.dataset.id))"
    )
    assert shown == stored[-len(shown) :]


async def test_stream_drop_reconnects_then_falls_back_to_polling(
    make_server: MakeServer, new_page: PageFactory
) -> None:
    # retry_ms: the browser's EventSource waits this long before reconnecting.
    gs = await make_server(offline=SLOW, stream={"retry_ms": 100})
    project_id = await gs.new_project("fallback")
    page = await new_page(f"{gs.url}/?project={project_id}&debug=true")
    await expect(page.locator("#connection")).to_have_text("Live")
    await send(page, "a package")
    await expect(page.locator("#tree .file[data-state=writing]")).to_have_count(1)

    async def refuse(route: Route) -> None:
        await route.abort()

    # Every new stream fails from now on; the open one is cut by the server.
    await page.route("**/api/projects/*/stream*", refuse)
    gs.services.broker.close_all(CloseReason.SLOW_CLIENT)
    await expect(page.locator("#debug-connlog li[data-state=reconnecting]")).not_to_have_count(0)
    await expect(page.locator("#connection")).to_have_text("Polling every 2 s (stream unavailable)")

    await expect(assistant(page)).to_have_attribute("data-status", "success", timeout=30_000)
    await expect_page_shows_database(page, gs, project_id)
    polled = await page.locator('#debug-events li[data-type="generation.completed"]').text_content()
    assert polled is not None and "poll" in polled


@pytest.mark.skipif(BINARIES[Kind.NGINX] is None, reason="nginx is not installed (make test does)")
async def test_page_behind_nginx_reopens_its_stream_after_the_502s_of_a_restart(
    tmp_path: Path, make_server: MakeServer, new_page: PageFactory
) -> None:
    # retry_ms: the browser waits this long after the shutdown's goodbye to reconnect.
    fast_retry = {"retry_ms": 200}
    first = await make_server(stream=fast_retry)
    port = first.server.port
    project_id = await first.new_project("restart")
    stream = f"/api/projects/{project_id}/stream"
    async with run_proxy(Kind.NGINX, tmp_path / "nginx", port, page=True) as nginx:
        page = await new_page(f"{nginx.url}/?project={project_id}&debug=true")
        await expect(page.locator("#connection")).to_have_text("Live")

        await first.server.stop()
        # The stream's reconnects reach nginx, which cannot reach genstream: 502, which
        # closes an EventSource for good. Two of them (with the goodbye, three failures in
        # a row: the page used to poll from there and try the stream once a minute).
        await nginx.answered(502, stream, count=2, timeout=WAIT_MS / 1000)
        assert await page.locator("#connection").text_content() != "Live"

        second = await make_server(port=port, stream=fast_retry)
        # The page opens a new EventSource by itself, within seconds.
        await expect(page.locator("#connection")).to_have_text("Live", timeout=RECOVERY_MS)
        connections = await second.json("GET", "/api/connections")
        assert connections["by_key"] == {f"project:{project_id}": 1}
        submitted = await second.generate(project_id, "a todo api")
        drawer = page.locator("#debug-events")
        await expect(drawer.locator('li[data-type="generation.completed"]')).to_have_count(1)
        await expect_page_shows_database(page, second, project_id)

        stored = await second.events(project_id)
        assert {e["generation_id"] for e in stored} == {submitted["generation"]["id"]}
        # Every stored event reached the page once, on the reopened stream.
        await expect(page.locator("#debug-count")).to_have_text(f"({len(stored)})")
        shown = await drawer.locator("li").evaluate_all(DRAWER_ROWS_JS)
        assert shown == [{"id": e["id"], "via": "stream"} for e in stored][-len(shown) :]
        # nginx's log: the first stream, ended by the shutdown, then only 502s (the open
        # stream is logged when it ends).
        statuses = [status for status, _, uri in nginx.access_log() if uri.startswith(stream)]
        assert statuses[0] == 200 and set(statuses[1:]) == {502}, statuses


async def test_token_is_asked_once_and_kept_for_the_session(
    make_server: MakeServer, browser: Browser
) -> None:
    token = "s3cret-token"
    gs = await make_server(auth={"token": token})
    context = await browser.new_context(viewport={"width": 1280, "height": 800})
    try:
        page = await context.new_page()
        page.set_default_timeout(WAIT_MS)
        await page.goto(gs.url + "/")
        dialog = page.locator("#ask")
        await expect(dialog).to_be_visible()
        await page.fill("#ask-input", "wrong")
        await page.click("#ask-ok")
        await expect(page.locator("#ask-text")).to_contain_text("not accepted")
        await page.fill("#ask-input", token)
        await page.click("#ask-ok")
        await page.wait_for_selector("body[data-ready=true]")
        assert await page.evaluate("sessionStorage.getItem('genstream.token')") == token

        await send(page, "a cli")  # no project yet: the page creates one
        await expect(assistant(page)).to_have_attribute("data-status", "success")
        await expect(page.locator("#connection")).to_have_text("Live")
        await page.reload()
        await page.wait_for_selector("body[data-ready=true]")
        await expect(dialog).to_be_hidden()
        await expect(page.locator("#messages li.message")).to_have_count(2)
    finally:
        await context.close()


async def test_page_fits_a_phone_screen_in_dark_mode(gs: Genstream, new_page: PageFactory) -> None:
    project_id = await gs.new_project("phone")
    await gs.wait_generation((await gs.generate(project_id, "a landing page"))["generation"]["id"])
    page = await new_page(
        f"{gs.url}/?project={project_id}",
        viewport={"width": 390, "height": 844},
        color_scheme="dark",
        is_mobile=True,
        has_touch=True,
    )
    await expect_page_shows_database(page, gs, project_id)
    await expect(page.locator("#percent")).to_have_text("100%")
    # Nothing wider than the screen: no sideways scrolling.
    assert await page.evaluate(
        "document.documentElement.scrollWidth <= document.documentElement.clientWidth"
    )
    background = await page.evaluate("getComputedStyle(document.body).backgroundColor")
    red, green, blue = (int(part) for part in background[4:-1].split(",")[:3])
    assert red + green + blue < 150, background
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=ARTIFACTS / "web-page-phone-dark.png", full_page=True)


async def test_the_viewer_highlights_code_while_typing_it_from_the_vendored_prism(
    make_server: MakeServer, new_page: PageFactory
) -> None:
    gs = await make_server(offline=SLOW)
    project_id = await gs.new_project("highlight")
    page = await new_page(f"{gs.url}/?project={project_id}")
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    await page.reload()
    await page.wait_for_selector("body[data-ready=true]")
    await send(page, "a todo api")
    # While a Python file is typed: its tokens highlighted, the cursor on its current line.
    code = page.locator("#code")
    await expect(code).to_have_attribute("data-language", "python")
    await expect(code).to_have_attribute("data-state", "writing")
    await expect(page.locator("#code .line.current .caret")).to_have_count(1)
    await expect(page.locator("#code .tok-keyword").first).to_be_visible()
    await expect(assistant(page)).to_have_attribute("data-status", "success")
    path = "app/main.py"
    await page.locator(f'#tree .file[data-path="{path}"]').click()
    await expect_viewer_shows_file(page, gs, project_id, path)
    keywords = await page.locator("#code .tok-keyword").all_text_contents()
    assert {"def", "import", "return"} <= set(keywords), keywords
    assert await page.locator("#code .tok-string").count() > 0
    # Each piece is a text node in a span: no element but the line's spans and the caret.
    tags = await page.evaluate(
        "[...new Set([...document.querySelectorAll('#code *')].map((n) => n.tagName))]"
    )
    assert tags == ["SPAN"], tags
    # The highlighter came from genstream, like everything else the page loaded.
    assert f"{gs.url}/static/vendor/prism.js" in requested
    assert all(url.startswith(gs.url) for url in requested), requested


async def test_the_console_exports_the_session_and_shows_usage_and_a_timeline(
    gs: Genstream, new_page: PageFactory
) -> None:
    project_id = await gs.new_project("console")
    page = await new_page(f"{gs.url}/?project={project_id}&debug=true", accept_downloads=True)
    await send(page, "an api")
    drawer = page.locator("#debug")
    await expect(drawer.locator('li[data-type="generation.completed"]')).to_have_count(1)
    stored = await gs.events(project_id)
    generation = await gs.json("GET", f"/api/generations/{stored[-1]['generation_id']}")

    async with page.expect_download() as info:
        await page.click("#debug-export")
    download = await info.value
    assert download.suggested_filename.endswith(".jsonl")
    saved = await download.path()
    text = await asyncio.to_thread(Path(saved).read_text)
    lines = [json.loads(line) for line in text.splitlines()]
    events = [line for line in lines if line["kind"] == "event"]
    assert [line["event"] for line in events] == stored
    assert {line["via"] for line in events} == {"stream"}
    states = [line["state"] for line in lines if line["kind"] == "connection"]
    assert states[:2] == ["connecting", "live"], states

    usage = generation["usage"]
    cell = drawer.locator("#debug-usage tr", has_text="Completion tokens").locator("td")
    await expect(cell).to_have_text(str(usage["completion_tokens"]))
    tokens_per_second = f"{generation['timings']['tokens_per_second']:.1f}"
    await expect(drawer.locator("#debug-usage tr", has_text="Tokens/s").locator("td")).to_have_text(
        tokens_per_second
    )
    # The timeline: a row per type, each counting that type's events of the generation.
    counts: dict[str, int] = {}
    for event in stored:
        counts[event["type"]] = counts.get(event["type"], 0) + 1
    rows = await drawer.locator("#debug-timeline li").evaluate_all(
        "rows => rows.map((row) => [row.dataset.series, Number(row.lastElementChild.textContent)])"
    )
    assert dict(rows) == counts


async def test_the_time_remaining_shows_once_earlier_generations_give_it_a_basis(
    make_server: MakeServer, new_page: PageFactory
) -> None:
    gs = await make_server(offline=SLOW)
    project_id = await gs.new_project("eta")
    page = await new_page(f"{gs.url}/?project={project_id}")
    eta = page.locator("#eta")
    # The project's first generation: nothing to base an estimate on.
    await send(page, "a todo api")
    await expect(page.locator("#tree .file[data-state=writing]")).to_have_count(1)
    await expect(eta).to_be_hidden()
    await expect(assistant(page)).to_have_attribute("data-status", "success")
    await expect(eta).to_be_hidden()

    # The second, after a reload (the first's stage times read from the API): an estimate
    # while it runs, that goes down, and none once it has ended.
    await page.reload()
    await page.wait_for_selector("body[data-ready=true]")
    await send(page, "a todo api")
    await expect(eta).to_have_text(re.compile(r"^about \d+ s left$"))
    first = int((await eta.text_content() or "").split()[1])
    await expect(eta).to_have_text(re.compile(r"^(about \d+ s left|almost done)$"))
    await page.wait_for_function(
        "(first) => { const t = document.querySelector('#eta').textContent;"
        " return t === 'almost done' || Number(t.split(' ')[1]) < first; }",
        arg=first,
    )
    await expect(assistant(page)).to_have_attribute("data-status", "success")
    await expect(eta).to_be_hidden()


async def test_the_project_downloads_as_a_zip_of_the_stored_files(
    gs: Genstream, new_page: PageFactory
) -> None:
    project_id = await gs.new_project("zip")
    page = await new_page(f"{gs.url}/?project={project_id}", accept_downloads=True)
    await expect(page.locator("#download")).to_be_hidden()
    await send(page, "a landing page")
    await expect(assistant(page)).to_have_attribute("data-status", "success")
    async with page.expect_download() as info:
        await page.click("#download")
    download = await info.value
    assert download.suggested_filename == f"{project_id}.zip"
    saved = await download.path()
    body = await asyncio.to_thread(Path(saved).read_bytes)
    unpacked = zipfile.ZipFile(io.BytesIO(body))
    files = (await gs.json("GET", f"/api/projects/{project_id}/files"))["files"]
    assert sorted(unpacked.namelist()) == sorted(f["path"] for f in files)
    for file in files:
        stored = await gs.json("GET", f"/api/projects/{project_id}/files/{file['path']}")
        assert unpacked.read(file["path"]).decode() == stored["content"]
