"""Prometheus metrics: one registry per application, served as text at /metrics.

Counters that the hot path already keeps (the journal's stats, the open-stream count)
are read at scrape time by a collector instead of being updated per event; the rest
are updated once per batch, per stream or per generation, never per event per
subscriber.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
# SQLite commits take well under a millisecond to tens of milliseconds.
COMMIT_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
PROVIDER_BUCKETS: Final = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


@dataclass(frozen=True)
class Gauges:
    """Values read when /metrics is scraped, from whoever already keeps them."""

    open_streams: Callable[[], int]
    events_appended: Callable[[], int]
    failed_commits: Callable[[], int]
    generations_running: Callable[[], int]


class _ScrapeTime(Collector):
    def __init__(self, gauges: Gauges) -> None:
        self._gauges = gauges

    def collect(self) -> Iterator[Metric]:
        g = self._gauges
        yield GaugeMetricFamily(
            "genstream_open_streams", "SSE streams open now", value=g.open_streams()
        )
        yield CounterMetricFamily(
            "genstream_events_appended",
            "events committed to the journal",
            value=g.events_appended(),
        )
        yield CounterMetricFamily(
            "genstream_journal_failed_commits",
            "journal transactions the database refused",
            value=g.failed_commits(),
        )
        yield GaugeMetricFamily(
            "genstream_generations_active",
            "generations running or queued for a slot",
            value=g.generations_running(),
        )
        # A leak detector that needs no debug mode: idle, this returns to its baseline.
        yield GaugeMetricFamily(
            "genstream_asyncio_tasks", "asyncio tasks alive", value=len(asyncio.all_tasks())
        )


@dataclass
class Deliveries:
    """What streams wrote, kept as plain ints: they count on the fast path (a write per
    stream per commit), where a prometheus Counter's lock on each increment was a cost
    of its own; read when /metrics is scraped."""

    events: int = 0  # events written to stream clients, replayed or live
    replayed: int = 0  # of those, sent from storage
    # Writes carrying events, by who wrote them: "direct" from the commit's publish (the
    # fast path), "handler" by the stream's own task (replay, or a client that could
    # not take it at once).
    direct_writes: int = 0
    handler_writes: int = 0


class _DeliveryCounts(Collector):
    def __init__(self, deliveries: Deliveries) -> None:
        self._deliveries = deliveries

    def collect(self) -> Iterator[Metric]:
        d = self._deliveries
        yield CounterMetricFamily(
            "genstream_events_delivered", "events written to stream clients", value=d.events
        )
        yield CounterMetricFamily(
            "genstream_events_replayed",
            "events sent to stream clients from storage",
            value=d.replayed,
        )
        writes = CounterMetricFamily(
            "genstream_stream_writes", "writes to stream clients, by who wrote them", labels=["by"]
        )
        writes.add_metric(["direct"], d.direct_writes)
        writes.add_metric(["handler"], d.handler_writes)
        yield writes


@dataclass
class Metrics:
    registry: CollectorRegistry = field(
        default_factory=lambda: CollectorRegistry(auto_describe=True)
    )
    deliveries: Deliveries = field(default_factory=Deliveries)

    def __post_init__(self) -> None:
        r = self.registry
        r.register(_DeliveryCounts(self.deliveries))
        self.stream_closes = Counter(
            "genstream_stream_closes",
            "streams ended, by reason (slow_client and send_timeout are cut-off clients)",
            ["reason"],
            registry=r,
        )
        self.commit_seconds = Histogram(
            "genstream_journal_commit_seconds",
            "time of one journal transaction, from BEGIN to COMMIT",
            buckets=COMMIT_BUCKETS,
            registry=r,
        )
        self.generations = Counter(
            "genstream_generations_finished",
            "generations ended, by status and error code",
            ["status", "code"],
            registry=r,
        )
        self.provider_first_token = Histogram(
            "genstream_provider_first_token_seconds",
            "time from the call to the provider to its first token",
            buckets=PROVIDER_BUCKETS,
            registry=r,
        )
        self.provider_stream = Histogram(
            "genstream_provider_stream_seconds",
            "time the provider took to stream a whole answer",
            buckets=PROVIDER_BUCKETS,
            registry=r,
        )
        self.events_pruned = Counter(
            "genstream_events_pruned", "events deleted by retention", registry=r
        )
        self.retention_runs = Counter(
            "genstream_retention_runs", "retention passes, by result", ["result"], registry=r
        )

    def read_at_scrape(self, gauges: Gauges) -> None:
        self.registry.register(_ScrapeTime(gauges))

    def render(self) -> bytes:
        return generate_latest(self.registry)
