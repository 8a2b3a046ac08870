"""nchan's producer: the benchmark's routes for nginx with nchan, in a process of its own.

nchan is nginx: it runs no producer of ours. This process serves the routes the load
client drives every server with (POST /bench/topic, POST /bench/inject) and hands each
event off with the same pacing (`common.produce`) as a POST to nchan's publisher
location, `/pub/<topic>`, over one persistent connection, pipelined: a hand-off writes
its request and goes on, as the others' hand-offs do not wait for their subscribers. The
inject answers once nchan has answered every POST. Its CPU is this process's, not
nginx's; an event's hand-off time is taken before its POST, so its latency includes that
hop. Each event carries its number in the inject (`seq`), which the replay checks.

    python -m bench.server_nchan --nchan http://127.0.0.1:PORT [--port 0]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import re
import time
from typing import Final, cast
from urllib.parse import urlsplit

import orjson
from aiohttp import web

from bench import common

# nchan's publisher: 201 Created with subscribers on the channel, 202 Accepted without.
PUBLISHED: Final = (b"HTTP/1.1 201", b"HTTP/1.1 202")
CONTENT_LENGTH: Final = re.compile(rb"\r\ncontent-length: *(\d+)", re.IGNORECASE)
HEAD_END: Final = b"\r\n\r\n"
_topics = itertools.count(1)


class Publisher(asyncio.Protocol):
    """One connection to nchan: POSTs written back to back, their answers counted."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.transport: asyncio.Transport | None = None
        self.sent = 0
        self.answered = 0
        self._buffer = b""
        self._waiter: asyncio.Future[None] | None = None
        self._failure: Exception | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are no asyncio.Transport subclass, but they are one.
        self.transport = cast(asyncio.Transport, transport)

    def publish(self, topic: str, body: bytes) -> None:
        if self._failure is not None:
            raise self._failure
        assert self.transport is not None
        self.transport.write(
            b"POST /pub/%s HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\n\r\n%s"
            % (topic.encode(), self.host.encode(), len(body), body)
        )
        self.sent += 1

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while (end := self._buffer.find(HEAD_END)) >= 0:
            head = self._buffer[: end + len(HEAD_END)]
            length = CONTENT_LENGTH.search(head)
            if not head.startswith(PUBLISHED) or length is None:
                self._fail(RuntimeError(f"nchan refused a publish: {head[:300]!r}"))
                return
            whole = end + len(HEAD_END) + int(length.group(1))
            if len(self._buffer) < whole:
                return
            self._buffer = self._buffer[whole:]
            self.answered += 1
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(exc or ConnectionError("nchan closed the publisher's connection"))

    def _fail(self, exc: Exception) -> None:
        self._failure = exc
        self._wake()

    def _wake(self) -> None:
        done = self._failure is not None or self.answered == self.sent
        if done and self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def drained(self) -> None:
        """Until nchan has answered every POST written so far."""
        while self._failure is None and self.answered < self.sent:
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        if self._failure is not None:
            raise self._failure


NCHAN: Final = web.AppKey("nchan", Publisher)


async def create_topic(request: web.Request) -> web.Response:
    return web.json_response({"id": f"t{next(_topics)}"}, status=201)


async def inject(request: web.Request) -> web.Response:
    topic, count, size, rate = common.inject_params(request)
    publisher = request.app[NCHAN]

    numbers = itertools.count()

    def hand_off() -> None:
        publisher.publish(topic, orjson.dumps(common.payload(size, 0, next(numbers))))

    first = await common.produce(count, rate, hand_off)
    await publisher.drained()
    return web.json_response({"first_ns": first, "last_ns": time.time_ns()})


async def serve(nchan: str, port: int) -> None:
    parts = urlsplit(nchan)
    assert parts.hostname is not None and parts.port is not None, nchan
    loop = asyncio.get_running_loop()
    _, publisher = await loop.create_connection(
        lambda: Publisher(parts.netloc), parts.hostname, parts.port
    )
    app = web.Application()
    app[NCHAN] = publisher
    app.router.add_post("/bench/topic", create_topic)
    app.router.add_post("/bench/inject", inject)
    try:
        await common.serve_app(app, port)
    finally:
        if publisher.transport is not None:
            publisher.transport.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nchan", required=True, help="nginx's url (bench/nchan.py)")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    common.run(serve(args.nchan, args.port))


if __name__ == "__main__":
    main()
