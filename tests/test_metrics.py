"""/metrics in Prometheus text format, and structured logs."""

from __future__ import annotations

import signal
from pathlib import Path

import orjson
from prometheus_client.parser import text_string_to_metric_families

from service.eventlog import event as ev
from tests.conftest import Genstream
from tests.helpers import db_count
from tests.process import server_process
from tests.sse_reader import SSEReader


async def _scrape(gs: Genstream) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with gs.http.get(f"{gs.url}/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        text = await response.text()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_metrics_count_streams_events_commits_and_generations(gs: Genstream) -> None:
    project_id = await gs.new_project()
    before = await _scrape(gs)
    assert before[("genstream_open_streams", ())] == 0
    async with gs.http.get(f"{gs.url}/api/projects/{project_id}/stream") as watching:
        await SSEReader(watching).frame()
        assert (await _scrape(gs))[("genstream_open_streams", ())] == 1
        generation_id = (await gs.generate(project_id))["generation"]["id"]
        await gs.wait_generation(generation_id)
    stored = db_count(gs.services.settings.storage.path, "events")
    live = await _scrape(gs)
    # Once it is over, its stream replays every one of its events from SQLite.
    async with gs.http.get(f"{gs.url}/api/generations/{generation_id}/stream") as response:
        assert len(await SSEReader(response).events_until_end()) == stored
    after = await _scrape(gs)

    assert after[("genstream_events_appended_total", ())] == stored
    replayed = ("genstream_events_replayed_total", ())
    assert after[replayed] - live[replayed] == stored
    delivered = ("genstream_events_delivered_total", ())
    assert after[delivered] - live[delivered] == stored
    # Live: the first generation stream had each event before its end (the project
    # stream's count may still be on its way).
    assert live[delivered] >= stored
    assert after[("genstream_journal_commit_seconds_count", ())] >= 3
    assert after[("genstream_journal_commit_seconds_sum", ())] > 0
    completed = ("genstream_generations_finished_total", (("code", ""), ("status", "completed")))
    assert after[completed] == 1
    assert after[("genstream_provider_first_token_seconds_count", ())] == 1
    assert after[("genstream_provider_stream_seconds_count", ())] == 1
    closes = after[("genstream_stream_closes_total", (("reason", "completed"),))]
    assert closes == 2  # the generation streams; the project stream may still be closing
    assert after[("genstream_generations_active", ())] == 0
    assert after[("genstream_journal_failed_commits_total", ())] == 0


async def test_json_logs_are_one_object_a_line_with_request_project_generation(
    tmp_path: Path,
) -> None:
    async with server_process(tmp_path, log_format="json") as server:
        project_id = await server.new_project()
        body = await server.json(
            "POST",
            f"/api/projects/{project_id}/generations",
            status=202,
            json={"prompt": "an api"},
            headers={"X-Request-ID": "req-42"},
        )
        generation_id = body["generation"]["id"]
        url = f"{server.url}/api/generations/{generation_id}/stream"
        async with server.http.get(url) as response:
            frames = await SSEReader(response).events_until_end()
        assert frames[-1].event == ev.GENERATION_COMPLETED
        server.signal(signal.SIGTERM)
        assert await server.wait(10) == 0
    entries = [orjson.loads(line) for line in server.log().splitlines()]
    assert all({"ts", "level", "logger", "message"} <= set(e) for e in entries)
    done = [e for e in entries if e["message"].startswith(f"generation {generation_id} completed")]
    assert len(done) == 1
    assert done[0]["request_id"] == "req-42"
    assert done[0]["project_id"] == project_id
    assert done[0]["generation_id"] == generation_id
    assert any(e["message"] == "stopped" for e in entries)


async def test_request_id_is_echoed_on_replies_and_streams(gs: Genstream) -> None:
    async with gs.http.get(f"{gs.url}/api/projects", headers={"X-Request-ID": "abc-1"}) as reply:
        assert reply.headers["X-Request-ID"] == "abc-1"
    project_id = await gs.new_project()
    url = f"{gs.url}/api/projects/{project_id}/stream"
    async with gs.http.get(url, headers={"X-Request-ID": "stream.2"}) as stream:
        assert stream.headers["X-Request-ID"] == "stream.2"
    # One that could forge log fields or headers is replaced by a fresh one.
    async with gs.http.get(f"{gs.url}/nowhere", headers={"X-Request-ID": 'a" b=c'}) as reply:
        assert reply.status == 404
        assert len(reply.headers["X-Request-ID"]) == 32
