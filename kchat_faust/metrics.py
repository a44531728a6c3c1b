"""Prometheus metrics: what an operator of a Kafka-backed chat service wants to scrape.

Counters are bumped where things happen; gauges that describe state (subscribers, reader lag,
readiness, recovery) are read from the services at scrape time by KchatCollector.
Faust's own stream/table/producer sensors are exported too, prefixed "faust_".
"""
from __future__ import annotations

from typing import Callable, Iterable

from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

PUBLISHED = Counter(
    "kchat_messages_published", "Publish requests by outcome: stored (acknowledged by the brokers), "
    "refused (4xx, nothing published) or failed (503, not confirmed)", ["outcome"])
# Bound once: labels() looks its child up under a lock on every call.
STORED, REFUSED, FAILED = (PUBLISHED.labels(o) for o in ("stored", "refused", "failed"))
PUBLISH_LATENCY = Histogram(
    "kchat_publish_latency_seconds", "From the send to the brokers' acknowledgement (acks=all)",
    buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10))
DELIVERED = Counter("kchat_events_delivered", "Chat events handed to SSE subscribers (live and resumed)")
SLOW_DISCONNECTS = Counter("kchat_slow_subscriber_disconnects",
                           "Subscribers disconnected because their buffer was full")
RESUMES = Counter("kchat_resumes", "Event streams opened with a Last-Event-ID")
SUBSCRIPTIONS = Counter("kchat_subscriptions", "Event streams opened")


class KchatCollector(Collector):
    """Reads live state at scrape time, so it is never stale and costs nothing between scrapes."""

    def __init__(self, app, hub, ready: Callable[[], dict[str, bool]]) -> None:
        self.app, self.hub, self.ready = app, hub, ready

    def collect(self) -> Iterable[GaugeMetricFamily]:
        subs = GaugeMetricFamily("kchat_subscribers", "Open SSE event streams on this worker")
        subs.add_metric([], self.hub.subscriber_count)
        yield subs
        rooms = GaugeMetricFamily("kchat_rooms_watched", "Rooms with at least one subscriber on this worker")
        rooms.add_metric([], len(self.hub.rooms))
        yield rooms
        lag = GaugeMetricFamily("kchat_fanout_lag_records",
                                "Records between the fan-out reader's position and the log end",
                                labels=["partition"])
        for partition, records in sorted(self.hub.lag().items()):
            lag.add_metric([str(partition)], records)
        yield lag
        ready = GaugeMetricFamily("kchat_ready", "Readiness checks (1 = passing)", labels=["check"])
        for check, ok in self.ready().items():
            ready.add_metric([check], 1 if ok else 0)
        yield ready
        recovery = self.app.tables.recovery
        rec = GaugeMetricFamily("kchat_table_recovery_in_progress", "1 while tables recover from changelogs")
        rec.add_metric([], 1 if recovery.in_recovery else 0)
        yield rec
        remaining = GaugeMetricFamily("kchat_table_recovery_remaining_records",
                                      "Changelog records still to apply before the tables are current")
        remaining.add_metric([], recovery.active_remaining_total() if recovery.in_recovery else 0)
        yield remaining


def install(app, hub, ready) -> None:
    from faust.sensors.prometheus import setup_prometheus_sensors

    # Faust's sensors (streams, tables, producer, rebalances, HTTP) and the /metrics page,
    # which serves the default registry: ours are registered there too.
    setup_prometheus_sensors(app, pattern="/metrics", registry=REGISTRY, name_prefix="faust")
    REGISTRY.register(KchatCollector(app, hub, ready))
