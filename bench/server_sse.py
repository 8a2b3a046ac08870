"""The library reference: aiohttp-sse used the way its README shows, nothing stored.

Each event is JSON-encoded once at hand-off; every subscriber's handler takes it from
its asyncio.Queue and calls `EventSourceResponse.send`, which frames it per client.
"""

from __future__ import annotations

import asyncio
import itertools
import time

import orjson
from aiohttp import web
from aiohttp_sse import sse_response

from bench import common

Item = tuple[str, str]
_ids = itertools.count(1)


async def stream(request: web.Request) -> web.StreamResponse:
    members = request.app[common.TOPICS][request.match_info["topic"]]
    queue: asyncio.Queue[Item] = asyncio.Queue()
    members.add(queue)
    try:
        async with sse_response(request) as response:
            await response.write(common.CONNECTED)
            while response.is_connected():
                data, event_id = await queue.get()
                await response.send(data, id=event_id, event=common.EVENT_TYPE)
        return response
    finally:
        members.discard(queue)


async def inject(request: web.Request) -> web.Response:
    topic, count, size, rate = common.inject_params(request)
    members: set[asyncio.Queue[Item]] = request.app[common.TOPICS][topic]

    def hand_off() -> None:
        item = (orjson.dumps(common.payload(size, 0)).decode(), str(next(_ids)))
        for queue in members:
            queue.put_nowait(item)

    first = await common.produce(count, rate, hand_off)
    return web.json_response({"first_ns": first, "last_ns": time.time_ns()})


if __name__ == "__main__":
    common.reference_main(stream, inject)
