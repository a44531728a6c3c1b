"""An in-memory chat topic and the fakes that let the hub run in-process: no Kafka, no HTTP.

MemoryLog is both of the hub's sources (hub.RecordSource for the live read, hub.RangeReader for
catch-up and history); FakeTransport stands for a subscriber's connection.
"""
from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass
from typing import AsyncIterator, Mapping

from kchat_faust.models import encode, new_message, partition_for


@dataclass(frozen=True)
class Record:
    partition: int
    offset: int
    timestamp: int
    value: bytes | None


class MemoryLog:
    def __init__(self, partitions: int = 12) -> None:
        self.partitions = partitions
        self.logs: dict[int, list[Record]] = {p: [] for p in range(partitions)}
        self.positions: dict[int, int] = {}
        self.held: set[int] = set()  # partitions the live read does not see yet (a lagging reader)
        self.starts: dict[int, int] = {}  # where each partition's log begins (0 unless deleted)
        self.opened = 0
        self.clock_ms = int(time.time() * 1000)  # record timestamps: now, then 1 ms per record
        self._changed = asyncio.Event()

    # -- writing, as producers do --------------------------------------------------
    def append_value(self, partition: int, value: bytes | None, timestamp: int | None = None) -> Record:
        log = self.logs[partition]
        self.clock_ms = max(self.clock_ms + 1, timestamp or 0)  # timestamps never go back
        record = Record(partition, len(log), self.clock_ms, value)
        log.append(record)
        self._changed.set()
        return record

    def post(self, room: str, user: str = "ann", text: str = "hi", key: str | None = None,
             timestamp: int | None = None) -> Record:
        return self.append_value(partition_for(room, self.partitions),
                                 encode(new_message(room, user, text, 4000, key)), timestamp)

    def hold(self, partition: int) -> None:
        self.held.add(partition)

    def release(self, partition: int) -> None:
        self.held.discard(partition)
        self._changed.set()

    # -- hub.RecordSource ------------------------------------------------------------
    async def open(self, positions: Mapping[int, int]) -> dict[int, int]:
        self.opened += 1
        if positions:
            self.positions = {p: positions.get(p, 0) for p in self.logs}
        else:
            self.positions = {p: len(log) for p, log in self.logs.items()}
        return dict(self.positions)

    async def fetch(self, max_records: int) -> list[Record]:
        batch = self._take(max_records)
        if not batch:
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), 0.05)
            except TimeoutError:
                pass
            batch = self._take(max_records)
        return batch

    def _take(self, max_records: int) -> list[Record]:
        batch: list[Record] = []
        for p, log in self.logs.items():
            if p in self.held:
                continue
            new = log[self.positions[p]:self.positions[p] + max_records - len(batch)]
            batch += new
            self.positions[p] += len(new)
        return batch

    def highwater(self, partition: int) -> int | None:
        return len(self.logs[partition])

    async def close(self) -> None:
        pass

    # -- hub.RangeReader ---------------------------------------------------------------
    def delete_before(self, partition: int, offset: int) -> None:
        """As retention or DeleteRecords does: the log now starts at `offset`."""
        self.starts[partition] = offset

    async def bounds(self, partition: int) -> tuple[int, int]:
        return self.starts.get(partition, 0), len(self.logs[partition])

    async def offset_at(self, partition: int, timestamp_ms: int) -> int:
        log = self.logs[partition]
        return next((r.offset for r in log if r.timestamp >= timestamp_ms), len(log))

    async def read(self, partition: int, start: int, stop: int) -> AsyncIterator[Record]:
        for record in self.logs[partition][max(start, self.starts.get(partition, 0)):stop]:
            await asyncio.sleep(0)  # a real read yields to the loop between batches
            yield record


class FakeTransport:
    """A connection: what the hub wrote to it directly and what the subscriber's own task wrote."""

    def __init__(self) -> None:
        self.writes: list[tuple[str, bytes]] = []
        self.backlog = 0  # bytes the kernel has not taken yet: > 0 is a backed-up socket
        self.closing = False

    def write(self, data: bytes) -> None:  # the hub's direct write
        self.writes.append(("direct", data))

    async def task_write(self, data: bytes) -> None:  # the response's write, from the subscriber's task
        self.writes.append(("task", data))
        await asyncio.sleep(0)

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return self.backlog

    @property
    def data(self) -> bytes:
        return b"".join(d for _, d in self.writes)

    def event_ids(self) -> list[str]:
        return re.findall(r"^id: (\S+)$", self.data.decode(), flags=re.M)

    def by(self, who: str) -> list[str]:
        return re.findall(r"^id: (\S+)$", b"".join(d for w, d in self.writes if w == who).decode(), flags=re.M)
