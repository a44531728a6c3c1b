"""The hub: every worker reads the whole chat topic and hands each record to its own subscribers.

Faust agents share the app's consumer group, so N workers would each see 1/N of the
partitions -- the seed's bug. The hub instead reads from a RecordSource that belongs to no
group and is assigned every partition (kafka_io.KafkaRecordSource): each worker sees every
record, so each subscriber gets every message of its room whichever worker it is connected to.

Resume: a subscriber registers for live records first and remembers the hub's position in
its room's partition at that moment; everything before that position is read back from the
log (a RangeReader), everything after arrives live. Offsets order both, so the seam has no
gap and no duplicate.

Copies: the hub remembers where it saw each keyed message id (copies.CopyIndex) and drops a
record that copies an earlier one, live, in resume and in history; counting asks it too
(Judge). At start it reads one window of the log back, so that it can judge from the first
live record on.

Both sources are small interfaces, so tests drive the hub with in-memory records.
"""
from __future__ import annotations

import asyncio
import logging
import time
from contextlib import aclosing
from typing import AsyncIterator, Awaitable, Callable, Mapping, Protocol

import mode
from aiokafka.errors import KafkaError

from .config import Settings
from .copies import CopyIndex
from .feed import RoomFeed, Subscriber
from .metrics import Metrics
from .models import ChatMessage, decode_record, keyed_id_of, message_json, partition_for
from .sse import Frames, gap_frame

log = logging.getLogger(__name__)


class Record(Protocol):
    """What the hub needs of a Kafka record (aiokafka's ConsumerRecord has it)."""

    partition: int
    offset: int
    timestamp: int  # milliseconds
    value: bytes | None


class RecordSource(Protocol):
    """The chat topic, read live: every partition, each in offset order."""

    async def open(self, positions: Mapping[int, int]) -> dict[int, int]:
        """Start reading every partition (waiting for the topic to exist): from `positions` where
        given, partitions not in it from their start, or everything from the log end when
        `positions` is empty. Returns where each partition's reading begins."""

    async def fetch(self, max_records: int) -> list[Record]:
        """The next records, at most max_records; an empty list after a short wait with none."""

    def highwater(self, partition: int) -> int | None:
        """The log end of the partition as last heard of, if known."""

    async def close(self) -> None: ...


class RangeReader(Protocol):
    """The chat topic, read back: offset ranges of one partition."""

    async def bounds(self, partition: int) -> tuple[int, int]:
        """The partition's first offset and its end (the offset the next record will get)."""

    async def offset_at(self, partition: int, timestamp_ms: int) -> int:
        """The first offset whose record is at least that recent (the end if none is)."""

    def read(self, partition: int, start: int, stop: int) -> AsyncIterator[Record]:
        """Records with start <= offset < stop, from the log start if start is gone."""

    async def close(self) -> None: ...


def now_ms() -> int:
    return int(time.time() * 1000)


class Judge:
    """Copy decisions for one reader going through one partition in offset order: the hub's index
    where it knows the record's window, else an index of the reader's own, seeded by reading the
    window before the first record it could not judge. Ask about every record, copies or not."""

    __slots__ = ("hub", "partition", "own")

    def __init__(self, hub: "Hub", partition: int) -> None:
        self.hub, self.partition = hub, partition
        self.own: CopyIndex | None = None

    async def is_copy(self, offset: int, timestamp: int, msg_id: str | None) -> bool:
        if self.own is None:
            if msg_id is None:
                return False
            known = self.hub.copies.is_copy(self.partition, offset, timestamp, msg_id)
            if known is not None:
                return known
            self.own = await self.hub.index_before(self.partition, offset, timestamp)
        return self.own.observe(self.partition, offset, timestamp, msg_id)


