"""One of two workers SIGKILLed while messages are being posted, then started again.

The service's guarantee under test: Faust processes at-least-once, and each count update is idempotent
(a table entry keeps the highest chatroom offset counted per source partition, so replays after the crash
are not counted twice) -- so per-user counts are exact after a crash. And a subscriber of the killed worker
resumes with Last-Event-ID, on the restarted worker or on the other one, with no gap and no duplicate.

Both workers run against a single-node Kafka of this test's own: every worker joins the one group "kchat",
so sharing the session cluster would rebalance other tests' workers.
"""
from __future__ import annotations

import asyncio
import time
from collections import Counter

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from kchat_faust import internals
from kchat_testkit import procs
from kchat_testkit.chat import read_counts, unique
from kchat_testkit.sse import Subscriber
from kchat_testkit.worker import Worker

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(420)]

# With the default 20 s session timeout the group waits that long for the dead member before the restarted
# worker gets partitions again. Shorter only makes the test quicker; the counts must be exact whenever the
# takeover happens.
FAST_GROUP = {"KCHAT_GROUP_SESSION_TIMEOUT": "10"}
USERS = 4
# Several rooms, so that both workers (most likely) hold some chatroom partitions that carry posts: the kill
# then interrupts route_by_user as well as count_messages.
ROOMS = 3
RATE = 40  # posts per second, all workers together
BEFORE, AFTER = 150, 150  # posts before the kill and after the restart; more go to the survivor in between


async def start_all(*workers: Worker) -> None:
    await asyncio.gather(*(asyncio.to_thread(w.start, 120.0) for w in workers))


