"""Idempotency keys that outlive the in-memory window: a retry with the same Idempotency-Key is answered
with the message the first attempt stored for KCHAT_IDEMPOTENCY_RETENTION (24 h) after it, across
worker restarts and through every worker.

The hub's copy index (copies.py) knows the keyed ids of the last KCHAT_IDEMPOTENCY_WINDOW of the log,
in memory, on every worker: the fast path, and the rule every reader drops copies by. Behind it,
route_by_user writes each keyed original into table idempotency_keys, keyed by the message id (a
function of room, user and key), in the event context of its chatroom partition -- co-partitioned with
the room like the room index, restored from its changelog:

    "<message id>"   [offset, timestamp ms, partition]

A publish whose id the window does not know asks the worker that holds the room's partition; found
within the retention, the publish is not made again but answered with the stored message. Entries
are deleted once the partition's log time has moved a retention past them (only in the partition's
event context can a table entry be deleted, so that happens as route_by_user adds the next ones).
If no worker can be asked (the group moving partitions), the publish goes ahead on the window's word
alone: a retry more than a window after the first attempt may then be stored twice.
"""
from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .app import KchatApp

TABLE = "idempotency_keys"


class LocalKeys:
    """This worker's share of idempotency_keys."""

    def __init__(self, table, retention_ms: int) -> None:
        self.table, self.retention_ms = table, retention_ms
        # per partition: (timestamp, id) of its entries, oldest first -- what to delete when
        self.ages: dict[int, deque] | None = None

    def reset(self) -> None:
        """The assignment changed: rebuild the ages from the table when next needed."""
        self.ages = None

    def _ages(self) -> dict[int, deque]:
        if self.ages is None:
            entries = sorted((ts, msg_id, p) for msg_id, (_o, ts, p) in self.table.items())
            self.ages = {}
            for ts, msg_id, p in entries:
                self.ages.setdefault(p, deque()).append((ts, msg_id))
        return self.ages

    def add(self, partition: int, keyed: list[tuple[str, int, int]]) -> None:
        """The keyed originals [(id, offset, timestamp)] of a batch of the partition, in offset order."""
        ages = self._ages().setdefault(partition, deque())
        for msg_id, offset, ts in keyed:
            known = self.table.get(msg_id)
            if known is not None and known[0] <= offset and ts - known[1] <= self.retention_ms:
                continue  # a replay of the batch, or (a race the publish path lost) a later copy
            self.table[msg_id] = [offset, ts, partition]
            ages.append((ts, msg_id))
        if keyed:
            horizon = max(ts for _i, _o, ts in keyed) - self.retention_ms
            while ages and ages[0][0] < horizon:
                ts, msg_id = ages.popleft()
                known = self.table.get(msg_id)
                if known is not None and known[1] == ts:
                    del self.table[msg_id]

    def get(self, msg_id: str, now_ms: int) -> tuple[int, int] | None:
        """Where the message with this id is stored, (offset, timestamp), if within the retention."""
        known = self.table.get(msg_id)
        if known is None or now_ms - known[1] > self.retention_ms:
            return None
        return known[0], known[1]


def setup(app: "KchatApp") -> LocalKeys:
    table = app.small_table(TABLE)
    local = LocalKeys(table, int(app.settings.idempotency_retention * 1000))
    app.on_reassigned(local.reset, table)
    return local
