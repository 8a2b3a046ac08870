"""What each proxy adds to an event's latency: `.venv/bin/python -m tests.proxy_latency`.

genstream (the offline provider at TOKENS_PER_SECOND, so events go out one at a time, as
a model's do) directly and behind each proxy with its deploy/ recipe over HTTP/1.1, and
behind HAProxy without `option http-no-delay`. A project stream is opened first, then a
generation is submitted; for each of its first EVENTS events, latency is the arrival
time minus the event's `ts` (the wall clock, in ms, when genstream drafted it).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Final

import orjson

from service.eventlog import event as ev
from service.web.server import start
from tests.conftest import LOOPBACK, base_settings, client_session
from tests.proxies import BINARIES, Kind, recipe, run_proxy
from tests.sse_reader import SSEReader

TOKENS_PER_SECOND: Final = 100
EVENTS: Final = 300
NO_DELAY_LINE: Final = next(
    line + "\n" for line in recipe("haproxy-streams.cfg").splitlines() if "http-no-delay" in line
)


async def measure(url: str, api: str, events: int) -> list[float]:
    """Milliseconds from each event's ts to its arrival through `url`."""
    async with client_session() as http:
        async with http.post(f"{api}/api/projects", json={}) as response:
            project_id = (await response.json())["id"]
        delays: list[float] = []
        async with http.get(f"{url}/api/projects/{project_id}/stream") as stream:
            reader = SSEReader(stream)
            while (await reader.frame()).event != ev.STREAM_CURSOR:
                pass  # retry and the connected comment first; live from the cursor on
            body = {"prompt": "a todo api"}
            async with http.post(f"{api}/api/projects/{project_id}/generations", json=body) as r:
                generation = (await r.json())["generation"]["id"]
            while len(delays) < events:
                frame = await reader.event(timeout=10)
                arrived = time.time() * 1000
                delays.append(arrived - orjson.loads(frame.data or b"{}")["ts"])
                if frame.event == ev.GENERATION_COMPLETED:
                    break
        async with http.post(f"{api}/api/generations/{generation}/cancel"):
            pass  # the rest of it is not measured
        return delays


def report(name: str, delays: list[float]) -> None:
    ordered = sorted(delays)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    p50 = statistics.median(delays)
    print(f"{name:32} events {len(delays):4}  p50 {p50:7.1f} ms  p99 {p99:7.1f} ms")


async def main_async(events: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        settings = base_settings(tmp).replace(offline={"tokens_per_second": TOKENS_PER_SECOND})
        server = await start(settings, port=0)
        api = f"http://{LOOPBACK}:{server.port}"
        try:
            report("direct", await measure(api, api, events))
            runs: list[tuple[str, Kind, dict[str, str]]] = [
                (str(kind), kind, {}) for kind in Kind if BINARIES[kind] is not None
            ]
            if BINARIES[Kind.HAPROXY] is not None:
                runs.append(("haproxy without http-no-delay", Kind.HAPROXY, {NO_DELAY_LINE: ""}))
            for number, (name, kind, changes) in enumerate(runs):
                directory = tmp / f"{kind}-{number}"
                async with run_proxy(kind, directory, server.port, changes=changes) as proxy:
                    report(name, await measure(proxy.url, api, events))
        finally:
            await server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=EVENTS)
    asyncio.run(main_async(parser.parse_args().events))


if __name__ == "__main__":
    main()
