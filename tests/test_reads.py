"""Read positions and unread counts, and private rooms, on a real Kafka with two workers."""
from __future__ import annotations

import asyncio
import random

import httpx
import jwt
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from kchat_faust.models import partition_for
from kchat_testkit.chat import post, unique
from kchat_testkit.procs import until
from kchat_testkit.worker import Worker

pytestmark = pytest.mark.kafka
SECRET = "test-secret-of-at-least-32-bytes-length!"


# -- the count made from the log, independent of the service -------------------------------------------
async def log_messages(bootstrap: str, rooms: set[str]) -> list[tuple[str, str, int]]:
    """(room, user, offset) of every chat message of these rooms in the chat topic (no joins or leaves)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition("chatroom", p) for p in {partition_for(r, 12) for r in rooms}]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        found = []
        while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
            for tp, records in (await consumer.getmany(*tps, timeout_ms=1000)).items():
                for r in records:
                    data = orjson.loads(r.value)
                    if "text" in data and data.get("room") in rooms:
                        found.append((data["room"], data["user"], r.offset))
        return found
    finally:
        await consumer.stop()


def expected_unread(messages: list[tuple[str, str, int]], marks: dict[tuple[str, str], int],
                    user: str) -> dict[str, tuple[int, int]]:
    """room -> (last read offset, unread): the read position is the furthest of the user's marks and own posts."""
    position = {room: o for (u, room), o in marks.items() if u == user}
    for room, author, offset in messages:
        if author == user:
            position[room] = max(offset, position.get(room, -1))
    return {room: (p, sum(1 for r, _a, o in messages if r == room and o > p)) for room, p in position.items()}


def answer(body: dict) -> dict[str, tuple[int, int]]:
    return {r["room"]: (int(r["last_read"].split(":")[1]), r["unread"]) for r in body["rooms"]}


async def unread_through(client: httpx.AsyncClient, base: str, user: str) -> dict | None:
    try:
        r = await client.get(f"{base}/api/users/{user}/unread")
    except httpx.HTTPError:
        return None
    return answer(r.json()) if r.status_code == 200 else None


async def agree(client, bootstrap: str, workers: list[Worker], rooms: set[str], users: list[str],
                marks: dict, what: str, timeout: float = 120) -> None:
    """Every worker answers every user's unread counts as counted from the log (a user's own posts reach
    the position through the counting agents, so wait for them)."""
    messages = await log_messages(bootstrap, rooms)
    expected = {u: expected_unread(messages, marks, u) for u in users}
    seen: dict = {}

    async def all_agree() -> bool:
        for w in workers:
            for u in users:
                seen[(w.url, u)] = await unread_through(client, w.url, u)
        return all(seen[(w.url, u)] == expected[u] for w in workers for u in users)

    try:
        await until(all_agree, timeout, what, interval=0.5)
    except Exception:
        raise AssertionError(f"{what}: expected {expected}, seen {seen}") from None
    assert sum(n for e in expected.values() for _p, n in e.values()) > 0, "a check with nothing unread proves little"


async def mark(client, base: str, room: str, user: str, event_id: str) -> None:
    r = await client.put(f"{base}/api/rooms/{room}/read", json={"user": user, "event_id": event_id})
    assert r.status_code == 204, r.text


