"""Presence: who is in a room, across all workers, and the join/leave events of the room's stream.

    event stream opened/closed --> chatroom-presence (keyed by room) --> track_presence
        --> table presence (per room: its sessions)   --> GET /api/rooms/{room}/presence
        --> join / leave records into chatroom (keyed by room) --> the hub --> native streams

Each worker publishes `open` and `close` for its streams, and three times per timeout an `alive`
record into every partition (a worker id per process start). The agent that holds a room's
partition keeps the room's sessions in a RocksDB table, and per partition which workers are
alive: a session of a worker not heard from for `timeout` seconds (record timestamps) is gone,
as are all sessions of a worker that said `gone` when it stopped. A user's first session makes
a `join`, its last one a `leave`; both go into the chat topic, so they reach every subscriber
in order with the messages and resume like them. Their ids are keyed ids made from the user's
join count, so a record the agent writes again after a crash is a copy that readers drop.
Replays of the presence topic change nothing twice: each entry keeps the highest offset applied.
"""
from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import TYPE_CHECKING, Awaitable, Callable, Iterator

import faust
import mode
import orjson

from .inorder import InOrder
from .internals import committed_offset
from .models import encode_presence, keyed_id

if TYPE_CHECKING:
    from .app import KchatApp

log = logging.getLogger(__name__)

TABLE = "presence"
WORKERS = "~workers"  # per partition: which workers are alive (no room name starts with "~")
# A worker says it is alive three times per presence timeout (KCHAT_PRESENCE_TIMEOUT, 15 s).
HEARTBEATS_PER_TIMEOUT = 3


# -- the rules, on plain dicts (the table's values) ---------------------------------------------
def empty_room() -> dict:
    return {"sessions": {}, "joins": {}, "applied": -1}


def _users(state: dict) -> dict[str | None, int]:
    counts: dict[str | None, int] = {}
    for user, _worker in state["sessions"].values():
        counts[user] = counts.get(user, 0) + 1
    return counts


def open_session(state: dict, session: str, user: str | None, worker: str) -> list[tuple[str, str, int]]:
    """Add a session; [("join", user, n)] if it is the user's first (n: the user's n-th join)."""
    if session in state["sessions"]:
        return []
    first = user is not None and user not in _users(state)
    state["sessions"][session] = [user, worker]
    if not first:
        return []
    state["joins"][user] = state["joins"].get(user, 0) + 1
    return [("join", user, state["joins"][user])]


def close_sessions(state: dict, gone) -> list[tuple[str, str, int]]:
    """Remove the sessions for which gone(session, user, worker); a leave for each user left with none."""
    before = _users(state)
    for session, (user, worker) in list(state["sessions"].items()):
        if gone(session, user, worker):
            del state["sessions"][session]
    after = _users(state)
    return [("leave", user, state["joins"].get(user, 0))
            for user in before if user is not None and user not in after]


def listing(state: dict | None) -> dict:
    """The room's presence as GET .../presence shows it: named users with their sessions, and the
    number of anonymous ones."""
    counts = _users(state) if state else {}
    anonymous = counts.pop(None, 0)
    return {"users": [{"user": u, "sessions": n} for u, n in sorted(counts.items())], "anonymous": anonymous}


def listings(table) -> Iterator[tuple[str, dict]]:
    """(room, listing) for every room of the table with someone in it (this worker's partitions)."""
    for room, state in table.items():
        if state and room != WORKERS:
            yield room, listing(state)


# -- the agent's side ---------------------------------------------------------------------------
class Tracker:
    """track_presence's handling of one presence record, given the table and a way to emit."""

    def __init__(self, table, emit: Callable[[str, str, str, int, int], Awaitable[None]], timeout_ms: int) -> None:
        self.table, self.emit, self.timeout_ms = table, emit, timeout_ms

    async def take(self, offset: int, timestamp: int, record: dict) -> None:
        kind = record.get("type")
        if kind in ("open", "close"):
            await self._session(offset, timestamp, record)
        elif kind in ("alive", "gone"):
            await self._worker(offset, timestamp, record)

    async def _session(self, offset: int, timestamp: int, record: dict) -> None:
        room, worker = record["room"], record["worker"]
        state = self.table.get(room) or empty_room()
        if offset <= state["applied"]:
            return  # replayed after a crash or rebalance: applied already
        state["applied"] = offset
        if record["type"] == "open":
            events = open_session(state, record["session"], record.get("user"), worker)
            workers = self.table.get(WORKERS) or {"workers": {}, "applied": -1}
            entry = workers["workers"].setdefault(worker, {"at": timestamp, "rooms": []})
            if room not in entry["rooms"]:
                entry["rooms"].append(room)
                self.table[WORKERS] = workers
        else:
            events = close_sessions(state, lambda s, u, w: s == record["session"])
        self.table[room] = state
        for kind, user, n in events:
            await self.emit(kind, room, user, n, timestamp)

    async def _worker(self, offset: int, timestamp: int, record: dict) -> None:
        workers = self.table.get(WORKERS) or {"workers": {}, "applied": -1}
        if offset <= workers["applied"]:
            return
        workers["applied"] = offset
        me = record["worker"]
        if record["type"] == "alive":
            entry = workers["workers"].setdefault(me, {"at": timestamp, "rooms": []})
            entry["at"] = max(entry["at"], timestamp)
        stale = [w for w, e in workers["workers"].items()
                 if (w == me and record["type"] == "gone") or timestamp - e["at"] > self.timeout_ms]
        for worker in stale:
            for room in workers["workers"].pop(worker)["rooms"]:
                state = self.table.get(room)
                if state is None:
                    continue
                events = close_sessions(state, lambda s, u, w: w == worker)
                self.table[room] = state
                for kind, user, n in events:
                    await self.emit(kind, room, user, n, timestamp)
        self.table[WORKERS] = workers


