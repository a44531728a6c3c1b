"""The contract the fault suite's retries rely on (issue 15 deliverable 6): `Idempotency-Key` on
POST /api/rooms/{room}/messages. A retry with the key of an earlier success is answered like that success (2xx,
the same stored message: id, partition, offset) and the message is delivered, shown in history and counted
once -- also when the retry lands on another worker, and also when the first attempt's outcome was unknown
(a 503) and it was stored after all.

Expected to fail until the server side lands in kchat_faust/ (xfail strict: the marker must go then).
"""
from __future__ import annotations

import asyncio
import time
import uuid

import httpx
import pytest

from kchat_testkit.chat import unique, wait_counts
from kchat_testkit.sse import Subscriber
from kchat_testkit.worker import Worker

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(300)]
NOT_YET = "issue 15 deliverable 6: the workers do not honour Idempotency-Key yet"


async def post_with_key(client: httpx.AsyncClient, url: str, room: str, user: str, text: str, key: str):
    return await client.post(f"{url}/api/rooms/{room}/messages", json={"user": user, "text": text},
                             headers={"Idempotency-Key": key})


async def assert_once(client, urls: list[str], room: str, user: str, text: str, subs: list[Subscriber]):
    """The message is in the room's history once, each subscriber got it once, the user is counted once."""
    for s in subs:
        await s.wait_for(1, timeout=30)
    await asyncio.sleep(1.5)  # room for a second copy to arrive
    for s in subs:
        assert [m["text"] for m in s.messages] == [text], f"{s.name} got {[m['text'] for m in s.messages]}"
    history = (await client.get(f"{urls[0]}/api/rooms/{room}/messages")).json()["messages"]
    assert [m["text"] for m in history] == [text]
    for url in urls:
        assert await wait_counts(client, url, {user: 1}) == {user: 1}


@pytest.mark.xfail(strict=True, reason=NOT_YET)
async def test_a_retry_with_the_same_key_answers_like_the_first_success(kchat_worker):
    room, user, key = unique("idem"), unique("idem-u"), uuid.uuid4().hex
    sub = await Subscriber(kchat_worker.url, room).start()
    try:
        async with httpx.AsyncClient(timeout=30) as client:
            first = await post_with_key(client, kchat_worker.url, room, user, "once", key)
            again = await post_with_key(client, kchat_worker.url, room, user, "once", key)
            assert first.status_code == 201, first.text
            assert 200 <= again.status_code < 300 and again.json() == first.json(), (again.status_code, again.text)
            await assert_once(client, [kchat_worker.url], room, user, "once", [sub])
    finally:
        await sub.stop()


@pytest.mark.xfail(strict=True, reason=NOT_YET)
async def test_a_retry_on_another_worker_answers_like_the_first_success(kchat_worker, worker_factory):
    other = worker_factory()
    room, user, key = unique("idem2"), unique("idem2-u"), uuid.uuid4().hex
    subs = [await Subscriber(w.url, room).start() for w in (kchat_worker, other)]
    try:
        async with httpx.AsyncClient(timeout=30) as client:
            first = await post_with_key(client, kchat_worker.url, room, user, "once", key)
            again = await post_with_key(client, other.url, room, user, "once", key)
            assert first.status_code == 201, first.text
            assert 200 <= again.status_code < 300 and again.json() == first.json(), (again.status_code, again.text)
            await assert_once(client, [kchat_worker.url, other.url], room, user, "once", subs)
    finally:
        for s in subs:
            await s.stop()
        other.stop()


@pytest.mark.xfail(strict=True, reason=NOT_YET)
async def test_a_retry_after_a_503_that_was_stored_after_all_is_not_stored_twice(own_kafka, tmp_path):
    worker = Worker(own_kafka.bootstrap, tmp_path / "w", env={"KCHAT_PUBLISH_TIMEOUT": "3"}).start(120)
    room, user, key, text = unique("idem3"), unique("idem3-u"), uuid.uuid4().hex, "unknown at first"
    sub = await Subscriber(worker.url, room, reconnect=True).start()
    try:
        async with httpx.AsyncClient(timeout=30) as client:
            own_kafka.kill(0)
            first = await post_with_key(client, worker.url, room, user, text, key)
            assert first.status_code == 503, first.text  # not confirmed: it may or may not be stored
            own_kafka.start(0)
            deadline = time.monotonic() + 60  # the producer still holds the record and delivers it
            while not sub.count and time.monotonic() < deadline:
                await asyncio.sleep(0.5)
            if not sub.count:
                pytest.skip("the 503'd message was not stored after all; this run cannot show the retry")
            again = await post_with_key(client, worker.url, room, user, text, key)
            assert 200 <= again.status_code < 300, again.text
            assert (again.json()["partition"], again.json()["offset"]) == (sub.events[0].partition,
                                                                          sub.events[0].offset)
            await assert_once(client, [worker.url], room, user, text, [sub])
    finally:
        await sub.stop()
        worker.stop_or_kill()
