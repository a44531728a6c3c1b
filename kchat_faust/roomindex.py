"""The per-room index: where each room's messages are in its chatroom partition, so that a room's
history costs O(limit) reads whatever else shares the partition.

route_by_user hands each batch's messages (originals only, no copies, no presence) to `add`, within
the event context of their chatroom partition: table room_index is co-partitioned with the chat
topic like room_activity, and restored from its changelog. Per room, in the room's partition:

    "<room>"        {"chunks": c, "n": n}          the head: how many chunks, how many messages
    "<room>/<k>"    [offset, ...]                   chunk k: the room's messages k*CHUNK ... in log order
    "/p/<p>"        offset                          every message of partition p up to here is indexed

A chunk holds CHUNK offsets, so appending rewrites at most one chunk and the head, and finding a
position is a binary search over chunks. Exact under replays as the counts are: a chunk's last offset
is the highest applied, and the head is written after its chunks, so a batch that comes again -- also
after a crash between the two writes -- rewrites the same chunks with the same offsets.
"""
from __future__ import annotations

from bisect import bisect_left
from typing import TYPE_CHECKING, Callable

from .inorder import Progress
from .models import partition_for

if TYPE_CHECKING:
    from .app import KchatApp

TABLE = "room_index"
CHUNK = 64


def chunk_key(room: str, k: int) -> str:
    return f"{room}/{k}"


def marker_key(partition: int) -> str:
    return f"/p/{partition}"


Get = Callable[[str], object]


def appended(get: Get, room: str, offsets: list[int]) -> dict[str, object]:
    """The writes (key -> value, in the order to make them) that add the room's messages at `offsets`
    (ascending) to its index; {} if all are in it already."""
    head = get(room) or {"chunks": 0, "n": 0}
    k = head["chunks"] - 1
    tail = list(get(chunk_key(room, k)) or []) if k >= 0 else []
    last = tail[-1] if tail else -1
    new = [o for o in offsets if o > last]
    if not new:
        return {}
    if k < 0 or len(tail) >= CHUNK:  # a new chunk (rewritten whole if a crash left it unannounced)
        k, tail = k + 1, []
    writes: dict[str, object] = {}
    for offset in new:
        if len(tail) == CHUNK:
            writes[chunk_key(room, k)] = tail
            k, tail = k + 1, []
        tail.append(offset)
    writes[chunk_key(room, k)] = tail
    writes[room] = {"chunks": k + 1, "n": k * CHUNK + len(tail)}
    return writes


class View:
    """Positions in one room's index, read through `get` (a table lookup)."""

    def __init__(self, get: Get, room: str) -> None:
        self.get, self.room = get, room
        head = get(room) or {"chunks": 0, "n": 0}
        self.chunks, self.n = head["chunks"], head["n"]
        self._cache: dict[int, list[int]] = {}

    def chunk(self, k: int) -> list[int]:
        if k not in self._cache:
            self._cache[k] = list(self.get(chunk_key(self.room, k)) or [])
        return self._cache[k]

    def position(self, offset: int) -> int:
        """How many of the room's indexed messages lie before `offset`."""
        lo, hi = 0, self.chunks  # the first chunk whose first offset is >= offset, by binary search
        while lo < hi:
            mid = (lo + hi) // 2
            first = self.chunk(mid)
            if first and first[0] < offset:
                lo = mid + 1
            else:
                hi = mid
        if lo == 0:
            return 0
        return (lo - 1) * CHUNK + bisect_left(self.chunk(lo - 1), offset)

    def offsets(self, start: int, stop: int) -> list[int]:
        """The offsets of the room's messages number start ... stop - 1 (0 = its first)."""
        start, stop = max(0, start), min(stop, self.n)
        out: list[int] = []
        k = start // CHUNK
        while start < stop:
            chunk = self.chunk(k)
            i = start - k * CHUNK
            take = chunk[i:i + (stop - start)]
            if not take:
                break  # a chunk shorter than the head says: only the head can be ahead, never the chunks
            out += take
            start += len(take)
            k += 1
        return out


class LocalIndex:
    """This worker's share of room_index: added to by route_by_user, read for the rooms it holds."""

    def __init__(self, table, partitions: int) -> None:
        self.table, self.partitions = table, partitions
        self.indexed = Progress(table, marker_key)

    def add(self, room: str, partition: int, messages: list[tuple[int, int]]) -> None:
        if partition != partition_for(room, self.partitions):
            return  # a console producer's plain line shown in the default room: not in the room's partition
        for key, value in appended(self.table.get, room, [o for o, _t in messages]).items():
            self.table[key] = value

    def progress(self, partition: int, offset: int) -> None:
        """Every message of the partition up to `offset` has been added."""
        self.indexed.advance(partition, offset)

    def indexed_up_to(self, partition: int) -> int:
        return self.indexed.up_to(partition)

    def view(self, room: str) -> View:
        return View(self.table.get, room)


def setup(app: "KchatApp") -> LocalIndex:
    return LocalIndex(app.small_table(TABLE), app.settings.partitions)
