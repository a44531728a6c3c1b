"""Idempotent publish against real Kafka: a retried POST with the same Idempotency-Key is the same message,
delivered, shown and counted once -- through another worker, and when a copy reached the log anyway."""
from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from aiokafka import AIOKafkaProducer

from kchat_faust.models import encode, new_message
from kchat_testkit.chat import unique, wait_counts
from kchat_testkit.sse import Subscriber
from kchat_testkit.worker import Worker

pytestmark = pytest.mark.kafka


@pytest.fixture
async def client():
    async with httpx.AsyncClient(timeout=30) as c:
        yield c


async def keyed_post(client, base: str, room: str, user: str, text: str, key: str) -> httpx.Response:
    return await client.post(f"{base}/api/rooms/{room}/messages", json={"user": user, "text": text},
                             headers={"Idempotency-Key": key})


async def history(client, base: str, room: str) -> list[dict]:
    return (await client.get(f"{base}/api/rooms/{room}/messages")).json()["messages"]


async def test_a_retry_through_another_worker_is_the_same_message_once_everywhere(kchat_worker, worker_factory,
                                                                                   client):
    second = worker_factory()
    try:
        for w in (kchat_worker, second):
            w.wait_ready()
        room, ann = unique("idem"), unique("ann")
        listeners = [await Subscriber(w.url, room).start() for w in (kchat_worker, second)]
        first = await keyed_post(client, kchat_worker.url, room, ann, "only once", "key-1")
        assert first.status_code == 201 and "Idempotent-Replayed" not in first.headers
        retry = await keyed_post(client, second.url, room, ann, "only once", "key-1")
        assert retry.status_code == 201, retry.text
        assert retry.json() == first.json() and retry.headers["Idempotent-Replayed"] == "true"
        other = await keyed_post(client, second.url, room, ann, "another", "key-2")
        assert other.json()["offset"] > first.json()["offset"]

        for listener in listeners:
            got = await listener.wait_for(2)
            await asyncio.sleep(0.5)
            assert [m["text"] for m in listener.messages] == ["only once", "another"]
            await listener.stop()
        for w in (kchat_worker, second):
            assert [m["text"] for m in await history(client, w.url, room)] == ["only once", "another"]
        assert await wait_counts(client, second.url, {ann: 2}) == {ann: 2}

        # The same key for another text is a client's mistake, not a retry.
        clash = await keyed_post(client, second.url, room, ann, "something else", "key-1")
        assert clash.status_code == 422 and clash.json()["field"] == "Idempotency-Key"
        bad = await keyed_post(client, second.url, room, ann, "x", "bad key with spaces")
        assert bad.status_code == 400 and bad.json()["field"] == "Idempotency-Key"
    finally:
        second.stop()
    kchat_worker.wait_ready()


async def test_a_copy_that_reached_the_log_is_dropped_by_every_reader(kchat_worker, kafka_bootstrap, client):
    # The first attempt's outcome was unknown to its client, yet its record -- twice, as a retried
    # produce can leave it -- is in the log: what readers see, and what the client's retry is told.
    room, bob = unique("copy"), unique("bob")
    listener = await Subscriber(kchat_worker.url, room).start()
    msg = new_message(room, bob, "sent twice", 4000, key="k-unknown")
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    try:
        stored = [await producer.send_and_wait("chatroom", encode(msg), key=room.encode()) for _ in range(2)]
    finally:
        await producer.stop()
    assert stored[1].offset > stored[0].offset
    retry = await keyed_post(client, kchat_worker.url, room, bob, "sent twice", "k-unknown")
    assert retry.status_code == 201 and retry.headers["Idempotent-Replayed"] == "true"
    assert retry.json()["offset"] == stored[0].offset and retry.json()["id"] == msg.id
    after = await keyed_post(client, kchat_worker.url, room, bob, "after", "k-after")
    got = await listener.wait_for(2)
    await asyncio.sleep(0.5)
    await listener.stop()
    assert [m["offset"] for m in got] == [stored[0].offset, after.json()["offset"]]
    resumed = Subscriber(kchat_worker.url, room)
    resumed.last_id = f"{stored[0].partition}:{stored[0].offset - 1}"  # replays both copies' range
    await resumed.start()
    assert [m["offset"] for m in await resumed.wait_for(2)] == [stored[0].offset, after.json()["offset"]]
    await asyncio.sleep(0.3)
    await resumed.stop()
    assert len(resumed.messages) == 2
    assert [m["text"] for m in await history(client, kchat_worker.url, room)] == ["sent twice", "after"]
    assert await wait_counts(client, kchat_worker.url, {bob: 2}) == {bob: 2}


