"""Per-user message counts: two Faust agents and a RocksDB table.

    chatroom (keyed by room) --> route_by_user --> chatroom-by-user (keyed by user)
                                                      --> count_messages --> table user_counts

Regrouping by user makes the table co-partitioned with the stream that updates it. Faust is
at-least-once: after a crash or a rebalance, records since the last commit come again. Each
table entry keeps, with the count, the highest chatroom offset counted per partition, so a
replayed record is recognised and not counted twice (see `counted`).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import faust

from .models import decode_record

if TYPE_CHECKING:
    from .app import KchatApp

TABLE = "user_counts"


class Counted(faust.Record, serializer="json", include_metadata=False):
    """A message's author and its place in chatroom: the place makes counting idempotent."""

    user: str
    partition: int
    offset: int


# A table value: {"count": n, "seen": {"<chatroom partition>": last counted offset}}
State = dict


def counted(state: State | None, partition: int, offset: int) -> State | None:
    """The state after counting the message at (partition, offset), or None if it was counted
    already. Offsets of one chatroom partition reach a user's entry in order, so the highest
    one seen per partition tells a replay from a new message."""
    state = state or {"count": 0, "seen": {}}
    key = str(partition)
    if offset <= state["seen"].get(key, -1):
        return None
    return {"count": state["count"] + 1, "seen": {**state["seen"], key: offset}}


class LocalCounts:
    """This worker's share of the table as plain ints, for GET /stats/users.

    Reading the table means iterating RocksDB and decoding a JSON value per user: fine once
    per rebalance, too slow per request with 100k users. Rebuilt lazily after any change
    of assignment, kept current by count_messages in between.
    """

    def __init__(self, table) -> None:
        self.table = table
        self.counts: dict[str, int] | None = None

    def snapshot(self) -> dict[str, int]:
        if self.counts is None:
            # The table's items() covers only the partitions this worker holds actively.
            self.counts = {user: state["count"] for user, state in self.table.items() if state}
        return self.counts

    def set(self, user: str, count: int) -> None:
        if self.counts is not None:
            self.counts[user] = count

    def invalidate(self) -> None:
        self.counts = None


def setup(app: "KchatApp", chat_topic: faust.TopicT) -> LocalCounts:
    """Declare the regrouped topic, the table and the two agents on app."""
    settings = app.settings
    by_user_topic = app.topic(
        f"{settings.topic}-by-user",
        key_type=str,
        value_type=Counted,
        partitions=settings.partitions,
        replicas=settings.replication_factor,
        # internal=True makes Faust create it (brokers never auto-create topics).
        internal=True,
        config={"min.insync.replicas": str(settings.min_insync_replicas)},
    )
    table = app.Table(
        TABLE,
        default=None,
        partitions=settings.partitions,
        # rocksdict's defaults reserve GiBs of block cache per partition; counts are tiny.
        options={"block_cache_size": 8 << 20, "write_buffer_size": 4 << 20,
                 "max_write_buffer_number": 2},
    )
    local = LocalCounts(table)

    @app.agent(chat_topic, name="kchat_faust.counting.route_by_user")
    async def route_by_user(stream):
        async for event in stream.events():
            m = event.message
            msg = decode_record(event.value, m.partition, m.offset, int(m.timestamp * 1000),
                                settings.default_room)
            if msg is not None:
                await by_user_topic.send(key=msg.user,
                                         value=Counted(user=msg.user, partition=m.partition, offset=m.offset))

    @app.agent(by_user_topic, name="kchat_faust.counting.count_messages")
    async def count_messages(stream):
        async for c in stream:
            state = counted(table.get(c.user), c.partition, c.offset)
            if state is not None:
                table[c.user] = state
                local.set(c.user, state["count"])

    async def forget(*args, **kwargs) -> None:
        local.invalidate()  # the table may have changed under the snapshot

    app.on_partitions_revoked.connect(forget)
    app.on_partitions_assigned.connect(forget)
    table.on_recover(forget)
    return local
