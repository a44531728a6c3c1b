"""Marking a room read, and a user's unread counts: read positions (reads.py) from the holder of the
user's partition, each room's count after its position from the holder of the room's index
(scrollback.count_after), put together by whichever worker was asked."""
from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from . import auth, peers, scrollback
from .models import Presence, ChatMessage, Unprocessable, decode_record, event_id, partition_for
from .reads import read_record

if TYPE_CHECKING:
    from .app import KchatApp


async def mark_read(app: "KchatApp", user: str, room: str, offset: int) -> None:
    """Publish the user's position in the room (acks=all); 422 unless `offset` holds an event of the room.
    An older position than the user's is published too and changes nothing (positions only move forward)."""
    partition = partition_for(room, app.settings.partitions)
    begin, end = await app.hub.reader.bounds(partition)
    if offset >= end:
        raise Unprocessable("event_id", f"{event_id(partition, offset)!r} is not an event of room {room!r} "
                                        "(there is none at that position yet)")
    if offset >= begin:  # below the log's start nothing can be checked: it is older than all there is
        async for r in app.hub.reader.read(partition, offset, offset + 1):
            found = decode_record(r.value, r.partition, r.offset, r.timestamp, app.settings.default_room)
            if not isinstance(found, (ChatMessage, Presence)) or found.room != room:
                raise Unprocessable("event_id", f"{event_id(partition, offset)!r} is not an event of room {room!r}")
    key, value = read_record(user, room, offset)
    await app.publisher.send(app.reads.topic, value, key=key, partition=partition_for(user, app.settings.partitions))


async def unread(app: "KchatApp", user: str, token: auth.Token | None) -> dict:
    """{"user", "rooms": [{"room", "last_read", "unread", "last_message_at"}]} for every room the user has
    read or posted in (that the token may see)."""
    positions = await peers.read_positions(app, user)
    rooms = auth.visible(token, sorted(positions))
    counts = await asyncio.gather(*(scrollback.count_after(app, room, positions[room]) for room in rooms))
    return {"user": user, "rooms": [
        {"room": room, "last_read": event_id(partition_for(room, app.settings.partitions), positions[room]),
         "unread": c["count"], "last_message_at": c["last_message_at"]}
        for room, c in zip(rooms, counts)]}
