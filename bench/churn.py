"""Memory after connection churn (issue 11 item 8): waves of streams that replay a long
log from cursor 0 and drop, with the server's memory read after each wave.

    python -m bench.churn [--events 50000] [--connections 2000] [--waves 10] [--grow 0]
                          [--cursor 0|none] [--trim] [--tracemalloc FRAMES] [--env K=V ...]

The server is bench/churn_server.py: genstream's app as `genstream serve` runs it, with
its default settings, plus read-only memory routes. Its log is built through the API:
offline generations at tokens_per_second 0 (about 125 events each for its prompt). Then
each wave opens connections/waves streams at once from cursor 0: some drop as soon as
they open, most cut mid-replay after a random number of events, some read to the newest
event; half leave with a RST, half with a FIN. After a wave (no stream open, and every
session's end committed) the server reports VmRSS, the wave's VmHWM, pymalloc's arenas,
glibc's heap, the objects the collector tracks and, with --tracemalloc, the Python
allocations alive and where they grew. `--env` passes allocator settings to the server
only (MALLOC_ARENA_MAX=2, PYTHONMALLOC=malloc); `--trim` runs gc.collect() and
malloc_trim(0) in it after every wave; `--grow N` adds N generations to the log after
every wave; `--cursor none` opens the same streams live, with no replay.
Prints one JSON object; a table per wave goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import random
import sqlite3
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import aiohttp
import orjson

from bench import common, load

MIB: Final = 1024 * 1024
CONNECT_CONCURRENCY: Final = 200
SETTLE_TIMEOUT: Final = 60.0
STREAM_TIMEOUT: Final = 600.0
PROMPT: Final = "a todo api with tests"


@dataclass(frozen=True)
class Plan:
    """What one connection does: read `goal` events (0: none, cut once open), then leave
    with a RST (`abort`) or a FIN."""

    goal: int
    abort: bool


@dataclass
class Server:
    process: asyncio.subprocess.Process
    url: str
    http: aiohttp.ClientSession
    db: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    async def json(self, method: str, path: str, **kwargs: Any) -> Any:
        async with self.http.request(method, self.url + path, **kwargs) as response:
            body = await response.read()
            assert response.status < 300, (response.status, body[:300])
            return orjson.loads(body)


@contextlib.asynccontextmanager
async def server(db: Path, tracemalloc: int, env: dict[str, str]) -> AsyncIterator[Server]:
    command = [sys.executable, "-m", "bench.churn_server", "--port", "0"]
    if tracemalloc:
        command += ["--tracemalloc", str(tracemalloc)]
    child_env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("GENSTREAM_")},
        "GENSTREAM_STORAGE_PATH": str(db),
        "GENSTREAM_OFFLINE_TOKENS_PER_SECOND": "0",
        "GENSTREAM_LOG_LEVEL": "warning",
        **env,
    }
    process = await asyncio.create_subprocess_exec(
        *command, env=child_env, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert process.stdout is not None
        async with asyncio.timeout(30):
            line = await process.stdout.readline()
        if not line.startswith(b"PORT "):
            common.die(f"the churn server did not start: {line!r}")
        url = f"http://{common.LOOPBACK}:{int(line.split()[1])}"
        connector = aiohttp.TCPConnector(limit=0)
        timeout = aiohttp.ClientTimeout(total=None)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
            yield Server(process, url, http, db)
    finally:
        if process.returncode is None:
            process.terminate()
        await process.wait()


async def generate(server: Server, project_id: str) -> None:
    """One offline generation, its own stream read to the end (it closes after the
    terminal event)."""
    path = f"/api/projects/{project_id}/generations"
    headers = {"Accept": "text/event-stream"}
    async with asyncio.timeout(STREAM_TIMEOUT):
        async with server.http.post(
            server.url + path, json={"prompt": PROMPT}, headers=headers
        ) as response:
            assert response.status == 200, await response.text()
            body = await response.read()
    if b"event: generation.completed" not in body:
        raise RuntimeError(f"a generation did not complete: {body[-300:]!r}")


@dataclass(frozen=True)
class Log:
    """How many events the project holds, and its newest id."""

    events: int
    last_id: int


def log_size(db: Path, project_id: str) -> Log:
    """The project's stored events, read from the file (ids are global: not a count)."""
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        count, last = conn.execute(
            "SELECT count(*), COALESCE(max(id), 0) FROM events WHERE project_id = ?",
            (project_id,),
        ).fetchone()
    return Log(int(count), int(last))


