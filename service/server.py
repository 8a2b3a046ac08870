"""Running the app on a socket: the runner settings streams need, and signal handling."""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass
from typing import Final

from aiohttp import web

from service.app import create_app
from service.config import Settings

log = logging.getLogger(__name__)

# aiohttp's default backlog of 128 drops connections when a thousand clients reconnect
# at once (say, after a restart).
LISTEN_BACKLOG: Final = 2048


@dataclass
class RunningServer:
    runner: web.AppRunner
    site: web.TCPSite

    @property
    def port(self) -> int:
        server = self.site._server
        assert isinstance(server, asyncio.Server)
        port: int = server.sockets[0].getsockname()[1]
        return port

    async def stop(self) -> None:
        await self.runner.cleanup()


async def start(settings: Settings, *, port: int | None = None) -> RunningServer:
    """Serve on settings.server.host (and `port`, 0 for any free one)."""
    app = create_app(settings)
    runner = web.AppRunner(
        app,
        # Since aiohttp 3.9 a handler is not cancelled when its client goes away; a
        # stream waiting for events would hold the subscriber until its next write.
        handler_cancellation=True,
        shutdown_timeout=settings.server.shutdown_grace_seconds,
        handle_signals=False,
        access_log=None,
    )
    await runner.setup()
    site = web.TCPSite(
        runner,
        settings.server.host,
        settings.server.port if port is None else port,
        backlog=LISTEN_BACKLOG,
    )
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return RunningServer(runner, site)


async def serve(settings: Settings) -> None:
    """Run until SIGINT or SIGTERM, then shut down gracefully; a second signal forces exit."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    server = await start(settings)
    log.info("genstream listening on http://%s:%d/", settings.server.host, server.port)
    await stop.wait()
    log.info("shutting down")
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, _exit_now)
    await server.stop()


def _exit_now() -> None:
    log.warning("second signal: exiting at once")
    raise SystemExit(1)