def presence_id(kind: str, room: str, user: str, n: int) -> str:
    # The n-th join (and the leave that ends it) of a user in a room: the same id when written again.
    return keyed_id(room, user, f"{kind}:{n}")


# -- the worker's side --------------------------------------------------------------------------
class Sessions(mode.Service):
    """This worker's streams, told to the presence topic: open, close, alive, gone."""

    def __init__(self, send: Callable[[bytes, bytes | None, int | None], Awaitable[None]], partitions: int,
                 heartbeat: float, stop_wait: Callable[[], float] = lambda: 3.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.send, self.partitions, self.heartbeat = send, partitions, heartbeat
        self.stop_wait = stop_wait  # seconds a stopping worker may still wait for its last records
        self.worker = uuid.uuid4().hex[:16]
        self.open: dict[str, tuple[str, str | None]] = {}  # session -> (room, user)
        self._pending: set[asyncio.Task] = set()
        self._failed = 0

    def _publish(self, record: dict, key: str | None = None, partition: int | None = None) -> None:
        # Fire and forget: a stream must not wait for presence. Failures are counted, and said
        # once per run of failures (the broker log gate covers the outage itself).
        async def go() -> None:
            try:
                await self.send(orjson.dumps(record), key.encode() if key else None, partition)
                if self._failed:
                    log.info("presence: publishing again after %d lost record(s)", self._failed)
                    self._failed = 0
            except Exception as exc:  # noqa: BLE001 (any failure: the record is lost, say so)
                if not self._failed:
                    log.warning("presence: a record could not be published (%s); presence may lag",
                                exc.__class__.__name__)
                self._failed += 1

        task = asyncio.ensure_future(go())
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    def start_session(self, room: str, user: str | None) -> str:
        session = uuid.uuid4().hex
        self.open[session] = (room, user)
        self._publish({"type": "open", "room": room, "user": user, "session": session, "worker": self.worker},
                      key=room)
        return session

    def end_session(self, session: str) -> None:
        room, user = self.open.pop(session, (None, None))
        if room is not None:
            self._publish({"type": "close", "room": room, "user": user, "session": session,
                           "worker": self.worker}, key=room)

    @mode.Service.task
    async def _alive(self) -> None:
        while not self.should_stop:
            for partition in range(self.partitions):
                self._publish({"type": "alive", "worker": self.worker, "at": int(time.time() * 1000)},
                              partition=partition)
            await self.sleep(self.heartbeat)

    async def on_stop(self) -> None:
        # Every session of this worker ends now rather than after the timeout.
        for partition in range(self.partitions):
            self._publish({"type": "gone", "worker": self.worker}, partition=partition)
        if self._pending:
            await asyncio.wait(self._pending, timeout=self.stop_wait())


def setup(app: "KchatApp", chat_topic: faust.TopicT):
    """Declare the presence topic, the table and the agent on app."""
    settings = app.settings
    # The table holds the state; the records are only needed until they are applied.
    topic = app.raw_topic(f"{settings.topic}-presence", **{"retention.ms": str(24 * 3600 * 1000)})
    table = app.small_table(TABLE)

    async def emit(kind: str, room: str, user: str, n: int, timestamp: int) -> None:
        await chat_topic.send(key=room.encode(),
                              value=encode_presence(presence_id(kind, room, user, n), kind, room, user, timestamp))

    tracker = Tracker(table, emit, int(settings.presence_timeout * 1000))

    async def take(partition: int, offset: int, timestamp: int, value: bytes | None) -> None:
        try:
            record = orjson.loads(value)
        except (orjson.JSONDecodeError, TypeError):
            return  # not ours
        if isinstance(record, dict):
            await tracker.take(offset, timestamp, record)

    in_order = InOrder("presence", take,
                       lambda p, start, stop: app.hub.reader.read(p, start, stop, topic=topic.get_topic_name()),
                       lambda p: committed_offset(app.consumer, topic.get_topic_name(), p))

    @app.agent(topic, name="kchat_faust.presence.track_presence")
    async def track_presence(stream):
        async for event in stream.events():
            m = event.message
            await in_order.take(m.partition, m.offset, int(m.timestamp * 1000), event.value)

    app.on_reassigned(in_order.reset)
    return table
