"""Prometheus metrics: what an operator of a Kafka-backed chat service wants to scrape.

Each app owns its registry (a Metrics object), so building an app twice in one process -- as
the unit tests do -- registers nothing twice. Counters are bumped where things happen; gauges
that describe state (subscribers, reader lag, readiness, recovery) are read from the app at
scrape time by KchatCollector. Faust's own stream/table/producer sensors are exported too,
prefixed "faust_".
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

from prometheus_client import (GC_COLLECTOR, PLATFORM_COLLECTOR, PROCESS_COLLECTOR, CollectorRegistry,
                               Counter, Histogram)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from .app import KchatApp


class Metrics:
    """The counters the app bumps, on a registry of their own."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry = registry if registry is not None else CollectorRegistry()
        published = Counter(
            "kchat_messages_published", "Publish requests by outcome: stored (acknowledged by the brokers), "
            "refused (4xx, nothing published) or failed (503, not confirmed)", ["outcome"], registry=registry)
        # Bound once: labels() looks its child up under a lock on every call.
        self.stored, self.refused, self.failed = (published.labels(o) for o in ("stored", "refused", "failed"))
        self.publish_latency = Histogram(
            "kchat_publish_latency_seconds", "From the send to the brokers' acknowledgement (acks=all)",
            buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10), registry=registry)
        self.delivered = Counter("kchat_events_delivered",
                                 "Chat events handed to SSE subscribers (live and resumed)", registry=registry)
        self.slow_disconnects = Counter("kchat_slow_subscriber_disconnects",
                                        "Subscribers disconnected because their buffer was full", registry=registry)
        self.resumes = Counter("kchat_resumes", "Event streams opened with a Last-Event-ID", registry=registry)
        self.subscriptions = Counter("kchat_subscriptions", "Event streams opened", registry=registry)
        self.replays = Counter("kchat_idempotent_replays", "Publishes answered with the message an earlier "
                               "attempt with the same Idempotency-Key stored", registry=registry)
        self.key_lookups_failed = Counter(
            "kchat_idempotency_key_lookups_failed", "Keyed publishes beyond the window that no worker holding "
            "the room's keys could be asked about (published on the window's word alone)", registry=registry)
        self.copies = Counter("kchat_copies_dropped", "Records the fan-out dropped as copies of an earlier "
                              "record with the same Idempotency-Key", registry=registry)


class KchatCollector(Collector):
    """Reads live state at scrape time, so it is never stale and costs nothing between scrapes."""

    def __init__(self, app: "KchatApp") -> None:
        self.app = app

    def collect(self) -> Iterable[GaugeMetricFamily]:
        hub = self.app.hub
        subs = GaugeMetricFamily("kchat_subscribers", "Open SSE event streams on this worker")
        subs.add_metric([], hub.subscriber_count)
        yield subs
        rooms = GaugeMetricFamily("kchat_rooms_watched", "Rooms with at least one subscriber on this worker")
        rooms.add_metric([], len(hub.rooms))
        yield rooms
        lag = GaugeMetricFamily("kchat_fanout_lag_records",
                                "Records between the fan-out reader's position and the log end",
                                labels=["partition"])
        for partition, records in sorted(hub.lag().items()):
            lag.add_metric([str(partition)], records)
        yield lag
        ready = GaugeMetricFamily("kchat_ready", "Readiness checks (1 = passing)", labels=["check"])
        for check, ok in self.app.readiness().items():
            ready.add_metric([check], 1 if ok else 0)
        yield ready
        sessions = GaugeMetricFamily("kchat_presence_sessions", "Event streams open on this worker, named or "
                                     "anonymous", labels=["kind"])
        named = sum(1 for _room, user in self.app.sessions.open.values() if user is not None)
        sessions.add_metric(["named"], named)
        sessions.add_metric(["anonymous"], len(self.app.sessions.open) - named)
        yield sessions
        online = GaugeMetricFamily("kchat_presence_users_online",
                                   "Named users online in the rooms whose presence this worker holds")
        online.add_metric([], sum(self.app.presence_online().values()))
        yield online
        activity = self.app.rooms.snapshot()
        tracked = GaugeMetricFamily("kchat_rooms_tracked", "Rooms of the directory held by this worker")
        tracked.add_metric([], len(activity))
        yield tracked
        windows = GaugeMetricFamily("kchat_room_windows", "One-minute activity windows held by this worker")
        windows.add_metric([], sum(len(state["minutes"]) for state in activity.values()))
        yield windows
        recovery = self.app.tables.recovery
        rec = GaugeMetricFamily("kchat_table_recovery_in_progress", "1 while tables recover from changelogs")
        rec.add_metric([], 1 if recovery.in_recovery else 0)
        yield rec
        remaining = GaugeMetricFamily("kchat_table_recovery_remaining_records",
                                      "Changelog records still to apply before the tables are current")
        remaining.add_metric([], recovery.active_remaining_total() if recovery.in_recovery else 0)
        yield remaining


def install(app: "KchatApp") -> None:
    """Serve app.metrics' registry at /metrics, with Faust's sensors and the process' own figures."""
    from faust.sensors.prometheus import setup_prometheus_sensors

    registry = app.metrics.registry
    # What the default registry would carry: process CPU/memory, Python version, GC.
    for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
        registry.register(collector)
    # Faust's sensors (streams, tables, producer, rebalances, HTTP) and the /metrics page.
    setup_prometheus_sensors(app, pattern="/metrics", registry=registry, name_prefix="faust")
    registry.register(KchatCollector(app))
