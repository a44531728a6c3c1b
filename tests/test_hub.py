"""The fan-out's delivery rules, in-process: the hub reads an in-memory log, subscribers write to fake
connections. No Kafka, no HTTP, no subprocess."""
from __future__ import annotations

import asyncio

import pytest

from kchat_faust.config import Settings
from kchat_faust.hub import Hub
from kchat_faust.metrics import Metrics
from kchat_faust.models import event_id, partition_for
from kchat_faust.sse import KEEPALIVE
from kchat_testkit import procs
from tests.support.memlog import FakeTransport, MemoryLog

ROOM = "lobby"
P = partition_for(ROOM, 12)


class Client:
    """One subscriber's stream, run as the view runs it: subscribe, stream, unsubscribe."""

    def __init__(self, hub: Hub, room: str = ROOM, after: int | None = None, compat: bool = False) -> None:
        self.transport = FakeTransport()
        self.hub, self.room, self.after, self.compat = hub, room, after, compat
        self.sub = None
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        self.sub = self.hub.subscribe(self.room, compat=self.compat)
        try:
            await self.hub.stream(self.sub, self.after, self.write, self.transport)
        finally:
            self.hub.unsubscribe(self.sub)

    async def write(self, data: bytes) -> None:  # the response's write, looked up each time
        await self.transport.task_write(data)

    async def parked(self) -> "Client":
        """Wait until the subscriber waits for the feed with nothing unsent."""
        await until(lambda: self.sub is not None and self.sub.parked())
        return self


async def until(condition, timeout: float = 60.0) -> None:
    """kchat_testkit.procs.until, looking every 5 ms: in-process, the hub answers within a few loop turns."""
    await procs.until(condition, timeout, "condition not met", interval=0.005)


@pytest.fixture
def log() -> MemoryLog:
    return MemoryLog()


async def started(log: MemoryLog, **settings) -> Hub:
    hub = Hub(Settings(**{"subscriber_buffer": 8, "keepalive": 3600, **settings}), log, log, Metrics())
    await hub.start()
    await until(lambda: hub.ready)
    return hub


@pytest.fixture
async def hub(log):
    # A feed of 8 frames: lapping is easy to provoke.
    hub = await started(log)
    yield hub
    await hub.stop()


def delivered(hub: Hub) -> float:
    return hub.metrics.registry.get_sample_value("kchat_events_delivered_total")


def ids(*offsets: int, partition: int = P) -> list[str]:
    return [event_id(partition, o) for o in offsets]


async def test_a_batch_goes_straight_to_idle_caught_up_subscribers(hub, log):
    a, b = await Client(hub).parked(), await Client(hub).parked()
    records = [log.post(ROOM, text=f"m{i}") for i in range(3)]
    await until(lambda: len(a.transport.event_ids()) == 3 and len(b.transport.event_ids()) == 3)
    for client in (a, b):
        assert client.transport.by("direct") == ids(*(r.offset for r in records))
        assert client.transport.by("task") == []
    # One write for the whole batch, the same bytes for both.
    assert len(a.transport.writes) == 1 and a.transport.data == b.transport.data
    assert delivered(hub) == 6


async def test_a_backed_up_socket_is_woken_instead_and_writes_from_its_own_task(hub, log):
    idle, stuck = await Client(hub).parked(), await Client(hub).parked()
    stuck.transport.backlog = 10_000
    r = log.post(ROOM)
    await until(lambda: idle.transport.event_ids() and stuck.transport.event_ids())
    assert idle.transport.by("direct") == ids(r.offset)
    assert stuck.transport.by("direct") == []
    assert stuck.transport.by("task") == ids(r.offset)


async def test_no_direct_write_while_the_subscribers_own_write_is_under_way(hub, log):
    client = await Client(hub).parked()
    r1 = log.post(ROOM, text="one")
    await until(lambda: client.transport.event_ids())
    drained = asyncio.Event()
    real = client.transport.task_write

    async def slow_write(data: bytes) -> None:
        await drained.wait()
        await real(data)

    client.transport.task_write = slow_write  # type: ignore[method-assign]
    client.transport.backlog = 1
    r2 = log.post(ROOM, text="two")  # woken: its own task writes, slowly
    await until(lambda: not client.sub.parked() and client.sub.cursor == hub.rooms[ROOM].end)
    client.transport.backlog = 0
    r3 = log.post(ROOM, text="three")  # the socket looks free, but a write is half done
    await asyncio.sleep(0.2)
    drained.set()
    await until(lambda: len(client.transport.event_ids()) == 3)
    assert client.transport.event_ids() == ids(r1.offset, r2.offset, r3.offset)


async def test_other_rooms_are_not_delivered(hub, log):
    here = await Client(hub, room="here").parked()
    there = await Client(hub, room="there").parked()
    r = log.post("here")
    await until(lambda: here.transport.event_ids())
    log.post("there", text="other")
    await until(lambda: there.transport.event_ids())
    assert here.transport.event_ids() == ids(r.offset, partition=partition_for("here", 12))


