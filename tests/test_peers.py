"""Counts across workers: whom a worker asks, and what it answers when a peer cannot say (in-process)."""
from __future__ import annotations

from types import SimpleNamespace

import json

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from kchat_faust import peers
from kchat_faust.models import partition_for

CHANGELOG = "kchat-user_counts-changelog"


class Peer:
    """Another worker's HTTP side: answers from its own share and records what it was asked."""

    def __init__(self, counts: dict[str, int], status: int = 200) -> None:
        self.counts, self.status, self.asked, self.tokens = counts, status, [], []
        app = web.Application()
        app.router.add_get("/stats/users", self.all)
        app.router.add_get("/stats/users/{user}", self.one)
        self.server = TestServer(app, host="127.0.0.1")

    async def all(self, request):
        self.asked.append(request.path_qs)
        # As a worker answers: compact JSON (orjson).
        return web.Response(body=orjson.dumps({"users": self.counts}), status=self.status,
                            content_type="application/json")

    async def one(self, request):
        self.asked.append(request.path_qs)
        self.tokens.append(request.headers.get("Authorization"))
        user = request.match_info["user"]
        return web.json_response({"user": user, "count": self.counts.get(user, 0)}, status=self.status)

    @property
    def url(self) -> str:
        return str(self.server.make_url("")).rstrip("/")


def fake_app(me: str, share: dict[str, int], owners: dict[str, list[int]], session, secret: str = "") -> SimpleNamespace:
    """A worker as peers.py sees it: its URL, its share, and the assignor's map of who holds what."""
    mine = set(owners.get(me, []))
    return SimpleNamespace(
        conf=SimpleNamespace(canonical_url=me + "/"),
        settings=SimpleNamespace(partitions=12, jwt_secret=secret),
        router=SimpleNamespace(table_metadata=lambda name: {u + "/": {CHANGELOG: ps} for u, ps in owners.items()}),
        assignor=SimpleNamespace(is_active=lambda tp: tp.topic == CHANGELOG and tp.partition in mine),
        counts=SimpleNamespace(snapshot=lambda: share,
                               table=SimpleNamespace(changelog_topic=SimpleNamespace(get_topic_name=lambda: CHANGELOG))),
        http_client=session,
    )


def users_on(partitions: set[int], n: int) -> list[str]:
    found = [u for u in (f"user-{i}" for i in range(1000)) if partition_for(u, 12) in partitions]
    return found[:n]


@pytest.fixture
async def session():
    async with aiohttp.ClientSession() as s:
        yield s


async def test_one_users_count_is_asked_of_its_owner_only(session):
    ann, = users_on(set(range(6, 12)), 1)
    owner, bystander = Peer({ann: 7}), Peer({})
    async with owner.server, bystander.server:
        owners = {"http://me:1": list(range(0, 6)), owner.url: list(range(6, 12)), bystander.url: []}
        app = fake_app("http://me:1", {}, owners, session)
        assert await peers.user_count(app, ann) == 7
        assert owner.asked == [f"/stats/users/{ann}?scope=local"]
        assert bystander.asked == []


async def test_with_authentication_on_a_worker_asks_with_a_token_of_its_own(session):
    import jwt

    ann, = users_on(set(range(6, 12)), 1)
    owner = Peer({ann: 2})
    async with owner.server:
        app = fake_app("http://me:1", {}, {"http://me:1": list(range(0, 6)), owner.url: list(range(6, 12))},
                       session, secret="s" * 32)
        assert await peers.user_count(app, ann) == 2
        scheme, token = owner.tokens[0].split(" ")
        assert scheme == "Bearer" and jwt.decode(token, "s" * 32, algorithms=["HS256"])["sub"] == peers.PEER_SUBJECT
        app.settings.jwt_secret = ""
        await peers.user_count(app, ann)
        assert owner.tokens[1] is None  # no secret, no token


async def test_a_users_count_held_here_needs_no_request(session):
    bob, = users_on(set(range(0, 6)), 1)
    other = Peer({})
    async with other.server:
        app = fake_app("http://me:1", {bob: 3}, {"http://me:1": list(range(0, 6)), other.url: list(range(6, 12))},
                       session)
        assert await peers.user_count(app, bob) == 3
        assert other.asked == []


def test_a_worker_that_gave_the_partition_away_says_so_instead_of_a_stale_count():
    bob, = users_on(set(range(0, 6)), 1)
    app = fake_app("http://me:1", {bob: 3}, {"http://me:1": list(range(6, 12))}, None)
    with pytest.raises(peers.NotOwner):
        peers.local_count(app, bob)


async def test_all_counts_join_every_holders_share(session):
    a, b = Peer({"x": 1, "y": 2}), Peer({"z": 3})
    async with a.server, b.server:
        owners = {"http://me:1": [0], a.url: [1, 2], b.url: [3], "http://idle:1": []}
        app = fake_app("http://me:1", {"w": 4}, owners, session)
        body = await peers.all_counts_json(app)
        assert json.loads(body) == {"users": {"w": 4, "x": 1, "y": 2, "z": 3}}
        assert a.asked == b.asked == ["/stats/users?scope=local"]


@pytest.mark.parametrize("status", [500, 503])
async def test_a_peer_that_cannot_answer_makes_the_answer_unavailable_not_partial(session, status):
    a = Peer({"x": 1}, status=status)
    async with a.server:
        app = fake_app("http://me:1", {"w": 4}, {"http://me:1": [0], a.url: [1]}, session)
        with pytest.raises(peers.PeerUnavailable, match="answered"):
            await peers.all_counts_json(app)


async def test_an_unreachable_peer_is_named(session):
    app = fake_app("http://me:1", {}, {"http://me:1": [0], "http://127.0.0.1:9": list(range(1, 12))}, session)
    with pytest.raises(peers.PeerUnavailable, match="127.0.0.1:9"):
        await peers.all_counts_json(app)


async def test_no_owner_yet_is_unavailable(session):
    app = fake_app("http://me:1", {}, {}, session)
    with pytest.raises(peers.PeerUnavailable, match="group"):
        await peers.user_count(app, "ann")
