"""The load client: its own process, raw sockets, frames counted in raw bytes.

Every stream counts `data: ` in the bytes it receives (one per event on every server
measured) and notes when it has them all; only a sample of streams parses the
hand-off time out of each event for latency. During a flood each stream is read in
gulps (SO_RCVLOWAT, `Reader`), not a recv per event. That keeps the client cheaper than
the servers it measures, nchan (nginx, in C) included: its CPU seconds are reported
next to theirs.

    python -m bench.load KIND URL PID[,PID...] MODE [options]   (prints one JSON object)
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import itertools
import re
import resource
import socket
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, cast
from urllib.parse import urlsplit

import aiohttp
import orjson

from bench import common

DATA: Final = b"data: "
HAND_OFF: Final = re.compile(rb'"t":(\d+)')
CONNECT_CONCURRENCY: Final = 200
TAIL: Final = len(DATA) - 1
# During a flood a stream is read in gulps of up to this many bytes: socket(7)
# SO_RCVLOWAT, the kernel reports the socket readable only once that much has arrived.
# Read as soon as anything arrives, each event cost the client one wake-up and one recv
# (and its ACK) per stream, as much CPU as nchan spent sending it: at 1,000 subscribers
# and 2,000 events 9.2 CPU s (three quarters in the kernel) against nchan's 10.1; read in
# gulps, 0.6 to 1.4 s.
GULP: Final = 32 * 1024
# Fewer streams are read at once. Bytes left unread delay the client's ACK (up to 40 ms
# on Linux), and nginx holds a stream's next small write until its last is ACKed (Nagle:
# it sets TCP_NODELAY on keep-alive connections, not on a response in progress): nchan at
# 1 subscriber took 42 ms for 50 events read in gulps, 1 to 2 ms read at once. With many
# streams nginx writes the others meanwhile, so the wait is hidden (at 100 subscribers
# nchan's events/s were the same or higher, the client's CPU a sixth).
GULPS_FROM: Final = 100
COMPLETED: Final = b"event: generation.completed"
# nchan tags a message id `<second>:<tag>` with an int16_t per-second tag (nchan_msg_id_t
# in its src/nchan_types.h): one channel published to faster than about 32,767 messages
# a second gets broken ids (issue 16). The replay's events are published to it below
# that pace, and it checks the ids it gets; the publish is not what is timed.
NCHAN_PUBLISH_RATE: Final = 20_000
EVENT_ID: Final = re.compile(rb"^id: ?(.*)$", re.MULTILINE)
SEQ: Final = re.compile(rb'"seq":(\d+)')  # the producers' numbering, common.payload
REPLAY_SECONDS: Final = 300
SPARE_FILES: Final = 64  # beside the streams: the HTTP client's, the interpreter's
PORT_RANGE: Final = Path("/proc/sys/net/ipv4/ip_local_port_range")


@dataclass(frozen=True)
class Server:
    kind: str
    url: str
    pids: tuple[int, ...]  # every process serving it (the workers of `--workers`)
    # Where /bench/topic and /bench/inject are served, when not at `url`: nchan's producer
    # (bench/server_nchan.py), a process of its own, its CPU counted apart.
    control: str | None = None
    producer_pids: tuple[int, ...] = ()

    @property
    def control_url(self) -> str:
        return self.url if self.control is None else self.control

    def producer_cpu_seconds(self) -> float:
        return sum(common.cpu_seconds(pid) for pid in self.producer_pids)

    def cpu_seconds(self) -> float:
        return sum(common.cpu_seconds(pid) for pid in self.pids)

    def rss_bytes(self) -> int:
        return sum(common.rss_bytes(pid) for pid in self.pids)

    def peak_rss_bytes(self) -> int:
        """The sum of each process's peak: what the workers held at most, together."""
        return sum(common.peak_rss_bytes(pid) for pid in self.pids)

    def reset_peak_rss(self) -> None:
        for pid in self.pids:
            common.reset_peak_rss(pid)

    @property
    def host_port(self) -> tuple[str, int]:
        parts = urlsplit(self.url)
        assert parts.hostname is not None and parts.port is not None
        return parts.hostname, parts.port

    def stream_path(self, topic: str, cursor: int | None) -> str:
        if self.kind != "genstream":
            return f"/stream/{topic}"
        query = "" if cursor is None else f"?last_event_id={cursor}"
        return f"/api/projects/{topic}/stream{query}"

    def topic_path(self) -> str:
        return "/api/projects" if self.kind == "genstream" else "/bench/topic"


