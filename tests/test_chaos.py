"""A short chaos run (kchat_testkit/chaos.py, which `make chaos` runs in full) and the run's own checks.

The short run: its own 3 controllers + 4 brokers, `chatroom` 12 partitions / RF 4 / min ISR 2, two workers,
a native and a seed-compatible subscriber on each, 600 posts through the seed's endpoint while a random broker
is SIGKILLed every 6 s and started again 3 s later. A publish timeout of 4 s (instead of 10) makes the stalls a
dead broker causes end in 503s, so the "503 = not confirmed" accounting is exercised too.
"""
from __future__ import annotations

import asyncio
import random
import time

import pytest

from kchat_testkit import chaos, chaos_disrupt
from kchat_testkit.sse import Event, Subscriber


@pytest.mark.kafka
@pytest.mark.cluster4
@pytest.mark.timeout(600)  # 7 JVMs to boot on a machine that may stall
async def test_short_chaos_run_loses_nothing_and_counts_exactly(tmp_path):
    cfg = chaos.Config(posts=600, interval=6, down_for=3, rate=40, publish_timeout=4, duration_limit=90,
                       deliver_timeout=120, counts_timeout=120, state_dir=tmp_path / "chaos", progress=False)
    report = await chaos.run(cfg)
    print(report.render())
    assert not report.failures, report.render()
    assert report.kills_while_posting >= 1
    assert len(report.posts) + report.not_sent == cfg.posts
    assert report.by_status()["200"] > 0


# -- the checks themselves, on made-up runs (no Kafka) ---------------------------------------------------------
def made_up_run(statuses: list[int | None]):
    """A run whose posts got these statuses and whose two subscribers saw exactly the 200'd ones."""
    rep = chaos.Report(config=chaos.Config(posts=len(statuses)))
    rep.kills_while_posting, rep.brokers_alive_at_end = 1, True
    offset = 100
    for i, status in enumerate(statuses):
        p = chaos.Post(i=i, user=f"u{i % 2}", text=f"m{i}", worker=i % 2, t_sent=i, t_done=i + 0.5, status=status)
        if status == 200:
            p.event_id, p.offset = f"6:{offset}", offset
            offset += 1
        elif status == 503:
            p.error = '{"error": "the brokers did not acknowledge within 4s"}'
        else:
            p.error = "ServerDisconnectedError"
        rep.posts.append(p)
    for name in ("a", "b"):
        s = Subscriber("http://x", chaos.ROOM, name=name)
        s.events = [Event(p.t_done, p.event_id, 6, p.offset, p.user, p.text) for p in rep.posts if p.status == 200]
        rep.subscribers.append(s)
    rep.counts = {"http://w0": dict(rep.expected_counts()), "http://w1": dict(rep.expected_counts())}
    return rep


def test_checks_pass_a_clean_run_and_accept_a_stored_503():
    rep = made_up_run([200, 200, 503, 200, 503, 200])
    assert rep.check() == []
    # the first 503'd post was stored after all: every subscriber has it, and the counts include it
    late = rep.posts[2]
    for s in rep.subscribers:
        s.events.append(Event(9.0, "6:104", 6, 104, late.user, late.text))
    assert rep.check() != []  # counts still without it
    rep.counts = {url: dict(rep.expected_counts()) for url in rep.counts}
    assert rep.check() == []
    lows, highs = rep.count_bounds()
    assert all(lows[u] <= rep.counts["http://w0"][u] <= highs[u] for u in lows)


