"""A room's history, a page at a time: the latest messages, the page before a message (`before=`),
or from a point in time (`since=`), each costing O(limit) reads whatever else shares the partition.

The worker that holds the room's partition of the room index (roomindex.py) answers; any other asks
it (peers.py). It takes the room's offsets from the index, and the messages the index has not been
told of yet (route_by_user trails the log by a batch) from the log after the partition's marker, so
a message is in the history as soon as its publish was answered. Offsets the log no longer has
(retention, deleted records) are never silently skipped: the body's "gap" says how many are gone.
"""
from __future__ import annotations

import asyncio
import time
from bisect import bisect_left
from contextlib import aclosing
from typing import TYPE_CHECKING

from . import peers, roomindex
from .models import ChatMessage, decode_record, event_id, message_json, partition_for

if TYPE_CHECKING:
    from .app import KchatApp
    from .hub import Hub

# The index trails the log by a batch; more unindexed records than this (a worker catching up on a
# backlog) and the page waits for the index rather than scanning the partition.
MAX_TAIL_SCAN = 50_000
# Offsets of one page that lie this close together are read as one range.
RUN_GAP = 64
# How long a page waits for a holder of the room's index while the group rebalances, asking every
# OWNER_RETRY seconds; a rebalance of a few workers takes seconds, a dead worker's partitions wait for the
# group's session timeout. The latest page then reads the log's end instead (latest_from_log).
OWNER_WAIT, LATEST_OWNER_WAIT, OWNER_RETRY = 15.0, 5.0, 0.5


class IndexBehind(peers.NotOwner):
    """The index is catching up on a backlog: 503, retry."""


async def page(app: "KchatApp", room: str, limit: int, before: int | None = None,
               since_ms: int | None = None) -> dict:
    """The page's body, from whichever worker holds the room's index. While the group moves that
    partition (a worker joined, left or restarted) nobody holds it for a few seconds: ask again until
    OWNER_WAIT has passed, then answer 503."""
    params = {"limit": str(limit)}
    if before is not None:
        params["before"] = event_id(partition_for(room, app.settings.partitions), before)
    if since_ms is not None:
        params["since"] = str(since_ms)
    latest = before is None and since_ms is None
    try:
        return await ask_holder(app, room, f"/api/rooms/{room}/messages",
                                lambda: local_page(app, room, limit, before, since_ms), params,
                                LATEST_OWNER_WAIT if latest else OWNER_WAIT)
    except (peers.PeerUnavailable, peers.NotOwner):
        if not latest:
            raise
    # The room's latest messages (what a page shows on opening) from the log's end instead.
    return await latest_from_log(app.hub, app.settings.default_room, room,
                                 partition_for(room, app.settings.partitions), limit)


async def ask_holder(app: "KchatApp", room: str, path: str, local, params: dict, wait: float):
    """peers.from_owner for the room index's holder. While the group moves that partition (a worker joined,
    left or restarted) nobody holds it for a few seconds: ask again until `wait` has passed."""
    deadline = time.monotonic() + wait
    while True:
        try:
            return await peers.from_owner(app, roomindex.TABLE, room, path, local, params)
        except (peers.PeerUnavailable, peers.NotOwner):
            if time.monotonic() + OWNER_RETRY > deadline:
                raise
        await asyncio.sleep(OWNER_RETRY)


async def latest_from_log(hub: "Hub", default_room: str, room: str, partition: int, limit: int) -> dict:
    """The room's latest messages found by reading back at most MAX_TAIL_SCAN records, for while no worker
    holds its index (a worker died and the group has not moved its partitions yet). `before` continues
    exactly where the read stopped; "partial" says the page may lack messages a page from the index would
    have; whether the log lost older messages is not known here."""
    begin, end = await hub.reader.bounds(partition)
    start = max(begin, end - MAX_TAIL_SCAN)
    found = await _unindexed(hub, default_room, room, partition, start, end)
    messages = await _read(hub, default_room, partition, found[-limit:], room)
    if len(found) > limit:
        before = messages[0]["event_id"] if messages else None
    else:
        before = event_id(partition, start) if start > begin else None
    return {"room": room, "messages": messages, "before": before, "last_event_id": event_id(partition, end - 1),
            "partial": True}


async def local_page(app: "KchatApp", room: str, limit: int, before: int | None = None,
                     since_ms: int | None = None) -> dict:
    """The page from this worker's share of the index (NotOwner if it does not hold the room's)."""
    partition = partition_for(room, app.settings.partitions)
    peers.require_holder(app, app.room_index.table, partition, f"the history of {room!r}")
    return await build_page(app.hub, app.room_index, app.settings.default_room, room, partition, limit,
                            before, since_ms)