async def test_a_subscriber_lapped_by_the_feed_is_disconnected_and_the_others_keep_going(hub, log):
    healthy = await Client(hub).parked()
    slow = await Client(hub).parked()

    async def stuck_write(data: bytes) -> None:
        await asyncio.Event().wait()  # a socket that never drains

    slow.transport.backlog = 1  # not written to directly: it must write itself, and it is stuck
    slow.transport.task_write = stuck_write  # type: ignore[method-assign]
    log.post(ROOM, text="first")
    await until(lambda: healthy.transport.event_ids())
    records = [log.post(ROOM, text=f"m{i}") for i in range(20)]  # more than the feed keeps (8)
    await until(lambda: slow.task.done())
    assert slow.sub.overflowed and slow.task.cancelled()
    assert hub.metrics.registry.get_sample_value("kchat_slow_subscriber_disconnects_total") == 1
    await until(lambda: len(healthy.transport.event_ids()) == 21)
    assert healthy.transport.event_ids()[1:] == ids(*(r.offset for r in records))
    assert slow.sub not in hub.rooms[ROOM].subscribers and hub.subscriber_count == 1


async def test_idle_subscribers_get_keep_alives_from_one_hub_wide_tick(log):
    hub = await started(log, keepalive=0.05)
    try:
        a, b = await Client(hub).parked(), await Client(hub, room="other").parked()
        await until(lambda: a.transport.data.count(KEEPALIVE) >= 2 and b.transport.data.count(KEEPALIVE) >= 2)
        assert set(a.transport.data.split(b"\n")) <= {b": keep-alive", b""}
        r = log.post(ROOM)
        await until(lambda: a.transport.event_ids())
        assert a.transport.event_ids() == ids(r.offset)
    finally:
        await hub.stop()


async def test_resume_catches_up_then_goes_live_without_gap_or_duplicate(hub, log):
    old = [log.post(ROOM, text=f"old{i}") for i in range(5)]
    client = Client(hub, after=old[1].offset)  # has 0 and 1
    await until(lambda: len(client.transport.event_ids()) == 3)
    await client.parked()
    new = [log.post(ROOM, text=f"new{i}") for i in range(3)]
    await until(lambda: len(client.transport.event_ids()) == 6)
    assert client.transport.event_ids() == ids(*(r.offset for r in old[2:] + new))
    assert client.transport.by("task")[:3] == ids(*(r.offset for r in old[2:]))


async def test_resume_when_this_workers_reader_is_behind_the_token(hub, log):
    log.hold(P)  # this worker's live read lags: it has dispatched nothing of the partition yet
    records = [log.post(ROOM, text=f"m{i}") for i in range(6)]
    # A token from another worker that already delivered offsets 0..3.
    client = Client(hub, after=records[3].offset)
    await client.parked()
    assert client.transport.event_ids() == []  # nothing to catch up below the hub's position
    log.release(P)  # the reader now brings 0..5 live: 0..3 must be skipped
    await until(lambda: len(client.transport.event_ids()) == 2)
    later = log.post(ROOM, text="later")
    await until(lambda: len(client.transport.event_ids()) == 3)
    assert client.transport.event_ids() == ids(records[4].offset, records[5].offset, later.offset)


async def test_a_resume_racing_live_records_misses_none_and_repeats_none(log):
    # A feed large enough that the catch-up is never lapped while it reads.
    hub = await started(log, subscriber_buffer=1000)
    try:
        old = [log.post(ROOM, text=f"old{i}") for i in range(50)]
        client = Client(hub, after=-1)
        new = []
        for i in range(50):  # live records arrive while the catch-up is still reading
            new.append(log.post(ROOM, text=f"new{i}"))
            await asyncio.sleep(0)
        await until(lambda: len(client.transport.event_ids()) == 100)
        assert client.transport.event_ids() == ids(*(r.offset for r in old + new))
        assert not client.sub.overflowed
    finally:
        await hub.stop()


async def test_the_reader_reconnects_where_it_was(hub, log):
    client = await Client(hub).parked()
    first = log.post(ROOM)
    await until(lambda: client.transport.event_ids())
    opened = log.opened
    # A Kafka error makes the hub reopen the source from its own positions.
    from aiokafka.errors import KafkaConnectionError

    real_fetch = log.fetch

    async def failing_fetch(max_records: int):
        log.fetch = real_fetch  # fail once
        raise KafkaConnectionError("broker gone")

    log.fetch = failing_fetch
    await until(lambda: not hub.ready)
    second = log.post(ROOM)  # while it is disconnected: reopening at the log end would skip it
    await until(lambda: len(client.transport.event_ids()) == 2)
    assert log.opened == opened + 1 and hub.ready
    assert client.transport.event_ids() == ids(first.offset, second.offset)


async def test_seed_format_subscribers_get_the_seed_event(hub, log):
    seed = await Client(hub, compat=True).parked()
    native = await Client(hub).parked()
    r = log.post(ROOM, user="alice", text="hello")
    await until(lambda: seed.transport.event_ids() and native.transport.event_ids())
    assert seed.transport.data == f"id: {P}:{r.offset}\nevent: test\ndata: alice: hello\n\n".encode()
    assert b"event: message\n" in native.transport.data