async def test_unread_counts_equal_the_log_through_reads_a_kill_and_a_wiped_restart(own_kafka, tmp_path):
    workers = [Worker(own_kafka.bootstrap, tmp_path / name, env={"KCHAT_GROUP_SESSION_TIMEOUT": "8"})
               for name in "ab"]
    rng = random.Random(22)
    rooms = [f"reads{i}" for i in range(4)]
    users = ["ann", "bob", "cy"]
    marks: dict[tuple[str, str], int] = {}
    try:
        await asyncio.gather(*(asyncio.to_thread(w.start, 240.0) for w in workers))
        async with httpx.AsyncClient(timeout=30) as client:
            stored: dict[str, list[dict]] = {r: [] for r in rooms}

            async def posts(n: int, through: list[Worker]) -> None:
                for i in range(n):
                    room = rng.choice(rooms)
                    stored[room].append(await post(client, rng.choice(through).url, room, rng.choice(users),
                                                   f"m{len(stored[room])}"))

            async def read_some(through: list[Worker]) -> None:
                for u in users:
                    for room in rng.sample(rooms, 2):
                        if stored[room]:
                            m = rng.choice(stored[room])
                            await mark(client, rng.choice(through).url, room, u, m["event_id"])
                            marks[(u, room)] = max(m["offset"], marks.get((u, room), -1))

            await posts(40, workers)
            await read_some(workers)
            await posts(30, workers)
            await agree(client, own_kafka.bootstrap, workers, set(rooms), users, marks, "after reads and more posts")

            # An older position changes nothing (and is still 204).
            room = next(r for r in rooms if ("ann", r) in marks)
            older = next(m for m in stored[room] if m["offset"] <= marks[("ann", room)])
            before = await unread_through(client, workers[1].url, "ann")
            await mark(client, workers[0].url, room, "ann", older["event_id"])
            assert await unread_through(client, workers[1].url, "ann") == before

            # Read-your-writes: a mark is in the next answer of either worker, no waiting.
            newest = stored[room][-1]
            await mark(client, workers[0].url, room, "bob", newest["event_id"])
            marks[("bob", room)] = max(newest["offset"], marks.get(("bob", room), -1))
            for w in workers:
                assert (await unread_through(client, w.url, "bob"))[room] == (marks[("bob", room)], 0)

            workers[1].kill()
            await posts(20, workers[:1])
            await read_some(workers[:1])
            await agree(client, own_kafka.bootstrap, workers[:1], set(rooms), users, marks,
                        "with one worker SIGKILLed")

            workers[1].wipe_state()
            await asyncio.to_thread(workers[1].start, 240.0)
            await posts(20, workers)
            await read_some(workers)
            await agree(client, own_kafka.bootstrap, workers, set(rooms), users, marks,
                        "after a restart with wiped local state")
    finally:
        for w in workers:
            w.stop_or_kill()


async def test_read_marks_refuse_bad_input_and_change_nothing(kchat_worker):
    # Malformed marks (415, 400) and an event of another partition (422) are tested in-process
    # (tests/test_views.py); these two need the worker to read the room's partition.
    base, room = kchat_worker.url, unique("readbad")
    user = unique("rb")
    async with httpx.AsyncClient(timeout=30) as client:
        first = await post(client, base, room, "someone", "first")
        same_partition = next(r for r in (unique("same") for _ in range(1000))
                              if partition_for(r, 12) == partition_for(room, 12))
        neighbour = await post(client, base, same_partition, "someone", "same partition, other room")
        url = f"{base}/api/rooms/{room}/read"
        for event in (neighbour["event_id"],  # another room, same partition
                      f"{first['partition']}:{first['offset'] + 10**9}"):  # not in the log yet
            r = await client.put(url, json={"user": user, "event_id": event})
            assert r.status_code == 422 and r.json()["field"] == "event_id", (event, r.text)
        # Nothing was marked: the user has read nothing anywhere.
        r = await client.get(f"{base}/api/users/{user}/unread")
        assert r.status_code == 200 and r.json() == {"user": user, "rooms": []}
        # The good one, for contrast.
        await mark(client, base, room, user, first["event_id"])
        r = await client.get(f"{base}/api/users/{user}/unread")
        assert answer(r.json()) == {room: (first["offset"], 0)}


# -- private rooms ----------------------------------------------------------------------------------------
def token(sub: str, **claims) -> str:
    return jwt.encode({"sub": sub, **claims}, SECRET, algorithm="HS256")


def bearer(tok: str) -> dict:
    return {"Authorization": f"Bearer {tok}"}


