"""`make bench` at tiny sizes, so the benchmark cannot rot. Speed is not asserted here:
only that every figure the full run reports is there and is a number."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parent.parent
KINDS = ("genstream", "aiohttp-sse", "raw")
FANOUT_FIGURES = ("events_per_s", "p50_ms", "p99_ms", "server_peak_rss_mib", "server_cpu_s")


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def test_bench_quick_run_reports_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        timeout=100,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    assert b"events/s" in done.stdout  # the table was printed
    report = orjson.loads(out.read_bytes())

    assert report["fanout"], "no subscriber count was measured"
    for row in report["fanout"].values():
        for kind in KINDS:
            for figure in FANOUT_FIGURES:
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
