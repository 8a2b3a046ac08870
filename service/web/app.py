"""The aiohttp application: routes, middleware, and the lifetime of the services."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, Final

import orjson
from aiohttp import hdrs, web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from service import metrics
from service.auth import Forbidden, Tokens, Unauthenticated
from service.config import ConfigError, Settings
from service.errors import Conflict, DomainError, Invalid, JournalRefused, NotFound
from service.eventlog import retention
from service.eventlog.broker import Broker
from service.eventlog.event import now_ms
from service.eventlog.feed import SharedFeed
from service.eventlog.journal import Emit, Journal
from service.eventlog.schemas import SchemaProblem, Schemas
from service.generation.lifecycle import Generations
from service.generation.pipeline import Pipeline
from service.generation.providers import make_provider
from service.metrics import Gauges, Metrics
from service.pipelines import PipelineError, load_pipelines
from service.protocol import CloseReason
from service.storage import location, open_storage
from service.storage.interface import SharedLog, Storage, StorageError, Tx
from service.web import auth, cors, protocol_js, request_log
from service.web.api import json_response, routes
from service.web.connections import Connections
from service.web.context import SCHEMAS, SERVICES, Services
from service.web.errors import ApiError, malformed_request
from service.web.openapi import describe

log = logging.getLogger(__name__)

SETTINGS = web.AppKey("settings", Settings)
DESCRIPTION = web.AppKey("description", bytes)
PIPELINES = web.AppKey("pipelines", Mapping[str, Pipeline])
STATIC_DIR: Final = Path(__file__).parent / "static"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_HTTP_CODES: Final = {
    400: "invalid_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
}
# The one place a kind of the core's refusals gets its HTTP status.
_DOMAIN_STATUSES: Final[dict[type[DomainError], int]] = {
    Invalid: 400,
    NotFound: 404,
    Unauthenticated: 401,
    Forbidden: 403,
    Conflict: 409,
    JournalRefused: 503,  # the journal is closing, or the database refused the write
}


@web.middleware
async def nul_in_path(request: web.Request, handler: Handler) -> web.StreamResponse:
    """An id or path in the URL holding U+0000 names nothing genstream stores (its ids are
    made here, a file's path is checked, service/paths.py): a 404 before any lookup, which
    PostgreSQL would refuse (its text cannot hold the character: docs, 8.3 Character
    Types) and answer as the database failing."""
    if any("\x00" in value for value in request.match_info.values()):
        raise ApiError(404, "not_found", "nothing here has an id or path holding U+0000")
    return await handler(request)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The one place errors become JSON: {"error": {"code", "message"}}."""
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc)
    except DomainError as exc:
        return error_response(api_error(exc))
    except StorageError as exc:
        return error_response(unreadable(request, exc))
    except (RequestPayloadError, HttpProcessingError) as exc:
        # A body aiohttp's parser could not read: it does not decode (Content-Encoding:
        # gzip over garbage), or its chunking broke (service/web/server.py). Ended here, or
        # aiohttp's lingering read after the answer would raise it again, with a
        # traceback; and the connection closes, as the rest of it cannot be parsed.
        request.content.feed_eof()
        response = error_response(malformed_request(str(exc), request.remote))
        response.force_close()
        return response
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, "http_error")
        message = exc.reason
        if exc.status == 413:
            limit = request.app[SETTINGS].server.max_body_bytes
            message = f"the request body is larger than {limit} bytes"
        response = json_response({"error": {"code": code, "message": message}}, exc.status)
        for name in (hdrs.ALLOW, hdrs.RETRY_AFTER):
            if name in exc.headers:
                response.headers[name] = exc.headers[name]
        return response
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        body = {"error": {"code": "internal_error", "message": "an internal error occurred"}}
        return json_response(body, status=500)


def api_error(exc: DomainError) -> ApiError:
    """The core's refusal as the API answers it: its status, its code, message and details."""
    for kind, status in _DOMAIN_STATUSES.items():
        if isinstance(exc, kind):
            # RFC 6750 3: a 401 names the scheme it wants.
            challenge: dict[str, str] | None = None
            if status == 401:
                challenge = {hdrs.WWW_AUTHENTICATE: "Bearer"}
            return ApiError(status, exc.code, exc.message, headers=challenge, **exc.details)
    # A kind with no status is a bug here, answered as any other: a 500.
    log.error("no HTTP status for %s: %s", type(exc).__name__, exc, exc_info=exc)
    return ApiError(500, "internal_error", "an internal error occurred")


def unreadable(request: web.Request, exc: StorageError) -> ApiError:
    """A read the database did not answer (PostgreSQL away, the backend's connection
    refused or dropped): the same 503 `storage_unavailable` as a write the journal could
    not commit, since a later request may pass; a 500 would tell the client it met a bug.
    A cancel reads before it writes, so while the database is away it answers here."""
    log.warning("%s %s: the database did not answer: %s", request.method, request.path, exc)
    return ApiError(503, "storage_unavailable", f"the database did not answer: {exc}")


def error_response(exc: ApiError) -> web.Response:
    response = json_response(exc.body(), status=exc.status)
    response.headers.update(exc.headers)
    return response