@dataclass(eq=False, slots=True)
class Reader(asyncio.Protocol):
    """One SSE stream read off a raw socket.

    `reset(goal, sampled, gulps=True)`: read the next `goal` events in gulps (GULP). The
    low-water mark is kept at most half the bytes still to come, reckoned from the
    frames seen before the reset, so the kernel never holds back the last of them: it
    falls as the stream nears its goal, to 1 byte for the last frames."""

    request: bytes
    goal: int = 0
    sampled: bool = False
    on_goal: Callable[[Reader], None] | None = None
    on_short: Callable[[Reader], None] | None = None  # closed before its goal
    opened: asyncio.Future[int] = field(default_factory=lambda: _future())
    closed: asyncio.Future[None] = field(default_factory=lambda: _future())
    count: int = 0
    done_ns: int = 0
    latencies_ns: list[int] = field(default_factory=list)
    kept: list[bytes] | None = None  # the stream's bytes, when a list is given
    _head: bytes = b""
    _tail: bytes = b""
    _lines: bytes = b""
    _bytes: int = 0  # of the stream since the last reset
    _frame: int = 0  # the bytes of an event, when read in gulps (0: at once)
    _lowat: int = 1  # the socket's SO_RCVLOWAT (1: the kernel's default)
    transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are no asyncio.Transport subclass, but they are one.
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        now = time.time_ns()
        if not self.opened.done():
            self._head += data
            end = self._head.find(b"\r\n\r\n")
            if end < 0 or len(self._head) == end + 4:
                return  # the status line and headers, but no byte of the stream yet
            if not self._head.startswith(b"HTTP/1.1 200"):
                self.opened.set_exception(RuntimeError(self._head[:200].decode("latin-1")))
                return
            data = self._head[end + 4 :]
            self.opened.set_result(now)
        if self.kept is not None:
            self.kept.append(data)
        # A `data: ` cut by the previous read is in its tail and this read's start (TAIL
        # bytes hold none whole), so no bytes are joined but those.
        self.count += data.count(DATA) + (self._tail + data[:TAIL]).count(DATA)
        self._tail = data[-TAIL:] if len(data) >= TAIL else (self._tail + data)[-TAIL:]
        self._bytes += len(data)
        if self.sampled:
            self._sample(data, now)
        if self.goal and self.count >= self.goal and not self.done_ns:
            self.done_ns = now
            if self.on_goal is not None:
                self.on_goal(self)
        elif self._frame:
            self._lower(self._mark())

    def reset(self, goal: int, sampled: bool, gulps: bool = False) -> None:
        frame = self._bytes // self.count if self.count else 0
        self.goal, self.sampled, self.count, self.done_ns = goal, sampled, 0, 0
        self._tail = self._lines = b""
        self._bytes = 0
        self._frame = frame if gulps else 0
        self._set_lowat(self._mark())

    def _mark(self) -> int:
        if not self._frame:
            return 1
        return max(1, min(GULP, (self.goal - self.count) * self._frame // 2))

    def _lower(self, mark: int) -> None:
        if mark < self._lowat:
            self._set_lowat(mark)

    def _set_lowat(self, mark: int) -> None:
        if mark != self._lowat and self.transport is not None:
            sock = self.transport.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, mark)
            self._lowat = mark

    def _sample(self, data: bytes, now: int) -> None:
        self._lines += data
        cut = self._lines.rfind(b"\n")
        if cut < 0:
            return
        whole, self._lines = self._lines[:cut], self._lines[cut + 1 :]
        self.latencies_ns.extend(now - int(m.group(1)) for m in HAND_OFF.finditer(whole))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(exc or ConnectionError("closed before the stream opened"))
        if not self.closed.done():
            self.closed.set_result(None)
        if self.goal and not self.done_ns and self.on_short is not None:
            self.on_short(self)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.abort()


def _future() -> asyncio.Future[Any]:
    return asyncio.get_running_loop().create_future()


def _get(path: str, host: str, extra: str = "") -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n{extra}\r\n"
    ).encode()


