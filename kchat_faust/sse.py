"""Server-Sent Events on the wire: how a chat record becomes the bytes every subscriber gets."""
from __future__ import annotations

import json
import re

from .models import ChatMessage, Presence, event_id, message_json, presence_json

# Only CR, LF and CRLF end an SSE line; str.splitlines() would also split on U+2028 and kin,
# which JSON leaves unescaped inside strings.
_SSE_LINE_BREAK = re.compile(r"\r\n|\r|\n")

# A comment line with no blank line after it: aiohttp-sse's own ": ping\r\n\r\n" ends in a
# blank line, which some clients (httpx-sse among them) turn into an empty "message" event.
KEEPALIVE = b": keep-alive\n"


def sse_frame(event: str, data: str, id_: str) -> bytes:
    # One "data:" line per text line: a newline inside a message cannot start a new field.
    lines = "".join(f"data: {line}\n" for line in _SSE_LINE_BREAK.split(data))
    return f"id: {id_}\nevent: {event}\n{lines}\n".encode()


class Frames:
    """A record rendered once per format, shared by every subscriber of its room. A presence event
    is an event `join` or `leave` on native streams, and nothing at all on the seed's."""

    __slots__ = ("msg", "partition", "offset", "_native", "_compat")

    def __init__(self, msg: ChatMessage | Presence, partition: int, offset: int) -> None:
        self.msg, self.partition, self.offset = msg, partition, offset
        self._native: bytes | None = None
        self._compat: bytes | None = None

    def render(self, compat: bool) -> bytes:
        if isinstance(self.msg, Presence):
            if compat:
                return b""
            if self._native is None:
                data = json.dumps(presence_json(self.msg, self.partition, self.offset),
                                  ensure_ascii=False, separators=(",", ":"))
                self._native = sse_frame(self.msg.kind, data, event_id(self.partition, self.offset))
            return self._native
        if compat:
            if self._compat is None:
                # The seed's event: name "test", data "<name>: <text>".
                self._compat = sse_frame("test", f"{self.msg.user}: {self.msg.text}",
                                         event_id(self.partition, self.offset))
            return self._compat
        if self._native is None:
            data = json.dumps(message_json(self.msg, self.partition, self.offset),
                              ensure_ascii=False, separators=(",", ":"))
            self._native = sse_frame("message", data, event_id(self.partition, self.offset))
        return self._native


def gap_frame(partition: int, after: int, begin: int) -> bytes:
    """Event `gap`: the log lost offsets after..begin-1 of the partition before this stream could read
    them; its id resumes at the first record still there."""
    data = json.dumps({"missing_after_event_id": event_id(partition, after),
                       "first_event_id": event_id(partition, begin)}, separators=(",", ":"))
    return sse_frame("gap", data, event_id(partition, begin - 1))
