"""What the benchmark's processes share: the event loop, the listening socket, /proc."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import itertools
import os
import resource
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

import orjson
from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

LOOPBACK: Final = "127.0.0.1"
# Same listen backlog as service/web/server.py, so a thousand connects in a burst are not
# dropped by any of the servers.
BACKLOG: Final = 2048
EVENT_TYPE: Final = "message.delta"
SSE_HEADERS: Final = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
}
CONNECTED: Final = b": connected\n\n"
TICKS: Final = os.sysconf("SC_CLK_TCK")
PAGE: Final = os.sysconf("SC_PAGE_SIZE")


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when installed (the `bench` extra), the same for every process measured,
    as service.web.server.loop_factory gives `genstream serve`. Not imported from there: the
    references must not load genstream's modules (their memory is measured)."""
    try:
        uvloop = importlib.import_module("uvloop")
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def loop_name() -> str:
    return "uvloop" if loop_factory() is not None else "asyncio"


def run(main: Awaitable[Any]) -> Any:
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main)  # type: ignore[arg-type]


def raise_nofile() -> int:
    """Thousands of sockets need more descriptors than the usual soft limit of 1024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def free_port() -> int:
    """A loopback port free now, for a server that cannot be told to take port 0 and say
    which it got (the workers of `--workers`, nginx). It is bound after this socket is
    closed: another program could take it in between, which on the benchmark's quiet
    machine does not happen."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def payload(size: int, overhead: int, seq: int | None = None) -> dict[str, Any]:
    """A `{"t": <hand-off ns>, "pad": ...}` payload whose JSON, with `overhead` bytes of
    other fields around it, is about `size` bytes. With `seq`, also `"seq": <seq>`: the
    event's number in its inject, by which a replay checks it saw every event once."""
    fields: dict[str, Any] = {"t": time.time_ns()}
    if seq is not None:
        fields["seq"] = seq
    base = len(orjson.dumps({**fields, "pad": ""}))
    return {**fields, "pad": "x" * max(0, size - base - overhead)}


async def produce(count: int, rate: float, hand_off: Callable[[], object]) -> int:
    """The producer every server runs: `count` hand-offs, `rate` per second (0: one per
    loop turn, as fast as the server lets it). Returns the time of the first, in ns."""
    first = time.time_ns()
    for i in range(count):
        hand_off()
        if rate > 0:
            delay = first + (i + 1) * 1e9 / rate - time.time_ns()
            await asyncio.sleep(max(0.0, delay / 1e9))
        else:
            await asyncio.sleep(0)
    return first


def inject_params(request: web.Request) -> tuple[str, int, int, float]:
    query = request.query
    return query["topic"], int(query["n"]), int(query["size"]), float(query.get("rate", "0"))


# -- the references' topics: a set of subscriber queues per topic ------------------------

TOPICS: Final = web.AppKey("topics", dict[str, set[Any]])
_topic_ids = itertools.count(1)


async def create_topic(request: web.Request) -> web.Response:
    topic = f"t{next(_topic_ids)}"
    request.app[TOPICS][topic] = set()
    return web.json_response({"id": topic}, status=201)


def reference_main(stream: Handler, inject: Handler) -> None:
    """Run a reference server: POST /bench/topic, GET /stream/{topic}, POST /bench/inject."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    app = web.Application()
    app[TOPICS] = {}
    app.router.add_post("/bench/topic", create_topic)
    app.router.add_get("/stream/{topic}", stream)
    app.router.add_post("/bench/inject", inject)
    raise_nofile()
    run(serve_app(app, args.port))


# -- a server process --------------------------------------------------------------------


async def serve_app(app: web.Application, port: int) -> None:
    """Serve a reference app as genstream serves itself (handler cancellation on),
    announce the port on stdout, and run until SIGTERM."""
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, LOOPBACK, port, backlog=BACKLOG)
    await site.start()
    await announce_and_wait(runner.addresses[0][1])
    await runner.cleanup()


async def announce_and_wait(port: int, stop: asyncio.Event | None = None) -> None:
    """Say `PORT <port> <pid>` on stdout, then wait for SIGTERM or SIGINT (or `stop`)."""
    stop = asyncio.Event() if stop is None else stop
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    # One write(2): the workers of `--workers` share one stdout pipe, and print()'s line
    # came out in two writes, so that two workers' lines were once read as one ('PORT
    # 41927 28027PORT 41927 28028'). pipe(7): a write of at most PIPE_BUF bytes is atomic.
    sys.stdout.flush()
    os.write(sys.stdout.fileno(), f"PORT {port} {os.getpid()}\n".encode())
    await stop.wait()


# -- /proc ---------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    # fields[0] is field 3 (state): utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/statm", "rb") as f:
        return int(f.read().split()[1]) * PAGE


def peak_rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status", "rb") as f:
        for line in f:
            if line.startswith(b"VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmHWM for {pid}")


def reset_peak_rss(pid: int) -> None:
    """proc(5): writing 5 to clear_refs resets the peak RSS to the current RSS."""
    with contextlib.suppress(OSError), open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")


def die(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
    raise SystemExit(1)
