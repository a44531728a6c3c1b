"""Per-user message counts: two Faust agents and a RocksDB table.

    chatroom (keyed by room) --> route_by_user --> chatroom-by-user (keyed by user)
                                                      --> count_messages --> table user_counts

Regrouping by user makes the table co-partitioned with the stream that updates it. Both agents
work a batch at a time (Faust's take_events): route_by_user sends one record per user per
batch of a chatroom partition, carrying that user's offsets in it, and count_messages writes
each user's entry once per batch -- per-message Faust events, table writes and produces were
most of a worker's CPU.

Faust is at-least-once: after a crash or a rebalance, records since the last commit come again,
maybe split into other batches. Each table entry keeps, with the count, the highest chatroom
offset counted per partition, and counts only the offsets above it (see `counted`), so a
replay counts nothing twice however it is batched -- which needs each partition's offsets
routed for the first time in order, and no routed record skipped by count_messages (both agents
take their records through inorder.py). A record that copies an earlier one (a retried
publish, see copies.py) is not routed at all, nor are presence events.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Awaitable, Callable

import faust
import orjson

from .inorder import InOrder
from .internals import committed_offset, event_context
from .models import ChatMessage, decode_record, keyed_id_of, partition_for

if TYPE_CHECKING:
    from .app import KchatApp

TABLE = "user_counts"


# Batches: at most this many records, or what came within this many seconds.
BATCH = 1000
BATCH_WITHIN = 0.05

# A chatroom-by-user record: {"user": u, "partition": p, "offsets": [o, ...], "rooms": {room: o}}, the
# user's messages in one batch of chatroom partition p, and the last of them per room whose partition p
# is (a post marks the room read, reads.py; records of older workers carry one "offset", no "rooms").
# A table value: {"count": n, "seen": {"<chatroom partition>": last counted offset}}
State = dict


def counted(state: State | None, partition: int, offsets) -> State | None:
    """The state after counting the messages at `offsets` of a chatroom partition, or None if all
    were counted already. A partition's offsets reach a user's entry for the first time in order,
    so the highest one counted per partition tells a replay from a new message."""
    state = state or {"count": 0, "seen": {}}
    key = str(partition)
    seen = state["seen"].get(key, -1)
    new = {o for o in offsets if o > seen}
    if not new:
        return None
    return {"count": state["count"] + len(new), "seen": {**state["seen"], key: max(new)}}


def by_partition(events) -> dict[int, list]:
    """A batch's events per partition, each partition's in the order they came (offset order)."""
    groups: dict[int, list] = {}
    for event in events:
        groups.setdefault(event.message.partition, []).append(event)
    return groups


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
    """route_by_user's rules: copies (copies.py) and presence events are not routed; the messages of a
    batch of one chatroom partition go out as one record per user, and one tally per room."""

    def __init__(self, send: Callable[[str, int, list[int], dict[str, int]], Awaitable[None]],
                 judge: Callable[[int], object], default_room: str, partitions: int,
                 on_messages: Callable[[str, int, list[tuple[int, int]]], None] = lambda *a: None,
                 on_progress: Callable[[int, int], None] = lambda *a: None,
                 on_keyed: Callable[[int, list[tuple[str, int, int]]], None] = lambda *a: None) -> None:
        self.send, self.judge_for, self.default_room, self.partitions = send, judge, default_room, partitions
        # (room, partition, [(offset, timestamp)]): the room directory's tally and the room index
        self.on_messages = on_messages
        # (partition, offset): every record of the partition up to offset has been routed
        self.on_progress = on_progress
        # (partition, [(message id, offset, timestamp)]): the keyed originals, for the durable keys
        self.on_keyed = on_keyed
        self.keyed: dict[int, list[tuple[str, int, int]]] = {}
        self.judges: dict[int, object] = {}
        self.users: dict[tuple[int, str], list[int]] = {}
        self.posted: dict[tuple[int, str], dict[str, int]] = {}
        self.rooms: dict[tuple[int, str], list[tuple[int, int]]] = {}
        self.last: dict[int, int] = {}

    def reset(self) -> None:
        self.judges.clear()

    async def route(self, partition: int, offset: int, timestamp: int, value: bytes | None) -> None:
        self.last[partition] = offset
        judge = self.judges.get(partition)
        if judge is None:
            judge = self.judges[partition] = self.judge_for(partition)
        msg_id = keyed_id_of(value)
        if await judge.is_copy(offset, timestamp, msg_id):
            return  # a retried publish's second record: the first one counts
        msg = decode_record(value, partition, offset, timestamp, self.default_room)
        if isinstance(msg, ChatMessage):
            self.users.setdefault((partition, msg.user), []).append(offset)
            if partition_for(msg.room, self.partitions) == partition:  # not a console line shown elsewhere
                self.posted.setdefault((partition, msg.user), {})[msg.room] = offset
            self.rooms.setdefault((partition, msg.room), []).append((offset, timestamp))
            if msg_id is not None:
                self.keyed.setdefault(partition, []).append((msg_id, offset, timestamp))

    async def flush(self) -> None:
        """What route() gathered since the last flush: one record per user and partition."""
        users, rooms, self.users, self.rooms = self.users, self.rooms, {}, {}
        posted, self.posted = self.posted, {}
        last, self.last = self.last, {}
        keyed, self.keyed = self.keyed, {}
        for (partition, room), messages in rooms.items():
            self.on_messages(room, partition, messages)
        for partition, entries in keyed.items():
            self.on_keyed(partition, entries)
        for partition, offset in last.items():
            self.on_progress(partition, offset)
        for (partition, user), offsets in users.items():
            await self.send(user, partition, offsets, posted.get((partition, user), {}))


class Tally:
    """count_messages' rule: the chatroom-by-user records of a batch, each chatroom offset counted once,
    each user's entry written once per batch (drain)."""

    def __init__(self, get: Callable[[str], State | None]) -> None:
        self.get = get
        self.changed: dict[str, State] = {}
        self.posted: dict[str, dict[str, int]] = {}  # user -> {room: the offset of their last post}

    async def take(self, _partition: int, _offset: int, _timestamp: int, value: bytes | None) -> None:
        try:
            record = orjson.loads(value)
            user, partition = record["user"], record["partition"]
            offsets = record["offsets"] if "offsets" in record else [record["offset"]]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return  # not ours
        state = counted(self.changed.get(user) or self.get(user), partition, offsets)
        if state is not None:
            self.changed[user] = state
        rooms = record.get("rooms")
        if isinstance(rooms, dict):
            marks = self.posted.setdefault(user, {})
            for room, offset in rooms.items():
                marks[room] = max(offset, marks.get(room, -1))

    def drain(self) -> tuple[dict[str, State], dict[str, dict[str, int]]]:
        """The batch's changed entries, and the rooms each user posted in (read up to their post)."""
        changed, posted, self.changed, self.posted = self.changed, self.posted, {}, {}
        return changed, posted


