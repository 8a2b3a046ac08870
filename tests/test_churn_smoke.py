"""bench/churn.py at a tiny size, so the churn benchmark (README "Memory after connection
churn") cannot rot. Nothing is asserted about memory figures here: only that each wave
ran its streams, settled, and reported every figure the README's table is made from."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson

REPO = Path(__file__).resolve().parent.parent
SMALL = ("--events", "300", "--connections", "40", "--waves", "2", "--trim")
FIGURES = ("rss", "hwm", "pymalloc_arenas", "pymalloc_used", "gc_objects")


def test_churn_quick_run_reports_every_wave() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.churn", *SMALL],
        cwd=REPO,
        capture_output=True,
        timeout=100,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    report = orjson.loads(done.stdout)
    assert report["idle"]["rss"] > 0
    assert [wave["wave"] for wave in report["waves"]] == [1, 2]
    for wave in report["waves"]:
        assert wave["log"]["events"] >= 300
        assert wave["events_read"] > 0  # the streams that read did replay
        for figure in FIGURES:
            assert wave["memory"][figure] > 0, (figure, wave["memory"])
        assert wave["trim"]["after"]["rss"] > 0
