#!/bin/bash
# How bench/results/issue-12-ab was made: 5 interleaved rounds, before = 5e36084 (before the restructure), after = a616e9b (its last step), each a worktree:
#   git worktree add /tmp/wt-before 5e36084; git worktree add /tmp/wt-after a616e9b; bash bench/results/issue-12-ab/ab.sh
cat > /tmp/ab_one.py <<'PY'
"""One A/B round for one tree (run with cwd = the tree): genstream's own figures only."""
import sys, tempfile, time
from pathlib import Path
import orjson
from bench import run as R

out = {}
with tempfile.TemporaryDirectory(prefix="ab-") as tmp, R.servers(Path(tmp)) as up:
    gs = up["genstream"]
    for subscribers in (100, 1000):
        rate = min(1000.0, R.LATENCY_DELIVERIES_PER_S / subscribers)
        latency_events = max(10, min(200, int(rate * 5.0)))
        out[f"fanout_{subscribers}"] = R.load(gs, "fanout", "--subscribers", subscribers, "--events", 2000,
                                   "--size", 200, "--latency-events", latency_events, "--latency-rate", rate)
    out["ttfb"] = R.load(gs, "ttfb", "--count", 50)
    out["replay"] = R.load(gs, "replay", "--events", 100_000, "--size", 200)
    out["idle"] = R.load(gs, "idle", "--streams", 5000)
import subprocess
done = subprocess.run([sys.executable, "-m", "bench.journal_bench", "--events", "20000", "--producers", "1", "10", "100"],
                      capture_output=True, check=True, timeout=600)
out["journal"] = orjson.loads(done.stdout)
print(orjson.dumps(out).decode())
PY
for round in 1 2 3 4 5; do for side in before after; do
  (cd /tmp/wt-$side && PYTHONPATH=/tmp/wt-$side python /tmp/ab_one.py > ab-$side-$round.json); done; done
