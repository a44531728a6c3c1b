"""What clients see when Kafka goes away and when a worker stops."""
from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from aiokafka import AIOKafkaProducer

from kchat_faust.models import encode, new_message

from kchat_testkit.chat import post, unique
from kchat_testkit.procs import until
from kchat_testkit.sse import Subscriber
from kchat_testkit.worker import Worker

pytestmark = pytest.mark.kafka


async def test_publish_answers_503_while_brokers_are_down_and_recovers(own_kafka, tmp_path):
    publish_timeout = 5
    worker = Worker(own_kafka.bootstrap, tmp_path / "w", env={"KCHAT_PUBLISH_TIMEOUT": str(publish_timeout)}).start()
    room = unique("outage")
    try:
        async with httpx.AsyncClient(timeout=90) as client:
            before = await post(client, worker.url, room, "ann", "before")

            own_kafka.kill(0)
            began = time.monotonic()
            r = await client.post(f"{worker.url}/api/rooms/{room}/messages",
                                  json={"user": "ann", "text": "during"})
            took = time.monotonic() - began
            assert r.status_code == 503, r.text
            assert "acknowledge" in r.json()["error"] or "refused" in r.json()["error"]
            # Bounded by KCHAT_PUBLISH_TIMEOUT, not hanging (the client waits 90 s); the rest is slack for a
            # stalled machine.
            assert took < publish_timeout + 25, f"the 503 took {took:.1f}s"

            own_kafka.start(0)

            async def posted() -> dict | None:  # through the same worker process, never restarted
                r = await client.post(f"{worker.url}/api/rooms/{room}/messages",
                                      json={"user": "ann", "text": "after"})
                assert r.status_code in (201, 503), r.text
                return r.json() if r.status_code == 201 else None
            after = await until(posted, 90, "a post accepted after the brokers came back", interval=1)
            assert after["partition"] == before["partition"] and after["offset"] > before["offset"]

            # every 201 is in the log; the 503'd "during" may or may not be, never reported as stored
            history = (await client.get(f"{worker.url}/api/rooms/{room}/messages")).json()["messages"]
            texts = [m["text"] for m in history]
            assert texts[0] == "before" and texts[-1] == "after"
            assert set(texts) <= {"before", "during", "after"}
    finally:
        worker.stop()


def log_lines(worker: Worker) -> list[str]:
    return worker.log_path.read_text(errors="replace").splitlines()


async def test_a_broker_outage_costs_a_few_log_lines_readyz_tells_and_sigterm_is_prompt(own_kafka, tmp_path):
    worker = Worker(own_kafka.bootstrap, tmp_path / "w").start()
    try:
        room = unique("outage")
        async with httpx.AsyncClient(timeout=10) as client:
            for i in range(20):  # offsets to commit and count changes to flush when it stops
                await post(client, worker.url, room, f"u{i}", "hi")

            async def readyz(status: int):
                try:
                    r = await client.get(f"{worker.url}/readyz")
                except httpx.HTTPError:
                    return None
                return r.json() if r.status_code == status else None

            def episodes_closed() -> bool:  # a fresh cluster's first seconds may have opened one
                lines = log_lines(worker)
                return (sum("kafka: cannot reach a broker" in line for line in lines)
                        == sum("kafka: brokers answer again" in line for line in lines))

            await until(episodes_closed, 60, "start-up trouble over", interval=0.5)
            seen = len(log_lines(worker))
            own_kafka.kill(0)
            body = await until(lambda: readyz(503), 60, "/readyz answered 503", interval=0.5)
            assert body["ready"] is False and body["brokers"] is False
            # The outage's first summary comes 10 s (by the worker's clock) after its opening line: what was
            # logged until then is the outage's cost, however long a stalled machine took to get there.
            await until(lambda: any("no broker reachable for" in line for line in log_lines(worker)[seen:]),
                        90, "the outage's first summary", interval=0.5)
            outage = log_lines(worker)[seen:]
            # aiokafka alone wrote ~1,300 lines in 10 s here (one per retry of each client).
            assert len(outage) <= 30, "\n".join(outage[:40])
            assert sum("kafka: cannot reach a broker" in line for line in outage) == 1, outage
            assert any("no broker reachable for" in line for line in outage), outage

            own_kafka.start(0)
            await until(lambda: readyz(200), 90, "/readyz answered 200 again", interval=0.5)
            await until(lambda: any("kafka: brokers answer again" in line for line in log_lines(worker)[seen:]),
                        60, "the outage's closing line", interval=0.5)

            for i in range(10):  # counting and presence still have work in flight when the brokers go
                await post(client, worker.url, room, f"v{i}", "bye")
            own_kafka.kill(0)  # gone for good: the worker must still stop promptly
            await asyncio.sleep(20)
            # and it has noticed: the stop below happens inside an open outage
            await until(lambda: not episodes_closed(), 60, "the second outage's opening line", interval=0.5)
        # A stop waits on Kafka for 3 s in all (it once hung for 20 minutes): the slack is for a stalled machine.
        took = worker.stop(timeout=90)
        assert took < 30, f"worker took {took:.1f}s to stop with the brokers gone"
        tail = log_lines(worker)[seen:]
        assert any("kafka: stopping with brokers unreachable" in line for line in tail)
        assert not [line for line in tail if "Traceback" in line or "Exception in thread" in line]
    finally:
        worker.kill()  # after a failed check; a no-op once it stopped