class RoomLog:
    """A room's messages in its partition, numbered 0 ... total - 1: the index's, then the tail's."""

    def __init__(self, begin: int, end: int, view: roomindex.View, tail: list[int]) -> None:
        self.begin, self.end, self.view, self.tail = begin, end, view, tail
        self.total = view.n + len(tail)

    def position(self, offset: int) -> int:
        """How many of the room's messages lie before `offset`."""
        if self.tail and offset > self.tail[0]:
            return self.view.n + bisect_left(self.tail, offset)
        return self.view.position(offset)  # every indexed offset is below the tail's

    def offsets(self, start: int, stop: int) -> list[int]:
        """The offsets of the room's messages number start ... stop - 1."""
        n = self.view.n
        start, stop = max(0, start), min(stop, self.total)
        return self.view.offsets(start, min(stop, n)) + self.tail[max(0, start - n):max(0, stop - n)]


async def room_log(hub: "Hub", index: roomindex.LocalIndex, default_room: str, room: str,
                   partition: int) -> RoomLog:
    begin, end = await hub.reader.bounds(partition)
    view = index.view(room)
    indexed = view.offsets(view.n - 1, view.n)
    tail = await _unindexed(hub, default_room, room, partition,
                            max(index.indexed_up_to(partition), *indexed, begin - 1) + 1, end)
    return RoomLog(begin, end, view, tail)


async def build_page(hub: "Hub", index: roomindex.LocalIndex, default_room: str, room: str, partition: int,
                     limit: int, before: int | None = None, since_ms: int | None = None) -> dict:
    reader = hub.reader
    log = await room_log(hub, index, default_room, room, partition)
    begin, end, total, position, offsets = log.begin, log.end, log.total, log.position, log.offsets

    if since_ms is not None:
        start = position(await reader.offset_at(partition, since_ms))
        stop = min(start + limit, total)
    else:
        stop = total if before is None else position(before)
        start = max(0, stop - limit)
    wanted = offsets(start, stop)
    gone = [o for o in wanted if o < begin]
    wanted = wanted[len(gone):]
    messages = await _read(hub, default_room, partition, wanted, room)
    body: dict = {"room": room, "messages": messages}
    earlier = offsets(start - 1, start)
    if gone or (earlier and earlier[0] < begin):
        # Everything before the first message still in the log is gone: say how much.
        missing = position(begin)
        first = offsets(missing, missing + 1)
        body["before"] = None
        body["gap"] = {"missing": missing, "first_event_id": event_id(partition, first[0]) if first else None}
    else:
        body["before"] = messages[0]["event_id"] if start > 0 and messages else None
    more_after = stop < total
    body["last_event_id"] = messages[-1]["event_id"] if more_after and messages else event_id(partition, end - 1)
    return body


async def local_count_after(app: "KchatApp", room: str, after: int) -> dict:
    """How many of the room's messages the log holds after offset `after` (not joins or leaves, not copies),
    and when its last one was sent, from this worker's share of the index (NotOwner if it does not hold it)."""
    partition = partition_for(room, app.settings.partitions)
    peers.require_holder(app, app.room_index.table, partition, f"the history of {room!r}")
    log = await room_log(app.hub, app.room_index, app.settings.default_room, room, partition)
    last = [o for o in log.offsets(log.total - 1, log.total) if o >= log.begin]
    messages = await _read(app.hub, app.settings.default_room, partition, last, room)
    return {"room": room, "after": event_id(partition, after),
            "count": log.total - log.position(max(after + 1, log.begin)),
            "last_message_at": messages[-1]["sent_at"] if messages else None}


async def count_after(app: "KchatApp", room: str, after: int) -> dict:
    """local_count_after, from whichever worker holds the room's index."""
    return await ask_holder(app, room, f"/api/rooms/{room}/count",
                            lambda: local_count_after(app, room, after),
                            {"after": event_id(partition_for(room, app.settings.partitions), after)}, OWNER_WAIT)


async def _unindexed(hub: "Hub", default_room: str, room: str, partition: int, start: int, end: int) -> list[int]:
    """The room's messages at start <= offset < end, read from the log (not copies, not presence)."""
    if end - start > MAX_TAIL_SCAN:
        raise IndexBehind(f"the room index is {end - start} records behind the log (catching up); retry")
    found = []
    records = hub.originals(partition, hub.reader.read(partition, start, end))
    async with aclosing(records):
        async for r in records:
            msg = decode_record(r.value, r.partition, r.offset, r.timestamp, default_room)
            if isinstance(msg, ChatMessage) and msg.room == room:
                found.append(r.offset)
    return found


async def _read(hub: "Hub", default_room: str, partition: int, offsets: list[int], room: str) -> list[dict]:
    """The messages at these offsets (ascending), reading close ones as one range."""
    wanted, out = set(offsets), []
    runs: list[list[int]] = []
    for o in offsets:
        if runs and o - runs[-1][-1] <= RUN_GAP:
            runs[-1].append(o)
        else:
            runs.append([o])
    for run in runs:
        records = hub.reader.read(partition, run[0], run[-1] + 1)
        async with aclosing(records):
            async for r in records:
                if r.offset not in wanted:
                    continue
                msg = decode_record(r.value, r.partition, r.offset, r.timestamp, default_room)
                if isinstance(msg, ChatMessage) and msg.room == room:
                    out.append(message_json(msg, r.partition, r.offset))
    return out