class Hub(mode.Service):
    def __init__(self, settings: Settings, source: RecordSource, reader: RangeReader,
                 metrics: Metrics, **kwargs) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self.source = source
        self.reader = reader
        self.metrics = metrics
        self.rooms: dict[str, RoomFeed] = {}
        self.positions: dict[int, int] = {}  # partition -> next offset the hub will dispatch
        self.copies = CopyIndex(int(settings.idempotency_window * 1000))
        self._reached: dict[int, list[tuple[int, asyncio.Future]]] = {}  # partition -> waiters
        self.subscriber_count = 0
        self.ready = False

    def lag(self) -> dict[int, int]:
        """Per partition, how far the reader is behind the log end it last heard of."""
        lag = {}
        for partition, position in self.positions.items():
            highwater = self.source.highwater(partition)
            if highwater is not None:
                lag[partition] = max(0, highwater - position)
        return lag

    def partition_for(self, room: str) -> int:
        return partition_for(room, len(self.positions) or self.settings.partitions)

    # -- subscribers ---------------------------------------------------------------
    def subscribe(self, room: str, compat: bool = False) -> Subscriber:
        partition = self.partition_for(room)
        feed = self.rooms.get(room)
        if feed is None:
            feed = self.rooms[room] = RoomFeed(self.settings.subscriber_buffer, self.metrics)
        sub = Subscriber(feed, room, partition, compat, self.positions.get(partition, 0))
        feed.subscribers.add(sub)
        self.subscriber_count += 1
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        feed = self.rooms.get(sub.room)
        if feed is not None and sub in feed.subscribers:
            feed.subscribers.discard(sub)
            self.subscriber_count -= 1
            if not feed.subscribers:
                del self.rooms[sub.room]

    def close_all(self) -> None:
        for feed in self.rooms.values():
            for sub in feed.subscribers:
                sub.close()
            feed.wake_all()

    async def stream(self, sub: Subscriber, after_offset: int | None,
                     write: Callable[[bytes], Awaitable[None]],
                     transport: asyncio.Transport | None = None, chunked: bool = False) -> None:
        """Everything of sub's room after after_offset (when resuming), then live, until the
        subscriber is closed. `write` sends bytes on the response; once caught up, the hub may
        also write live frames to `transport` directly (framed for chunked encoding if so)."""
        if after_offset is not None:
            begin, _end = await self.reader.bounds(sub.partition)
            if after_offset + 1 < begin:
                # The log no longer has what comes next (retention, deleted records): say so first.
                await write(gap_frame(sub.partition, after_offset, begin))
                after_offset = begin - 1
            async for frame in self.catch_up(sub, after_offset):
                await write(frame)
        sub.attach(transport, chunked)
        async for frame in sub.frames():
            await write(frame)

    async def catch_up(self, sub: Subscriber, after_offset: int) -> AsyncIterator[bytes]:
        """Frames of sub's room from after_offset+1 up to where its live feed begins."""
        # The client has everything up to after_offset; this worker's reader may be behind the
        # one that handed out the token, so the live feed must skip those offsets too.
        sub.last_offset = after_offset
        records = self.originals(sub.partition, self.reader.read(sub.partition, after_offset + 1, sub.live_from))
        async with aclosing(records):
            async for record in records:
                msg = decode_record(record.value, record.partition, record.offset,
                                    record.timestamp, self.settings.default_room)
                if msg is None or msg.room != sub.room:
                    continue
                sub.last_offset = record.offset
                frame = Frames(msg, record.partition, record.offset).render(sub.compat)
                if frame:
                    self.metrics.delivered.inc()
                    yield frame

    # -- copies -------------------------------------------------------------------------
    def judge(self, partition: int) -> Judge:
        return Judge(self, partition)

    async def originals(self, partition: int, records: AsyncIterator[Record]) -> AsyncIterator[Record]:
        """The records of one partition (in offset order) that are not copies."""
        judge = self.judge(partition)
        async with aclosing(records):
            async for record in records:
                if not await judge.is_copy(record.offset, record.timestamp, keyed_id_of(record.value)):
                    yield record

    async def index_before(self, partition: int, offset: int, timestamp: int) -> CopyIndex:
        """An index of the keyed records of the window before (partition, offset), read from the log."""
        window = self.copies.window_ms
        start = min(offset, await self.reader.offset_at(partition, timestamp - window))
        index = CopyIndex(window)
        index.start(partition, start, horizon_ts=timestamp - window)
        records = self.reader.read(partition, start, offset)
        async with aclosing(records):
            async for r in records:
                index.observe(partition, r.offset, r.timestamp, keyed_id_of(r.value))
        return index

    async def stored(self, room: str, msg_id: str) -> dict | None:
        """The message with this id stored in the room within a window before now, if any: what a
        retry of its publish is answered with."""
        partition = self.partition_for(room)
        found = self.copies.original(partition, msg_id, now_ms())
        return await self.message_at(partition, found[0]) if found is not None else None

    async def original_of(self, room: str, partition: int, offset: int, msg_id: str,
                          timeout: float) -> dict | None:
        """For a keyed message just stored at (partition, offset): once the hub has read it, the
        earlier message it copies (the one every reader shows), or None if it copies none --
        or if the hub could not tell within `timeout` seconds."""
        if not await self.reached(partition, offset + 1, timeout):
            return None
        found = self.copies.chain_start(partition, offset, msg_id)
        if found is None or found[0] == offset:
            return None
        return await self.message_at(partition, found[0])

    async def message_at(self, partition: int, offset: int) -> dict | None:
        """The chat message stored at (partition, offset), if that is one."""
        async for r in self.reader.read(partition, offset, offset + 1):
            msg = decode_record(r.value, r.partition, r.offset, r.timestamp, self.settings.default_room)
            return message_json(msg, r.partition, r.offset) if isinstance(msg, ChatMessage) else None
        return None

    async def reached(self, partition: int, position: int, timeout: float) -> bool:
        """Wait until the hub has read the partition up to `position`; False after `timeout` s."""
        if self.positions.get(partition, 0) >= position:
            return True
        future = asyncio.get_running_loop().create_future()
        self._reached.setdefault(partition, []).append((position, future))
        try:
            async with asyncio.timeout(timeout):
                await future
            return True
        except TimeoutError:
            return False
        finally:
            waiters = self._reached.get(partition, [])
            if (position, future) in waiters:
                waiters.remove((position, future))

    def _wake_reached(self) -> None:
        for partition, waiters in self._reached.items():
            position = self.positions.get(partition, 0)
            for at, future in waiters:
                if at <= position and not future.done():
                    future.set_result(None)

    async def _read_back_window(self) -> None:
        """Before the first live record: read one window of every partition into the copy index."""
        window = self.copies.window_ms
        horizon = now_ms() - window
        for partition, position in self.positions.items():
            start = min(position, await self.reader.offset_at(partition, horizon))
            self.copies.start(partition, start, horizon_ts=horizon)
            records = self.reader.read(partition, start, position)
            async with aclosing(records):
                async for r in records:
                    self.copies.observe(partition, r.offset, r.timestamp, keyed_id_of(r.value))

    @mode.Service.task
    async def _keepalive(self) -> None:
        while not self.should_stop:
            await self.sleep(self.settings.keepalive)
            for feed in list(self.rooms.values()):
                feed.tick()

    # -- the reader -------------------------------------------------------------------
    async def on_stop(self) -> None:
        self.close_all()
        await self.reader.close()

    @mode.Service.task
    async def _read_forever(self) -> None:
        while not self.should_stop:
            try:
                # Reconnecting: continue where we were, so live subscribers miss nothing.
                first = not self.positions
                self.positions.update(await self.source.open(self.positions))
                if first:
                    await self._read_back_window()
                self.ready = True
                log.info("fan-out reader: reading all %d partitions of %r",
                         len(self.positions), self.settings.topic)
                await self._dispatch_loop()
            except KafkaError as exc:
                log.warning("fan-out reader: %s; reconnecting", exc)
                self.ready = False
                await self.sleep(1.0)
            except Exception:
                # Anything else is a bug, but a silent dead reader would starve every
                # subscriber while /readyz still said yes: log it, mark unready, start over.
                log.exception("fan-out reader failed; restarting it")
                self.ready = False
                await self.sleep(1.0)
            finally:
                await self.source.close()

    async def _dispatch_loop(self) -> None:
        default_room = self.settings.default_room
        # A batch never holds more records than a feed keeps, and the loop yields after each
        # batch: healthy subscribers catch up in between, so only one whose socket is really
        # stuck can be lapped.
        batch_size = min(2000, self.settings.subscriber_buffer)
        touched: dict[RoomFeed, int] = {}  # feed -> where this batch begins in it
        while not self.should_stop:
            for record in await self.source.fetch(batch_size):
                self.positions[record.partition] = record.offset + 1
                if self.copies.observe(record.partition, record.offset, record.timestamp,
                                       keyed_id_of(record.value)):
                    self.metrics.copies.inc()
                    continue
                # Only records of watched rooms are decoded beyond the cheap check.
                if not self.rooms:
                    continue
                msg = decode_record(record.value, record.partition, record.offset,
                                    record.timestamp, default_room)
                feed = self.rooms.get(msg.room) if msg is not None else None
                if feed is None:
                    continue
                touched.setdefault(feed, feed.end)
                feed.append(record.offset, Frames(msg, record.partition, record.offset))
            for feed, batch_start in touched.items():
                feed.deliver(batch_start)
            touched.clear()
            if self._reached:
                self._wake_reached()
            await asyncio.sleep(0)
