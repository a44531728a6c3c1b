"""KchatMonitor against Faust's own PrometheusMonitor: the same calls must export the same series."""
from __future__ import annotations

import logging
from types import SimpleNamespace

from faust.sensors.prometheus import FaustMetrics, PrometheusMonitor
from faust.types import TP
from prometheus_client import CollectorRegistry

from kchat_faust.metrics import KchatMonitor

LATENCY = "faust_http_latency"


def samples(registry: CollectorRegistry) -> dict:
    """Every series and its value; of a histogram (a time: it differs between two runs) its count only."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in registry.collect() for s in family.samples
            if not s.name.startswith(LATENCY) and not s.name.endswith("_created")
            and (family.type != "histogram" or s.name.endswith("_count"))}


class Agent:
    def __init__(self, name: str) -> None:
        self.name = name

    def __str__(self) -> str:
        return self.name


class Stream:
    def __init__(self, shortlabel: str, agent: str) -> None:
        self.shortlabel, self.task_owner = shortlabel, Agent(agent)

    def __str__(self) -> str:
        return self.shortlabel


def traffic(monitor, rounds: int) -> None:
    """What a worker's agents and web server report: records, stream events, table ops, sends, commits,
    end offsets and HTTP requests, over two topics, two partitions, two streams and two tables."""
    tps = [TP("chatroom", 0), TP("chatroom", 1), TP("chatroom-reads", 0)]
    streams = [Stream(f"Stream: Topic: chatroom {i}", f"agent{i}") for i in (1, 2)]
    tables = [SimpleNamespace(name="user_counts"), SimpleNamespace(name="room_index")]
    for n in range(rounds):
        tp = tps[n % len(tps)]
        message = SimpleNamespace(time_in=None)
        monitor.on_message_in(tp, n, message)
        state = monitor.on_stream_event_in(tp, n, streams[n % 2], object())
        monitor.on_stream_event_out(tp, n, streams[n % 2], object(), state)
        monitor.on_message_out(tp, n, message)
        monitor.on_table_get(tables[n % 2], "k")
        monitor.on_table_set(tables[n % 2], "k", n)
        if n % 5 == 0:
            monitor.on_table_del(tables[0], "k")
        monitor.on_send_initiated(None, f"kchat-{tables[n % 2].name}-changelog", None, 1, 2)
        monitor.on_tp_commit({tp: n})
        monitor.track_tp_end_offset(tp, n + 1)
        web_state = monitor.on_web_request_start(None, None)
        monitor.on_web_request_end(None, None, SimpleNamespace(status=(201, 400, 503)[n % 3]), web_state)
    monitor.on_web_request_end(None, None, None, monitor.on_web_request_start(None, None))  # no response: 500


def pair():
    faust_reg, ours_reg = CollectorRegistry(), CollectorRegistry()
    return (PrometheusMonitor(metrics=FaustMetrics.create(faust_reg, "faust")), faust_reg,
            KchatMonitor(FaustMetrics.create(ours_reg, "faust")), ours_reg)


def test_the_monitor_exports_what_fausts_own_exports():
    faust_monitor, faust_reg, ours, ours_reg = pair()
    for monitor in (faust_monitor, ours):
        traffic(monitor, 30)
    expected = samples(faust_reg)
    assert any(name == "faust_http_status_codes_total" for name, _ in expected)
    assert any(name == "faust_messages_received_per_topics_partition" for name, _ in expected)
    assert samples(ours_reg) == expected
    # Faust's own Monitor bookkeeping (read by Faust's web views and commands) is kept too.
    assert ours.messages_received_total == faust_monitor.messages_received_total == 30
    assert ours.http_response_codes == faust_monitor.http_response_codes
    assert dict(ours.events_by_stream) == dict(faust_monitor.events_by_stream)


def test_after_a_rebalance_clears_the_partitions_series_they_come_back_alike():
    faust_monitor, faust_reg, ours, ours_reg = pair()
    for monitor in (faust_monitor, ours):
        traffic(monitor, 12)
        state = monitor.on_rebalance_start(SimpleNamespace(rebalancing_count=1))
        monitor.on_rebalance_return(None, state)
        monitor.on_rebalance_end(None, state)
    cleared = samples(ours_reg)
    assert not any(name == "faust_messages_received_per_topics_partition" for name, _ in cleared)
    assert cleared == samples(faust_reg)
    for monitor in (faust_monitor, ours):
        traffic(monitor, 7)
    assert samples(ours_reg) == samples(faust_reg)
    assert any(name == "faust_messages_received_per_topics_partition" for name, _ in samples(ours_reg))


def test_http_latency_is_the_requests_own():
    _, _, ours, registry = pair()
    state = ours.on_web_request_start(None, None)
    state["time_start"] -= 0.25  # a request that took 250 ms
    ours.on_web_request_end(None, None, SimpleNamespace(status=201), state)
    total = registry.get_sample_value(f"{LATENCY}_sum")
    assert 250 <= total < 1000  # milliseconds, as Faust's buckets are


async def test_the_monitor_starts_and_stops_cleanly_after_traffic(caplog):
    # It is a mode Service too: its own bookkeeping must not clash with the service's (a dict named
    # like mode's list of child services made every worker's stop log a traceback per label).
    _, _, ours, _ = pair()
    await ours.start()
    traffic(ours, 12)
    with caplog.at_level(logging.WARNING):
        await ours.stop()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
