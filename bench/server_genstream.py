"""genstream under test: the product app, plus one route that only the benchmark adds.

POST /bench/inject?topic=&n=&size= hands `n` events of about `size` bytes to
Journal.append, one per loop turn, the way a generation hands over its chunks; each
carries its hand-off time. They go the real path: SQLite commit, broker, stream handler.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
from typing import Final

import orjson
from aiohttp import web

from bench import common
from service.config import Settings
from service.eventlog.event import MESSAGE_DELTA, Draft, Event, seal
from service.web.app import create_app
from service.web.context import SERVICES
from service.web.server import settle_heap, start

# The references buffer a burst without bound; genstream's per-subscriber buffer is given
# room for the whole burst so that the flood measures speed, not the slow-client cut-off.
QUEUE_SIZE: Final = 1_000_000


async def inject(request: web.Request) -> web.Response:
    journal = request.app[SERVICES].journal
    topic, count, size, rate = common.inject_params(request)
    blank = orjson.dumps({"t": 0, "pad": ""})
    overhead = len(seal(Draft(topic, None, MESSAGE_DELTA, {"t": 0, "pad": ""}), 10**6).data)
    overhead -= len(blank)
    pending: list[asyncio.Future[list[Event]]] = []

    def hand_off() -> None:
        draft = Draft(topic, None, MESSAGE_DELTA, common.payload(size, overhead))
        pending.append(journal.append(draft))

    first = await common.produce(count, rate, hand_off)
    await asyncio.gather(*pending)
    return web.json_response({"first_ns": first, "last_ns": time.time_ns()})


def settings(db: str, readers: int = Settings().storage.readers) -> Settings:
    return Settings().replace(
        server={"host": common.LOOPBACK, "shutdown_grace_seconds": 2},
        storage={"path": db, "readers": readers},
        stream={"queue_size": QUEUE_SIZE, "max_streams": 20_000, "max_streams_per_project": 20_000},
        offline={"tokens_per_second": 0},
        log={"level": "warning"},
    )


async def serve(db: str, port: int, readers: int) -> None:
    config = settings(db, readers)
    app = create_app(config)
    app.router.add_post("/bench/inject", inject)
    await serve_app(config, app, port)


async def serve_app(config: Settings, app: web.Application, port: int) -> None:
    """Serve genstream's app, with the routes a benchmark added, as `genstream serve`
    does; announce the port on stdout and run until SIGTERM."""
    server = await start(config, port=port, app=app)
    settle_heap()  # as `genstream serve` does
    try:
        await common.announce_and_wait(server.port)
    finally:
        await server.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--db", required=True)
    parser.add_argument("--readers", type=int, default=Settings().storage.readers)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    common.raise_nofile()
    common.run(serve(args.db, args.port, args.readers))


if __name__ == "__main__":
    main()
