"""Event retention: a periodic pass that deletes old events, through the journal's writer.

Never deleted: events of a generation still pending or running (its stream replays
them), and the newest event of the database (the next process numbers its events
after it, so ids are never reused).
"""

from __future__ import annotations

import asyncio
import logging

from service.config import StorageSettings
from service.errors import JournalRefused
from service.eventlog.event import now_ms
from service.eventlog.journal import Emit, Journal
from service.metrics import Metrics
from service.storage.interface import Tx

log = logging.getLogger(__name__)

DAY_MS = 86_400_000


async def prune(journal: Journal, metrics: Metrics, settings: StorageSettings) -> int:
    """One pass; returns how many events it deleted."""
    keep = settings.retention_events_per_project
    older_than = now_ms() - round(settings.retention_days * DAY_MS)

    async def delete(tx: Tx, emit: Emit) -> int:
        return await tx.prune_events(
            keep_per_project=keep if keep > 0 else None,
            older_than_ms=older_than if settings.retention_days > 0 else None,
        )

    try:
        deleted = await journal.transact(delete)
    except JournalRefused as exc:
        metrics.retention_runs.labels("failed").inc()
        log.warning("event retention failed, will try again: %s", exc.message)
        return 0
    metrics.retention_runs.labels("ok").inc()
    metrics.events_pruned.inc(deleted)
    if deleted:
        log.info("event retention deleted %d events", deleted)
    return deleted


async def run(journal: Journal, metrics: Metrics, settings: StorageSettings) -> None:
    """Prune every `retention_interval_seconds` until cancelled (0 = never started)."""
    while True:
        await asyncio.sleep(settings.retention_interval_seconds)
        await prune(journal, metrics, settings)


def enabled(settings: StorageSettings) -> bool:
    has_rule = settings.retention_events_per_project > 0 or settings.retention_days > 0
    return has_rule and settings.retention_interval_seconds > 0
