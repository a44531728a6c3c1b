"""What clients see when Kafka goes away and when a worker stops."""
from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from aiokafka import AIOKafkaProducer

from kchat_faust.models import new_message

from kchat_testkit.chat import post, unique
from kchat_testkit.sse import Subscriber
from kchat_testkit.worker import Worker

pytestmark = pytest.mark.kafka


async def test_publish_answers_503_while_brokers_are_down_and_recovers(own_kafka, tmp_path):
    worker = Worker(own_kafka.bootstrap, tmp_path / "w", env={"KCHAT_PUBLISH_TIMEOUT": "5"}).start()
    room = unique("outage")
    try:
        async with httpx.AsyncClient(timeout=30) as client:
            before = await post(client, worker.url, room, "ann", "before")

            own_kafka.kill(0)
            began = time.monotonic()
            r = await client.post(f"{worker.url}/api/rooms/{room}/messages",
                                  json={"user": "ann", "text": "during"})
            took = time.monotonic() - began
            assert r.status_code == 503, r.text
            assert "acknowledge" in r.json()["error"] or "refused" in r.json()["error"]
            assert took < 15  # bounded by KCHAT_PUBLISH_TIMEOUT, not hanging

            own_kafka.start(0)
            deadline = time.monotonic() + 90
            while True:  # the same worker process, never restarted
                r = await client.post(f"{worker.url}/api/rooms/{room}/messages",
                                      json={"user": "ann", "text": "after"})
                if r.status_code == 201 or time.monotonic() > deadline:
                    break
                assert r.status_code == 503, r.text
                await asyncio.sleep(1)
            assert r.status_code == 201, r.text
            after = r.json()
            assert after["partition"] == before["partition"] and after["offset"] > before["offset"]

            # every 201 is in the log; the 503'd "during" may or may not be, never reported as stored
            history = (await client.get(f"{worker.url}/api/rooms/{room}/messages")).json()["messages"]
            texts = [m["text"] for m in history]
            assert texts[0] == "before" and texts[-1] == "after"
            assert set(texts) <= {"before", "during", "after"}
    finally:
        worker.stop()


async def test_worker_stop_closes_open_streams_promptly(kchat_worker):
    room = unique("shutdown")
    listener = await Subscriber(kchat_worker.url, room).start()
    try:
        took = kchat_worker.stop()
        # aiohttp alone would wait 60 s for the open stream before it stops the producer
        assert took < 20, f"worker took {took:.1f}s to stop with an open stream"
        await asyncio.sleep(0.5)
        assert listener.ended  # the server ended the stream
    finally:
        await listener.stop()
        kchat_worker.start()


@pytest.fixture(scope="module")
def tuned_worker(worker_factory):
    # A tiny per-subscriber buffer, so the slow-client test need not fill megabytes of socket
    # buffers first, and frequent keep-alives.
    worker = worker_factory(env={"KCHAT_SUBSCRIBER_BUFFER": "5", "KCHAT_KEEPALIVE": "0.3"})
    yield worker
    worker.stop()


async def test_idle_streams_get_keepalive_comments_and_no_empty_events(tuned_worker):
    url = f"{tuned_worker.url}/api/rooms/{unique('idle')}/events"
    buf = b""
    async with httpx.AsyncClient(timeout=10) as client:
        async with client.stream("GET", url) as r:
            assert r.status_code == 200
            async for chunk in r.aiter_bytes():
                buf += chunk
                if buf.count(b": keep-alive\n") >= 3:
                    break
    assert b"data:" not in buf and b"event:" not in buf
    assert b"\n\n" not in buf  # a blank line would make some clients dispatch an empty event


async def test_a_slow_subscriber_is_disconnected_without_slowing_the_others(tuned_worker, kafka_bootstrap):
    worker = tuned_worker
    room = unique("slow")
    host, port = "127.0.0.1", worker.port
    # The slow client: asks for the stream, then never reads.
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(f"GET /api/rooms/{room}/events HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    await writer.drain()
    fast = await Subscriber(worker.url, room).start()
    text = "x" * 3900
    # About 6 MB, more than loopback socket buffers hold (up to 4 MB autotuned); produced
    # straight into Kafka, because this is about the fan-out, not the publish path.
    total = 1500
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    try:
        try:
            for i in range(total):
                msg = new_message(room, "firehose", f"{i:05d}{text}", 4000)
                await producer.send("chatroom", msg.dumps(), key=room.encode())
            await producer.flush()
        finally:
            await producer.stop()
        got = await fast.wait_for(total, timeout=60)
        assert [m["text"][:5] for m in got] == [f"{i:05d}" for i in range(total)]
        # The slow one was cut off: draining its socket now ends in EOF, well short of everything.
        received, closed = 0, False
        deadline = asyncio.get_running_loop().time() + 30
        while asyncio.get_running_loop().time() < deadline:
            chunk = await asyncio.wait_for(reader.read(65536), 30)
            if not chunk:
                closed = True
                break
            received += len(chunk)
        assert closed, "the server kept streaming to a client that stopped reading"
        assert received < total * len(text)
    finally:
        writer.close()
        await fast.stop()
