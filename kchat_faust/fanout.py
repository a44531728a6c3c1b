"""Fan-out: every worker reads the whole chat topic and pushes each record to its own subscribers.

Faust agents share the app's consumer group, so N workers would each see 1/N of the
partitions -- the seed's bug. The Hub instead runs one aiokafka consumer per worker that
belongs to no group and is assigned every partition: each worker sees every record, so
each subscriber gets every message of its room whichever worker it is connected to.

Resume: a subscriber registers for live records first and remembers the hub's position
in its room's partition at that moment; everything before that position is read back
from Kafka (LogReader), everything after arrives live. Offsets order both, so the seam
has no gap and no duplicate.
"""
from __future__ import annotations

import asyncio
import json
import logging
import re
from collections import deque
from contextlib import aclosing
from itertools import islice
from typing import AsyncIterator

import mode
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from .config import Settings
from .kafka_io import LogReader
from .metrics import DELIVERED, SLOW_DISCONNECTS
from .models import ChatMessage, decode_record, event_id, message_json, partition_for

log = logging.getLogger(__name__)
MAX_HISTORY_SCAN = 200_000


# Only CR, LF and CRLF end an SSE line; str.splitlines() would also split on U+2028 and kin,
# which JSON leaves unescaped inside strings.
_SSE_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def sse_frame(event: str, data: str, id_: str) -> bytes:
    # One "data:" line per text line: a newline inside a message cannot start a new field.
    lines = "".join(f"data: {line}\n" for line in _SSE_LINE_BREAK.split(data))
    return f"id: {id_}\nevent: {event}\n{lines}\n".encode()


# A comment line with no blank line after it: aiohttp-sse's own ": ping\r\n\r\n" ends in a
# blank line, which some clients (httpx-sse among them) turn into an empty "message" event.
KEEPALIVE = b": keep-alive\n"


class Frames:
    """A record rendered once per format, shared by every subscriber of its room."""

    __slots__ = ("msg", "partition", "offset", "_native", "_compat")

    def __init__(self, msg: ChatMessage, partition: int, offset: int) -> None:
        self.msg, self.partition, self.offset = msg, partition, offset
        self._native: bytes | None = None
        self._compat: bytes | None = None

    def render(self, compat: bool) -> bytes:
        if compat:
            if self._compat is None:
                # The seed's event: name "test", data "<name>: <text>".
                self._compat = sse_frame("test", f"{self.msg.user}: {self.msg.text}",
                                         event_id(self.partition, self.offset))
            return self._compat
        if self._native is None:
            data = json.dumps(message_json(self.msg, self.partition, self.offset),
                              ensure_ascii=False, separators=(",", ":"))
            self._native = sse_frame("message", data, event_id(self.partition, self.offset))
        return self._native