async def test_the_window_a_key_is_remembered_for(own_kafka, tmp_path, client):
    # A group of its own: every worker of a group must judge copies with the same window. The window is
    # judged by wall time at the worker: long enough that a machine stalling between the first post and
    # the retry 1 s later still leaves the retry inside it.
    # The keys kept behind the window are kept no longer than it here: the window alone decides.
    window = 15
    worker = Worker(own_kafka.bootstrap, tmp_path / "w", env={"KCHAT_IDEMPOTENCY_WINDOW": str(window),
                                                               "KCHAT_IDEMPOTENCY_RETENTION": str(window)}).start()
    try:
        room, cy = unique("window"), unique("cy")
        first = await keyed_post(client, worker.url, room, cy, "hello", "k")
        await asyncio.sleep(1)
        inside = await keyed_post(client, worker.url, room, cy, "hello", "k")
        assert inside.json() == first.json()  # 1 s after: the same message
        began = time.monotonic()
        await asyncio.sleep(window + 1.5)  # more than the window after the last attempt that reached the log
        outside = await keyed_post(client, worker.url, room, cy, "hello", "k")
        assert outside.status_code == 201 and "Idempotent-Replayed" not in outside.headers
        assert outside.json()["offset"] > first.json()["offset"], time.monotonic() - began
        # Beyond the window it is a new message: both are shown and counted.
        assert [m["offset"] for m in await history(client, worker.url, room)] == [
            first.json()["offset"], outside.json()["offset"]]
        assert await wait_counts(client, worker.url, {cy: 2}) == {cy: 2}
    finally:
        worker.stop()


async def test_a_retry_past_the_window_and_after_both_workers_restarted_is_the_first_message(
        own_kafka, tmp_path, client):
    # A window of 2 s (in memory), keys kept an hour (table idempotency_keys, restored from its changelog).
    env = {"KCHAT_IDEMPOTENCY_WINDOW": "2", "KCHAT_IDEMPOTENCY_RETENTION": "3600"}
    workers = [Worker(own_kafka.bootstrap, tmp_path / name, env=env) for name in ("a", "b")]
    try:
        await asyncio.gather(*(asyncio.to_thread(w.start, 240.0) for w in workers))
        room, dan = unique("durable"), unique("dan")
        first = await keyed_post(client, workers[0].url, room, dan, "kept", "key-d")
        assert first.status_code == 201, first.text
        await asyncio.sleep(3)  # past the window
        again = await keyed_post(client, workers[1].url, room, dan, "kept", "key-d")
        assert again.status_code == 201 and again.json() == first.json(), again.text
        assert again.headers["Idempotent-Replayed"] == "true"
        for w in workers:
            w.stop()
        await asyncio.gather(*(asyncio.to_thread(w.start, 240.0) for w in workers))
        for w in workers:
            retry = await keyed_post(client, w.url, room, dan, "kept", "key-d")
            assert retry.status_code == 201 and retry.json() == first.json(), retry.text
            assert retry.headers["Idempotent-Replayed"] == "true"
        reused = await keyed_post(client, workers[1].url, room, dan, "other text", "key-d")
        assert reused.status_code == 422  # the key of another message, also past the window
        # One message in the log, shown and counted once.
        assert [m["id"] for m in (await history(client, workers[0].url, room))] == [first.json()["id"]]
        assert await wait_counts(client, workers[1].url, {dan: 1}) == {dan: 1}
    finally:
        for w in workers:
            w.stop_or_kill()


async def test_the_seed_endpoint_takes_a_key_too_and_works_without_one(kchat_worker, client):
    url = f"{kchat_worker.url}/api/topics/chatroom"
    text = f"{unique('dee')}: seed-format hello"
    r1 = await client.post(url, content=text, headers={"Content-Type": "text/plain", "Idempotency-Key": "s1"})
    r2 = await client.post(url, content=text, headers={"Content-Type": "text/plain", "Idempotency-Key": "s1"})
    assert r1.status_code == r2.status_code == 200
    assert r1.headers["X-Kchat-Event-Id"] == r2.headers["X-Kchat-Event-Id"]
    assert r2.headers["Idempotent-Replayed"] == "true"
    r3 = await client.post(url, content=text, headers={"Content-Type": "text/plain"})
    assert r3.status_code == 200 and r3.headers["X-Kchat-Event-Id"] != r1.headers["X-Kchat-Event-Id"]


async def test_a_retry_after_a_503_that_was_stored_after_all_is_not_stored_twice(own_kafka, tmp_path, client):
    """The fault suite's retry: the first attempt's outcome is unknown (503) and the producer delivers it when
    the broker is back; the retry with its key answers that stored message, and readers show it once."""
    worker = Worker(own_kafka.bootstrap, tmp_path / "w", env={"KCHAT_PUBLISH_TIMEOUT": "3"}).start(120)
    room, user, key, text = unique("idem503"), unique("idem503-u"), unique("key"), "unknown at first"
    sub = await Subscriber(worker.url, room, reconnect=True).start()
    try:
        own_kafka.kill(0)
        first = await keyed_post(client, worker.url, room, user, text, key)
        assert first.status_code == 503, first.text  # not confirmed: it may or may not be stored
        own_kafka.start(0)
        deadline = time.monotonic() + 60  # the producer still holds the record and delivers it
        while not sub.count and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
        if not sub.count:
            pytest.skip("the 503'd message was not stored after all; this run cannot show the retry")
        again = await keyed_post(client, worker.url, room, user, text, key)
        assert 200 <= again.status_code < 300, again.text
        assert (again.json()["partition"], again.json()["offset"]) == (sub.events[0].partition, sub.events[0].offset)
        await asyncio.sleep(1.5)  # room for a second copy to arrive
        assert [m["text"] for m in sub.messages] == [text]
        assert [m["text"] for m in await history(client, worker.url, room)] == [text]
        assert await wait_counts(client, worker.url, {user: 1}) == {user: 1}
    finally:
        await sub.stop()
        worker.stop_or_kill()
