"""The near-limit reference: a minimal aiohttp SSE server, in-memory queues, no storage.

Each event's frame is encoded once at hand-off and put on every subscriber's
asyncio.Queue; each handler writes what it takes, one frame per write: the shortest
code aiohttp allows, nothing stored.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Final

import orjson
from aiohttp import web

from bench import common

EVENT: Final = common.EVENT_TYPE.encode()
_ids = itertools.count(1)


async def stream(request: web.Request) -> web.StreamResponse:
    members = request.app[common.TOPICS][request.match_info["topic"]]
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    members.add(queue)
    try:
        response = web.StreamResponse(headers=common.SSE_HEADERS)
        await response.prepare(request)
        await response.write(common.CONNECTED)
        while True:
            await response.write(await queue.get())
    finally:
        members.discard(queue)


async def inject(request: web.Request) -> web.Response:
    topic, count, size, rate = common.inject_params(request)
    members: set[asyncio.Queue[bytes]] = request.app[common.TOPICS][topic]

    def hand_off() -> None:
        data = orjson.dumps(common.payload(size, 0))
        frame = b"id: %d\nevent: %s\ndata: %s\n\n" % (next(_ids), EVENT, data)
        for queue in members:
            queue.put_nowait(frame)

    first = await common.produce(count, rate, hand_off)
    return web.json_response({"first_ns": first, "last_ns": time.time_ns()})


if __name__ == "__main__":
    common.reference_main(stream, inject)