async def test_worker_stop_closes_open_streams_promptly(kchat_worker):
    room = unique("shutdown")
    listener = await Subscriber(kchat_worker.url, room).start()
    try:
        took = kchat_worker.stop(timeout=90)
        # aiohttp alone would wait 60 s for the open stream before it stops the producer; the rest of the
        # bound is slack for a stalled machine
        assert took < 40, f"worker took {took:.1f}s to stop with an open stream"
        # the server ended the stream: the client sees it as soon as its event loop runs again
        await until(lambda: listener.ended, 30, "the stream ended by the server", interval=0.5)
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
                await producer.send("chatroom", encode(msg), key=room.encode())
            await producer.flush()
        finally:
            await producer.stop()
        got = await fast.wait_for(total, timeout=60)
        assert [m["text"][:5] for m in got] == [f"{i:05d}" for i in range(total)]
        # The slow one was cut off: draining its socket now ends in EOF, well short of everything.
        received, closed = 0, False
        deadline = asyncio.get_running_loop().time() + 60
        while asyncio.get_running_loop().time() < deadline:
            chunk = await asyncio.wait_for(reader.read(65536), 60)
            if not chunk:
                closed = True
                break
            received += len(chunk)
        assert closed, "the server kept streaming to a client that stopped reading"
        assert received < total * len(text)
    finally:
        writer.close()
        await fast.stop()


async def test_a_worker_started_before_its_brokers_waits_for_them(tmp_path):
    from kchat_testkit.kafka import PORT_SPAN, UP_TIMEOUT, run_kafka_local
    from kchat_testkit.procs import free_port_base

    base = free_port_base(PORT_SPAN)
    worker = Worker(f"127.0.0.1:{base}", tmp_path / "w")
    worker.proc = None
    try:
        # returns once ready; its own bound covers `up` too, so the wait_for below is the one that counts
        start = asyncio.to_thread(worker.start, UP_TIMEOUT + 180.0)
        starting = asyncio.ensure_future(start)
        # it has met the missing brokers (not merely not started yet on a stalled machine), and holds on
        await until(lambda: worker.proc is not None and worker.log_path.exists() and any(
            "kafka: cannot reach a broker" in line for line in log_lines(worker)), 120, "the worker met no broker",
            interval=0.5)
        await asyncio.sleep(8)
        assert not starting.done() and worker.proc.poll() is None, "the worker gave up on its brokers"
        run_kafka_local("up", "--port-base", str(base), state_dir=tmp_path / "kafka")
        await asyncio.wait_for(starting, 180)
        lines = log_lines(worker)
        assert sum("kafka: cannot reach a broker" in line for line in lines) == 1
    finally:
        worker.kill()
        run_kafka_local("down", "--kill", state_dir=tmp_path / "kafka", check=False, timeout=60)


def test_a_worker_whose_brokers_never_come_stops_with_one_line(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    from kchat_testkit.kafka import PORT_SPAN
    from kchat_testkit.procs import free_port, free_port_base

    base = free_port_base(PORT_SPAN)
    faust_cli = str(Path(sys.executable).with_name("faust"))
    done = subprocess.run([faust_cli, "-A", "kchat_faust", "worker", "--web-port", str(free_port())], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
                          env={**__import__("os").environ, "KCHAT_BROKER": f"127.0.0.1:{base}",
                               "KCHAT_REPLICATION_FACTOR": "1", "KCHAT_STARTUP_TIMEOUT": "3",
                               "KCHAT_DATADIR": str(tmp_path / "data")})
    assert done.returncode != 0
    out = done.stdout + done.stderr
    assert f"kchat: no Kafka broker answered within 3s (KCHAT_BROKER=127.0.0.1:{base}" in out, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