class RoomFeed:
    """A room's newest frames, kept once and read by all its subscribers from their own cursors.

    The hub appends a batch of records, then delivers it: every subscriber that is idle, caught
    up and whose socket takes data at once gets the batch written straight to its connection,
    the bytes built once per format for the whole room. Only the others (catching up, or with
    a backed-up socket) are woken to write from their cursors in their own tasks. A subscriber
    that falls more than `capacity` frames behind is disconnected (it can resume), so memory
    stays bounded and nobody waits for it.
    """

    __slots__ = ("frames", "end", "subscribers", "ticks")

    def __init__(self, capacity: int) -> None:
        self.frames: deque[tuple[int, Frames]] = deque(maxlen=capacity)
        self.end = 0  # sequence number after the newest frame
        self.subscribers: set[Subscriber] = set()
        self.ticks = 0  # keep-alive ticks so far: tells a woken subscriber why it was woken

    @property
    def start(self) -> int:
        return self.end - len(self.frames)

    def append(self, offset: int, frames: Frames) -> None:
        self.frames.append((offset, frames))
        self.end += 1

    def wake_all(self) -> None:
        for sub in self.subscribers:
            sub.wake()

    def tick(self) -> None:
        self.ticks += 1
        self.wake_all()

    def deliver(self, batch_start: int) -> None:
        """After the hub appended frames batch_start..end: write them to whoever can take them
        now, wake the rest, disconnect whoever was lapped, forget frames everyone has read."""
        start, end = self.start, self.end
        batch = list(islice(self.frames, batch_start - start, None))
        first_offset, last_offset = batch[0][0], batch[-1][0]
        wire: dict[tuple[bool, bool], bytes] = {}
        direct = 0
        oldest = end
        for sub in list(self.subscribers):
            if sub.cursor < start:
                sub.drop_slow()
                continue
            transport = sub.transport
            if (sub.parked() and sub.cursor == batch_start and sub.last_offset < first_offset
                    and transport is not None and not transport.is_closing()
                    and not transport.get_write_buffer_size()):
                key = (sub.compat, sub.chunked)
                data = wire.get(key)
                if data is None:
                    payload = b"".join(frames.render(sub.compat) for _, frames in batch)
                    # The response is already streaming: frame the bytes as aiohttp would.
                    data = wire[key] = b"%x\r\n%b\r\n" % (len(payload), payload) if sub.chunked else payload
                transport.write(data)
                sub.cursor, sub.last_offset = end, last_offset
                direct += 1
            else:
                oldest = min(oldest, sub.cursor)
                sub.wake()
        if direct:
            DELIVERED.inc(direct * len(batch))
        for _ in range(oldest - start):
            self.frames.popleft()


class Subscriber:
    # Thousands of idle subscribers per worker: no per-instance __dict__.
    __slots__ = ("feed", "room", "partition", "compat", "live_from", "cursor", "last_offset",
                 "closed", "overflowed", "task", "transport", "chunked", "waiter")

    def __init__(self, feed: RoomFeed, room: str, partition: int, compat: bool, live_from: int) -> None:
        self.feed = feed
        self.room = room
        self.partition = partition
        self.compat = compat
        self.live_from = live_from  # first offset that will arrive through the feed
        self.cursor = feed.end  # next feed frame to send
        self.last_offset = -1  # last offset handed to the client
        self.closed = False
        self.overflowed = False
        self.task: asyncio.Task | None = asyncio.current_task()
        # Set by attach() once the response streams, so the hub can write to it directly.
        self.transport: asyncio.Transport | None = None
        self.chunked = False
        self.waiter: asyncio.Future | None = None  # set while it waits in frames() for the feed

    def attach(self, transport: asyncio.Transport | None, chunked: bool) -> None:
        self.transport, self.chunked = transport, chunked

    def parked(self) -> bool:
        """Waiting with nothing unsent: its task writes nothing until woken."""
        return self.waiter is not None and not self.waiter.done()

    def wake(self) -> None:
        if self.parked():
            self.waiter.set_result(None)

    def drop_slow(self) -> None:
        if self.overflowed:
            return
        self.overflowed = True
        SLOW_DISCONNECTS.inc()
        if self.task is not None:
            self.task.cancel()  # also interrupts a write stuck on a full socket

    def close(self) -> None:
        self.closed = True

    async def frames(self) -> AsyncIterator[bytes]:
        """Live frames the hub did not write directly, skipping any the catch-up already
        delivered; keep-alives when idle. Everything appended since the last wake-up goes
        out as one write."""
        feed = self.feed
        while not self.closed:
            if self.cursor == feed.end:
                ticks = feed.ticks
                self.waiter = asyncio.get_running_loop().create_future()
                try:
                    await self.waiter
                finally:
                    self.waiter = None
                if self.cursor == feed.end and feed.ticks != ticks and not self.closed:
                    # Woken by the hub's keep-alive tick with nothing new: one timer for the
                    # whole worker instead of one per waiting subscriber.
                    yield KEEPALIVE
                continue
            if self.cursor < feed.start:  # lapped while it was writing
                self.drop_slow()
                return
            chunk = []
            last = self.last_offset
            for offset, frames in islice(feed.frames, self.cursor - feed.start, None):
                if offset > last:
                    last = offset
                    chunk.append(frames.render(self.compat))
            self.cursor, self.last_offset = feed.end, last
            if chunk:
                DELIVERED.inc(len(chunk))
                yield b"".join(chunk)


