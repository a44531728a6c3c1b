"""Presence: the rules in-process, then across two real workers on a Kafka of the test's own."""
from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from httpx_sse import aconnect_sse

from kchat_faust.models import partition_for
from kchat_faust.presence import Tracker, close_sessions, empty_room, listing, open_session, presence_id
from kchat_testkit.chat import post, unique
from kchat_testkit.procs import until
from kchat_testkit.worker import Worker


# -- the rules ----------------------------------------------------------------------------------
def test_two_tabs_join_once_and_leave_once():
    room = empty_room()
    assert open_session(room, "s1", "ann", "w1") == [("join", "ann", 1)]
    assert open_session(room, "s2", "ann", "w2") == []  # a second tab
    assert open_session(room, "s1", "ann", "w1") == []  # the same open again (a replay)
    assert open_session(room, "s3", None, "w1") == []  # anonymous: no join
    assert listing(room) == {"users": [{"user": "ann", "sessions": 2}], "anonymous": 1}
    assert close_sessions(room, lambda s, u, w: s == "s1") == []
    assert close_sessions(room, lambda s, u, w: s == "s2") == [("leave", "ann", 1)]
    assert open_session(room, "s4", "ann", "w1") == [("join", "ann", 2)]  # the second join has its own id
    assert presence_id("join", "r", "ann", 1) != presence_id("join", "r", "ann", 2)


class Table(dict):
    def get(self, key, default=None):
        return super().get(key, default)


async def test_a_silent_workers_sessions_expire_into_one_leave_each():
    table, emitted = Table(), []

    async def emit(kind, room, user, n, ts):
        emitted.append((kind, room, user))

    t = Tracker(table, emit, timeout_ms=15_000)
    records = [
        {"type": "alive", "worker": "w1"}, {"type": "alive", "worker": "w2"},
        {"type": "open", "room": "r", "user": "ann", "session": "a1", "worker": "w1"},
        {"type": "open", "room": "r", "user": "ann", "session": "a2", "worker": "w2"},
        {"type": "open", "room": "q", "user": "bob", "session": "b1", "worker": "w1"},
    ]
    for offset, record in enumerate(records):
        await t.take(offset, 1_000_000 + offset, record)
    assert emitted == [("join", "r", "ann"), ("join", "q", "bob")]
    # w2 keeps saying it is alive; w1 is silent for longer than the timeout.
    await t.take(10, 1_000_000 + 10_000, {"type": "alive", "worker": "w2"})
    assert emitted[2:] == []
    await t.take(11, 1_000_000 + 16_000, {"type": "alive", "worker": "w2"})
    assert emitted[2:] == [("leave", "q", "bob")]  # ann is still there on w2
    assert listing(table["r"]) == {"users": [{"user": "ann", "sessions": 1}], "anonymous": 0}
    # A worker that stops says so: its sessions end at once.
    await t.take(12, 1_000_000 + 17_000, {"type": "gone", "worker": "w2"})
    assert emitted[3:] == [("leave", "r", "ann")]
    # Replays of what was applied change nothing.
    for offset, record in enumerate(records):
        await t.take(offset, 1_000_000 + offset, record)
    assert len(emitted) == 4 and listing(table["r"])["users"] == []


# -- across workers -------------------------------------------------------------------------------
class Stream:
    """One event stream: every event with its name, in order."""

    def __init__(self, url: str) -> None:
        self.url, self.events = url, []
        self.open = asyncio.Event()
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async with httpx.AsyncClient(timeout=httpx.Timeout(10, read=None)) as c:
            async with aconnect_sse(c, "GET", self.url) as source:
                assert source.response.status_code == 200
                self.open.set()
                async for sse in source.aiter_sse():
                    self.events.append((sse.event, json.loads(sse.data) if sse.data.startswith("{") else sse.data))

    async def close(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)

    def names(self, *kinds: str) -> list[tuple[str, str]]:
        return [(e, d["user"]) for e, d in self.events if e in kinds]


