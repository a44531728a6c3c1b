"""The chat service against a real Kafka and real workers."""
from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from kchat_testkit.chat import post, unique, wait_counts
from kchat_testkit.sse import Subscriber

pytestmark = pytest.mark.kafka


@pytest.fixture
async def client():
    async with httpx.AsyncClient(timeout=20) as c:
        yield c


async def test_post_then_event_round_trip(kchat_worker, client):
    room = unique("round")
    listener = await Subscriber(kchat_worker.url, room).start()
    stored = await post(client, kchat_worker.url, room, "alice", "hello kafka")
    [got] = await listener.wait_for(1)
    await listener.stop()
    assert got == stored
    assert got["offset"] == stored["offset"] and got["partition"] == stored["partition"]
    assert got["event_id"] == f'{stored["partition"]}:{stored["offset"]}'
    assert (got["room"], got["user"], got["text"]) == (room, "alice", "hello kafka")


async def test_text_that_looks_like_sse_fields_arrives_as_one_event(kchat_worker, client):
    room = unique("inject")
    text = "line one\ndata: x\nid: 9\n\nevent: evil\r\nlast\u2028sep\u0085end"
    listener = await Subscriber(kchat_worker.url, room).start()
    await post(client, kchat_worker.url, room, "mallory", text)
    await post(client, kchat_worker.url, room, "mallory", "after")
    got = await listener.wait_for(2)
    await listener.stop()
    assert [m["text"] for m in got] == [text, "after"]


async def test_history_returns_last_messages_oldest_first(kchat_worker, client):
    room = unique("hist")
    sent = [await post(client, kchat_worker.url, room, "hana", f"m{i}") for i in range(7)]
    r = await client.get(f"{kchat_worker.url}/api/rooms/{room}/messages", params={"limit": 5})
    assert r.status_code == 200
    assert r.json()["messages"] == sent[-5:]


async def test_resume_with_last_event_id_has_no_gap_and_no_duplicate(kchat_worker, client):
    room = unique("resume")
    total = 120
    listener = await Subscriber(kchat_worker.url, room).start()

    async def publish():
        for i in range(total):
            await post(client, kchat_worker.url, room, "pub", f"n{i}")
            await asyncio.sleep(0.005)

    publishing = asyncio.create_task(publish())
    await listener.wait_for(20)
    await listener.stop()  # drops the connection while messages keep flowing
    dropped_at = len(listener.messages)
    await asyncio.sleep(0.3)
    await listener.start()  # resumes with Last-Event-ID
    await publishing
    got = await listener.wait_for(total)
    await asyncio.sleep(0.5)  # a duplicate would show up as an extra message
    await listener.stop()
    assert dropped_at < total
    assert [m["text"] for m in got] == [f"n{i}" for i in range(total)]


async def test_resume_token_also_accepted_as_query_parameter(kchat_worker, client):
    room = unique("query")
    first = await post(client, kchat_worker.url, room, "q", "one")
    await post(client, kchat_worker.url, room, "q", "two")
    url = f"{kchat_worker.url}/api/rooms/{room}/events"
    async with client.stream("GET", url, params={"last_event_id": first["event_id"]}) as r:
        assert r.status_code == 200
        buf = b""
        async for chunk in r.aiter_bytes():
            buf += chunk
            if b"\n\n" in buf:
                break
    event = buf.decode()
    assert "event: message\n" in event
    assert json.loads(event.split("data: ", 1)[1].split("\n", 1)[0])["text"] == "two"


async def test_seed_compat_endpoints_byte_for_byte(kchat_worker, client):
    base = kchat_worker.url
    r = await client.get(f"{base}/api/system/echo")
    assert r.status_code == 200 and r.text == "I'm working..."

    name = unique("carol")
    async with client.stream("GET", f"{base}/sse/connect") as stream:
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        r = await client.post(f"{base}/api/topics/chatroom", content=f"{name}: hello world".encode(),
                              headers={"Content-Type": "text/plain"})
        assert r.status_code == 200
        token = r.headers["X-Kchat-Event-Id"]
        r2 = await client.post(f"{base}/api/topics/chatroom", content=b"no prefix here",
                               headers={"Content-Type": "text/plain; charset=utf-8"})
        assert r2.status_code == 200
        expected = (f"id: {token}\nevent: test\ndata: {name}: hello world\n\n"
                    f"id: {r2.headers['X-Kchat-Event-Id']}\nevent: test\ndata: anonymous: no prefix here\n\n")
        buf = ""
        async for chunk in stream.aiter_text():
            buf += chunk
            if expected in buf or len(buf) > 100_000:
                break
    assert expected in buf