async def _open(server: Server, readers: list[Reader]) -> None:
    _room_for(len(readers))
    host, port = server.host_port
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

    async def one(reader: Reader) -> None:
        async with gate:
            await loop.create_connection(lambda: reader, host, port)
            await reader.opened

    await asyncio.gather(*(one(reader) for reader in readers))


def _room_for(streams: int) -> None:
    """Fail at once, saying why, where thousands of streams would fail one by one."""
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]  # common.raise_nofile's
    if streams + SPARE_FILES > nofile:
        common.die(f"{streams} streams need more descriptors than RLIMIT_NOFILE's {nofile}")
    # Each stream takes an ephemeral port of 127.0.0.1 (ip(7) ip_local_port_range); one
    # in TIME_WAIT towards the same server port is not reused for a minute.
    low, high = map(int, PORT_RANGE.read_text().split())
    if streams > high - low + 1:
        common.die(f"{streams} streams, but {PORT_RANGE} holds {high - low + 1} ports")


def _client_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def _new_topic(http: aiohttp.ClientSession, server: Server) -> str:
    url = server.control_url + server.topic_path()
    async with http.post(url, json={"name": "bench"}) as response:
        assert response.status == 201, await response.text()
        topic: str = (await response.json())["id"]
        return topic


async def _inject(
    http: aiohttp.ClientSession, server: Server, topic: str, n: int, size: int, rate: float = 0
) -> int:
    params = {"topic": topic, "n": str(n), "size": str(size), "rate": str(rate)}
    async with http.post(server.control_url + "/bench/inject", params=params) as response:
        assert response.status == 200, await response.text()
        first: int = (await response.json())["first_ns"]
        return first


# -- modes ---------------------------------------------------------------------------


