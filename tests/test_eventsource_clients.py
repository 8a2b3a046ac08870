"""Real EventSource clients that drop before their first event (issue 10, part 2).

A project stream opened with no cursor while the project is quiet gives the client no id
to resume from; the server then stays down longer than `retry:` and a generation starts
the moment it is back. The client reconnects by itself, and must still receive every
event of the project after the one its first connection started at: once each, in order.
Two clients: the npm `eventsource` package in Node (`tests/node/follow.mjs`, pinned by
`tests/node/package-lock.json`; `make node-deps` installs it) and Chromium's own.
Without the server's `stream.cursor` frame both reconnected with no Last-Event-ID and
lost the generation's first events.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any, Final, Protocol

import orjson
import pytest
from playwright.async_api import Page
from playwright.async_api import TimeoutError as PlaywrightTimeoutError

from service.eventlog import event as ev
from tests.browser import chromium, requires_chromium
from tests.process import ServerProcess, server_process

TIMEOUT: Final = 30.0
STOP_TIMEOUT: Final = 10.0
# Short, so that a reconnect fails while the server is down and comes soon after it is up.
RETRY_MS: Final = "300"
# Slow enough that the generation is still writing when the client comes back (a few
# hundred events over a few seconds).
SLOW_TOKENS: Final = "400"
LISTENED: Final = sorted(ev.ALL_TYPES)
TERMINAL: Final = sorted(ev.TERMINAL_TYPES)

NODE_DIR: Final = Path(__file__).resolve().parent / "node"
FOLLOW: Final = NODE_DIR / "follow.mjs"
NODE: Final = shutil.which("node")


class Follower(Protocol):
    """One EventSource on a stream, opened with no cursor, and what it has seen."""

    async def open(self, path: str) -> None: ...
    async def until_open(self) -> None: ...
    async def until_errors(self, count: int) -> None: ...
    async def until_terminal(self) -> None: ...
    async def received(self) -> list[dict[str, Any]]:
        """Each event as {type, id, data}: the event's type, lastEventId and data."""
        ...


FollowerFactory = Callable[[ServerProcess], AbstractAsyncContextManager[Follower]]


async def _dropped_before_first_event_then_generation(
    tmp_path: Path, follower: FollowerFactory
) -> None:
    async with (
        server_process(tmp_path, stream_retry_ms=RETRY_MS) as first,
        follower(first) as client,
    ):
        project_id = await first.new_project()
        # History before the client comes: a resume from 0 would repeat it.
        await _until_generation_over(first, await _generate(first, project_id))
        start = (await first.events(project_id))[-1]["id"]

        await client.open(f"/api/projects/{project_id}/stream")
        await client.until_open()
        first.signal(signal.SIGTERM)
        assert await first.wait(STOP_TIMEOUT) == 0, first.log()
        # The drop, then at least one reconnect refused: down longer than retry.
        await client.until_errors(2)

        async with server_process(
            tmp_path,
            port=first.port,
            stream_retry_ms=RETRY_MS,
            offline_tokens_per_second=SLOW_TOKENS,
        ) as second:
            await _generate(second, project_id)
            await client.until_terminal()
            received = await client.received()
            stored = await second.events(project_id, after=start)

    expected = [{"type": e["type"], "id": str(e["id"]), "data": e} for e in stored]
    got = [{**r, "data": orjson.loads(r["data"])} for r in received]
    expected_ids = [e["id"] for e in expected]
    got_ids = [g["id"] for g in got]
    missing = [i for i in expected_ids if i not in set(got_ids)]
    assert got_ids == expected_ids, (
        f"{len(missing)} of {len(expected_ids)} events after {start} not received "
        f"(first missing: {missing[:3]}), {len(got_ids) - len(set(got_ids))} repeated, "
        f"received ids {got_ids[:3]}...{got_ids[-3:]}"
    )
    assert got == expected
    assert got[-1]["type"] == ev.GENERATION_COMPLETED


async def _generate(server: ServerProcess, project_id: str) -> str:
    submitted = await server.json(
        "POST",
        f"/api/projects/{project_id}/generations",
        status=202,
        json={"prompt": "a todo api"},
    )
    generation_id: str = submitted["generation"]["id"]
    return generation_id


async def _until_generation_over(server: ServerProcess, generation_id: str) -> None:
    async with (
        asyncio.timeout(TIMEOUT),
        server.http.get(f"{server.url}/api/generations/{generation_id}/stream") as response,
    ):
        await response.read()


# -- the npm eventsource package, in Node ------------------------------------------------


