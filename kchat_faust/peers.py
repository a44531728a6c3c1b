"""Answers across workers: each user is counted, and each room tallied and attended, by exactly one
worker, the one whose table holds the key's partition; a worker answers for everybody by asking
the others over HTTP.

Faust's assignor tells, from the group's last rebalance, which worker (by its advertised URL)
holds which table partitions. Peers answer with `?scope=local`, from their own share only, and
never ask further: a request cannot bounce between workers that disagree during a rebalance.
"""
from __future__ import annotations

import asyncio
import inspect
import time
from typing import TYPE_CHECKING
from urllib.parse import quote

import jwt
import orjson
from aiohttp import ClientError, ClientTimeout
from faust.types import TP

from . import auth, keys, presence, reads, rooms
from .counting import TABLE
from .models import partition_for

if TYPE_CHECKING:
    from .app import KchatApp

PEER_TIMEOUT = ClientTimeout(total=5)
PEER_SUBJECT = "kchat-worker"  # the `sub` of the tokens workers ask each other with
USERS_HEAD = b'{"users":{'


class PeerUnavailable(Exception):
    """Another worker could not give its share (503: the answer would be incomplete)."""


class NotOwner(Exception):
    """This worker does not hold that key's partition right now (a rebalance is moving it)."""


def _url(app: "KchatApp") -> str:
    return str(app.conf.canonical_url).rstrip("/")


def _peer_headers(app: "KchatApp") -> dict:
    """With authentication on, a worker asks its peers with a short-lived token of its own, signed with
    the shared secret (the peer's views want a token like any client's)."""
    secret = app.settings.jwt_secret
    if not secret:
        return {}
    token = jwt.encode({"sub": PEER_SUBJECT, "peer": True, "exp": int(time.time()) + 60}, secret, algorithm="HS256")
    return {"Authorization": f"Bearer {token}"}


async def _get(app: "KchatApp", url: str, path: str, params: dict | None = None) -> bytes:
    try:
        async with app.http_client.get(f"{url}{path}", params={**(params or {}), "scope": "local"},
                                       headers=_peer_headers(app), timeout=PEER_TIMEOUT) as r:
            if r.status != 200:
                raise PeerUnavailable(f"worker {url} answered {r.status} for its share")
            return await r.read()
    except (ClientError, asyncio.TimeoutError) as exc:
        raise PeerUnavailable(f"worker {url} did not give its share ({exc.__class__.__name__})") from None


async def all_counts_json(app: "KchatApp") -> bytes:
    """Every worker's counts as one JSON object {"users": {...}}.

    The users of different workers never overlap, so the objects the workers send are joined
    as they come: decoding 100k counts from the others only to encode them again was most of
    the cost of a request.
    """
    objects = [orjson.dumps(app.counts.snapshot())]
    me = _url(app)
    others = [url.rstrip("/") for url, parts in app.router.table_metadata(TABLE).items()
              if url.rstrip("/") != me and any(parts.values())]

    async def fetch(url: str) -> bytes:
        body = await _get(app, url, "/stats/users")
        if not (body.startswith(USERS_HEAD) and body.endswith(b"}}")):
            raise PeerUnavailable(f"worker {url} gave its counts in a form this worker does not know")
        return body[len(USERS_HEAD) - 1:-1]

    objects += await asyncio.gather(*(fetch(u) for u in others))
    return USERS_HEAD + b",".join(o[1:-1] for o in objects if len(o) > 2) + b"}}"


def _owners(app: "KchatApp", table: str, partition: int) -> list[str]:
    return [url.rstrip("/") for url, parts in app.router.table_metadata(table).items()
            if any(partition in ps for ps in parts.values())]


def _holds(app: "KchatApp", table, partition: int) -> bool:
    # A partition it gave away may still have stale state here: only an active one counts.
    return app.assignor.is_active(TP(table.changelog_topic.get_topic_name(), partition))


def require_holder(app: "KchatApp", table, partition: int, what: str) -> None:
    """NotOwner unless this worker holds the table's partition now."""
    if not _holds(app, table, partition):
        raise NotOwner(f"this worker does not hold {what} right now; retry")


async def from_owner(app: "KchatApp", table_name: str, key: str, path: str, local, params: dict | None = None):
    """local() (awaited if it is a coroutine) if this worker holds the key's partition, else the owner's
    answer to path?scope=local&params."""
    # A table entry lives in the partition of the event that wrote it: the chatroom (rooms) or
    # chatroom-by-user (users) partition of its key, where the producer's partitioner puts the
    # key's bytes -- the rule of models.partition_for.
    owners = _owners(app, table_name, partition_for(key, app.settings.partitions))
    if not owners:
        raise PeerUnavailable("no worker holds that part of the state yet (the group is still forming)")
    if owners[0] == _url(app):
        answer = local()
        return await answer if inspect.isawaitable(answer) else answer
    body = await _get(app, owners[0], path, params)
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        raise PeerUnavailable(f"worker {owners[0]} answered in a form this worker does not know") from None


