"""genstream under test: the product app, plus one route that only the benchmark adds.

POST /bench/inject?topic=&n=&size= hands `n` events of about `size` bytes to
Journal.append, one per loop turn, the way a generation hands over its chunks; each
carries its hand-off time and its number (`seq`, which the replay checks). They go the
real path: SQLite commit, broker, stream handler.

On PostgreSQL (`--postgres URL`) the path is the product's for that backend: the commit,
then the SharedFeed (eventlog/feed.py) hands it to this process's broker, and with
`--workers N` (the supervisor of `genstream serve --workers`, each worker this module)
the other workers' feeds read it back from the database on its notification.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import logging
import time
from typing import Final

import orjson
from aiohttp import web

from bench import common
from service.config import Settings
from service.eventlog.event import MESSAGE_DELTA, Draft, Event, seal
from service.web import workers
from service.web.app import create_app
from service.web.context import SERVICES
from service.web.server import settle_heap, start
from service.web.workers import WorkerLink

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
    numbers = itertools.count()

    def hand_off() -> None:
        draft = Draft(topic, None, MESSAGE_DELTA, common.payload(size, overhead, next(numbers)))
        pending.append(journal.append(draft))

    first = await common.produce(count, rate, hand_off)
    await asyncio.gather(*pending)
    return web.json_response({"first_ns": first, "last_ns": time.time_ns()})


def settings(
    db: str, readers: int = Settings().storage.readers, postgres: str | None = None
) -> Settings:
    """The benchmark's settings: on SQLite file `db`, or with `postgres` (a url) on that
    PostgreSQL database, as `genstream serve` would run with storage.backend = "postgres"."""
    storage: dict[str, object] = {"path": db, "readers": readers}
    if postgres is not None:
        storage = {"backend": "postgres", "url": postgres}
    return Settings().replace(
        server={"host": common.LOOPBACK, "shutdown_grace_seconds": 2},
        storage=storage,
        stream={"queue_size": QUEUE_SIZE, "max_streams": 20_000, "max_streams_per_project": 20_000},
        offline={"tokens_per_second": 0},
        log={"level": "warning"},
    )


async def serve(config: Settings, port: int, worker: WorkerLink | None = None) -> None:
    app = create_app(config)
    app.router.add_post("/bench/inject", inject)
    await serve_app(config, app, port, worker)


async def serve_app(
    config: Settings, app: web.Application, port: int, worker: WorkerLink | None = None
) -> None:
    """Serve genstream's app, with the routes a benchmark added, as `genstream serve`
    does; announce the port on stdout and run until SIGTERM. `worker`: as one of
    `genstream serve --workers` (the port shared, listening when the supervisor says)."""
    server = await start(config, port=port, app=app, worker=worker)
    stop = asyncio.Event()
    if worker is not None:
        worker.listening(stop.set)  # and stop if the supervisor goes away
    settle_heap()  # as `genstream serve` does
    try:
        await common.announce_and_wait(server.port, stop)
    finally:
        await server.stop()


def supervise(config: Settings, args: argparse.Namespace) -> int:
    """`genstream serve --workers N`'s supervisor (service/web/workers.py), each worker
    this module: every one of them says `PORT <port> <pid>` on the stdout they share."""
    port = args.port or common.free_port()
    argv = ["--port", str(port), "--postgres", args.postgres]
    supervised = workers.supervise(
        config.replace(server={"port": port}), argv, args.workers, module="bench.server_genstream"
    )
    code: int = common.run(supervised)
    return code


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--db", help="the SQLite file (or --postgres)")
    parser.add_argument("--readers", type=int, default=Settings().storage.readers)
    parser.add_argument("--postgres", help="a PostgreSQL url: the postgres backend")
    parser.add_argument("--workers", type=int, default=1, help="processes (postgres only)")
    parser.add_argument(workers.WORKER_PIPES_OPTION, dest="worker_pipes", help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    common.raise_nofile()
    if (args.db is None) == (args.postgres is None):
        common.die("give one of --db (SQLite) and --postgres")
    if args.workers > 1 and args.postgres is None:
        common.die("--workers needs --postgres: one SQLite file serves one process")
    config = settings(args.db or "", args.readers, args.postgres)
    if args.workers > 1:
        raise SystemExit(supervise(config, args))
    link = None if args.worker_pipes is None else WorkerLink.parse(args.worker_pipes)
    common.run(serve(config, args.port, link))


if __name__ == "__main__":
    main()
