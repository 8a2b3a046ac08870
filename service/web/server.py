"""Running the app on a socket: the runner settings streams need, and signal handling."""

from __future__ import annotations

import asyncio
import gc
import importlib
import ipaddress
import logging
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from aiohttp import web
from aiohttp.web_protocol import RequestHandler, RequestPayloadError, _ErrInfo

from service.config import ConfigError, Settings
from service.web import request_log
from service.web.app import create_app, error_response
from service.web.errors import ApiError, malformed_request
from service.web.workers import WorkerLink

log = logging.getLogger(__name__)

# aiohttp's default backlog of 128 drops connections when a thousand clients reconnect
# at once (say, after a restart).
LISTEN_BACKLOG: Final = 2048
# Exit status after a second signal cut the graceful shutdown short (128 + SIGINT).
EXIT_FORCED: Final = 130


@dataclass
class RunningServer:
    runner: web.AppRunner
    site: web.TCPSite

    @property
    def port(self) -> int:
        # From the runner, not site._server: uvloop's server is no asyncio.Server.
        port: int = self.runner.addresses[0][1]
        return port

    async def stop(self) -> None:
        await self.runner.cleanup()


async def start(
    settings: Settings,
    *,
    port: int | None = None,
    app: web.Application | None = None,
    worker: WorkerLink | None = None,
) -> RunningServer:
    """Serve on settings.server.host (and `port`, 0 for any free one).

    `app` is create_app(settings) unless given (the benchmark adds a route to it).
    `worker`: one of `--workers` (web/workers.py): the port shared by SO_REUSEPORT, and
    the socket opened only when the supervisor says every worker's app is set up.
    """
    check_exposure(settings)
    if app is None:
        app = create_app(settings)
    runner = _Runner(
        app,
        # Since aiohttp 3.9 a handler is not cancelled when its client goes away; a
        # stream waiting for events would hold the subscriber until its next write.
        handler_cancellation=True,
        # aiohttp waits this long for handlers, then as long again after cancelling
        # them: half the grace each, so that serve() ends within the grace.
        shutdown_timeout=settings.server.shutdown_grace_seconds / 2,
        handle_signals=False,
        # One line a request, tokens redacted (request_log.AccessLogger), or none.
        access_log=request_log.ACCESS_LOG if settings.log.access else None,
        access_log_class=request_log.AccessLogger,
    )
    await runner.setup()
    site = web.TCPSite(
        runner,
        settings.server.host,
        settings.server.port if port is None else port,
        backlog=LISTEN_BACKLOG,
        reuse_port=worker is not None,
    )
    try:
        if worker is not None:
            await worker.set_up()
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return RunningServer(runner, site)


# -- requests aiohttp cannot parse ----------------------------------------------------
#
# A NUL in a header, a bad chunk size, an unknown method: aiohttp's parser refuses the
# request before any route or middleware sees it, and RequestHandler.handle_error answers
# a text/plain 400 and logs an ERROR with a traceback, so any client could flood the log.
# aiohttp has no hook for that answer (aiohttp#3287, open; #9882): the way in is its own
# extension point, a RequestHandler subclass, made by a Server subclass, made by the
# runner. Pinned by tests/test_malformed_http.py, which would see an aiohttp upgrade that
# moves these names.


class _JsonErrors(RequestHandler):
    """aiohttp's connection protocol, answering what it cannot parse with genstream's
    JSON error shape and one WARNING line, no traceback."""

    __slots__ = ()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status >= 500:
            # A handler's exception that escaped every middleware is a bug: aiohttp's log,
            # traceback included, is what is wanted; only the body is genstream's.
            super().handle_error(request, status, exc, message)
            error = ApiError(status, "internal_error", "an internal error occurred")
        else:
            error = malformed_request(message or str(exc or ""), request.remote)
        response = error_response(error)
        response.force_close()  # as aiohttp's: the rest of the connection is unparsable
        return response

    def data_received(self, data: bytes) -> None:
        queued = len(self._messages)
        super().data_received(data)
        request = self._current_request
        if request is None or len(self._messages) == queued or request.content.is_eof():
            return
        failed = self._messages[-1][0]
        if isinstance(failed, _ErrInfo):
            # The body of the request in progress was unparsable (a bad chunk size after
            # its headers came in an earlier read). aiohttp's C parser drops that body
            # without failing it, so the handler would wait for the rest forever, and the
            # 400 queued behind it would never go out. Fail the body as the parser fails
            # one it cannot decode: the handler's read raises, and the error middleware
            # answers. Ended, so that aiohttp's lingering read does not raise it again.
            request.content.set_exception(RequestPayloadError(failed.message))
            request.content.feed_eof()


class _Server(web.Server):
    def __call__(self) -> RequestHandler:
        return _JsonErrors(self, loop=self._loop, **self._kwargs)


class _Runner(web.AppRunner):
    """web.AppRunner whose connections are _JsonErrors."""

    async def _make_server(self) -> web.Server:
        made = await super()._make_server()  # starts the app; aiohttp's own Server
        return _Server(
            made.request_handler,
            request_factory=made.request_factory,
            handler_cancellation=made.handler_cancellation,
            **made._kwargs,
        )


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop when it is installed (the `bench` extra), else asyncio's.

    Imported by name so that it stays optional: `make bench` measured genstream on it.
    """
    try:
        uvloop = importlib.import_module("uvloop")
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def settle_heap() -> None:
    """Once started: collect, then freeze what is alive (modules, classes, the app), so
    the collector's full passes walk only what streams made since. Unfrozen, those ~100k
    objects made every full pass a pause of tens of ms, which set the p99 latency of a
    fan-out to a thousand streams (README "Performance"; gc.freeze in the Python docs)."""
    gc.collect()
    gc.freeze()


async def serve(settings: Settings, worker: WorkerLink | None = None) -> None:
    """Run until SIGINT or SIGTERM, then shut down gracefully; a second signal forces exit.
    `worker`: run as one of `--workers` (web/workers.py)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    server = await start(settings, worker=worker)
    if worker is not None:
        worker.listening(stop.set)
    settle_heap()
    log.info("genstream listening on http://%s:%d/", settings.server.host, server.port)
    await stop.wait()
    grace = settings.server.shutdown_grace_seconds
    log.info("shutting down (at most %g s)", grace)
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, _exit_now)
    try:
        async with asyncio.timeout(grace):
            await server.stop()
    except TimeoutError:
        log.error("shutdown took longer than %g s: exiting with work unfinished", grace)
        raise SystemExit(1) from None
    log.info("stopped")


def _exit_now() -> None:
    # No cleanup: the one asking twice wants the process gone. Every commit is already
    # durable in the WAL, and the next start finishes interrupted generations.
    log.warning("second signal: exiting at once")
    logging.shutdown()
    os._exit(EXIT_FORCED)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name, or "" for every interface: reachable from outside


def check_exposure(settings: Settings) -> None:
    """Refuse to listen beyond loopback without a token, unless told to on purpose."""
    host = settings.server.host
    if is_loopback(host) or settings.auth.enabled or settings.server.allow_remote_without_token:
        return
    raise ConfigError(
        f"server.host = {host!r} is reachable from other machines and no token is set: "
        "set GENSTREAM_AUTH_TOKEN, or server.allow_remote_without_token = true to serve "
        "without one on purpose"
    )