async def test_a_token_limited_to_team_rooms_is_refused_elsewhere_and_never_sees_them(own_kafka, tmp_path):
    workers = [Worker(own_kafka.bootstrap, tmp_path / name, env={"KCHAT_JWT_SECRET": SECRET}) for name in "ab"]
    team, general = unique("team"), unique("general")
    tess_all, tess_team = bearer(token("tess")), bearer(token("tess", rooms=["team-*"]))
    boss = bearer(token("boss"))
    try:
        await asyncio.gather(*(asyncio.to_thread(w.start, 240.0) for w in workers))
        async with httpx.AsyncClient(timeout=30) as client:
            base = workers[0].url
            for room, who in ((team, boss), (general, boss), (general, tess_all)):
                user = "boss" if who is boss else "tess"
                r = await client.post(f"{base}/api/rooms/{room}/messages", json={"user": user, "text": f"in {room}"},
                                      headers=who)
                assert r.status_code == 201, r.text
            general_msg = r.json()
            # tess read in general with a token that allowed it; her team-only token must not show it.
            r = await client.put(f"{base}/api/rooms/{general}/read", json={"user": "tess",
                                                                          "event_id": general_msg["event_id"]},
                                 headers=tess_all)
            assert r.status_code == 204, r.text

            for w in workers:
                u = w.url
                refused = [
                    await client.get(f"{u}/api/rooms/{general}/messages", headers=tess_team),
                    await client.get(f"{u}/api/rooms/{general}/presence", headers=tess_team),
                    await client.get(f"{u}/api/rooms/{general}/count", headers=tess_team),
                    await client.post(f"{u}/api/rooms/{general}/messages", json={"user": "tess", "text": "no"},
                                      headers=tess_team),
                    await client.put(f"{u}/api/rooms/{general}/read",
                                     json={"user": "tess", "event_id": general_msg["event_id"]}, headers=tess_team),
                    await client.get(f"{u}/api/rooms/{general}/events", headers=tess_team),
                    await client.get(f"{u}/api/rooms/{general}/events", params={"access_token": token(
                        "tess", rooms=["team-*"])}),
                    # the seed's endpoints are the default room's
                    await client.get(f"{u}/sse/connect", headers=tess_team),
                    await client.post(f"{u}/api/topics/chatroom", content=b"tess: no",
                                      headers={**tess_team, "Content-Type": "text/plain"}),
                ]
                for r in refused:
                    assert r.status_code == 403 and "access" in r.json()["error"], (r.request.url, r.text)

                # What the team token may do, through either worker.
                r = await client.post(f"{u}/api/rooms/{team}/messages", json={"user": "tess", "text": f"via {u}"},
                                      headers=tess_team)
                assert r.status_code == 201, r.text
                page = await until(lambda: _page(client, u, team, tess_team), 120, f"{team}'s history through {u}")
                assert f"via {u}" in [m["text"] for m in page["messages"]]
                async with client.stream("GET", f"{u}/api/rooms/{team}/events",
                                         params={"access_token": token("tess", rooms=["team-*"])}) as stream:
                    assert stream.status_code == 200

                rooms = await until(lambda: _listed(client, u, tess_team, team), 120, f"{team} listed through {u}")
                assert general not in rooms
                assert general in await until(lambda: _listed(client, u, tess_all, general), 120,
                                              f"{general} listed for an unlimited token through {u}")
                r = await client.get(f"{u}/api/rooms/trending", headers=tess_team)
                assert r.status_code == 200 and general not in [x["room"] for x in r.json()["rooms"]]
                r = await client.get(f"{u}/api/rooms/trending", headers=tess_all)
                assert general in [x["room"] for x in r.json()["rooms"]]
                r = await client.get(f"{u}/api/rooms", params={"scope": "local"}, headers=tess_team)
                assert r.status_code == 200 and general not in r.json()["activity"] and general not in r.json()["online"]

                limited = await until(lambda: _unread_rooms(client, u, tess_team), 60, f"tess's unread through {u}")
                assert general not in limited and team in limited
                assert general in await _unread_rooms(client, u, tess_all)
                r = await client.get(f"{u}/api/users/boss/unread", headers=tess_all)
                assert r.status_code == 403  # somebody else's
                # counts name users, not rooms: unchanged
                r = await client.get(f"{u}/stats/users", headers=tess_team)
                assert r.status_code == 200 and r.json()["users"].get("boss") == 2

            r = await client.get(f"{base}/api/rooms", headers=bearer(token("tess", rooms="team-*")))
            assert r.status_code == 401 and "rooms" in r.json()["error"]
            assert (await client.get(f"{base}/api/rooms")).status_code == 401
    finally:
        for w in workers:
            w.stop_or_kill()


async def _page(client, base, room, headers) -> dict | None:
    r = await client.get(f"{base}/api/rooms/{room}/messages", headers=headers)
    return r.json() if r.status_code == 200 and not r.json().get("partial") and r.json()["messages"] else None


async def _listed(client, base, headers, wanted) -> list[str] | None:
    r = await client.get(f"{base}/api/rooms", headers=headers)
    rooms = [x["room"] for x in r.json()["rooms"]] if r.status_code == 200 else []
    return rooms if wanted in rooms else None


async def _unread_rooms(client, base, headers) -> list[str] | None:
    r = await client.get(f"{base}/api/users/tess/unread", headers=headers)
    rooms = [x["room"] for x in r.json()["rooms"]] if r.status_code == 200 else []
    return rooms or None
