"""A room's live feed and its subscribers: the delivery rules of the fan-out.

The hub (hub.py) appends every record of a watched room to that room's RoomFeed once; each
Subscriber reads the feed from its own cursor. Nothing here touches Kafka or HTTP: a subscriber
is handed the connection's transport once its response streams, and that is all it writes to.
"""
from __future__ import annotations

import asyncio
from collections import deque
from itertools import islice
from typing import AsyncIterator

from .metrics import Metrics
from .sse import KEEPALIVE, Frames


class RoomFeed:
    """A room's newest frames, kept once and read by all its subscribers from their own cursors.

    The hub appends a batch of records, then delivers it: every subscriber that is idle, caught
    up and whose socket takes data at once gets the batch written straight to its connection,
    the bytes built once per format for the whole room. Only the others (catching up, or with
    a backed-up socket) are woken to write from their cursors in their own tasks. A subscriber
    that falls more than `capacity` frames behind is disconnected (it can resume), so memory
    stays bounded and nobody waits for it.
    """

    __slots__ = ("frames", "end", "subscribers", "ticks", "metrics")

    def __init__(self, capacity: int, metrics: Metrics) -> None:
        self.metrics = metrics
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
                    # The response is already streaming: frame the bytes as aiohttp would (an empty
                    # chunk would end the response: a batch of presence events for a seed stream).
                    data = wire[key] = (b"%x\r\n%b\r\n" % (len(payload), payload)
                                        if sub.chunked and payload else payload)
                if data:
                    transport.write(data)
                sub.cursor, sub.last_offset = end, last_offset
                direct += 1
            else:
                oldest = min(oldest, sub.cursor)
                sub.wake()
        if direct:
            self.metrics.delivered.inc(direct * len(batch))
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
        self.feed.metrics.slow_disconnects.inc()
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
                    frame = frames.render(self.compat)
                    if frame:
                        chunk.append(frame)
            self.cursor, self.last_offset = feed.end, last
            if chunk:
                feed.metrics.delivered.inc(len(chunk))
                yield b"".join(chunk)
