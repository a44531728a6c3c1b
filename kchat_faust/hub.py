"""The hub: every worker reads the whole chat topic and hands each record to its own subscribers.

Faust agents share the app's consumer group, so N workers would each see 1/N of the
partitions -- the seed's bug. The hub instead reads from a RecordSource that belongs to no
group and is assigned every partition (kafka_io.KafkaRecordSource): each worker sees every
record, so each subscriber gets every message of its room whichever worker it is connected to.

Resume: a subscriber registers for live records first and remembers the hub's position in
its room's partition at that moment; everything before that position is read back from the
log (a RangeReader), everything after arrives live. Offsets order both, so the seam has no
gap and no duplicate.

Both sources are small interfaces, so tests drive the hub with in-memory records.
"""
from __future__ import annotations

import asyncio
import logging
from contextlib import aclosing
from typing import AsyncIterator, Awaitable, Callable, Mapping, Protocol

import mode
from aiokafka.errors import KafkaError

from .config import Settings
from .feed import RoomFeed, Subscriber
from .limits import MAX_HISTORY_SCAN
from .metrics import Metrics
from .models import decode_record, event_id, message_json, partition_for
from .sse import Frames

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

    def read(self, partition: int, start: int, stop: int) -> AsyncIterator[Record]:
        """Records with start <= offset < stop, from the log start if start is gone."""

    async def close(self) -> None: ...


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
        records = self.reader.read(sub.partition, after_offset + 1, sub.live_from)
        async with aclosing(records):
            async for record in records:
                msg = decode_record(record.value, record.partition, record.offset,
                                    record.timestamp, self.settings.default_room)
                if msg is None or msg.room != sub.room:
                    continue
                sub.last_offset = record.offset
                self.metrics.delivered.inc()
                yield Frames(msg, record.partition, record.offset).render(sub.compat)

    async def recent(self, room: str, limit: int) -> tuple[list[dict], str]:
        """The room's last `limit` messages, read back from the log, oldest first, and the resume
        token of the point the read covered: resuming from it continues exactly after it, even
        in a room with no message yet.

        Rooms share partitions, so the scan walks back in growing windows until it has
        enough, reaches the log start, or has looked at MAX_HISTORY_SCAN records.
        """
        partition = self.partition_for(room)
        begin, end = await self.reader.bounds(partition)
        stop = end
        found: list[dict] = []
        window = max(limit * 4, 256)
        while stop > begin and len(found) < limit and end - stop < MAX_HISTORY_SCAN:
            start = max(begin, stop - window)
            chunk = []
            records = self.reader.read(partition, start, stop)
            async with aclosing(records):
                async for r in records:
                    msg = decode_record(r.value, r.partition, r.offset, r.timestamp,
                                        self.settings.default_room)
                    if msg is not None and msg.room == room:
                        chunk.append(message_json(msg, r.partition, r.offset))
            found = chunk + found
            stop, window = start, window * 4
        return found[-limit:], event_id(partition, end - 1)

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
                self.positions.update(await self.source.open(self.positions))
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
            await asyncio.sleep(0)