async def fanout(
    http: aiohttp.ClientSession,
    server: Server,
    subscribers: int,
    events: int,
    size: int,
    sample: int,
    latency_events: int,
    latency_rate: float,
) -> dict[str, Any]:
    """`subscribers` streams on one topic. First `latency_events` at `latency_rate`/s, a
    pace every server sustains: hand-off-to-arrival latency, timed on a sample of the
    streams. Then a flood of `events` (one hand-off per loop turn of the server):
    deliveries per second, the server's CPU seconds and peak RSS."""
    topic = await _new_topic(http, server)
    request = _get(server.stream_path(topic, 0), server.host_port[0])
    readers = [Reader(request) for _ in range(subscribers)]
    await _open(server, readers)
    # Latency is measured in the steady state: not behind the streams' own setup (their
    # first reads, their session rows) still running after their first bytes.
    await _quiet(server)
    every = max(1, subscribers // sample)
    try:
        for i, reader in enumerate(readers):
            reader.reset(latency_events, sampled=i % every == 0)
        await _deliver(http, server, topic, readers, latency_events, size, latency_rate)
        latencies = [ns / 1e6 for r in readers for ns in r.latencies_ns]
        for reader in readers:
            reader.reset(events, sampled=False, gulps=subscribers >= GULPS_FROM)
        server.reset_peak_rss()
        cpu0, client0 = server.cpu_seconds(), _client_cpu()
        producer0 = server.producer_cpu_seconds()
        first_ns = await _deliver(http, server, topic, readers, events, size, 0)
        cpu = server.cpu_seconds() - cpu0
        client = _client_cpu() - client0
        producer = server.producer_cpu_seconds() - producer0
        last_ns = max(r.done_ns for r in readers)
    finally:
        for reader in readers:
            reader.close()
    seconds = (last_ns - first_ns) / 1e9
    return {
        "events_per_s": subscribers * events / seconds,
        "seconds": seconds,
        "p50_ms": percentile(latencies, 0.50),
        "p99_ms": percentile(latencies, 0.99),
        "latency_samples": len(latencies),
        "server_cpu_s": cpu,
        "server_peak_rss_mib": server.peak_rss_bytes() / 2**20,
        "client_cpu_s": client,
        **({"producer_cpu_s": producer} if server.producer_pids else {}),
    }


async def _deliver(
    http: aiohttp.ClientSession,
    server: Server,
    topic: str,
    readers: list[Reader],
    events: int,
    size: int,
    rate: float,
) -> int:
    """Have the server hand off `events`; wait until every reader has them all."""
    remaining = len(readers)
    all_there: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def reached(reader: Reader) -> None:
        nonlocal remaining
        remaining -= 1
        if remaining == 0 and not all_there.done():
            all_there.set_result(None)

    def short(reader: Reader) -> None:
        if not all_there.done():
            all_there.set_exception(
                RuntimeError(f"a stream closed after {reader.count} of {events} events")
            )

    for reader in readers:
        reader.on_goal, reader.on_short = reached, short
    first_ns = await _inject(http, server, topic, events, size, rate)
    async with asyncio.timeout(600):
        await all_there
    return first_ns


async def ttfb(http: aiohttp.ClientSession, server: Server, count: int) -> dict[str, Any]:
    """A new stream, one after another: from connect to its first byte of body."""
    topic = await _new_topic(http, server)
    host, port = server.host_port
    loop = asyncio.get_running_loop()
    times: list[float] = []
    for _ in range(count):
        reader = Reader(_get(server.stream_path(topic, None), host))
        started = time.time_ns()
        await loop.create_connection(lambda r=reader: r, host, port)  # type: ignore[misc]
        times.append((await reader.opened - started) / 1e6)
        reader.close()
        await reader.closed
    return {"median_ms": statistics.median(times), "p99_ms": percentile(times, 0.99)}


async def idle(http: aiohttp.ClientSession, server: Server, streams: int) -> dict[str, Any]:
    """Server memory per open stream with nothing to send, at `streams` streams."""
    topic = await _new_topic(http, server)
    before = server.rss_bytes()
    readers = [
        Reader(_get(server.stream_path(topic, None), server.host_port[0])) for _ in range(streams)
    ]
    try:
        await _open(server, readers)
        await _quiet(server)
        after = server.rss_bytes()
    finally:
        for reader in readers:
            reader.close()
    return {"streams": streams, "bytes_per_stream": (after - before) / streams}


async def _quiet(server: Server) -> None:
    """Until the server stops using CPU (its streams' bookkeeping is done), at most 10 s."""
    for _ in range(50):
        cpu = server.cpu_seconds()
        await asyncio.sleep(0.2)
        if server.cpu_seconds() - cpu < 0.01:
            return


async def replay(
    http: aiohttp.ClientSession, server: Server, events: int, size: int, clients: int = 1
) -> dict[str, Any]:
    """`events` stored events, then `clients` clients resuming from cursor 0 at once (nchan:
    from its oldest message), from connect to each one's last event. Once timed, each
    client's stream is checked: every event once, in order (`check_replay`)."""
    topic = await _new_topic(http, server)
    rate = NCHAN_PUBLISH_RATE if server.kind == "nchan" else 0
    await _inject(http, server, topic, events, size, rate)
    loop = asyncio.get_running_loop()
    done: list[asyncio.Future[None]] = [loop.create_future() for _ in range(clients)]
    readers = [
        Reader(
            _get(server.stream_path(topic, 0), server.host_port[0]),
            goal=events,
            on_goal=functools.partial(_reached, future),
            kept=[],
        )
        for future in done
    ]
    cpu0 = server.cpu_seconds()
    started = time.time_ns()
    try:
        await _open(server, readers)
        async with asyncio.timeout(REPLAY_SECONDS):
            await asyncio.gather(*done)
    except TimeoutError:
        # A replay that stalls (nchan's, with broken ids) says what it got, not only
        # that time ran out.
        for reader in readers:
            _check_kept(reader, events)
        raise
    finally:
        for reader in readers:
            reader.close()
    seconds = (max(r.done_ns for r in readers) - started) / 1e9
    cpu = server.cpu_seconds() - cpu0
    for reader in readers:
        _check_kept(reader, events)
    return {
        "events": events,
        "clients": clients,
        "events_per_s": events * clients / seconds,
        "seconds": seconds,
        "server_cpu_s": cpu,
        **({"publish_rate_per_s": rate} if rate else {}),
    }


def _reached(future: asyncio.Future[None], reader: Reader) -> None:
    future.set_result(None)


class ReplayBroken(RuntimeError):
    pass


def _check_kept(reader: Reader, events: int) -> None:
    assert reader.kept is not None
    check_replay(b"".join(reader.kept), events)


def check_replay(stream: bytes, events: int) -> None:
    """Fail unless `stream` holds exactly `events` events, each once, in order: their ids
    unique and increasing (genstream's a number, nchan's `<second>:<tag>`, compared part
    by part) and the producers' numbers (`"seq"`) 0 to events - 1, each once. The order
    is checked first: it says more of a broken stream than its count."""
    ids = [tuple(int(part) for part in m.group(1).split(b":")) for m in EVENT_ID.finditer(stream)]
    for i, (before, after) in enumerate(itertools.pairwise(ids)):
        if after <= before:
            raise ReplayBroken(f"event {i + 1}'s id {after} does not follow {before}")
    count = stream.count(DATA)
    if count != events:
        raise ReplayBroken(f"{count} events replayed, {events} published")
    if len(ids) != events:
        raise ReplayBroken(f"{len(ids)} ids for {events} events")
    seen = sorted(int(m.group(1)) for m in SEQ.finditer(stream))
    if seen != list(range(events)):
        missing = sorted(set(range(events)) - set(seen))[:5]
        raise ReplayBroken(
            f"{len(seen)} payloads replayed, {len(set(seen))} distinct, of "
            f"{events} published (missing: {missing}...)"
        )


async def offline(http: aiohttp.ClientSession, server: Server, runs: int) -> dict[str, Any]:
    """A prompt to the offline provider (rate 0) until its generation.completed arrives."""
    topic = await _new_topic(http, server)
    times: list[float] = []
    for i in range(runs):
        started = time.perf_counter()
        async with http.post(
            f"{server.url}/api/projects/{topic}/generations",
            json={"prompt": f"a todo api, take {i}"},
            headers={"Accept": "text/event-stream"},
        ) as response:
            assert response.status == 200, await response.text()
            body = b""
            async with asyncio.timeout(60):
                while COMPLETED not in body:
                    chunk = await response.content.readany()
                    if not chunk:
                        raise RuntimeError("the stream ended before generation.completed")
                    body = body[-len(COMPLETED) :] + chunk
            times.append((time.perf_counter() - started) * 1000)
    return {"median_ms": statistics.median(times), "runs": runs}


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    server = Server(args.kind, args.url, _pids(args.pids), args.control, _pids(args.producer))
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        if args.mode == "fanout":
            return await fanout(
                http,
                server,
                args.subscribers,
                args.events,
                args.size,
                args.sample,
                args.latency_events,
                args.latency_rate,
            )
        if args.mode == "ttfb":
            return await ttfb(http, server, args.count)
        if args.mode == "idle":
            return await idle(http, server, args.streams)
        if args.mode == "replay":
            return await replay(http, server, args.events, args.size, args.clients)
        return await offline(http, server, args.count)


def _pids(listed: str) -> tuple[int, ...]:
    return tuple(int(pid) for pid in listed.split(",") if pid)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=("genstream", "aiohttp-sse", "raw", "nchan"))
    parser.add_argument("url")
    parser.add_argument("pids", help="the server's process ids, comma-separated")
    parser.add_argument("mode", choices=("fanout", "ttfb", "idle", "replay", "offline"))
    parser.add_argument("--subscribers", type=int, default=1)
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--size", type=int, default=200)
    parser.add_argument("--sample", type=int, default=20)
    parser.add_argument("--latency-events", type=int, default=100)
    parser.add_argument("--latency-rate", type=float, default=100.0)
    parser.add_argument("--count", type=int, default=30)
    parser.add_argument("--streams", type=int, default=5000)
    parser.add_argument("--clients", type=int, default=1)
    parser.add_argument("--control", help="the url of the bench routes, if not URL's")
    parser.add_argument("--producer", default="", help="the producer's pids, if apart")
    args = parser.parse_args()
    common.raise_nofile()
    print(orjson.dumps(common.run(main_async(args))).decode(), flush=True)


if __name__ == "__main__":
    main()
