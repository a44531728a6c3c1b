"""Per-user message counts: two Faust agents and a RocksDB table.

    chatroom (keyed by room) --> route_by_user --> chatroom-by-user (keyed by user)
                                                      --> count_messages --> table user_counts

Regrouping by user makes the table co-partitioned with the stream that updates it. Faust is
at-least-once: after a crash or a rebalance, records since the last commit come again. Each
table entry keeps, with the count, the highest chatroom offset counted per partition, so a
replayed record is recognised and not counted twice (see `counted`), which needs the records
routed in order (inorder.py). A record that copies an earlier one (a retried publish, see
copies.py) is not routed at all, nor are presence events.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Awaitable, Callable

import faust
from faust.types import TP

from .inorder import InOrder
from .models import ChatMessage, decode_record, keyed_id_of

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


class Router:
    """route_by_user's rule for one record: copies (copies.py) and presence events are not routed."""

    def __init__(self, send: Callable[[str, int, int], Awaitable[None]], judge: Callable[[int], object],
                 default_room: str, on_message: Callable[[str, int, int, int], None] = lambda *a: None) -> None:
        self.send, self.judge_for, self.default_room = send, judge, default_room
        self.on_message = on_message  # (room, partition, offset, timestamp): the room directory's tally
        self.judges: dict[int, object] = {}

    def reset(self) -> None:
        self.judges.clear()

    async def route(self, partition: int, offset: int, timestamp: int, value: bytes | None) -> None:
        judge = self.judges.get(partition)
        if judge is None:
            judge = self.judges[partition] = self.judge_for(partition)
        if await judge.is_copy(offset, timestamp, keyed_id_of(value)):
            return  # a retried publish's second record: the first one counts
        msg = decode_record(value, partition, offset, timestamp, self.default_room)
        if isinstance(msg, ChatMessage):
            self.on_message(msg.room, partition, offset, timestamp)
            await self.send(msg.user, partition, offset)


def setup(app: "KchatApp", chat_topic: faust.TopicT,
          on_message: Callable[[str, int, int, int], None] = lambda *a: None) -> LocalCounts:
    """Declare the regrouped topic, the table and the two agents on app; on_message(room, partition,
    offset, timestamp) is told of every message route_by_user routes (the room directory tallies it)."""
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

    async def send(user: str, partition: int, offset: int) -> None:
        await by_user_topic.send(key=user, value=Counted(user=user, partition=partition, offset=offset))

    def committed(partition: int) -> int | None:
        # Where Faust resumed the partition after its last assignment (it seeks there).
        return app.consumer._committed_offset.get(TP(settings.topic, partition))

    router = Router(send, lambda p: app.hub.judge(p), settings.default_room, on_message)
    in_order = InOrder("counting", router.route, lambda p, start, stop: app.hub.reader.read(p, start, stop),
                       committed)

    @app.agent(chat_topic, name="kchat_faust.counting.route_by_user")
    async def route_by_user(stream):
        async for event in stream.events():
            m = event.message
            await in_order.take(m.partition, m.offset, int(m.timestamp * 1000), event.value)

    @app.agent(by_user_topic, name="kchat_faust.counting.count_messages")
    async def count_messages(stream):
        async for c in stream:
            state = counted(table.get(c.user), c.partition, c.offset)
            if state is not None:
                table[c.user] = state
                local.set(c.user, state["count"])

    async def forget(*args, **kwargs) -> None:
        local.invalidate()  # the table may have changed under the snapshot
        router.reset()
        in_order.reset()

    app.on_partitions_revoked.connect(forget)
    app.on_partitions_assigned.connect(forget)
    table.on_recover(forget)
    return local