@pytest.mark.kafka
@pytest.mark.timeout(360)
async def test_presence_is_the_same_on_every_worker_and_a_dead_workers_sessions_expire(own_kafka, tmp_path):
    # A dead worker's sessions end after the presence timeout, but if it held the room's partition,
    # only once the group has moved the partition to a live worker (the group session timeout).
    env = {"KCHAT_PRESENCE_TIMEOUT": "3", "KCHAT_GROUP_SESSION_TIMEOUT": "8"}
    w1 = Worker(own_kafka.bootstrap, tmp_path / "w1", env=env)
    w2 = Worker(own_kafka.bootstrap, tmp_path / "w2", env=env)
    await asyncio.gather(asyncio.to_thread(w1.start, 120), asyncio.to_thread(w2.start, 120))
    for w in (w1, w2):  # the second one's arrival rebalanced the first
        await asyncio.to_thread(w.wait_ready, 60)
    ann, bob = unique("ann"), unique("bob")
    # The hard case, every run: the room's presence lives on w2, the worker that will die, so its
    # sessions can only expire once the group has given the partition to w1.
    held: dict[str, set[int]] = {}

    async def split() -> bool:  # both workers hold a share of the 12 partitions (the group has settled)
        async with httpx.AsyncClient(timeout=15) as client:
            routes = (await client.get(f"{w2.url}/router/presence/")).json()
        held.clear()
        held.update({url.rstrip("/"): {p for ps in topics.values() for p in ps} for url, topics in routes.items()})
        return len(held) == 2 and bool(held.get(w2.url)) and sum(len(ps) for ps in held.values()) == 12

    await until(split, 120, "the presence partitions split between the two workers")
    partitions = 12
    room = next(r for r in (unique("here") for _ in range(1000)) if partition_for(r, partitions) in held[w2.url])
    streams: list[Stream] = []

    def stream(w: Worker, query: str = "", seed: bool = False) -> Stream:
        s = Stream(f"{w.url}/sse/connect{query}" if seed else f"{w.url}/api/rooms/{room}/events{query}")
        streams.append(s)
        return s

    try:
        async with httpx.AsyncClient(timeout=15) as client:
            async def presence(w: Worker) -> dict:
                r = await client.get(f"{w.url}/api/rooms/{room}/presence")
                return r.json() if r.status_code == 200 else {}

            watcher = stream(w1)  # anonymous
            seed = stream(w2, "?user=nobody", seed=True)  # the seed's stream: no presence events, not named
            await asyncio.gather(watcher.open.wait(), seed.open.wait())
            ann1, ann2 = stream(w1, f"?user={ann}"), stream(w2, f"?user={ann}")
            stream(w2, f"?user={bob}")
            want = {"room": room, "users": sorted([{"user": ann, "sessions": 2}, {"user": bob, "sessions": 1}],
                                                  key=lambda u: u["user"]), "anonymous": 1}
            for w in (w1, w2):  # the same whichever worker answers
                await until(lambda: presence_is(presence(w), want), 90, f"presence on {w.url}")
            await post(client, w2.url, room, ann, "hello")
            await until(lambda: settled(watcher.names("message")), 60, "the message")
            assert sorted(watcher.names("join", "leave")) == sorted([("join", ann), ("join", bob)])  # 2 tabs, 1 join

            await ann1.close()
            # the presence has taken the closed tab (it shows ann's other one), and no leave came of it
            one_tab = {**want, "users": sorted([{"user": ann, "sessions": 1}, {"user": bob, "sessions": 1}],
                                               key=lambda u: u["user"])}
            await until(lambda: presence_is(presence(w1), one_tab), 90, "ann's first tab gone from the presence")
            await asyncio.sleep(1.5)
            assert watcher.names("leave") == []  # ann is still there in her other tab
            await ann2.close()
            await until(lambda: settled(watcher.names("leave")), 60, "ann's leave")
            assert watcher.names("leave") == [("leave", ann)]

            w2.kill()  # bob's worker dies without closing his stream: after the timeouts, one leave
            await until(lambda: settled(len(watcher.names("leave")) == 2), 120, "bob's leave after the timeouts")
            assert watcher.names("leave") == [("leave", ann), ("leave", bob)]
            await until(lambda: presence_is(presence(w1), {"room": room, "users": [], "anonymous": 1}), 90,
                        "the room empty but for the watcher")
            assert [e for e, _ in seed.events if e != "test"] == []

            # History knows nothing of presence.
            history = (await client.get(f"{w1.url}/api/rooms/{room}/messages")).json()["messages"]
            assert [m["text"] for m in history] == ["hello"]
    finally:
        for s in streams:
            await s.close()
        w1.stop()
        w2.kill()


async def presence_is(answer, want) -> bool:
    return (await answer) == want


async def settled(value) -> bool:
    return bool(value)
