"""An asyncio client for genstream: the JSON API, and event streams that resume themselves.

    async with GenstreamClient("http://127.0.0.1:8080") as client:
        project = await client.create_project("demo")
        submitted = await client.generate(project["id"], "a todo api")
        async for event in client.stream_generation(submitted["generation"]["id"]):
            print(event.id, event.type)

A stream reconnects by itself when the connection drops (exponential backoff with
jitter, never sooner than the server's `retry:`), resumes with `Last-Event-ID`, and
never yields an event twice. A generation stream ends after the terminal event.

A scoped token expires (README "Scoped tokens"): give `token_source`, a coroutine
function that fetches a fresh one (from the app's own server, say), and the client calls
it before every reconnect of a stream and after any 401, then tries again once:

    async def fresh_token() -> str:
        async with http.post("https://app.example/genstream-token") as answer:
            return (await answer.json())["token"]

    GenstreamClient(url, token_source=fresh_token)

An app publishes its own events (`app.<name>`, README "App events and typed events"):

    stored = await client.publish(project_id, "app.typing", {"user": "u-42"})

With `validate_events=True` every event the client yields (streams, `events()`) is first
checked against its type's JSON Schema as the server serves it (GET /api/events/schemas,
fetched once): one that does not match raises GenstreamError `invalid_event`.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote

import aiohttp
import orjson
from aiohttp import hdrs
from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match

from service.client.sse_parser import Message, SSEParser
from service.protocol import (
    ACTIVE_STATUSES,
    ANY_APP_EVENT,
    APP_PREFIX,
    STREAM_CURSOR,
    TERMINAL_TYPES,
)

DEFAULT_URL: Final = "http://127.0.0.1:8080"
# A proxy or a restarting server answers these for a moment; anything else is final.
RETRYABLE_STATUSES: Final = frozenset({502, 503, 504})
# No HTTP answer at all (refused, reset, timed out, a stream that is not SSE).
NO_STATUS: Final = 0
UNREACHABLE: Final = "unreachable"
_ENVELOPE: Final = ("id", "type", "project_id", "generation_id", "ts")
UNAUTHORIZED: Final = 401
# Fetches a fresh token: called before a stream reconnects and after a 401.
TokenSource = Callable[[], Awaitable[str]]


class GenstreamError(Exception):
    """An error from the API (its status, code and message), or status 0 when the
    server could not be reached or answered something that is not genstream."""

    def __init__(
        self, status: int, code: str, message: str, details: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__(
            f"{code}: {message}" if status == NO_STATUS else f"{status} {code}: {message}"
        )
        self.status = status
        self.code = code
        self.message = message
        self.details = dict(details or {})


@dataclass(frozen=True, slots=True)
class Event:
    """One event of the log. `data` holds the payload fields of its type (`delta`,
    `path`, `stage`...); `as_dict()` gives back the flat object the server sent."""

    id: int
    type: str
    project_id: str
    generation_id: str | None
    ts: int
    data: dict[str, Any]

    @property
    def terminal(self) -> bool:
        return self.type in TERMINAL_TYPES

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": self.type,
            "project_id": self.project_id,
            "generation_id": self.generation_id,
            "ts": self.ts,
            **self.data,
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Event:
        """The flat object of `/events` and of SSE data; GenstreamError if it is not one."""
        event_id, type_, project_id = raw.get("id"), raw.get("type"), raw.get("project_id")
        generation_id, ts = raw.get("generation_id"), raw.get("ts")
        if (
            not isinstance(event_id, int)
            or isinstance(event_id, bool)
            or not isinstance(type_, str)
            or not isinstance(project_id, str)
            or not (generation_id is None or isinstance(generation_id, str))
            or not isinstance(ts, int)
        ):
            raise GenstreamError(NO_STATUS, "invalid_event", f"not a genstream event: {raw!r:.200}")
        payload = {k: v for k, v in raw.items() if k not in _ENVELOPE}
        return cls(event_id, type_, project_id, generation_id, ts, payload)


@dataclass(frozen=True, slots=True)
class EventPage:
    events: list[Event]
    last_event_id: int  # the cursor for the next page
    has_more: bool


@dataclass(frozen=True, slots=True)
class Backoff:
    """How long to wait before reconnecting: the server's `retry:` (or `base_seconds`
    until it has said one) doubled for every failed attempt in a row, capped, then
    stretched by a random factor in [1, 1 + jitter] so that a thousand clients cut off
    by one restart do not come back in the same millisecond."""

    base_seconds: float = 1.0
    max_seconds: float = 30.0
    jitter: float = 0.5

    def delay(
        self, failures: int, retry_ms: int | None, rand: Callable[[], float] = random.random
    ) -> float:
        base = self.base_seconds if retry_ms is None else retry_ms / 1000
        # min() first: 2 ** failures stays small enough to never overflow a float.
        exponent = min(failures, 32)
        return min(self.max_seconds, base * 2.0**exponent) * (1 + self.jitter * rand())


class GenstreamClient:
    """A session with one genstream server; use it as an async context manager."""

    # The server sends a comment every heartbeat_seconds of quiet: two missed in a row
    # and the connection is taken for dead, then resumed.
    MISSED_HEARTBEATS: Final = 2

    def __init__(
        self,
        url: str = DEFAULT_URL,
        token: str | None = None,
        *,
        token_source: TokenSource | None = None,
        heartbeat_seconds: float = 15.0,
        request_timeout: float = 60.0,
        connect_timeout: float = 10.0,
        max_attempts: int | None = 8,
        backoff: Backoff = Backoff(),  # frozen, so one default is safe to share
        validate_events: bool = False,
    ) -> None:
        """`max_attempts`: failed attempts in a row (connects, retried calls) before
        GenstreamError; None retries for ever. `token_source`: see the module's doc; with
        no `token`, the first request fetches one from it. `validate_events`: check each
        event against the served schemas before yielding it (see the module's doc)."""
        self.url = url.rstrip("/")
        self._token = token
        self._token_source = token_source
        self._stream_timeout = aiohttp.ClientTimeout(
            total=None,
            sock_connect=connect_timeout,
            sock_read=heartbeat_seconds * self.MISSED_HEARTBEATS,
        )
        self._request_timeout = aiohttp.ClientTimeout(
            total=request_timeout, sock_connect=connect_timeout
        )
        self._max_attempts = max_attempts
        self._backoff = backoff
        self._session: aiohttp.ClientSession | None = None
        self._validate = validate_events
        self._validators: dict[str, Draft202012Validator] | None = None

    async def __aenter__(self) -> GenstreamClient:
        self._session = aiohttp.ClientSession(
            # limit=0: the default of 100 connections silently stalls the 101st stream.
            # total=None: the default 300 s total timeout would cut every long stream.
            connector=aiohttp.TCPConnector(limit=0),
            timeout=self._stream_timeout,
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def refresh_token(self) -> None:
        """Fetch a fresh token from `token_source` (nothing without one)."""
        if self._token_source is not None:
            self._token = await self._token_source()

    async def _auth(self) -> dict[str, str]:
        if self._token is None:
            await self.refresh_token()
        return {hdrs.AUTHORIZATION: f"Bearer {self._token}"} if self._token else {}

    def _refreshable(self, exc: GenstreamError, refreshed: bool) -> bool:
        """A 401 another token may cure: there is a source, and it was not just asked."""
        return exc.status == UNAUTHORIZED and self._token_source is not None and not refreshed

    @property
    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("use GenstreamClient as `async with GenstreamClient(...)`")
        return self._session

    # -- the JSON API -------------------------------------------------------------------

    async def create_project(self, name: str | None = None) -> dict[str, Any]:
        body = {} if name is None else {"name": name}
        # Not retried: a lost answer would leave a project behind and make another.
        result: dict[str, Any] = await self._call("POST", "/api/projects", body, retry=False)
        return result

    async def projects(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = (await self._call("GET", "/api/projects"))["projects"]
        return result

    async def project(self, project_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._call("GET", f"/api/projects/{_seg(project_id)}")
        return result

    async def generate(
        self,
        project_id: str,
        prompt: str,
        image_urls: list[str] | None = None,
        *,
        client_request_id: str | None = None,
        pipeline: str | None = None,
        inputs: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Submit a generation: {generation, user_message, assistant_message, stream_url,
        created}. Every attempt carries the same client_request_id, so a retry after a
        lost answer gets the generation the first attempt made instead of a second one.
        `pipeline` (GET /api/pipelines; None: the project's default, else the server's)
        and its `inputs` object."""
        body: dict[str, Any] = {
            "prompt": prompt,
            "client_request_id": client_request_id or uuid.uuid4().hex,
        }
        if image_urls:
            body["image_urls"] = list(image_urls)
        if pipeline is not None:
            body["pipeline"] = pipeline
        if inputs is not None:
            body["inputs"] = dict(inputs)
        path = f"/api/projects/{_seg(project_id)}/generations"
        result: dict[str, Any] = await self._call("POST", path, body, retry=True)
        return result

    async def generation(self, generation_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._call("GET", f"/api/generations/{_seg(generation_id)}")
        return result

    async def cancel(self, generation_id: str) -> dict[str, Any]:
        """Cancel (idempotent); returns the generation in its final state."""
        path = f"/api/generations/{_seg(generation_id)}/cancel"
        result: dict[str, Any] = await self._call("POST", path, retry=True)
        return result

    async def pipelines(self) -> dict[str, Any]:
        """What the server runs: {default, pipelines: [{name, label, description, stages,
        events, inputs}]}."""
        result: dict[str, Any] = await self._call("GET", "/api/pipelines")
        return result

    async def events(self, project_id: str, after: int = 0, limit: int = 100) -> EventPage:
        """One page of the project's stored events after `after`, for polling."""
        query = f"?after={int(after)}&limit={int(limit)}"
        body = await self._call("GET", f"/api/projects/{_seg(project_id)}/events{query}")
        events = [Event.from_dict(raw) for raw in body["events"]]
        if self._validate:
            for event in events:
                await self.check_event(event)
        return EventPage(events, int(body["last_event_id"]), bool(body["has_more"]))

    async def messages(self, project_id: str) -> list[dict[str, Any]]:
        body = await self._call("GET", f"/api/projects/{_seg(project_id)}/messages")
        result: list[dict[str, Any]] = body["messages"]
        return result

    async def files(self, project_id: str) -> list[dict[str, Any]]:
        body = await self._call("GET", f"/api/projects/{_seg(project_id)}/files")
        result: list[dict[str, Any]] = body["files"]
        return result

    async def file(self, project_id: str, path: str) -> dict[str, Any]:
        """One file with its `content`."""
        url = f"/api/projects/{_seg(project_id)}/files/{quote(path, safe='/')}"
        result: dict[str, Any] = await self._call("GET", url)
        return result

    async def publish(self, project_id: str, type_: str, data: Mapping[str, Any]) -> Event:
        """Publish an app event (`type_` is `app.<name>`, `data` an object): the event as
        the server stored it. Not retried: a lost answer would publish it twice."""
        body = {"type": type_, "data": dict(data)}
        path = f"/api/projects/{_seg(project_id)}/events"
        return Event.from_dict(await self._call("POST", path, body, retry=False))

    async def event_schemas(self) -> dict[str, Any]:
        """Every event type's JSON Schema, as one document: {"$schema", "$defs": {type: ...}}."""
        result: dict[str, Any] = await self._call("GET", "/api/events/schemas")
        return result

    async def check_event(self, event: Event) -> None:
        """GenstreamError `invalid_event` unless `event` matches its type's schema (the
        served ones, fetched at the first check); an app event of a type with no schema
        of its own is held to the generic one."""
        if self._validators is None:
            document = await self.event_schemas()
            self._validators = {
                type_: Draft202012Validator(schema)
                for type_, schema in document.get("$defs", {}).items()
            }
        validator = self._validators.get(event.type)
        if validator is None and event.type.startswith(APP_PREFIX):
            validator = self._validators.get(ANY_APP_EVENT)
        if validator is None:
            raise GenstreamError(
                NO_STATUS, "invalid_event", f"event {event.id}: no schema for type {event.type!r}"
            )
        error = best_match(validator.iter_errors(event.as_dict()))
        if error is not None:
            where = "".join(f"[{part!r}]" for part in error.absolute_path)
            raise GenstreamError(
                NO_STATUS,
                "invalid_event",
                f"event {event.id} ({event.type}){where}: {error.message}",
            )

    async def _call(self, method: str, path: str, body: Any = None, *, retry: bool = True) -> Any:
        """One API call; with `retry`, connection errors and 502/503/504 are retried."""
        failures = 0
        refreshed = False
        while True:
            try:
                return await self._call_once(method, path, body)
            except GenstreamError as exc:
                if self._refreshable(exc, refreshed):
                    await self.refresh_token()
                    refreshed = True
                    continue  # once: the same call with a fresh token
                failures += 1
                if not retry or not _transient(exc) or self._gave_up(failures):
                    raise
                delay = self._backoff.delay(failures - 1, None)
                await asyncio.sleep(max(delay, _retry_after(exc)))

    async def _call_once(self, method: str, path: str, body: Any) -> Any:
        data = None if body is None else orjson.dumps(body)
        headers = await self._auth()
        if data is not None:
            headers[hdrs.CONTENT_TYPE] = "application/json"
        try:
            async with self._http.request(
                method,
                self.url + path,
                data=data,
                headers=headers,
                timeout=self._request_timeout,
            ) as response:
                raw = await response.read()
                if response.status >= 400:
                    raise _api_error(response, raw)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _unreachable(self.url, exc) from exc
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise GenstreamError(
                response.status, "invalid_response", f"not JSON: {raw[:200]!r}"
            ) from exc

    def _gave_up(self, failures: int) -> bool:
        return self._max_attempts is not None and failures >= self._max_attempts

    # -- streams ----------------------------------------------------------------------

    async def stream(
        self, project_id: str, last_event_id: int | None = None
    ) -> AsyncGenerator[Event, None]:
        """Every event of the project after `last_event_id` (0: all of them; None: from
        now on), following live for as long as the caller iterates."""
        if last_event_id is None:
            # Pin "now" to an id: reconnecting without a cursor would skip what
            # happened while the connection was down.
            last_event_id = int((await self.project(project_id))["last_event_id"])
        path = f"/api/projects/{_seg(project_id)}/stream"
        async for event in self._follow(path, last_event_id, generation_id=None):
            yield event

    async def stream_generation(
        self, generation_id: str, last_event_id: int | None = None
    ) -> AsyncGenerator[Event, None]:
        """The generation's events (from its first, or after `last_event_id`); ends after
        its terminal event: generation.completed, .failed or .cancelled."""
        path = f"/api/generations/{_seg(generation_id)}/stream"
        async for event in self._follow(path, last_event_id, generation_id=generation_id):
            yield event

    async def _follow(
        self, path: str, cursor: int | None, generation_id: str | None
    ) -> AsyncGenerator[Event, None]:
        failures = 0  # connection attempts that failed in a row: give up at max_attempts
        streak = 0  # attempts in a row that brought nothing new: the backoff exponent
        retry_ms: int | None = None
        reconnect = refreshed = False
        while True:
            parser = SSEParser()
            wait_at_least = 0.0
            streak += 1
            if reconnect and self._token_source is not None:
                # The token this stream opened with may have expired since: the server
                # checks one at each connect, so every reconnect brings a fresh one.
                await self.refresh_token()
                refreshed = True
            reconnect = True
            try:
                async with self._open_stream(path, cursor) as response:
                    failures = 0
                    async for chunk in response.content.iter_any():
                        for message in parser.feed(chunk):
                            if message.event == STREAM_CURSOR:
                                # Not an event: where a stream opened with no cursor
                                # starts, carried as its id; a reconnect resumes there.
                                cursor = _cursor_frame_id(message, cursor)
                                continue
                            event = _event(message)
                            # Whatever the server or a proxy replays, an id at or below
                            # the cursor was yielded already.
                            if cursor is not None and event.id <= cursor:
                                continue
                            if self._validate:
                                await self.check_event(event)
                            cursor, streak = event.id, 0
                            yield event
                            if generation_id is not None and event.terminal:
                                return
                    parser.close()
                if (
                    generation_id is not None
                    and streak > 0
                    and await self._nothing_left(generation_id, cursor)
                ):
                    return  # the caller's cursor was at or past the terminal event
            except GenstreamError as exc:
                if self._refreshable(exc, refreshed):
                    continue  # a reconnect at once, which fetches a fresh token
                if not _transient(exc):
                    raise
                failures += 1
                wait_at_least = _retry_after(exc)
                if self._gave_up(failures):
                    raise
            except (aiohttp.ClientError, TimeoutError) as exc:
                failures += 1
                if self._gave_up(failures):
                    raise _unreachable(self.url, exc) from exc
            if parser.retry_ms is not None:
                retry_ms = parser.retry_ms
            delay = self._backoff.delay(max(streak - 1, 0), retry_ms)
            await asyncio.sleep(max(delay, wait_at_least))

    async def _nothing_left(self, generation_id: str, cursor: int | None) -> bool:
        """After a stream that closed with nothing new: has the generation ended with
        nothing after `cursor`? (Then the stream is over; otherwise it was cut.)"""
        generation = await self.generation(generation_id)
        if generation["status"] in ACTIVE_STATUSES or cursor is None:
            return False
        # A project runs one generation at a time, so a generation's events are
        # contiguous in the project's log: the next event is the generation's, or
        # the generation has nothing more.
        page = await self.events(generation["project_id"], after=cursor, limit=1)
        return not any(event.generation_id == generation_id for event in page.events)

    @asynccontextmanager
    async def _open_stream(
        self, path: str, cursor: int | None
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        headers: dict[str, str] = {
            hdrs.ACCEPT: "text/event-stream",
            hdrs.CACHE_CONTROL: "no-cache",
            **(await self._auth()),
        }
        if cursor is not None:
            headers[hdrs.LAST_EVENT_ID] = str(cursor)
        async with self._http.get(self.url + path, headers=headers) as response:
            if response.status != 200:
                raise _api_error(response, await response.read())
            if response.content_type != "text/event-stream":
                raise GenstreamError(
                    NO_STATUS, "not_event_stream", f"{path} answered {response.content_type}"
                )
            yield response


def _cursor_frame_id(message: Message, cursor: int | None) -> int | None:
    raw = message.last_event_id
    if cursor is None and raw.isascii() and raw.isdigit():
        return int(raw)
    return cursor


def _event(message: Message) -> Event:
    try:
        raw = orjson.loads(message.data)
    except orjson.JSONDecodeError as exc:
        raise GenstreamError(
            NO_STATUS, "invalid_event", f"event data is not JSON: {message.data[:200]!r}"
        ) from exc
    if not isinstance(raw, dict):
        raise GenstreamError(NO_STATUS, "invalid_event", f"not a genstream event: {raw!r:.200}")
    return Event.from_dict(raw)


def _api_error(response: aiohttp.ClientResponse, raw: bytes) -> GenstreamError:
    """The server's {"error": {"code", "message"}}, or what a proxy said instead."""
    try:
        body = orjson.loads(raw)
        error = body["error"]
        details = {k: v for k, v in error.items() if k not in ("code", "message")}
        retry_after = response.headers.get(hdrs.RETRY_AFTER)
        if retry_after is not None:
            details["retry_after"] = retry_after
        return GenstreamError(response.status, str(error["code"]), str(error["message"]), details)
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
        text = raw[:200].decode(errors="replace").strip() or (response.reason or "")
        return GenstreamError(response.status, "http_error", text)


def _transient(error: GenstreamError) -> bool:
    """Worth another attempt: no answer at all, or a proxy or server busy for a moment."""
    return error.code == UNREACHABLE or error.status in RETRYABLE_STATUSES


def _retry_after(error: GenstreamError) -> float:
    """Seconds the server asked to wait (a 503 carries Retry-After), else 0."""
    value = error.details.get("retry_after")
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return float(value)
    return 0.0


def _unreachable(url: str, exc: BaseException) -> GenstreamError:
    reason = str(exc) or type(exc).__name__
    return GenstreamError(NO_STATUS, UNREACHABLE, f"no answer from {url}: {reason}")


def _seg(value: str) -> str:
    """An id as one URL path segment: a `/` or `?` in it cannot reach another route."""
    return quote(value, safe="")
