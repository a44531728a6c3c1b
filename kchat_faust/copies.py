"""Which records of the chat topic are copies of an earlier one, so that every reader drops them.

A publish with an Idempotency-Key gets a message id derived from (room, user, key)
(models.keyed_id). A retry of a publish whose outcome was unknown may put a second record with
that id in the log. The rule every reader applies -- the hub's live fan-out, resume, history and
counting -- is: a keyed record is a copy when the previous record with the same id in its
partition is at most `window` milliseconds older (record timestamps). The rule depends only on
the log, so every worker drops the same records, whenever it reads them.

CopyIndex remembers, per partition, where each keyed id was seen, for the records the hub has
read; it answers "copy or not" for a record whose whole window it has seen, and "don't know"
(None) otherwise, for the caller to read the log back.
"""
from __future__ import annotations

from bisect import bisect_left
from collections import deque
from dataclasses import dataclass, field


@dataclass
class _Partition:
    covered_from: int  # every keyed record from this offset on has been observed
    horizon_ts: int  # sightings older than this may have been forgotten
    seen: dict[str, list[tuple[int, int]]] = field(default_factory=dict)  # id -> [(offset, ts)], by offset
    order: deque = field(default_factory=deque)  # (ts, id) in observation order, for forgetting
    next_offset: int = 0  # the offset the next observed record must have


class CopyIndex:
    def __init__(self, window_ms: int, max_ids: int = 200_000) -> None:
        self.window_ms = window_ms
        self.max_ids = max_ids  # per partition: beyond it the oldest are forgotten sooner
        self.partitions: dict[int, _Partition] = {}

    def start(self, partition: int, offset: int, horizon_ts: int) -> None:
        """From here on the records of `partition` from `offset` are observed in order; the window of
        a record older than horizon_ts + window is not known."""
        self.partitions[partition] = _Partition(covered_from=offset, horizon_ts=horizon_ts, next_offset=offset)

    def observe(self, partition: int, offset: int, ts: int, msg_id: str | None) -> bool:
        """Take the next record of the partition (in offset order); True if it is a copy."""
        p = self.partitions[partition]
        if offset < p.next_offset:  # read again after a reconnect: already known
            return bool(msg_id) and self._copy(p, offset, ts, msg_id)
        p.next_offset = offset + 1
        if msg_id is None:
            return False
        sightings = p.seen.setdefault(msg_id, [])
        copy = bool(sightings) and ts - sightings[-1][1] <= self.window_ms
        sightings.append((offset, ts))
        p.order.append((ts, msg_id))
        self._forget(p, ts)
        return copy

    def is_copy(self, partition: int, offset: int, ts: int, msg_id: str) -> bool | None:
        """For a record the index has observed: copy or not; None when its window is not known."""
        p = self.partitions.get(partition)
        if p is None or offset < p.covered_from or offset >= p.next_offset or ts - self.window_ms < p.horizon_ts:
            return None
        return self._copy(p, offset, ts, msg_id)

    def original(self, partition: int, msg_id: str, now_ts: int) -> tuple[int, int] | None:
        """Where the message a publish with this id at now_ts would copy is stored, (offset, ts), or None
        if the id was not seen within a window: the start of the chain of sightings that ends at most a
        window before now."""
        p = self.partitions.get(partition)
        sightings = p.seen.get(msg_id) if p is not None else None
        if not sightings or now_ts - sightings[-1][1] > self.window_ms:
            return None
        i = len(sightings) - 1
        while i > 0 and sightings[i][1] - sightings[i - 1][1] <= self.window_ms:
            i -= 1
        return sightings[i]

    def chain_start(self, partition: int, offset: int, msg_id: str) -> tuple[int, int] | None:
        """For an observed record with this id: the sighting it is ultimately a copy of (itself if it
        is no copy), or None if the index does not have it."""
        p = self.partitions.get(partition)
        sightings = p.seen.get(msg_id, []) if p is not None else []
        i = bisect_left(sightings, (offset, -1))
        if i == len(sightings) or sightings[i][0] != offset:
            return None
        while i > 0 and sightings[i][1] - sightings[i - 1][1] <= self.window_ms:
            i -= 1
        return sightings[i]

    def _copy(self, p: _Partition, offset: int, ts: int, msg_id: str) -> bool:
        sightings = p.seen.get(msg_id, ())
        i = bisect_left(sightings, (offset, -1))
        return i > 0 and ts - sightings[i - 1][1] <= self.window_ms

    def _forget(self, p: _Partition, now_ts: int) -> None:
        # Keep two windows: enough to judge any record up to one window old.
        horizon = now_ts - 2 * self.window_ms
        while p.order and (p.order[0][0] < horizon or len(p.order) > self.max_ids):
            ts, msg_id = p.order.popleft()
            sightings = p.seen[msg_id]
            sightings.pop(0)
            if not sightings:
                del p.seen[msg_id]
            p.horizon_ts = max(p.horizon_ts, ts + 1)
