"""Prometheus metrics: what an operator of a Kafka-backed chat service wants to scrape.

Each app owns its registry (a Metrics object), so building an app twice in one process -- as
the unit tests do -- registers nothing twice. Counters are bumped where things happen; gauges
that describe state (subscribers, reader lag, readiness, recovery) are read from the app at
scrape time by KchatCollector. Faust's own stream/table/producer sensors are exported too,
prefixed "faust_".
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Iterable
from weakref import WeakKeyDictionary

from aiohttp import web
from faust.sensors.prometheus import FaustMetrics, PrometheusMonitor
from prometheus_client import (CONTENT_TYPE_LATEST, GC_COLLECTOR, PLATFORM_COLLECTOR, PROCESS_COLLECTOR,
                               CollectorRegistry, Counter, Histogram, generate_latest)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from .internals import monitor_base, stream_label

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


class KchatMonitor(PrometheusMonitor):
    """Faust's Prometheus sensor, exporting the same series, with its per-event work done once.

    Faust calls a sensor for every HTTP request, every record and stream event the agents see and
    every table read and write. Its PrometheusMonitor looks each labelled child up again every
    time (under the metric's lock), builds an HTTPStatus per response and runs a regex over the
    stream's label per event; here each child is looked up once and kept. Faust's rebalance hooks
    remove the per-topic and per-partition children, so the kept ones are forgotten with them.
    """

    def __init__(self, metrics: FaustMetrics, **kwargs) -> None:
        super().__init__(metrics, **kwargs)
        self.faust_metrics = metrics
        self._label_children: dict[tuple, object] = {}
        self._stream_events: WeakKeyDictionary = WeakKeyDictionary()  # as Monitor's own stream_lookup

    def _child(self, metric, *labels):
        key = (id(metric), *labels)
        child = self._label_children.get(key)
        if child is None:
            child = self._label_children[key] = metric.labels(*labels)
        return child

    # Each hook keeps Faust's own Monitor bookkeeping (monitor_base(self): what Faust's web views
    # and commands read) and replaces only PrometheusMonitor's part (internals.PROMETHEUS_HOOKS_REPLACED).
    def on_message_in(self, tp, offset, message) -> None:
        monitor_base(self).on_message_in(tp, offset, message)
        m = self.faust_metrics
        m.messages_received.inc()
        m.active_messages.inc()
        self._child(m.messages_received_per_topics, tp.topic).inc()
        self._child(m.messages_received_per_topics_partition, tp.topic, tp.partition).set(offset)

    def on_stream_event_in(self, tp, offset, stream, event):
        state = monitor_base(self).on_stream_event_in(tp, offset, stream, event)
        m = self.faust_metrics
        m.total_events.inc()
        m.total_active_events.inc()
        child = self._stream_events.get(stream)
        if child is None:
            child = self._stream_events[stream] = m.total_events_per_stream.labels(
                f"stream.{stream_label(self, stream)}.events")
        child.inc()
        return state

    def _table_op(self, table, operation: str) -> None:
        self._child(self.faust_metrics.table_operations, f"table.{table.name}", operation).inc()

    def on_table_get(self, table, key) -> None:
        monitor_base(self).on_table_get(table, key)
        self._table_op(table, self.KEYS_RETRIEVED)

    def on_table_set(self, table, key, value) -> None:
        monitor_base(self).on_table_set(table, key, value)
        self._table_op(table, self.KEYS_UPDATED)

    def on_table_del(self, table, key) -> None:
        monitor_base(self).on_table_del(table, key)
        self._table_op(table, self.KEYS_DELETED)

    def on_send_initiated(self, producer, topic, message, keysize, valsize):
        self._child(self.faust_metrics.topic_messages_sent, f"topic.{topic}").inc()
        return monitor_base(self).on_send_initiated(producer, topic, message, keysize, valsize)

    def on_web_request_end(self, app, request, response, state, *, view=None) -> None:
        monitor_base(self).on_web_request_end(app, request, response, state, view=view)
        self._child(self.faust_metrics.http_status_codes, int(state["status_code"])).inc()
        # Faust's own sensor observes the time since time_end here, always ~0; this is the request's.
        self.faust_metrics.http_latency.observe(self.secs_to_ms(state["latency_end"]))

    def on_tp_commit(self, tp_offsets) -> None:
        monitor_base(self).on_tp_commit(tp_offsets)
        for tp, offset in tp_offsets.items():
            self._child(self.faust_metrics.topic_partition_offset_commited, tp.topic, tp.partition).set(offset)

    def track_tp_end_offset(self, tp, offset) -> None:
        monitor_base(self).track_tp_end_offset(tp, offset)
        self._child(self.faust_metrics.topic_partition_end_offset, tp.topic, tp.partition).set(offset)

    def _clear_partition_related_metrics(self) -> None:  # a Faust internal, see internals.OVERRIDES
        super()._clear_partition_related_metrics()
        self._label_children.clear()


def install(app: "KchatApp") -> None:
    """Serve app.metrics' registry at /metrics, with Faust's sensors and the process' own figures."""
    registry = app.metrics.registry
    # What the default registry would carry: process CPU/memory, Python version, GC.
    for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
        registry.register(collector)
    # Faust's sensors (streams, tables, producer, rebalances, HTTP), prefixed "faust_".
    app.monitor = KchatMonitor(FaustMetrics.create(registry, "faust"))
    registry.register(KchatCollector(app))

    @app.page("/metrics")
    async def metrics_page(view, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})
