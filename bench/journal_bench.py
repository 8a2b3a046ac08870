"""Journal throughput: P producers each appending one event and awaiting its commit.

    python -m bench.journal_bench --producers 1 10 100 --events 20000   (prints JSON)
    python -m bench.journal_bench --postgres postgresql://user@host/db ...

The journal runs in this process over a real SQLite file, as in the server: commit,
then publish to the broker (no subscribers here, so this is the storage path alone).
With `--postgres` it runs over that database as the app wires it for that backend: the
journal's commits go through a SharedFeed (eventlog/feed.py) listening for the
notifications its own commits send, as every process of several does. Each producer
count on a fresh SQLite file; on PostgreSQL one after another in the one database.

Beside throughput and commit latency it prints how long the event loop stalled: a task
sleeps 1 ms again and again and notes each gap (`loop_gap_*_ms`). A gap well past 1 ms
is time every stream of the process waited (uvloop's timers count whole milliseconds,
so a gap of 1 to 2 ms is an idle loop). And the process's CPU time an event
(`cpu_us_per_event`, every thread's): on a machine others share, the steadier figure.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from bench import common
from bench.load import percentile
from service.config import Settings
from service.eventlog.broker import Broker
from service.eventlog.event import MESSAGE_DELTA, Draft
from service.eventlog.feed import SharedFeed
from service.eventlog.journal import Journal
from service.storage.interface import Storage
from service.storage.postgres import PostgresStorage
from service.storage.sqlite import Storage as SqliteStorage

TOPIC = "prj_bench"
TICK_S = 0.001


async def tick(gaps: list[float]) -> None:
    """Sleep TICK_S again and again, noting each gap between wake-ups (until cancelled)."""
    last = time.perf_counter()
    while True:
        await asyncio.sleep(TICK_S)
        now = time.perf_counter()
        gaps.append(now - last)
        last = now


async def measure(storage: Storage, producers: int, events: int, size: int) -> dict[str, Any]:
    """`storage` is closed after."""
    broker = Broker(queue_size=1024)
    feed = None
    if isinstance(storage, PostgresStorage):
        defaults = Settings()
        feed = await SharedFeed.start(
            storage,
            broker,
            page=defaults.stream.replay_page,
            poll_seconds=defaults.storage.poll_seconds,
            listen=defaults.storage.listen,
        )
    journal = await Journal.start(storage, broker, feed)
    latencies: list[float] = []
    each = max(1, events // producers)

    async def producer() -> None:
        for _ in range(each):
            started = time.perf_counter()
            await journal.append(Draft(TOPIC, None, MESSAGE_DELTA, common.payload(size, 90)))
            latencies.append(time.perf_counter() - started)

    gaps: list[float] = []
    ticker = asyncio.create_task(tick(gaps))
    try:
        started, cpu_started = time.perf_counter(), time.process_time()
        await asyncio.gather(*(producer() for _ in range(producers)))
        seconds = time.perf_counter() - started
        cpu = time.process_time() - cpu_started
        commits = journal.stats.commits
    finally:
        ticker.cancel()
        await journal.close()
        if feed is not None:
            await feed.close()
        await storage.close()
    ms = [s * 1000 for s in latencies]
    return {
        "producers": producers,
        "events": each * producers,
        "events_per_s": each * producers / seconds,
        "p50_commit_ms": percentile(ms, 0.50),
        "p99_commit_ms": percentile(ms, 0.99),
        "commits": commits,
        "cpu_us_per_event": cpu / (each * producers) * 1e6,
        "loop_gap_p99_ms": percentile([s * 1000 for s in gaps], 0.99),
        "loop_gap_max_ms": max(gaps, default=0.0) * 1000,
    }


async def main_async(args: argparse.Namespace) -> list[dict[str, Any]]:
    results = []
    with tempfile.TemporaryDirectory(prefix="genstream-bench-") as tmp:
        for producers in args.producers:
            storage: Storage
            if args.postgres:
                storage = await PostgresStorage.open(args.postgres)
            else:
                storage = await SqliteStorage.open(str(Path(tmp) / f"journal-{producers}.db"))
            events = min(args.events, args.events_per_producer * producers)
            results.append(await measure(storage, producers, events, args.size))
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--producers", type=int, nargs="+", default=[1, 10, 100])
    parser.add_argument("--events", type=int, default=20_000)
    # One producer waits for every commit: bound its run time, not its event count.
    parser.add_argument("--events-per-producer", type=int, default=5_000)
    parser.add_argument("--size", type=int, default=200)
    parser.add_argument("--postgres", help="a PostgreSQL url: the postgres backend")
    args = parser.parse_args()
    print(orjson.dumps(common.run(main_async(args))).decode(), flush=True)


if __name__ == "__main__":
    main()