async def build_log(server: Server, db: Path, project_id: str, events: int) -> Log:
    while (log := log_size(db, project_id)).events < events:
        await generate(server, project_id)
    return log


def plans(rng: random.Random, count: int, log: Log, args: argparse.Namespace) -> list[Plan]:
    """Drop at once, cut mid-replay after a random number of events, or read to the
    newest event: in the shares asked for, alternately by RST and by FIN."""
    chosen: list[Plan] = []
    for i in range(count):
        roll, abort = rng.random(), i % 2 == 0
        if args.cursor == "none" or roll < args.drop_share:
            chosen.append(Plan(0, abort))
        elif roll < args.drop_share + args.live_share:
            chosen.append(Plan(log.events, abort))
        else:
            chosen.append(Plan(rng.randint(1, log.events - 1), abort))
    return chosen


async def wave(server: Server, project_id: str, wave_plans: list[Plan], cursor: str) -> int:
    """Open every stream of the wave at once; returns the events they read in all."""
    host, port = common.LOOPBACK, int(server.url.rsplit(":", 1)[1])
    query = "" if cursor == "none" else f"?last_event_id={cursor}"
    request = (
        f"GET /api/projects/{project_id}/stream{query} HTTP/1.1\r\nHost: {host}\r\n"
        "Accept: text/event-stream\r\n\r\n"
    ).encode()
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
    readers: list[load.Reader] = []

    async def one(plan: Plan) -> int:
        finished: asyncio.Future[None] = loop.create_future()

        def cut(reader: load.Reader) -> None:
            assert reader.transport is not None
            if plan.abort:
                reader.transport.abort()
            else:
                reader.transport.close()
            finished.set_result(None)

        def short(reader: load.Reader) -> None:
            finished.set_exception(ConnectionError(f"closed after {reader.count} events"))

        reader = load.Reader(request, goal=plan.goal, on_goal=cut, on_short=short)
        readers.append(reader)
        async with gate:
            await loop.create_connection(lambda: reader, host, port)
        await reader.opened
        if not plan.goal:
            cut(reader)
        await finished
        return reader.count

    try:
        async with asyncio.timeout(STREAM_TIMEOUT):
            counts = await asyncio.gather(*(one(plan) for plan in wave_plans))
    except TimeoutError:
        stuck = [(r.count, r.goal) for r in readers if not r.done_ns and r.goal]
        raise RuntimeError(f"streams short of their goal (count, goal): {stuck}") from None
    return sum(counts)


def sessions(db: Path) -> tuple[int, int]:
    """Streaming sessions recorded in the file: how many, and how many not yet closed."""
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        total, still_open = conn.execute(
            "SELECT count(*), COALESCE(sum(ended_at IS NULL), 0) FROM stream_sessions"
        ).fetchone()
    return int(total), int(still_open)


async def settled(server: Server, expected_sessions: int = 0) -> None:
    """Wait until no stream is open and the end of every session is committed (at least
    `expected_sessions` of them). Not only /api/connections: a stream's session records
    are queued to the journal as it closes, and each holds its connection's objects until
    committed, so memory read before that counts a backlog, not what stays."""
    async with asyncio.timeout(SETTLE_TIMEOUT):
        # A poll: the server has no event to await from outside.
        while (await server.json("GET", "/api/connections"))["total"]:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        while True:
            total, still_open = sessions(server.db)
            if total >= expected_sessions and not still_open:
                return
            await asyncio.sleep(0.05)


