"""How messages and receipts look on a terminal."""

from __future__ import annotations

from datetime import datetime
from typing import Any


def clock(sent_at: Any) -> str:
    """The server stamps UTC; people read their own local time."""
    try:
        return datetime.fromisoformat(str(sent_at)).astimezone().strftime("%H:%M:%S")
    except ValueError:
        return "--:--:--"


def message_line(msg: dict[str, Any]) -> str:
    return f"{clock(msg.get('sent_at'))} {msg.get('user', '?')}: {msg.get('text', '')}"


def receipt_line(stored: dict[str, Any]) -> str:
    # key=value so that a script can pick out the event_id for `listen --since`.
    keys = ("room", "partition", "offset", "id", "event_id")
    return "sent: " + " ".join(f"{k}={stored.get(k)}" for k in keys if k in stored)


def stats_table(counts: dict[str, int], top: int | None = None) -> list[str]:
    rows = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:top]
    width = max([len("USER")] + [len(user) for user, _ in rows])
    lines = [f"{'USER':<{width}}  MESSAGES"]
    lines += [f"{user:<{width}}  {count:>8}" for user, count in rows]
    return lines


def rooms_table(rooms: list[dict[str, Any]], unread: dict[str, dict[str, Any]] | None = None) -> list[str]:
    """The directory; with `unread` (a user's, by room) an UNREAD column: "-" where the user never read
    or posted."""
    width = max([len("ROOM")] + [len(str(r.get("room"))) for r in rooms])
    head = f"{'ROOM':<{width}}  LAST MIN  LAST 10 MIN  LAST HOUR  ONLINE"
    lines = [head + ("  UNREAD" if unread is not None else "") + "  LAST MESSAGE"]
    for r in rooms:
        last = clock(r["last_message_at"]) if r.get("last_message_at") else "-"
        line = (f"{r.get('room'):<{width}}  {r.get('messages_last_minute', 0):>8}  "
                f"{r.get('messages_last_10_minutes', 0):>11}  {r.get('messages_last_hour', 0):>9}  "
                f"{r.get('online', 0):>6}")
        if unread is not None:
            mine = unread.get(str(r.get("room")))
            line += f"  {mine['unread'] if mine else '-':>6}"
        lines.append(f"{line}  {last}")
    return lines


def who_lines(presence: dict[str, Any]) -> list[str]:
    lines = [f"{u['user']}  ({u['sessions']} session{'s' if u['sessions'] != 1 else ''})"
             for u in presence.get("users", [])]
    if presence.get("anonymous"):
        lines.append(f"and {presence['anonymous']} anonymous")
    return lines or ["nobody is here"]