def local_count(app: "KchatApp", user: str) -> int:
    """The user's count from this worker's share; NotOwner unless this worker holds its partition."""
    if not _holds(app, app.counts.table, partition_for(user, app.settings.partitions)):
        raise NotOwner(f"this worker does not hold the counts of {user!r} right now; retry")
    return app.counts.snapshot().get(user, 0)


async def user_count(app: "KchatApp", user: str) -> int:
    """One user's count, asked of the worker that owns the user's partition only."""
    body = await from_owner(app, TABLE, user, f"/stats/users/{quote(user, safe='')}",
                             lambda: {"count": local_count(app, user)})
    try:
        return int(body["count"])
    except (KeyError, TypeError, ValueError):
        raise PeerUnavailable("a worker gave a count in a form this worker does not know") from None


def local_presence(app: "KchatApp", room: str) -> dict:
    if not _holds(app, app.presence_table, partition_for(room, app.settings.partitions)):
        raise NotOwner(f"this worker does not hold the presence of {room!r} right now; retry")
    return presence.listing(app.presence_table.get(room))


async def room_presence(app: "KchatApp", room: str) -> dict:
    """Who is in the room, from the worker that holds its presence."""
    return await from_owner(app, presence.TABLE, room, f"/api/rooms/{room}/presence",
                             lambda: local_presence(app, room))


def local_rooms(app: "KchatApp", token: auth.Token | None = None) -> dict:
    """This worker's share of the directory: activity and attendance of the rooms it holds (that the
    token may see)."""
    online = {room: len(listed["users"]) + listed["anonymous"]
              for room, listed in presence.listings(app.presence_table)}
    activity = app.rooms.snapshot()
    if token is not None and token.rooms is not None:
        activity = {room: state for room, state in activity.items() if token.may_enter(room)}
        online = {room: n for room, n in online.items() if token.may_enter(room)}
    return {"activity": activity, "online": online}


async def directory(app: "KchatApp", now_ms: int) -> list[dict]:
    """Every room with messages or people, from every worker that holds a share."""
    me = _url(app)
    others = {url.rstrip("/") for table in (rooms.TABLE, presence.TABLE)
              for url, parts in app.router.table_metadata(table).items()
              if url.rstrip("/") != me and any(parts.values())}

    async def fetch(url: str) -> dict:
        try:
            return orjson.loads(await _get(app, url, "/api/rooms"))
        except orjson.JSONDecodeError:
            raise PeerUnavailable(f"worker {url} answered in a form this worker does not know") from None

    shares = [local_rooms(app), *await asyncio.gather(*(fetch(u) for u in sorted(others)))]
    activity = {room: state for share in shares for room, state in share["activity"].items()}
    online = {room: n for share in shares for room, n in share["online"].items()}
    return rooms.directory(activity, online, now_ms)


def local_key(app: "KchatApp", room: str, msg_id: str) -> dict:
    """Where this worker's share of the durable keys has the message with this id: {"offset", "timestamp"}
    (both None if it has none)."""
    partition = partition_for(room, app.settings.partitions)
    require_holder(app, app.keys.table, partition, f"the idempotency keys of {room!r}")
    found = app.keys.get(msg_id, int(time.time() * 1000))
    return {"offset": found[0], "timestamp": found[1]} if found is not None else {"offset": None, "timestamp": None}


async def room_key(app: "KchatApp", room: str, msg_id: str) -> dict:
    """local_key, from the worker that holds the room's keys."""
    return await from_owner(app, keys.TABLE, room, f"/api/rooms/{room}/keys/{msg_id}",
                            lambda: local_key(app, room, msg_id))


async def keyed_message(app: "KchatApp", room: str, msg_id: str) -> dict | None:
    """The message a publish with this keyed id stored within the retention, from the worker that holds
    the room's keys; None if there is none -- or if nobody could say (then the window alone decides)."""
    try:
        found = await room_key(app, room, msg_id)
    except (PeerUnavailable, NotOwner):
        app.metrics.key_lookups_failed.inc()
        return None
    if not isinstance(found, dict) or not isinstance(found.get("offset"), int):
        return None
    return await app.hub.message_at(partition_for(room, app.settings.partitions), found["offset"])


async def local_positions(app: "KchatApp", user: str) -> dict:
    """The user's read positions {room: offset} from this worker's share, once every mark published
    before the question is applied; NotOwner unless this worker holds the user's partition."""
    partition = partition_for(user, app.settings.partitions)
    require_holder(app, app.reads.table, partition, f"the read positions of {user!r}")
    await app.reads.caught_up(partition)
    return {"user": user, "positions": app.reads.positions(user)}


async def read_positions(app: "KchatApp", user: str) -> dict[str, int]:
    """local_positions, from the worker that holds the user's partition."""
    body = await from_owner(app, reads.TABLE, user, f"/api/users/{quote(user, safe='')}/unread",
                            lambda: local_positions(app, user))
    positions = body.get("positions") if isinstance(body, dict) else None
    if not isinstance(positions, dict) or not all(isinstance(o, int) for o in positions.values()):
        raise PeerUnavailable("a worker gave read positions in a form this worker does not know")
    return positions