async def _services_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    storage = await open_storage(settings.storage)
    broker = Broker(settings.stream.queue_size)
    feed = await _shared_feed(settings, storage, broker)
    journal = await Journal.start(storage, broker, feed)
    stats = Metrics()
    journal.on_commit = stats.commit_seconds.observe
    generations = Generations(
        storage,
        journal,
        make_provider(settings),
        max_concurrent=settings.generation.max_concurrent,
        timeout_seconds=settings.generation.timeout_seconds,
        metrics=stats,
        limits=settings.generation,
        pipelines=app[PIPELINES],
    )
    connections = Connections(settings.stream.max_streams, settings.stream.max_streams_per_project)
    stats.read_at_scrape(
        Gauges(
            open_streams=lambda: connections.total,
            events_appended=lambda: journal.stats.events,
            failed_commits=lambda: journal.stats.failed_commits,
            generations_running=lambda: generations.running,
        )
    )
    app[SERVICES] = Services(
        settings=settings,
        storage=storage,
        broker=broker,
        journal=journal,
        connections=connections,
        generations=generations,
        metrics=stats,
    )
    pruning: asyncio.Task[None] | None = None
    try:
        try:
            await journal.transact(_close_stale_sessions)
            await generations.recover()
        except JournalRefused as exc:  # a database that takes no write: refuse to start
            raise StorageError(f"{location(settings.storage)}: {exc.message}") from exc
        if retention.enabled(settings.storage):
            pruning = asyncio.create_task(
                retention.run(journal, stats, settings.storage), name="retention"
            )
        yield
    finally:
        if pruning is not None:
            pruning.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pruning
        await generations.close()
        await journal.close()
        if feed is not None:  # after the journal: its last commits still reach streams
            await feed.close()
        await storage.close()


def _pipelines(settings: Settings, given: Mapping[str, Pipeline] | None) -> dict[str, Pipeline]:
    try:
        pipelines = load_pipelines() if given is None else dict(given)
    except PipelineError as exc:
        raise ConfigError(str(exc)) from exc
    default = settings.generation.pipeline
    if default not in pipelines:
        known = ", ".join(sorted(pipelines))
        raise ConfigError(
            f"generation.pipeline: no pipeline named {default!r} (there are: {known})"
        )
    return pipelines


async def _shared_feed(settings: Settings, storage: Storage, broker: Broker) -> SharedFeed | None:
    """A log several processes write (postgres) feeds this process's broker through a
    SharedFeed (eventlog/feed.py); on SQLite, one process, the journal's commits go
    straight to the broker (None: the journal's Direct)."""
    if not isinstance(storage, SharedLog):
        return None
    return await SharedFeed.start(
        storage,
        broker,
        page=settings.stream.replay_page,
        poll_seconds=settings.storage.poll_seconds,
        listen=settings.storage.listen,
    )


async def _close_stale_sessions(tx: Tx, emit: Emit) -> None:
    await tx.close_open_sessions("server_restart", now_ms())


async def _say_goodbye(app: web.Application) -> None:
    """On shutdown every open stream sends a goodbye comment and closes, so clients
    reconnect (to the next process) instead of waiting on a dead socket."""
    app[SERVICES].broker.close_all(CloseReason.SHUTDOWN)


async def metrics_page(request: web.Request) -> web.Response:
    body = request.app[SERVICES].metrics.render()
    return web.Response(body=body, headers={hdrs.CONTENT_TYPE: metrics.CONTENT_TYPE})


async def openapi(request: web.Request) -> web.Response:
    return web.Response(body=request.app[DESCRIPTION], content_type="application/json")


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "index.html")


def event_schemas(
    settings: Settings, pipeline_events: Mapping[str, Mapping[str, Any]] | None = None
) -> Schemas:
    """The built-in event types' schemas, the pipelines' (`{type: payload schema}`) and
    the app's declared ones ([events] schemas); ConfigError, naming the setting, for a
    file or a schema that cannot be used."""
    schemas = Schemas()
    try:
        schemas.add_pipeline_events(pipeline_events or {})
    except SchemaProblem as exc:
        raise ConfigError(f"a pipeline's event schema: {exc}") from exc
    if settings.events.schemas:
        try:
            schemas.load_app_schemas(Path(settings.events.schemas))
        except SchemaProblem as exc:
            raise ConfigError(f"events.schemas: {exc}") from exc
    return schemas


def create_app(
    settings: Settings, pipelines: Mapping[str, Pipeline] | None = None
) -> web.Application:
    """The application. `pipelines`: what it runs (default: the built-ins and those of
    installed packages, service.pipelines.load_pipelines)."""
    middlewares: list[Handler | Callable[..., Awaitable[web.StreamResponse]]] = [
        request_log.context_middleware,
        error_middleware,
        nul_in_path,
    ]
    tokens = Tokens(settings.auth)  # ConfigError for a key that cannot be used
    allowed = cors.Cors(cors.parse_origins(settings.server.cors_origins))
    if allowed.origins:
        middlewares.append(allowed.preflight)  # before auth: a preflight has no credential
    if settings.auth.enabled:
        middlewares.append(auth.auth_middleware(settings.auth.token, tokens))
    app = web.Application(
        middlewares=middlewares,  # type: ignore[arg-type]
        client_max_size=settings.server.max_body_bytes,
    )
    app[SETTINGS] = settings
    app[PIPELINES] = _pipelines(settings, pipelines)
    app[auth.TOKENS] = tokens
    app[DESCRIPTION] = orjson.dumps(
        describe(settings, {name: p.inputs for name, p in app[PIPELINES].items()})
    )
    app[SCHEMAS] = event_schemas(
        settings,
        {spec.type: spec.schema for p in app[PIPELINES].values() for spec in p.events},
    )
    app.cleanup_ctx.append(_services_ctx)
    app.on_shutdown.append(_say_goodbye)
    app.on_response_prepare.append(request_log.echo_request_id)
    if allowed.origins:
        app.on_response_prepare.append(allowed.on_prepare)
    app.add_routes(routes)
    app.router.add_get("/metrics", metrics_page)
    app.router.add_get("/api/openapi.json", openapi)
    if (STATIC_DIR / "index.html").exists():
        app.router.add_get("/", index)
        app.router.add_get(protocol_js.PATH, protocol_js.handler())
        app.router.add_static("/static/", STATIC_DIR, append_version=True)
    return app