async def test_counts_are_exact_and_survive_a_restart_with_wiped_local_state(kchat_worker, client):
    alice, bob = unique("alice"), unique("bob")
    room = unique("count")
    for i in range(5):
        await post(client, kchat_worker.url, room, alice, f"a{i}")
    for i in range(3):
        await post(client, kchat_worker.url, room, bob, f"b{i}")
    assert await wait_counts(client, kchat_worker.url, {alice: 5, bob: 3}) == {alice: 5, bob: 3}
    r = await client.get(f"{kchat_worker.url}/stats/users/{alice}")
    assert r.json() == {"user": alice, "count": 5}

    kchat_worker.stop()
    kchat_worker.wipe_state()  # the table must come back from its changelog
    kchat_worker.start()
    await post(client, kchat_worker.url, room, alice, "after restart")
    assert await wait_counts(client, kchat_worker.url, {alice: 6, bob: 3}) == {alice: 6, bob: 3}
    await asyncio.sleep(2)  # a replayed record counted twice would show up here
    # Counts never go down, so a double count could not pass; the poll only outlasts a slow or stalled answer.
    assert await wait_counts(client, kchat_worker.url, {alice: 6, bob: 3}) == {alice: 6, bob: 3}


async def test_two_workers_every_subscriber_gets_its_room_once_in_order(kchat_worker, worker_factory, client):
    second = worker_factory()
    workers = [kchat_worker, second]
    rooms = [unique("room") for _ in range(3)]
    users = {room: unique("u") for room in rooms}
    try:
        # wait until both workers are ready after the rebalance the second one caused
        for w in workers:
            w.wait_ready()
        listeners = {(w.url, room): await Subscriber(w.url, room).start() for w in workers for room in rooms}
        sent: dict[str, list[str]] = {room: [] for room in rooms}

        async def publish_room(room: str, k: int) -> None:
            for i in range(100):
                base = workers[(i + k) % 2].url  # alternate the worker that takes the post
                await post(client, base, room, users[room], f"{room}-{i}")
                sent[room].append(f"{room}-{i}")

        await asyncio.gather(*(publish_room(room, k) for k, room in enumerate(rooms)))
        for (url, room), listener in listeners.items():
            got = await listener.wait_for(100)
            assert [m["text"] for m in got] == sent[room], f"subscriber of {room} on {url}"
            assert all(m["room"] == room for m in got)
        await asyncio.sleep(0.5)
        for listener in listeners.values():
            assert len(listener.messages) == 100  # nothing extra arrived late
            await listener.stop()

        expected = {users[room]: 100 for room in rooms}
        for w in workers:  # complete whichever worker answers
            assert await wait_counts(client, w.url, expected) == expected
        for w in workers:  # one user's count: from its owner, whichever worker is asked
            for user in expected:
                r = await client.get(f"{w.url}/stats/users/{user}")
                assert r.status_code == 200 and r.json() == {"user": user, "count": 100}, (w.url, r.text)
    finally:
        second.stop()
    # the group shrank back to one worker, which now holds every partition
    kchat_worker.wait_ready()
    assert await wait_counts(client, kchat_worker.url, expected) == expected


async def test_readyz_and_healthz(kchat_worker, client):
    r = await client.get(f"{kchat_worker.url}/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok"}
    kchat_worker.wait_ready()  # an earlier test's worker leaving may still be rebalancing
    r = await client.get(f"{kchat_worker.url}/readyz")
    assert r.status_code == 200
    assert r.json() == {"ready": True, "brokers": True, "producer": True, "fanout": True, "tables": True}


async def test_history_gives_a_resume_point_with_no_gap_even_for_an_empty_room(kchat_worker, client):
    room = unique("fresh")
    r = await client.get(f"{kchat_worker.url}/api/rooms/{room}/messages")
    assert r.json()["messages"] == []
    resume_from = r.json()["last_event_id"]
    # posted after the history was read and before the stream opens: must not be lost
    missed = await post(client, kchat_worker.url, room, "early", "between history and stream")
    listener = Subscriber(kchat_worker.url, room)
    listener.last_id = resume_from
    await listener.start()
    later = await post(client, kchat_worker.url, room, "late", "after")
    got = await listener.wait_for(2)
    await asyncio.sleep(0.3)
    await listener.stop()
    assert got == [missed, later]
