"""The chat message: its validation, its bytes on Kafka, and its resume token."""
from __future__ import annotations

import json
import re
import uuid
from datetime import datetime, timezone

import faust
from aiokafka.partitioner import DefaultPartitioner

from .limits import EVENT_ID_PATTERN, MAX_USER, ROOM_PATTERN

ROOM_RE = re.compile(ROOM_PATTERN)
_EVENT_ID_RE = re.compile(EVENT_ID_PATTERN)
# Newlines and tabs are part of chat text; other control characters only ever garble terminals.
_BAD_TEXT_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


class ValidationError(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class ChatMessage(faust.Record, serializer="json", include_metadata=False):
    id: str
    room: str
    user: str
    text: str
    sent_at: str


def check_room(room: str) -> str:
    if not isinstance(room, str) or not ROOM_RE.fullmatch(room):
        raise ValidationError("room", "must be 1-64 characters of A-Z, a-z, 0-9, '_' or '-'")
    return room


def check_user(user: object) -> str:
    if not isinstance(user, str):
        raise ValidationError("user", "must be a string")
    if not user.strip():
        raise ValidationError("user", "must not be empty")
    if len(user) > MAX_USER:
        raise ValidationError("user", f"must be at most {MAX_USER} characters")
    if not user.isprintable():
        raise ValidationError("user", "must contain only printable characters")
    return user


def check_text(text: object, max_text: int) -> str:
    if not isinstance(text, str):
        raise ValidationError("text", "must be a string")
    if not text.strip():
        raise ValidationError("text", "must not be empty")
    if len(text) > max_text:
        raise ValidationError("text", f"must be at most {max_text} characters")
    if _BAD_TEXT_CHARS.search(text):
        raise ValidationError("text", "must not contain control characters other than newline and tab")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates from a JSON \ud800 escape
        raise ValidationError("text", "must be valid UTF-8") from None
    return text


def new_message(room: str, user: object, text: object, max_text: int) -> ChatMessage:
    return ChatMessage(
        id=uuid.uuid4().hex,
        room=check_room(room),
        user=check_user(user),
        text=check_text(text, max_text),
        sent_at=datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
    )


def parse_compat_body(body: str) -> tuple[str, str]:
    """The seed's client posts "<name>: <text>"; a body without that prefix is anonymous."""
    name, sep, text = body.partition(": ")
    if sep and name.strip() and "\n" not in name and len(name) <= MAX_USER:
        return name, text
    return "anonymous", body


def decode_record(value: bytes | None, partition: int, offset: int,
                  timestamp_ms: int | None, default_room: str) -> ChatMessage | None:
    """Turn a chatroom record into a message.

    Records that are not our JSON (the tutorial's console producer writes plain lines)
    are shown in the default room rather than dropped, parsed as "<name>: <text>".
    """
    if value is None:
        return None
    try:
        data = json.loads(value)
        if isinstance(data, dict) and {"id", "room", "user", "text", "sent_at"} <= data.keys():
            return ChatMessage(id=str(data["id"]), room=str(data["room"]), user=str(data["user"]),
                               text=str(data["text"]), sent_at=str(data["sent_at"]))
    except (ValueError, UnicodeDecodeError):
        pass
    text = value.decode("utf-8", errors="replace")
    user, text = parse_compat_body(text)
    sent = datetime.fromtimestamp((timestamp_ms or 0) / 1000, timezone.utc)
    return ChatMessage(id=f"{partition}-{offset}", room=default_room, user=user, text=text,
                       sent_at=sent.isoformat(timespec="milliseconds"))


def event_id(partition: int, offset: int) -> str:
    return f"{partition}:{offset}"


def parse_event_id(token: str) -> tuple[int, int]:
    """Inverse of event_id; raises ValidationError on anything else."""
    if not isinstance(token, str) or not _EVENT_ID_RE.fullmatch(token.strip()):
        raise ValidationError("last_event_id", f"{token!r} is not an event id from this service")
    p, o = token.strip().split(":")
    partition, offset = int(p), int(o)
    if offset < -1:  # -1: before the partition's first record
        raise ValidationError("last_event_id", f"{token!r} is not an event id from this service")
    return partition, offset


_partitioner = DefaultPartitioner()


def partition_for(room: str, partitions: int) -> int:
    """The partition of a room: where the producer's default partitioner puts its key."""
    all_partitions = list(range(partitions))
    return _partitioner(room.encode(), all_partitions, all_partitions)


def message_json(msg: ChatMessage, partition: int, offset: int) -> dict:
    return {"id": msg.id, "room": msg.room, "user": msg.user, "text": msg.text,
            "sent_at": msg.sent_at, "partition": partition, "offset": offset,
            "event_id": event_id(partition, offset)}
