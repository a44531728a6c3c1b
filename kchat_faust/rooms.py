"""The room directory: per room, its messages in tumbling one-minute windows by event time (the
record's timestamp), kept for an hour, and its last message.

route_by_user tallies each message it routes into table room_activity, keyed by room: the chat
topic is keyed by room, so the table is co-partitioned with the stream that updates it. A
window is the minute [m, m + 60 s) of the message's timestamp; windows older than an hour
before the newest are dropped when the room is next written (expiry). Like the user counts,
each entry keeps the highest chatroom offset it counted, so a replay counts nothing twice.

"Last minute" is the current and the previous minute window (so 60 to 120 seconds, not a
sliding minute); "last hour" the current window and the 59 before; trending ranks rooms by the
current window and the 9 before (10 minutes).

Why not Faust's own windowed tables (`Table(...).tumbling(...)`): faust-streaming has open reports
of windows lost after a worker dies or a rebalance (issue #193) and of RocksDB windows that never
expire after a rebalance or recovery (#385), and its maintainers wrote that its RocksDB driver
does not persist window data (in PR #412); the
windows here are plain values of a plain table, which restores from its changelog like the
user counts do (tests/test_rooms.py checks that after a restart and a rebalance).
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import TYPE_CHECKING

from .models import partition_for

if TYPE_CHECKING:
    from .app import KchatApp

TABLE = "room_activity"
MINUTE = 60_000  # ms
KEEP = 60  # windows: an hour
TRENDING_WINDOWS = 10
TRENDING_SIZE = 10


def tally(state: dict | None, messages: list[tuple[int, int]]) -> dict | None:
    """The room's state after counting its messages [(offset, timestamp ms)] (in offset order), or
    None if all were counted already."""
    state = state or {"minutes": {}, "last": None, "applied": -1}
    new = [(o, t) for o, t in messages if o > state["applied"]]
    if not new:
        return None
    minutes = state["minutes"]
    for _offset, timestamp_ms in new:
        window = str(timestamp_ms // MINUTE * MINUTE)
        minutes[window] = minutes.get(window, 0) + 1
    newest = max(int(m) for m in minutes)
    for m in [m for m in minutes if int(m) < newest - (KEEP - 1) * MINUTE]:
        del minutes[m]
    state["last"] = max(state["last"] or 0, max(t for _o, t in new))
    state["applied"] = max(o for o, _t in new)
    return state


def _since(state: dict, now_ms: int, windows: int) -> int:
    first = now_ms // MINUTE * MINUTE - (windows - 1) * MINUTE
    return sum(n for m, n in state["minutes"].items() if int(m) >= first)


def activity(room: str, state: dict | None, online: int, now_ms: int) -> dict:
    state = state or {"minutes": {}, "last": None}
    last = state["last"]
    return {
        "room": room,
        "messages_last_minute": _since(state, now_ms, 2),
        "messages_last_hour": _since(state, now_ms, KEEP),
        "messages_last_10_minutes": _since(state, now_ms, TRENDING_WINDOWS),
        "last_message_at": (datetime.fromtimestamp(last / 1000, timezone.utc).isoformat(timespec="milliseconds")
                            if last else None),
        "online": online,
    }


def directory(activities: dict[str, dict], online: dict[str, int], now_ms: int) -> list[dict]:
    """Every room with messages or people, the busiest first."""
    rooms = [activity(room, activities.get(room), online.get(room, 0), now_ms)
             for room in set(activities) | {r for r, n in online.items() if n}]
    rooms.sort(key=lambda r: (-r["messages_last_hour"], -r["online"], r["room"]))
    return rooms


def trending(rooms: list[dict]) -> list[dict]:
    """The rooms with the most messages in the last 10 minutes; the most recent first among equals."""
    busy = sorted((r for r in rooms if r["messages_last_10_minutes"]),
                  key=lambda r: r["last_message_at"] or "", reverse=True)
    busy.sort(key=lambda r: -r["messages_last_10_minutes"])  # stable: keeps recency among equals
    return busy[:TRENDING_SIZE]


class LocalRooms:
    """This worker's share of room_activity as a dict, kept current as it tallies (as LocalCounts)."""

    def __init__(self, table, partitions: int) -> None:
        self.table, self.partitions = table, partitions
        self.states: dict[str, dict] | None = None

    def snapshot(self) -> dict[str, dict]:
        if self.states is None:
            self.states = {room: state for room, state in self.table.items() if state}
        return self.states

    def tally(self, room: str, partition: int, messages: list[tuple[int, int]]) -> None:
        if partition != partition_for(room, self.partitions):
            # A plain line from the tutorial's console producer, shown in the default room from
            # whichever partition it was written to: the room's entry lives in the room's partition.
            return
        state = tally(self.table.get(room), messages)
        if state is not None:
            self.table[room] = state
            if self.states is not None:
                self.states[room] = state

    def invalidate(self) -> None:
        self.states = None


def setup(app: "KchatApp") -> LocalRooms:
    table = app.small_table(TABLE)
    local = LocalRooms(table, app.settings.partitions)
    app.on_reassigned(local.invalidate, table)
    return local
