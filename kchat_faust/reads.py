"""Read positions: how far each user has read in each room, from which the unread counts are exact.

A position is an offset of the room's partition of the chat topic: everything up to it is read.
PUT /api/rooms/{room}/read publishes {"user", "room", "offset"} to the compacted topic
<topic>-reads (acks=all before the 204), keyed "<room>/<user>" -- compaction keeps each user's
latest mark per room -- and written to the user's partition (models.partition_for(user)), so
agent track_reads keeps table read_positions keyed by user co-partitioned with the counts: the
worker that answers /stats/users/{user} also holds the user's positions. A user's own post marks
the room read up to it (Matrix's implicit receipt): count_messages hands on the rooms each user
posted in (counting.Tally), in the same partition.

    "<user>"     {"<room>": offset, ...}     a position only moves forward (max), so replays are harmless
    "\\0<p>"     offset                      every reads record of partition p up to here is applied

The marker lets the holder answer after the reads published before the question (read-your-writes);
a user name is printable, so no user has the marker's key. The unread count of a room -- its
messages after the position, not joins or leaves, not dropped copies -- comes from the room index's
holder (scrollback.local_count_after); the worker asked puts the answer together (peers.unread).
"""
from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import orjson

from .inorder import InOrder, Progress
from .internals import committed_offset

if TYPE_CHECKING:
    from .app import KchatApp

TABLE = "read_positions"
# How long the holder waits for track_reads to apply what was published before the question.
CATCH_UP_WAIT = 5.0


class ReadsBehind(Exception):
    """track_reads has not applied the reads published before the question in time (503)."""


def marker_key(partition: int) -> str:
    return f"\0{partition}"


def advanced(state: dict | None, marks: dict[str, int]) -> dict | None:
    """The user's positions after these marks {room: offset}, or None if none moves one forward."""
    state = dict(state or {})
    moved = False
    for room, offset in marks.items():
        if offset > state.get(room, -1):
            state[room] = offset
            moved = True
    return state if moved else None


def read_record(user: str, room: str, offset: int) -> tuple[bytes, bytes]:
    """The reads topic's (key, value) for a mark."""
    return f"{room}/{user}".encode(), orjson.dumps({"user": user, "room": room, "offset": offset})


class LocalReads:
    """This worker's share of read_positions."""

    def __init__(self, table, topic: str, end_offset) -> None:
        self.table, self.topic = table, topic
        self.progress = Progress(table, marker_key)
        self.end_offset = end_offset  # async (partition) -> the reads topic's end offset

    def mark(self, user: str, marks: dict[str, int]) -> None:
        """Within the event context of the user's partition."""
        state = advanced(self.table.get(user), marks)
        if state is not None:
            self.table[user] = state

    def applied(self, partition: int, offset: int) -> None:
        self.progress.advance(partition, offset)

    def applied_up_to(self, partition: int) -> int:
        return self.progress.up_to(partition)

    def positions(self, user: str) -> dict[str, int]:
        return dict(self.table.get(user) or {})

    async def caught_up(self, partition: int, timeout: float = CATCH_UP_WAIT) -> None:
        """Returns once every reads record of the partition published before the call is applied."""
        end = await self.end_offset(partition)
        deadline = time.monotonic() + timeout
        while self.applied_up_to(partition) + 1 < end:
            if time.monotonic() > deadline:
                raise ReadsBehind(f"read positions are {end - self.applied_up_to(partition) - 1} records "
                                  "behind (catching up); retry")
            await asyncio.sleep(0.05)


def setup(app: "KchatApp") -> LocalReads:
    settings = app.settings
    topic = app.raw_topic(f"{settings.topic}-reads", **{"cleanup.policy": "compact"})
    name = topic.get_topic_name()
    table = app.small_table(TABLE)

    def committed(partition: int) -> int | None:
        return committed_offset(app.consumer, name, partition)

    local = LocalReads(table, name, lambda p: app.hub.reader.end_offset(p, topic=name))

    async def take(partition: int, offset: int, _timestamp: int, value: bytes | None) -> None:
        try:
            record = orjson.loads(value)
            user, room, mark = record["user"], record["room"], record["offset"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            mark = None  # not ours
        if isinstance(mark, int):
            local.mark(user, {room: mark})
        local.applied(partition, offset)

    in_order = InOrder("track_reads", take, lambda p, start, stop: app.hub.reader.read(p, start, stop, topic=name),
                       committed)

    @app.agent(topic, name="kchat_faust.reads.track_reads")
    async def track_reads(stream):
        async for event in stream.events():
            m = event.message
            await in_order.take(m.partition, m.offset, int(m.timestamp * 1000), event.value)

    app.on_reassigned(in_order.reset, table)
    return local