async def records_in(bootstrap: str, topic: str) -> int:
    """How many records a topic holds (end minus beginning offsets over its partitions)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        cluster = await internals.fetch_all_metadata(consumer)
        tps = [TopicPartition(topic, p) for p in cluster.partitions_for_topic(topic) or ()]
        ends, begins = await consumer.end_offsets(tps), await consumer.beginning_offsets(tps)
        return sum(ends[tp] - begins[tp] for tp in tps)
    finally:
        await consumer.stop()


async def test_sigkilled_worker_keeps_counts_exact_and_its_subscribers_resume(own_kafka, tmp_path):
    w0 = Worker(own_kafka.bootstrap, tmp_path / "w0", env=FAST_GROUP)
    w1 = Worker(own_kafka.bootstrap, tmp_path / "w1", env=FAST_GROUP)
    rooms = [unique(f"crash{k}") for k in range(ROOMS)]
    users = [unique(f"crash-u{k}") for k in range(USERS)]
    subs: list[Subscriber] = []
    timeline: list[str] = []
    t0 = time.monotonic()

    def note(what: str) -> None:
        timeline.append(f"{time.monotonic() - t0:6.1f}s {what}")

    try:
        await start_all(w0, w1)
        note("both workers ready")
        roles = [("on w0, resumes on w0", w0.url, w0.url), ("on w0, resumes on w1", w0.url, w1.url),
                 ("on w1", w1.url, w1.url)]
        subs = [await Subscriber(url, room, reconnect=True, resume_url=resume, name=f"{name} ({room})").start(
                    timeout=30) for name, url, resume in roles for room in rooms]

        posted: list[dict] = []  # the 201 bodies
        failed: list[str] = []
        targets = [w0, w1]  # workers that take posts; the kill first takes w0 out of it
        in_flight = Counter()
        stop = asyncio.Event()
        counter = iter(range(10**6))
        began = time.monotonic()

        async def poster(client: httpx.AsyncClient) -> None:
            for i in counter:
                if stop.is_set():
                    return
                await asyncio.sleep(max(0.0, began + i / RATE - time.monotonic()))
                w = targets[i % len(targets)]
                user, room = users[i % USERS], rooms[i % ROOMS]
                in_flight[w.url] += 1
                try:
                    r = await client.post(f"{w.url}/api/rooms/{room}/messages", json={"user": user, "text": f"m{i}"})
                    if r.status_code == 201:
                        posted.append(r.json())
                    else:
                        failed.append(f"#{i} to {w.url}: {r.status_code} {r.text[:200]}")
                except httpx.HTTPError as exc:
                    failed.append(f"#{i} to {w.url}: {exc!r}")
                finally:
                    in_flight[w.url] -= 1

        async def until(cond, timeout: float, what: str) -> None:  # the timeline so far, if it times out
            await procs.until(cond, timeout, lambda: f"{what}; " + "; ".join(timeline), interval=0.05)

        async with httpx.AsyncClient(timeout=30) as client:
            posters = [asyncio.create_task(poster(client)) for _ in range(4)]
            await until(lambda: len(posted) >= BEFORE, 120, f"{BEFORE} posts")
            # No post may be on its way to w0 when it dies: its fate would be unknown to the client, and
            # this test wants exact counts of 201s. Everything else keeps going: posts to w1, counting.
            targets[:] = [w1]
            await until(lambda: in_flight[w0.url] == 0, 60, "posts to w0 to finish")
            w0.kill()
            note(f"SIGKILLed w0 after {len(posted)} posts")
            await asyncio.to_thread(w0.start, 120.0)
            restarted_at = len(posted)
            note(f"w0 ready again after {restarted_at} posts")
            targets[:] = [w0, w1]
            await until(lambda: len(posted) >= restarted_at + AFTER, 120, f"{AFTER} posts after the restart")
            stop.set()
            await asyncio.gather(*posters)
            note(f"posting done: {len(posted)} posts answered 201")

            assert not failed, f"{len(failed)} post(s) were not answered 201: {failed[:5]}"
            places = [m["event_id"] for m in posted]
            assert len(set(places)) == len(places), "two 201s named the same partition:offset"

            # Subscribers: each 201'd message of their room exactly once, in offset order, nothing else
            # (every post got 201, so the log holds exactly those).
            expect = {room: sorted(m["offset"] for m in posted if m["room"] == room) for room in rooms}
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and any(len(s.messages) < len(expect[s.room]) for s in subs):
                await asyncio.sleep(0.2)
            await asyncio.sleep(1)  # room for duplicates to show up
            by_place = {m["event_id"]: m for m in posted}
            for s in subs:
                assert not s.problems, f"{s.name}: {s.problems[:3]}"
                got, expected = [m["offset"] for m in s.messages], expect[s.room]
                assert got == expected, (
                    f"subscriber {s.name}: {len(got)} messages for {len(expected)} posts; missing "
                    f"{sorted(set(expected) - set(got))[:10]}, duplicated {[o for o, n in Counter(got).items() if n > 1][:10]}, "
                    f"in order: {got == sorted(got)}; connects {s.connects}")
                assert all(m == by_place[m["event_id"]] for m in s.messages), f"{s.name}: a message differs from its 201"
            for s in subs:
                if s.url == w1.url:
                    assert len(s.streams) == 1, f"{s.name}: the survivor's stream was dropped: {s.drops}"
                else:  # its first stream died with w0; it resumed where it was told to, with its last id
                    assert len(s.streams) >= 2 and s.streams[1].url == s.resume_url and s.streams[1].last_event_id, (
                        f"{s.name} did not resume with Last-Event-ID: {s.connects}")

            # Counts: exactly the 201s per user, asked of both workers, and they stay so.
            want = Counter(m["user"] for m in posted)
            want = {u: want[u] for u in users}
            seen: dict = {}
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                seen = {w.url: await read_counts(client, w.url, users) for w in (w0, w1)}
                if all(c == want for c in seen.values()):
                    break
                await asyncio.sleep(0.5)
            note("counts match" if all(c == want for c in seen.values()) else "counts never matched")
            assert all(c == want for c in seen.values()), (
                f"counts {seen} != 201s per user {want}; timeline: " + "; ".join(timeline))
            for _ in range(6):  # a late replay must not count anything twice
                await asyncio.sleep(0.5)
                seen = {w.url: await read_counts(client, w.url, users) for w in (w0, w1)}
                assert all(c == want for c in seen.values()), f"counts moved after matching: {seen} != {want}"
            routed = await records_in(own_kafka.bootstrap, "chatroom-by-user")
            note(f"chatroom-by-user holds {routed} records for {len(posted)} posts "
                 f"({routed - len(posted)} re-sent by replays after the crash and rebalances, none counted twice)")
    finally:
        for s in subs:
            await s.stop()
        for w in (w0, w1):
            w.stop_or_kill()
        print("\n".join(timeline))
