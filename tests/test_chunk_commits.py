"""A generation faster than the database shares commits: the events of the chunks parsed
while one append commits go together in the next (generation/runner.py, _ChunkAppends).

Found as tests/test_exactly_once.py's postgres "stall": each chunk waited for a commit
of its own, five round trips when guarded, so a generation advanced at the writer's
round-trip rate (about 40 events a second with 36 clients on the event loop) and the
test ran past its 60 s; the writer was never blocked, only always between statements.
"""

from __future__ import annotations

import pytest

from tests.conftest import MakeServer

pytestmark = pytest.mark.backends

TOKENS_PER_SECOND = 100_000
# Events per commit the generation must reach at least: a commit per chunk (the old
# way) is about 1; the stage updates every 5 % are commits of their own either way.
MIN_EVENTS_PER_COMMIT = 4


async def test_a_generation_faster_than_its_commits_shares_them(make_server: MakeServer) -> None:
    # A chunk a token (the offline provider's paced mode), due faster than any commit:
    # a late token is sent at once, so the provider keeps ahead of the journal.
    gs = await make_server(offline={"tokens_per_second": TOKENS_PER_SECOND})
    project_id = await gs.new_project()
    stats = gs.services.journal.stats
    before = stats.commits
    generation_id = (await gs.generate(project_id))["generation"]["id"]
    final = await gs.wait_generation(generation_id)
    commits = stats.commits - before
    assert final["status"] == "completed"
    events = [e for e in await gs.events(project_id) if e["generation_id"] == generation_id]
    assert len(events) > 500  # enough chunks for the ratio to say something
    assert len(events) >= MIN_EVENTS_PER_COMMIT * commits, (len(events), commits)