@pytest.mark.parametrize("damage, words", [
    ("duplicate", "more than once"),
    ("missing", "never arrived"),
    ("unposted", "never posted"),
    ("disorder", "out of room order"),
    ("one_sided", "another subscriber received"),
    ("inverted", "stored before a post answered earlier"),
    ("count_high", "!= messages in the log"),
    ("status_500", "neither 200 nor 503"),
    ("no_kill", "no broker was killed"),
])
def test_checks_catch_each_kind_of_damage(damage, words):
    rep = made_up_run([200] * 6 + [503])
    a = rep.subscribers[0]
    if damage == "duplicate":
        a.events.append(a.events[-1])
    elif damage == "missing":
        del a.events[2]
    elif damage == "unposted":
        for s in rep.subscribers:
            s.events.append(Event(9.0, "6:200", 6, 200, "u0", "never sent"))
    elif damage == "disorder":
        a.events[1], a.events[2] = a.events[2], a.events[1]
    elif damage == "one_sided":
        p = rep.posts[-1]
        a.events.append(Event(9.0, "6:106", 6, 106, p.user, p.text))
        rep.counts = {url: dict(rep.expected_counts()) for url in rep.counts}
    elif damage == "inverted":  # post 1 was sent after post 0's 200, yet its 200 names an earlier offset
        p0, p1 = rep.posts[0], rep.posts[1]
        (p0.offset, p0.event_id), (p1.offset, p1.event_id) = (p1.offset, p1.event_id), (p0.offset, p0.event_id)
    elif damage == "count_high":
        rep.counts["http://w1"]["u0"] += 1
    elif damage == "status_500":
        rep.posts[-1].status = 500
    elif damage == "no_kill":
        rep.kills_while_posting = 0
    failures = rep.check()
    assert any(words in f for f in failures), failures


# -- the schedule beside the load (no Kafka) --------------------------------------------------------------------
class CountingDisruption:
    """Every 10 ms a cycle that 'kills' something for 50 ms; records whether posting was still under way
    when each began, and how many ended."""
    what = "thing"

    def __init__(self):
        self.began: list[bool] = []
        self.ended = 0

    async def during(self, phase):
        async def cycle():
            self.began.append(not phase.posting_done.is_set())
            phase.report.kills_while_posting += not phase.posting_done.is_set()
            await asyncio.sleep(0.05)
            self.ended += 1
        await chaos_disrupt.every(0.01, phase, cycle)


class LoadUntil:
    """Posting that lasts until the disruption has begun three cycles (and posts nothing)."""
    def __init__(self, rep, disruption):
        self.report, self.disruption = rep, disruption
        self.say = lambda text: None

    async def post_all(self, session, phase):
        while len(self.disruption.began) < 3:
            await asyncio.sleep(0.005)


async def test_a_disruption_runs_one_cycle_at_a_time_while_posting_and_its_last_cycle_is_awaited():
    rep = chaos.Report(config=chaos.Config())
    disruption = CountingDisruption()
    phase = chaos.Phase(rep, random.Random(1), say=lambda text: None)
    await asyncio.wait_for(chaos.under_load(LoadUntil(rep, disruption), disruption, None, phase), 30)
    # slots that came while a cycle was under way were skipped, none began after the posting ended, and
    # under_load returned only once the third cycle was over (what it stopped runs again)
    assert disruption.began == [True, True, True]
    assert disruption.ended == 3
    assert rep.kills_while_posting == 3 and phase.posting_done.is_set()


class SlowPodDelete(chaos_disrupt.PodDelete):
    """PodDelete's schedule with pods that take broker_seconds to be back (no cluster)."""
    def __init__(self, interval, broker_seconds):
        super().__init__(kube=None, interval=interval)
        self.broker_seconds = broker_seconds

    def delete_broker(self, phase, pod):
        while_posting = not phase.posting_done.is_set()
        time.sleep(self.broker_seconds)
        return {"pod": pod, "back_ready_s": self.broker_seconds, "leaders_moved": 0, "while_posting": while_posting}

    def delete_kchat_pod(self, phase):
        return {"pod": "kchat-0", "replaced_ready_s": 0.0, "while_posting": not phase.posting_done.is_set()}


async def test_pod_delete_deletes_the_kchat_pod_while_posting_even_when_broker_pods_are_slow_to_return():
    rep = chaos.Report(config=chaos.Config(posts=200, rate=100))  # posting lasts 2 s
    phase = chaos.Phase(rep, random.Random(1), say=lambda text: None)
    pods = SlowPodDelete(interval=0.1, broker_seconds=0.4)

    async def post():
        for i in range(200):
            await asyncio.sleep(max(0.0, phase.t0 + i / 100 - time.monotonic()))
            rep.posts.append(chaos.Post(i=i, user="u", text=f"m{i}", worker=0))
        phase.posting_done.set()

    await asyncio.wait_for(asyncio.gather(post(), pods.schedule(phase)), 30)
    assert pods.figures["deletions"], "no broker pod was deleted"
    assert pods.figures["kchat_pod_deleted"] is not None, "the kchat pod was never deleted"
    # every deletion, the kchat pod's too, came while posts were going out
    assert rep.kills_while_posting == len(pods.figures["deletions"]) + 1
