"""App events exactly once under concurrency, over real sockets: publishers POST app
events while a generation runs in the same project and a dozen clients cut and resume
their streams at random points; every client ends with exactly the project's log (its
ids in order, no gap, no duplicate), app events and the generation's interleaved."""

from __future__ import annotations

import asyncio
import random

import pytest

from tests.conftest import Genstream, MakeServer
from tests.helpers import follow_with_cuts
from tests.sse_reader import Frame

pytestmark = pytest.mark.backends

CLIENTS = 12
PUBLISHERS = 4
EVENTS_PER_PUBLISHER = 60
CUT_AFTER = (5, 40)
LAST = "app.test.done"  # published once everything else has been: the clients' end
TIMEOUT = 90.0


def _is_last(frame: Frame) -> bool:
    return frame.event == LAST


async def _publisher(gs: Genstream, project_id: str, n: int, rng: random.Random) -> list[int]:
    ids = []
    for i in range(EVENTS_PER_PUBLISHER):
        body = {"type": f"app.test.p{n}", "data": {"i": i, "pad": "x" * rng.randint(0, 200)}}
        stored = await gs.json("POST", f"/api/projects/{project_id}/events", 201, json=body)
        ids.append(stored["id"])
        if rng.random() < 0.3:
            await asyncio.sleep(0)  # let the streams and the generation interleave
    return ids


@pytest.mark.parametrize("seed", [1, 2])
async def test_publishers_a_generation_and_resuming_clients_each_get_the_log_exactly(
    make_server: MakeServer, seed: int
) -> None:
    rng = random.Random(seed)
    gs = await make_server(offline={"tokens_per_second": 2000})
    project_id = await gs.new_project()
    async with asyncio.timeout(TIMEOUT):
        clients = [
            asyncio.create_task(
                follow_with_cuts(gs, project_id, random.Random(rng.random()), CUT_AFTER, _is_last)
            )
            for _ in range(CLIENTS)
        ]
        generation_id = (await gs.generate(project_id))["generation"]["id"]
        published = await asyncio.gather(
            *(_publisher(gs, project_id, n, random.Random(rng.random())) for n in range(PUBLISHERS))
        )
        generation = await gs.wait_generation(generation_id, timeout=TIMEOUT)
        last = await gs.json(
            "POST", f"/api/projects/{project_id}/events", 201, json={"type": LAST, "data": {}}
        )
        results = await asyncio.gather(*clients)
    assert generation["status"] == "completed"
    log = [e["id"] for e in await gs.events(project_id)]
    assert log[-1] == last["id"]
    assert len(log) == len(set(log))
    # Each publisher's events are in the log, in the order it published them.
    for ids in published:
        assert ids == sorted(ids) and set(ids) <= set(log)
    generation_events = [e for e in await gs.events(project_id) if e["generation_id"]]
    assert generation_events[-1]["type"] == "generation.completed"
    # The run's events and the app's interleave in the log: neither waited for the other.
    first_app, last_app = min(min(ids) for ids in published), max(max(ids) for ids in published)
    assert any(first_app < e["id"] < last_app for e in generation_events)
    wrong = [(n, sorted(set(log) ^ set(got))[:5]) for n, got in enumerate(results) if got != log]
    assert wrong == [], f"{len(wrong)} of {CLIENTS} clients differ from the log: {wrong}"