class Hub(mode.Service):
    def __init__(self, settings: Settings, reader: LogReader, **kwargs) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self.reader = reader
        self.rooms: dict[str, RoomFeed] = {}
        self.positions: dict[int, int] = {}  # partition -> next offset the hub will dispatch
        self.ready = False
        self._consumer: AIOKafkaConsumer | None = None

    @property
    def subscriber_count(self) -> int:
        return sum(len(feed.subscribers) for feed in self.rooms.values())

    def lag(self) -> dict[int, int]:
        """Per partition, how far the reader is behind the log end it last heard of."""
        consumer, topic = self._consumer, self.settings.topic
        if consumer is None:
            return {}
        lag = {}
        for partition, position in self.positions.items():
            highwater = consumer.highwater(TopicPartition(topic, partition))
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
            feed = self.rooms[room] = RoomFeed(self.settings.subscriber_buffer)
        sub = Subscriber(feed, room, partition, compat, self.positions.get(partition, 0))
        feed.subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        feed = self.rooms.get(sub.room)
        if feed is not None:
            feed.subscribers.discard(sub)
            if not feed.subscribers:
                del self.rooms[sub.room]

    def close_all(self) -> None:
        for feed in self.rooms.values():
            for sub in feed.subscribers:
                sub.close()
            feed.wake_all()

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
                DELIVERED.inc()
                yield Frames(msg, record.partition, record.offset).render(sub.compat)

    async def recent(self, room: str, limit: int) -> tuple[list[dict], str]:
        """The room's last `limit` messages, read back from Kafka, oldest first, and the resume
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
        await self.reader.close()  # its pooled consumers

    @mode.Service.task
    async def _read_forever(self) -> None:
        while not self.should_stop:
            consumer = AIOKafkaConsumer(
                **self.settings.aiokafka_options(),
                client_id="kchat-fanout",
                group_id=None,  # no group: this worker is assigned every partition
                enable_auto_commit=False,
            )
            try:
                await consumer.start()
                await self._assign(consumer)
                self._consumer = consumer
                await self._dispatch_loop(consumer)
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
                self._consumer = None
                await consumer.stop()

    async def _assign(self, consumer: AIOKafkaConsumer) -> None:
        topic = self.settings.topic
        while not self.should_stop:
            # A group-less consumer tracks no topic, so its own metadata cache never has ours.
            cluster = await consumer._client.fetch_all_metadata()
            partitions = cluster.partitions_for_topic(topic)
            if partitions:
                break
            log.info("fan-out reader: waiting for topic %r to exist", topic)
            await self.sleep(1.0)
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        if self.positions:
            # Reconnecting: continue where we were, so live subscribers miss nothing.
            for tp in tps:
                consumer.seek(tp, self.positions.get(tp.partition, 0))
        else:
            await consumer.seek_to_end(*tps)
            for tp in tps:
                self.positions[tp.partition] = await consumer.position(tp)
        self.ready = True
        log.info("fan-out reader: assigned all %d partitions of %r", len(tps), topic)

    async def _dispatch_loop(self, consumer: AIOKafkaConsumer) -> None:
        default_room = self.settings.default_room
        # A batch never holds more records than a feed keeps, and the loop yields after each
        # batch: healthy subscribers catch up in between, so only one whose socket is really
        # stuck can be lapped.
        batch_size = min(2000, self.settings.subscriber_buffer)
        touched: dict[RoomFeed, int] = {}  # feed -> where this batch begins in it
        while not self.should_stop:
            batches = await consumer.getmany(timeout_ms=500, max_records=batch_size)
            for records in batches.values():
                for record in records:
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
