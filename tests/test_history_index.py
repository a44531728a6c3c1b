"""Any room's whole history, for real: a Kafka of its own, two workers, the room index (roomindex.py)
and the pages built from it (scrollback.py), checked against the log itself.

One scenario in steps, on one cluster (its 500,000-record partition is too costly to build twice):
a quiet room in a busy partition, from a worker started after its messages; paging back with
`before`; `since` for history and the stream; the index exact after a worker's SIGKILL and a
restart with wiped state; `gap` once the log's start has moved past a resume point."""
from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete

from kchat_faust.models import ChatMessage, decode_record, encode, new_message, partition_for
from kchat_testkit.chat import index_page, post
from kchat_testkit.kafka import KafkaCluster
from kchat_testkit.worker import Worker

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(1200)]

QUIET = "quiet-room"
P = partition_for(QUIET, 12)
BUSY = next(f"busy{i}" for i in range(1000) if partition_for(f"busy{i}", 12) == P)
PAGED = next(f"paged{i}" for i in range(1000) if partition_for(f"paged{i}", 12) not in (P,))
FLOOD = 500_000


async def flood(bootstrap: str, room: str, n: int) -> None:
    """n messages of `room` written straight to its partition, as a busy producer elsewhere would."""
    value = encode(new_message(room, "flooder", "x" * 40, 4000))
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, max_batch_size=1 << 20, acks=1)
    await producer.start()
    try:
        partition = partition_for(room, 12)
        for start in range(0, n, 20_000):
            futures = [await producer.send("chatroom", value, key=room.encode(), partition=partition)
                       for _ in range(start, min(n, start + 20_000))]
            await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def log_offsets(bootstrap: str, room: str) -> list[int]:
    """The room's messages' offsets as the log has them (no copies are posted here)."""
    return [o for o, _t in await log_records(bootstrap, room)]


async def log_records(bootstrap: str, room: str) -> list[tuple[int, int]]:
    """The room's messages as the log has them: (offset, Kafka timestamp)."""
    tp = TopicPartition("chatroom", partition_for(room, 12))
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
    await consumer.start()
    try:
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        end = (await consumer.end_offsets([tp]))[tp]
        found = []
        while await consumer.position(tp) < end:
            for records in (await consumer.getmany(tp, timeout_ms=1000, max_records=50_000)).values():
                for r in records:
                    msg = decode_record(r.value, r.partition, r.offset, r.timestamp, "lobby")
                    if isinstance(msg, ChatMessage) and msg.room == room:
                        found.append((r.offset, r.timestamp))
        return found
    finally:
        await consumer.stop()


async def whole(client: httpx.AsyncClient, base: str, room: str, limit: int = 37) -> list[int]:
    """Every message of the room, paging back with `before` to its start."""
    got, params = [], {"limit": str(limit)}
    while True:
        body = await index_page(client, base, room, **params)
        got = [m["offset"] for m in body["messages"]] + got
        if body["before"] is None:
            return got
        params["before"] = body["before"]


async def events(client: httpx.AsyncClient, base: str, room: str, n: int, headers=None, **params) -> list[tuple]:
    """The first n events of a stream as (event, id, data)."""
    out, fields = [], {}
    async with client.stream("GET", f"{base}/api/rooms/{room}/events", params=params, headers=headers,
                             timeout=httpx.Timeout(60)) as r:
        assert r.status_code == 200, await r.aread()
        async for line in r.aiter_lines():
            if line.startswith(("event:", "id:", "data:")):
                name, _, value = line.partition(":")
                fields[name] = value.strip()
            elif line == "" and fields:
                out.append((fields.get("event"), fields.get("id"), json.loads(fields.get("data", "null"))))
                fields = {}
                if len(out) == n:
                    return out
    raise AssertionError(f"the stream ended after {len(out)} events")


async def test_any_rooms_whole_history(tmp_path):
    cluster = KafkaCluster.start_new(tmp_path / "kafka")
    a = b = None
    try:
        a = Worker(cluster.bootstrap, tmp_path / "a").start(240.0)
        async with httpx.AsyncClient(timeout=60) as client:
            # A quiet room, then half a million records of another room in its partition.
            quiet = [await post(client, a.url, QUIET, "ann", f"q{i}") for i in range(3)]
            await flood(cluster.bootstrap, BUSY, FLOOD)
            body = await index_page(client, a.url, QUIET)
            assert [m["id"] for m in body["messages"]] == [m["id"] for m in quiet] and body["before"] is None

            # From a worker started after them (it restores or asks for the index, never scans).
            b = Worker(cluster.bootstrap, tmp_path / "b").start(240.0)
            body = await index_page(client, b.url, QUIET)
            assert [m["id"] for m in body["messages"]] == [m["id"] for m in quiet]

            # Paging back with `before` yields every message once, in log order, through either worker.
            posted = [await post(client, (a, b)[i % 2].url, PAGED, "bob", f"p{i}") for i in range(300)]
            expected = await log_offsets(cluster.bootstrap, PAGED)
            assert expected == [m["offset"] for m in posted]
            assert await whole(client, a.url, PAGED) == expected
            assert await whole(client, b.url, PAGED, limit=100) == expected

            # `since`: history and stream start at the first message at or after the time.
            records = await log_records(cluster.bootstrap, PAGED)
            t = records[150][1]  # Kafka's timestamp of the 151st message: offsets-for-times finds by these
            rfc3339 = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t // 1000)) + f".{t % 1000:03d}Z"
            due = [o for o, ts in records if ts >= t]
            body = await index_page(client, b.url, PAGED, limit="10", since=rfc3339)
            assert [m["offset"] for m in body["messages"]] == due[:10]
            streamed = await events(client, a.url, PAGED, 3, since=str(t))
            assert [int(e[1].split(":")[1]) for e in streamed] == due[:3]

            # The index stays exact through a SIGKILL and a restart with wiped local state.
            more = asyncio.ensure_future(asyncio.gather(*[post(client, a.url, PAGED, "cy", f"m{i}") for i in range(100)]))
            await asyncio.sleep(0.5)
            b.kill()
            b.wipe_state()
            await more
            b.start(240.0)
            expected = await log_offsets(cluster.bootstrap, PAGED)
            assert len(expected) == 400
            assert await whole(client, b.url, PAGED, limit=500) == expected
            assert await whole(client, a.url, PAGED, limit=500) == expected

            # A resume point the log no longer has: `gap` first, and history says how much is gone.
            cut = expected[100]
            admin = AIOKafkaAdminClient(bootstrap_servers=cluster.bootstrap)
            await admin.start()
            try:
                await admin.delete_records({TopicPartition("chatroom", partition_for(PAGED, 12)): RecordsToDelete(cut)})
            finally:
                await admin.close()
            part = partition_for(PAGED, 12)
            got = await events(client, b.url, PAGED, 2, headers={"Last-Event-ID": f"{part}:{expected[10]}"})
            assert got[0][0] == "gap" and got[0][2]["first_event_id"] == f"{part}:{cut}"
            assert got[1][1] == f"{part}:{cut}"
            body = await index_page(client, a.url, PAGED, limit="500")
            assert [m["offset"] for m in body["messages"]] == expected[100:]
            assert body["before"] is None and body["gap"] == {"missing": 100, "first_event_id": f"{part}:{cut}"}
    finally:
        for w in (a, b):
            if w is not None:
                w.stop_or_kill()
        cluster.down()