def setup(app: "KchatApp", chat_topic: faust.TopicT,
          on_messages: Callable[[str, int, list[tuple[int, int]]], None] = lambda *a: None,
          on_progress: Callable[[int, int], None] = lambda *a: None,
          on_keyed: Callable[[int, list[tuple[str, int, int]]], None] = lambda *a: None,
          on_posted: Callable[[str, dict[str, int]], None] = lambda *a: None) -> LocalCounts:
    """Declare the regrouped topic, the table and the two agents on app; on_messages(room, partition,
    [(offset, timestamp)]) is told of the messages route_by_user routes (the room directory tallies
    them, the room index adds them), on_keyed(partition, [(id, offset, timestamp)]) of the keyed ones
    (the durable idempotency keys), then on_progress(partition, offset) of the last record routed,
    within the event context of their batch; on_posted(user, {room: offset}) of the rooms a user posted
    in, within the event context of the user's partition."""
    settings = app.settings
    by_user_topic = app.raw_topic(f"{settings.topic}-by-user")
    table = app.small_table(TABLE)
    local = LocalCounts(table)

    async def send(user: str, partition: int, offsets: list[int], rooms: dict[str, int]) -> None:
        await by_user_topic.send(key=user.encode(), value=orjson.dumps(
            {"user": user, "partition": partition, "offsets": offsets, "rooms": rooms}))

    def committed(partition: int) -> int | None:
        # Where Faust resumed the partition after its last assignment (it seeks there).
        return committed_offset(app.consumer, settings.topic, partition)

    router = Router(send, lambda p: app.hub.judge(p), settings.default_room, settings.partitions, on_messages,
                    on_progress, on_keyed)
    in_order = InOrder("counting", router.route, lambda p, start, stop: app.hub.reader.read(p, start, stop),
                       committed)

    @app.agent(chat_topic, name="kchat_faust.counting.route_by_user")
    async def route_by_user(stream):
        async for events in stream.take_events(BATCH, within=BATCH_WITHIN):
            for partition, group in by_partition(events).items():
                with event_context(group[-1]):
                    for event in group:
                        m = event.message
                        await in_order.take(partition, m.offset, int(m.timestamp * 1000), event.value)
                    await router.flush()

    # A by-user record Faust skips is lost for good once a later one of the user is counted (its offsets
    # are then below the highest counted): the same guard as route_by_user's.
    by_user = by_user_topic.get_topic_name()
    tally = Tally(table.get)
    tally_in_order = InOrder("count_messages", tally.take,
                             lambda p, start, stop: app.hub.reader.read(p, start, stop, topic=by_user),
                             lambda p: committed_offset(app.consumer, by_user, p))

    @app.agent(by_user_topic, name="kchat_faust.counting.count_messages")
    async def count_messages(stream):
        async for events in stream.take_events(BATCH, within=BATCH_WITHIN):
            for partition, group in by_partition(events).items():
                with event_context(group[-1]):
                    for event in group:
                        m = event.message
                        await tally_in_order.take(partition, m.offset, int(m.timestamp * 1000), event.value)
                    changed, posted = tally.drain()
                    for user, state in changed.items():
                        table[user] = state
                        local.set(user, state["count"])
                    for user, rooms in posted.items():
                        on_posted(user, rooms)

    def forget() -> None:
        local.invalidate()  # the table may have changed under the snapshot
        router.reset()
        in_order.reset()
        tally_in_order.reset()

    app.on_reassigned(forget, table)
    return local