class NodeFollower:
    """`node follow.mjs`: its JSON lines, read as they come."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.lines: list[dict[str, Any]] = []
        self.process: asyncio.subprocess.Process | None = None
        self.stderr = b""
        self._changed = asyncio.Condition()
        self._eof = False
        self._reading: asyncio.Task[None] | None = None

    async def open(self, path: str) -> None:
        assert NODE is not None
        self.process = await asyncio.create_subprocess_exec(
            NODE,
            str(FOLLOW),
            self.base_url + path,
            str(int(TIMEOUT * 1000)),
            ",".join(TERMINAL),
            *LISTENED,
            cwd=NODE_DIR,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        self._reading = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        async for line in self.process.stdout:
            async with self._changed:
                self.lines.append(orjson.loads(line))
                self._changed.notify_all()
        assert self.process.stderr is not None
        self.stderr = await self.process.stderr.read()
        async with self._changed:
            self._eof = True
            self._changed.notify_all()

    async def _until(self, what: str, done: Callable[[list[dict[str, Any]]], bool]) -> None:
        try:
            async with asyncio.timeout(TIMEOUT), self._changed:
                await self._changed.wait_for(lambda: done(self.lines) or self._eof)
        except TimeoutError:
            raise AssertionError(f"node: no {what} in {TIMEOUT} s: {self._summary()}") from None
        assert done(self.lines), f"node ended before {what}: {self._summary()}"

    def _summary(self) -> str:
        kinds = [line["kind"] for line in self.lines]
        counts = {kind: kinds.count(kind) for kind in dict.fromkeys(kinds)}
        return f"lines {counts}, last {self.lines[-3:]}, stderr {self.stderr[-2000:]!r}"

    def _count(self, kind: str) -> int:
        return sum(line["kind"] == kind for line in self.lines)

    async def until_open(self) -> None:
        await self._until("open", lambda _: self._count("open") >= 1)

    async def until_errors(self, count: int) -> None:
        await self._until(f"{count} errors", lambda _: self._count("error") >= count)

    async def until_terminal(self) -> None:
        await self._until(
            "terminal event",
            lambda lines: any(line == {"kind": "end", "reason": "terminal"} for line in lines),
        )

    async def received(self) -> list[dict[str, Any]]:
        return [
            {"type": line["type"], "id": line["id"], "data": line["data"]}
            for line in self.lines
            if line["kind"] == "event"
        ]

    async def close(self) -> None:
        if self.process is not None:
            if self.process.returncode is None:
                self.process.kill()
            await self.process.wait()
        if self._reading is not None:
            await self._reading


@asynccontextmanager
async def node_follower(server: ServerProcess) -> AsyncIterator[Follower]:
    follower = NodeFollower(server.url)
    try:
        yield follower
    finally:
        await follower.close()


@pytest.mark.skipif(NODE is None, reason="node is missing: `make test` installs Debian's nodejs")
@pytest.mark.skipif(
    not (NODE_DIR / "node_modules" / "eventsource").is_dir(),
    reason="tests/node/node_modules is missing: `make node-deps` installs the pinned eventsource",
)
async def test_npm_eventsource_dropped_before_its_first_event_loses_nothing(
    tmp_path: Path,
) -> None:
    await _dropped_before_first_event_then_generation(tmp_path, node_follower)


# -- Chromium's EventSource --------------------------------------------------------------

# Opens the EventSource with no cursor and keeps what it sees in window.__follow.
OPEN_JS: Final = """({path, types, terminal}) => {
  const source = new EventSource(path);
  const seen = { source, events: [], opens: 0, errors: 0, done: false };
  window.__follow = seen;
  source.addEventListener("open", () => { seen.opens += 1; });
  source.addEventListener("error", () => { seen.errors += 1; });
  for (const type of types) {
    source.addEventListener(type, (event) => {
      seen.events.push({ type: event.type, id: event.lastEventId, data: event.data });
      if (terminal.includes(type)) {
        seen.done = true;
        source.close();
      }
    });
  }
}"""
SUMMARY_JS: Final = """() => ({
  readyState: window.__follow.source.readyState,
  opens: window.__follow.opens,
  errors: window.__follow.errors,
  events: window.__follow.events.length,
  done: window.__follow.done,
})"""


class ChromiumFollower:
    """An EventSource in a page of genstream's own origin."""

    def __init__(self, page: Page) -> None:
        self.page = page

    async def open(self, path: str) -> None:
        await self.page.evaluate(OPEN_JS, {"path": path, "types": LISTENED, "terminal": TERMINAL})

    async def _until(self, what: str, condition: str, arg: Any = None) -> None:
        try:
            await self.page.wait_for_function(condition, arg=arg, timeout=TIMEOUT * 1000)
        except PlaywrightTimeoutError:
            summary = await self.page.evaluate(SUMMARY_JS)
            raise AssertionError(f"chromium: no {what} in {TIMEOUT} s: {summary}") from None

    async def until_open(self) -> None:
        await self._until("open", "() => window.__follow.source.readyState === EventSource.OPEN")

    async def until_errors(self, count: int) -> None:
        await self._until(f"{count} errors", "(count) => window.__follow.errors >= count", count)

    async def until_terminal(self) -> None:
        await self._until("terminal event", "() => window.__follow.done")

    async def received(self) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = await self.page.evaluate("() => window.__follow.events")
        return events


@asynccontextmanager
async def chromium_follower(server: ServerProcess) -> AsyncIterator[Follower]:
    async with chromium() as browser:
        page = await browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        # Genstream's own page, loaded before any project exists: it opens no stream of
        # its own, and the EventSource below is same-origin.
        await page.goto(server.url + "/")
        await page.wait_for_selector("body[data-ready=true]", timeout=TIMEOUT * 1000)
        yield ChromiumFollower(page)
        assert errors == []


@requires_chromium
async def test_chromium_eventsource_dropped_before_its_first_event_loses_nothing(
    tmp_path: Path,
) -> None:
    await _dropped_before_first_event_then_generation(tmp_path, chromium_follower)