async def measured_wave(
    server: Server, project_id: str, log: Log, number: int, args: argparse.Namespace
) -> dict[str, Any]:
    """One wave, then the server's memory once no stream of it is left; its VmHWM is the
    wave's own peak (reset before it)."""
    common.reset_peak_rss(server.pid)
    started = time.monotonic()
    expected = sessions(server.db)[0] + args.per_wave
    read = await wave(server, project_id, plans(args.rng, args.per_wave, log, args), args.cursor)
    await settled(server, expected)
    seconds = time.monotonic() - started
    memory = await server.json("GET", "/bench/memory")
    row: dict[str, Any] = {
        "wave": number,
        "log": dataclasses.asdict(log),
        "events_read": read,
        "seconds": seconds,
        "memory": memory,
    }
    extra = f"  {read:,} events read in {seconds:.1f} s"
    if args.trim:
        row["trim"] = trim = await server.json("POST", "/bench/trim")
        extra += f"  trimmed to {trim['after']['rss'] / MIB:.1f} MiB"
    say(_row(f"wave {number}", memory, extra))
    for growth in memory.get("growth", [])[: args.show_growth]:
        say(f"{growth['bytes']:>+21,} B {growth['blocks']:>+7,} blocks  {growth['where']}")
    return row


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _row(label: str, memory: dict[str, Any], extra: str = "") -> str:
    traced = f" traced {memory['traced'] / MIB:6.1f}" if "traced" in memory else ""
    traced += f" objects {memory['gc_objects']:,}"
    return (
        f"{label:>9} RSS {memory['rss'] / MIB:6.1f} MiB  HWM {memory['hwm'] / MIB:6.1f}  "
        f"pymalloc arenas {memory['pymalloc_arenas']:4d} "
        f"(used {memory['pymalloc_used'] / MIB:5.1f})"
        f"  glibc heap {memory.get('glibc_heap', 0) / MIB:6.1f} "
        f"(free {memory.get('glibc_free', 0) / MIB:5.1f}){traced}{extra}"
    )


async def run(args: argparse.Namespace) -> dict[str, Any]:
    env = dict(item.split("=", 1) for item in args.env)
    args.rng = random.Random(args.seed)
    args.per_wave = args.connections // args.waves
    with tempfile.TemporaryDirectory(prefix="churn-") as tmp:
        db = Path(tmp) / "genstream.db"
        async with server(db, args.tracemalloc, env) as running:
            created = await running.json("POST", "/api/projects", json={"name": "churn"})
            project_id: str = created["id"]
            started = time.monotonic()
            log = await build_log(running, db, project_id, args.events)
            build_s = time.monotonic() - started
            await settled(running)
            idle = await running.json("GET", "/bench/memory")
            say(f"log of {log.events:,} events built in {build_s:.1f} s")
            say(_row("idle", idle))
            waves: list[dict[str, Any]] = []
            for number in range(1, args.waves + 1):
                waves.append(await measured_wave(running, project_id, log, number, args))
                for _ in range(args.grow):
                    await generate(running, project_id)
                log = log_size(db, project_id)
    return {
        "events": args.events,
        "connections": args.connections,
        "waves_count": args.waves,
        "cursor": args.cursor,
        "env": env,
        "trim": args.trim,
        "tracemalloc": args.tracemalloc,
        "idle": idle,
        "waves": waves,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=50_000, help="events in the log at least")
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--waves", type=int, default=10)
    parser.add_argument("--grow", type=int, default=0, help="generations added after each wave")
    parser.add_argument("--cursor", choices=("0", "none"), default="0")
    parser.add_argument("--drop-share", type=float, default=0.3, help="streams cut once open")
    parser.add_argument("--live-share", type=float, default=0.1, help="streams read to the end")
    parser.add_argument("--trim", action="store_true", help="malloc_trim(0) after every wave")
    parser.add_argument("--tracemalloc", type=int, default=0, help="frames per traceback")
    parser.add_argument("--show-growth", type=int, default=5)
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for the server")
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()
    common.raise_nofile()
    print(orjson.dumps(common.run(run(args))).decode(), flush=True)


if __name__ == "__main__":
    main()
