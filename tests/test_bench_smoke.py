"""`make bench` at tiny sizes, so the benchmark cannot rot. Speed is not asserted here:
only that every figure the full run reports is there and is a number."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from bench import nchan

REPO = Path(__file__).resolve().parent.parent
KINDS = ("genstream", "aiohttp-sse", "raw")
NCHAN_KINDS = ("nchan-1w", "nchan-2w")
FANOUT_FIGURES = ("events_per_s", "p50_ms", "p99_ms", "server_peak_rss_mib", "server_cpu_s")


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


# Besides the five servers (nchan's two with their producers), the postgres part starts a
# cluster (initdb) and three more.
@pytest.mark.timeout(300)
def test_bench_quick_run_reports_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        timeout=280,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    assert b"events/s" in done.stdout  # the table was printed
    report = orjson.loads(out.read_bytes())

    assert report["fanout"], "no subscriber count was measured"
    for row in report["fanout"].values():
        for kind in KINDS:
            for figure in (*FANOUT_FIGURES, "client_cpu_s"):
                assert _number(row[kind][figure]), (kind, figure, row[kind])
            assert row[kind]["events_per_s"] > 0
        for reference in ("raw", "aiohttp-sse"):
            assert set(row["ratios"][f"vs_{reference}"]) == set(FANOUT_FIGURES)
            assert _number(row["ratios"][f"vs_{reference}"]["events_per_s"])
    for kind in KINDS:
        assert _number(report["ttfb"][kind]["median_ms"])
        assert _number(report["idle_stream"][kind]["bytes_per_stream"])
    assert _number(report["ttfb"]["genstream_minus_raw_ms"])
    assert report["replay"]["events_per_s"] > 0
    assert report["offline_e2e"]["median_ms"] > 0
    assert [j["producers"] for j in report["journal"]] == [1, 10]
    for journal in report["journal"]:
        assert journal["events_per_s"] > 0
        assert _number(journal["p99_commit_ms"])
    assert report["targets"]
    for check in report["targets"].values():
        assert isinstance(check["met"], bool)
    _nchan_part(report, done.stdout.decode())
    _postgres_part(report, done.stdout.decode())


def _nchan_part(report: dict[str, Any], table: str) -> None:
    """nginx with nchan beside the others, or a line saying why not (no module)."""
    part = report["nchan"]
    if "skipped" in part:
        assert nchan.missing() is not None, "nchan is installed, yet it was skipped"
        assert f"nchan: skipped, {part['skipped']}" in table
        return
    assert part["servers"] == list(NCHAN_KINDS)
    for row in report["fanout"].values():
        for kind in NCHAN_KINDS:
            for figure in (*FANOUT_FIGURES, "client_cpu_s", "producer_cpu_s"):
                assert _number(row[kind][figure]), (kind, figure, row[kind])
            assert row[kind]["events_per_s"] > 0
            assert _number(row["ratios"][f"vs_{kind}"]["events_per_s"])
    for kind in NCHAN_KINDS:
        assert _number(report["ttfb"][kind]["median_ms"])
        assert _number(report["idle_stream"][kind]["bytes_per_stream"])
    for asymmetry in part["asymmetries"]:
        assert f"nchan: {asymmetry}" in table
    # The three: the producer apart, the hop in its latency, nothing stored.
    for said in ("producer", "one more HTTP hop", "stores nothing"):
        assert any(said in asymmetry for asymmetry in part["asymmetries"]), said


def _postgres_part(report: dict[str, Any], table: str) -> None:
    """PostgreSQL beside SQLite, or a line saying why not (no PostgreSQL binaries)."""
    part = report["postgres"]
    if "skipped" in part:
        assert f"postgres: skipped, {part['skipped']}" in table
        return
    assert "postgres beside sqlite" in table
    assert part["subscribers"] == max(int(n) for n in report["fanout"])
    for name in ("sqlite", "postgres", "postgres_2_workers"):
        for figure in FANOUT_FIGURES:
            assert _number(part["fanout"][name][figure]), (name, figure)
    for ratios in ("postgres_vs_sqlite", "postgres_2_workers_vs_sqlite", "workers_2_vs_1"):
        assert _number(part["ratios"][ratios]["events_per_s"]), ratios
    assert [j["producers"] for j in part["journal"]] == [1, 10]
    assert all(j["events_per_s"] > 0 for j in part["journal"])
    assert _number(part["ratios"]["journal_vs_sqlite"]["10"])
    assert _number(part["ttfb"]["postgres"]["median_ms"])
    assert _number(part["ratios"]["ttfb_minus_sqlite_ms"])
    postgres_targets = [name for name in report["targets"] if name.startswith("postgres")]
    assert len(postgres_targets) == 3, report["targets"]
