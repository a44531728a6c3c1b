"""The room directory: tumbling one-minute windows by event time, exact against the topic itself,
also after a restart with wiped local state and after a rebalance."""
from __future__ import annotations

import asyncio

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from kchat_faust import internals, rooms
from kchat_faust.hub import now_ms
from kchat_faust.models import ChatMessage, decode_record, encode, new_message, partition_for
from kchat_testkit.chat import post, unique
from kchat_testkit.procs import until
from kchat_testkit.worker import Worker

MIN = 60_000


# -- the rules ----------------------------------------------------------------------------------
def test_a_message_counts_once_in_its_minute_and_old_windows_expire():
    t = 1_700_000_000_000 // MIN * MIN
    state = rooms.tally(None, [(0, t + 5)])
    assert rooms.tally(state, [(0, t + 5)]) is None  # a replay
    state = rooms.tally(state, [(1, t + MIN + 1)])
    state = rooms.tally(state, [(2, t + 60 * MIN)])  # an hour later: the first window is gone
    assert sorted(int(m) for m in state["minutes"]) == [t + MIN, t + 60 * MIN]
    a = rooms.activity("r", state, online=2, now_ms=t + 60 * MIN + 30_000)
    assert (a["messages_last_minute"], a["messages_last_10_minutes"], a["messages_last_hour"]) == (1, 1, 2)
    assert a["online"] == 2 and a["last_message_at"].startswith("2023-11-14T")


def test_last_minute_is_the_current_and_the_previous_window():
    t = 1_700_000_000_000 // MIN * MIN
    state = None
    for offset, ts in enumerate([t - 1, t + 1, t + MIN + 59_999]):
        state = rooms.tally(state, [(offset, ts)])
    assert rooms.activity("r", state, 0, t + MIN + 59_999)["messages_last_minute"] == 2  # t-1 is two windows back
    assert rooms.activity("r", state, 0, t + 2 * MIN)["messages_last_minute"] == 1


def test_the_directory_lists_rooms_with_messages_or_people_busiest_first_and_trending_ranks_ten_minutes():
    t = 1_700_000_000_000 // MIN * MIN
    quiet = rooms.tally(None, [(0, t - 30 * MIN)])
    busy = None
    for offset in range(3):
        busy = rooms.tally(busy, [(offset, t - 2 * MIN)])
    listing = rooms.directory({"quiet": quiet, "busy": busy}, {"empty-but-full": 4, "gone": 0}, t)
    assert [r["room"] for r in listing] == ["busy", "quiet", "empty-but-full"]
    assert [r["room"] for r in rooms.trending(listing)] == ["busy"]


# -- against the topic ----------------------------------------------------------------------------
async def read_topic(bootstrap: str) -> list:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        cluster = await internals.fetch_all_metadata(consumer)
        tps = [TopicPartition("chatroom", p) for p in cluster.partitions_for_topic("chatroom")]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        records = []
        while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
            for batch in (await consumer.getmany(timeout_ms=1000)).values():
                records += batch
        return records
    finally:
        await consumer.stop()


def truth(records: list, now_ms: int) -> dict[str, dict]:
    """The directory's figures computed from the log itself, by the stated window rules."""
    current = now_ms // MIN * MIN
    out: dict[str, dict] = {}
    for r in records:
        msg = decode_record(r.value, r.partition, r.offset, r.timestamp, "lobby")
        if not isinstance(msg, ChatMessage) or r.partition != partition_for(msg.room, 12):
            continue
        w = r.timestamp // MIN * MIN
        e = out.setdefault(msg.room, {"messages_last_minute": 0, "messages_last_10_minutes": 0,
                                      "messages_last_hour": 0})
        e["messages_last_minute"] += w >= current - MIN
        e["messages_last_10_minutes"] += w >= current - 9 * MIN
        e["messages_last_hour"] += w >= current - 59 * MIN
    return out


async def directory_matches(client, bootstrap: str, worker: Worker, ours: set[str]) -> bool:
    """One comparison, made only when no minute boundary passed while it was made."""
    before = now_ms()
    records = await read_topic(bootstrap)
    r = await client.get(f"{worker.url}/api/rooms")
    after = now_ms()
    if r.status_code != 200 or before // MIN != after // MIN:
        return False
    want = {room: e for room, e in truth(records, after).items() if room in ours}
    got = {e["room"]: {k: e[k] for k in ("messages_last_minute", "messages_last_10_minutes", "messages_last_hour")}
           for e in r.json()["rooms"] if e["room"] in ours}
    return got == want


async def until_matches(client, bootstrap, worker, ours, what: str, timeout: float = 120) -> None:
    await until(lambda: directory_matches(client, bootstrap, worker, ours), timeout,
                f"the directory matching the topic ({what})", interval=0.5)


@pytest.mark.kafka
@pytest.mark.timeout(300)
async def test_the_directory_is_exact_after_a_restart_and_a_rebalance(own_kafka, tmp_path):
    w1 = Worker(own_kafka.bootstrap, tmp_path / "w1").start()
    w2 = Worker(own_kafka.bootstrap, tmp_path / "w2", env={"KCHAT_PARTITIONS": "12"})
    busy, calm, old = unique("busy"), unique("calm"), unique("old")
    ours = {busy, calm, old}
    now = now_ms()
    producer = AIOKafkaProducer(bootstrap_servers=own_kafka.bootstrap, acks="all")
    await producer.start()
    try:  # messages from the past, by their record timestamps: event time, not arrival
        for room, ages in {busy: [20_000] * 5 + [5 * MIN] * 2, calm: [8 * MIN, 50 * MIN], old: [2 * 3600_000]}.items():
            for age in ages:
                await producer.send_and_wait("chatroom", encode(new_message(room, "ann", "then", 4000)),
                                             key=room.encode(), timestamp_ms=now - age)
    finally:
        await producer.stop()
    try:
        async with httpx.AsyncClient(timeout=15) as client:
            for i in range(3):
                await post(client, w1.url, busy, "bob", f"now {i}")
            await until_matches(client, own_kafka.bootstrap, w1, ours, "first run")
            listing = {e["room"]: e for e in (await client.get(f"{w1.url}/api/rooms")).json()["rooms"]}
            assert listing[old]["messages_last_hour"] == 0 and listing[old]["last_message_at"]  # listed, idle
            trending = (await client.get(f"{w1.url}/api/rooms/trending")).json()
            assert [r["room"] for r in trending["rooms"] if r["room"] in ours] == [busy, calm]

            w1.stop()
            w1.wipe_state()  # the windows must come back from the table's changelog
            w1.start()
            await until_matches(client, own_kafka.bootstrap, w1, ours, "after a restart with wiped state")

            w2.start()  # a rebalance: some partitions, windows and all, move to the new worker
            for w in (w1, w2):
                await asyncio.to_thread(w.wait_ready, 90)
            await post(client, w2.url, calm, "cy", "after the rebalance")
            for w in (w1, w2):
                await until_matches(client, own_kafka.bootstrap, w, ours, f"after a rebalance, asked of {w.url}")
    finally:
        w2.stop()
        w1.stop()
