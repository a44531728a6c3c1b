"""/metrics after known traffic, and the Grafana dashboard's queries against what is exposed."""
from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from kchat_testkit.chat import post, unique
from kchat_testkit.procs import until
from kchat_testkit.sse import Subscriber

pytestmark = pytest.mark.kafka
DASHBOARD = Path(__file__).resolve().parents[1] / "k8s" / "base" / "monitoring" / "kchat-dashboard.json"


def samples(text: str) -> dict[tuple[str, tuple], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


@pytest.fixture(scope="module")
def fresh_worker(worker_factory):
    """A worker of its own, so its counters start at zero."""
    w = worker_factory()
    yield w
    w.stop()


async def test_metrics_count_known_traffic(fresh_worker):
    n_posts, n_subs = 7, 3
    room = unique("metrics")
    async with httpx.AsyncClient(timeout=20) as client:
        listeners = [await Subscriber(fresh_worker.url, room).start() for _ in range(n_subs)]
        for i in range(n_posts):
            await post(client, fresh_worker.url, room, "metric-user", f"m{i}")
        refused = await client.post(f"{fresh_worker.url}/api/rooms/{room}/messages",
                                    json={"user": "metric-user", "text": ""})
        assert refused.status_code == 400
        for listener in listeners:
            await listener.wait_for(n_posts)

        r = await client.get(f"{fresh_worker.url}/metrics")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        m = samples(r.text)
        assert m[("kchat_messages_published_total", (("outcome", "stored"),))] == n_posts
        assert m[("kchat_messages_published_total", (("outcome", "refused"),))] == 1
        assert m[("kchat_messages_published_total", (("outcome", "failed"),))] == 0
        assert m[("kchat_publish_latency_seconds_count", ())] == n_posts
        assert m[("kchat_subscriptions_total", ())] == n_subs
        assert m[("kchat_subscribers", ())] == n_subs
        assert m[("kchat_events_delivered_total", ())] == n_posts * n_subs
        assert m[("kchat_ready", (("check", "fanout"),))] == 1
        assert m[("kchat_presence_sessions", (("kind", "anonymous"),))] == n_subs
        assert m[("kchat_presence_sessions", (("kind", "named"),))] == 0
        lag_partitions = {dict(k[1])["partition"] for k in m if k[0] == "kchat_fanout_lag_records"}
        assert lag_partitions == {str(p) for p in range(12)}
        assert any(k[0].startswith("faust_") for k in m)  # Faust's own sensors

        for listener in listeners:
            await listener.stop()

        async def no_subscribers() -> bool:
            return samples((await client.get(f"{fresh_worker.url}/metrics")).text)[("kchat_subscribers", ())] == 0

        # the gauge drops once the server sees the disconnects; a stalled machine may take a while
        await until(no_subscribers, 60, "kchat_subscribers back to 0 after the streams closed", interval=0.1)


async def test_dashboard_queries_name_exposed_metrics(fresh_worker):
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert len(exprs) >= 6
    async with httpx.AsyncClient(timeout=20) as client:
        text = (await client.get(f"{fresh_worker.url}/metrics")).text
    # A labelled metric with no sample yet is still declared (# HELP/# TYPE): count it as exposed.
    exposed = {name for name, _ in samples(text)}
    for family in text_string_to_metric_families(text):
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum")}.get(family.type, ("",))
        exposed.update(family.name + suffix for suffix in suffixes)
    used = {name for e in exprs for name in re.findall(r"\b((?:kchat|faust)_[a-z_]+)\b", e)}
    assert used, "the dashboard queries no kchat or faust metric"
    assert used <= exposed, f"not exposed: {sorted(used - exposed)}"
    # the four things the dashboard is for
    for needed in ("kchat_messages_published_total", "kchat_publish_latency_seconds_bucket",
                   "kchat_subscribers", "kchat_fanout_lag_records"):
        assert needed in used
