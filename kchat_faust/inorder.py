"""Hands an agent's records on in offset order, none skipped -- which Faust does not promise.

The agents that keep state per key recognise a replay by its offset being at most the highest
one applied (counting.counted, presence's `applied`), so each partition's records must reach
them for the first time in order. Around a rebalance Faust may drop records it had fetched and
carry on after them (seen here: offsets 190-197 of a partition skipped and delivered only after
a later rebalance, by then below the highest offset counted -- eight messages never counted).
InOrder knows the next offset due per partition and, when an event skips ahead of it, hands
on the skipped records first, read from the log.
"""
from __future__ import annotations

import logging
from typing import AsyncIterator, Awaitable, Callable

log = logging.getLogger(__name__)

Handle = Callable[[int, int, int, "bytes | None"], Awaitable[None]]  # partition, offset, timestamp ms, value


class Progress:
    """How far a partition's records are applied: every one up to the stored offset. Kept under a
    key of its own in the table whose state it describes, so a restore brings both back together."""

    def __init__(self, table, key: Callable[[int], str]) -> None:
        self.table, self.key = table, key

    def up_to(self, partition: int) -> int:
        marker = self.table.get(self.key(partition))
        return -1 if marker is None else marker

    def advance(self, partition: int, offset: int) -> None:
        if offset > self.up_to(partition):
            self.table[self.key(partition)] = offset


class InOrder:
    def __init__(self, what: str, handle: Handle, read: Callable[[int, int, int], AsyncIterator],
                 committed: Callable[[int], int | None]) -> None:
        self.what, self.handle, self.read, self.committed = what, handle, read, committed
        self.next: dict[int, int] = {}  # partition -> the next offset due

    def reset(self) -> None:
        """After a rebalance: a partition may start anywhere again (from its committed offset)."""
        self.next.clear()

    async def take(self, partition: int, offset: int, timestamp: int, value: bytes | None) -> None:
        expected = self.next.get(partition)
        if expected is None:
            expected = self.committed(partition)
        if expected is not None and offset > expected:
            log.warning("%s: partition %d skipped offsets %d-%d; taking them from the log",
                        self.what, partition, expected, offset - 1)
            async for r in self.read(partition, expected, offset):
                await self.handle(partition, r.offset, r.timestamp, r.value)
        await self.handle(partition, offset, timestamp, value)
        self.next[partition] = max(offset + 1, expected or 0)
