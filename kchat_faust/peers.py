"""Counts across workers: each user is counted by exactly one worker, the one whose table holds the
user's partition; a worker answers for everybody by asking the others over HTTP.

Faust's assignor tells, from the group's last rebalance, which worker (by its advertised URL)
holds which table partitions. Peers answer with `?scope=local`, from their own share only, and
never ask further: a request cannot bounce between workers that disagree during a rebalance.
"""
from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING
from urllib.parse import quote

import orjson
from aiohttp import ClientError, ClientTimeout
from faust.types import TP

from .counting import TABLE
from .models import partition_for

if TYPE_CHECKING:
    from .app import KchatApp

PEER_TIMEOUT = ClientTimeout(total=5)
USERS_HEAD = b'{"users":{'


class PeerUnavailable(Exception):
    """Another worker could not give its share of the counts (503: the answer would be incomplete)."""


class NotOwner(Exception):
    """This worker does not hold that user's partition right now (a rebalance is moving it)."""


def _url(app: "KchatApp") -> str:
    return str(app.conf.canonical_url).rstrip("/")


async def _get(app: "KchatApp", url: str, path: str) -> bytes:
    try:
        async with app.http_client.get(f"{url}{path}", params={"scope": "local"},
                                       timeout=PEER_TIMEOUT) as r:
            if r.status != 200:
                raise PeerUnavailable(f"worker {url} answered {r.status} for its counts")
            return await r.read()
    except (ClientError, asyncio.TimeoutError) as exc:
        raise PeerUnavailable(f"worker {url} did not give its counts ({exc.__class__.__name__})") from None


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


def _partition(app: "KchatApp", user: str) -> int:
    # Faust writes the table's changelog with the producer's default partitioner on the user's
    # bytes: the same rule that puts a room in its chatroom partition.
    return partition_for(user, app.settings.partitions)


def local_count(app: "KchatApp", user: str) -> int:
    """The user's count from this worker's share; NotOwner unless this worker holds its partition
    (a partition it gave away may still have stale state here)."""
    tp = TP(app.counts.table.changelog_topic.get_topic_name(), _partition(app, user))
    if not app.assignor.is_active(tp):
        raise NotOwner(f"this worker does not hold the counts of {user!r} right now; retry")
    return app.counts.snapshot().get(user, 0)


async def user_count(app: "KchatApp", user: str) -> int:
    """One user's count, asked of the worker that owns the user's partition only."""
    partition = _partition(app, user)
    owners = [url.rstrip("/") for url, parts in app.router.table_metadata(TABLE).items()
              if any(partition in ps for ps in parts.values())]
    if not owners:
        raise PeerUnavailable("no worker holds these counts yet (the group is still forming)")
    if owners[0] == _url(app):
        return local_count(app, user)
    body = await _get(app, owners[0], f"/stats/users/{quote(user, safe='')}")
    try:
        return int(orjson.loads(body)["count"])
    except (ValueError, KeyError, TypeError):
        raise PeerUnavailable(f"worker {owners[0]} gave a count in a form this worker does not know") from None
