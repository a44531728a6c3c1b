"""The HTTP views in-process: the app's own aiohttp application (create_app's routes, the json_errors
middleware, the views) served by aiohttp's test server, with Kafka replaced by the in-memory log: the hub
reads it, and a fake publisher writes to it. No Kafka, no worker process.

Here: what a request is answered before or instead of crossing Kafka -- validation, refusals, error bodies,
idempotent replays, and the answers to a publish Kafka did not confirm. What crosses Kafka (delivery,
history, counts, retries through another worker) is tested against real workers (test_chat_service.py,
test_idempotency.py, test_reads.py, ...)."""
from __future__ import annotations

import json
import time
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import AsyncIterator, Callable, NamedTuple

import jwt
import pytest
from aiohttp import test_utils

from kchat_faust.app import KchatApp, create_app
from kchat_faust.config import Settings
from kchat_faust.hub import Hub
from kchat_faust.kafka_io import KafkaUnavailable
from kchat_faust.models import ChatMessage, decode_record, keyed_id, partition_for
from tests.support.memlog import MemoryLog
from tests.test_hub import until

SECRET = "views-secret-of-at-least-32-bytes-long!"
ROOM = "lobby"
P = partition_for(ROOM, 12)
# a room in another partition, and one in the same partition
ELSEWHERE = next(f"else{i}" for i in range(1000) if partition_for(f"else{i}", 12) != P)
NEIGHBOUR = next(f"near{i}" for i in range(1000) if partition_for(f"near{i}", 12) == P)
# What the real Publisher raises when Kafka does not confirm (kafka_io.Publisher.send).
NOT_CONNECTED = KafkaUnavailable("not connected to the Kafka brokers yet")
TIMED_OUT = KafkaUnavailable("the brokers did not acknowledge within 10s")


class Stored(NamedTuple):  # what the views read of aiokafka's RecordMetadata
    partition: int
    offset: int


class FakePublisher:
    """kafka_io.Publisher as the views use it, writing to the in-memory log.

    `failure`: what publish() and send() raise instead, as the real one does when Kafka does not confirm;
    with `stored_anyway` the record reaches the log all the same (the brokers took it, the acknowledgement
    never came: an unknown outcome). `after_append` runs once a record is in the log."""

    def __init__(self, log: MemoryLog) -> None:
        self.log = log
        self.failure: Exception | None = None
        self.stored_anyway = False
        self.after_append: Callable[[], None] | None = None
        self.sent: list[tuple[str, bytes | None, bytes, int | None]] = []  # to other topics (read marks)

    async def publish(self, room: str, value: bytes) -> Stored:
        if self.failure is not None and not self.stored_anyway:
            raise self.failure
        record = self.log.append_value(partition_for(room, self.log.partitions), value)
        if self.after_append is not None:
            self.after_append()
        if self.failure is not None:
            raise self.failure
        return Stored(record.partition, record.offset)

    async def send(self, topic: str, value: bytes, key: bytes | None = None, partition: int | None = None) -> Stored:
        if self.failure is not None:
            raise self.failure
        self.sent.append((topic, key, value, partition))
        return Stored(partition or 0, len(self.sent) - 1)


@dataclass
class Service:
    app: KchatApp
    log: MemoryLog
    publisher: FakePublisher
    client: test_utils.TestClient

    def messages(self) -> list[ChatMessage]:
        """Every chat message in the log, in partition and offset order."""
        return [decode_record(r.value, r.partition, r.offset, r.timestamp, ROOM)
                for records in self.log.logs.values() for r in records]

    def texts(self) -> list[str]:
        return [m.text for m in self.messages()]

    def published(self, outcome: str) -> float:
        return self.app.metrics.registry.get_sample_value("kchat_messages_published_total", {"outcome": outcome})

    async def post(self, room: str = ROOM, user: str = "ann", text: str = "hi", key: str | None = None,
                   headers: dict | None = None):
        headers = {**({"Idempotency-Key": key} if key is not None else {}), **(headers or {})}
        return await self.client.post(f"/api/rooms/{room}/messages", json={"user": user, "text": text},
                                      headers=headers)


@asynccontextmanager
async def running(tmp_path, **settings) -> AsyncIterator[Service]:
    settings = Settings(datadir=str(tmp_path / "data"), **settings)
    app = create_app(settings)  # builds clients and tables, connects nothing: only a started worker does
    log = MemoryLog(settings.partitions)
    app.publisher = publisher = FakePublisher(log)
    app.hub = Hub(settings, log, log, app.metrics)
    await app.hub.start()
    try:
        await until(lambda: app.hub.ready)
        # What Faust hands a WSGI host: its aiohttp application, every blueprint applied.
        web_app = await app.web.wsgi()
        async with test_utils.TestClient(test_utils.TestServer(web_app)) as client:
            yield Service(app, log, publisher, client)
    finally:
        await app.hub.stop()


@pytest.fixture
async def start(tmp_path):
    """start(**settings): a service with these settings (stopped after the test)."""
    async with AsyncExitStack() as stack:
        async def start_(**settings) -> Service:
            return await stack.enter_async_context(running(tmp_path, **settings))
        yield start_


@pytest.fixture
async def service(start) -> Service:
    return await start()


async def error_of(response, status: int) -> dict:
    """The JSON error body of a refusal with this status."""
    assert response.status == status, await response.text()
    assert response.content_type == "application/json"
    body = await response.json()
    assert isinstance(body["error"], str) and body["error"]
    return body


# -- publishing: what is refused, and that nothing is stored --------------------------------------------
BAD_POSTS = [
    # what, Content-Type, body, status, the field named (None: the body as a whole), a phrase of the error
    ("invalid json", "application/json", b'{"user": "a", "text": ', 400, None, "not valid JSON"),
    ("not an object", "application/json", b'["a", "b"]', 400, None, "must be a JSON object"),
    ("missing text", "application/json", b'{"user": "a"}', 400, "text", "is required"),
    ("missing user", "application/json", b'{"text": "a"}', 400, "user", "is required"),
    ("empty text", "application/json", b'{"user": "a", "text": ""}', 400, "text", "must not be empty"),
    ("blank user", "application/json", b'{"user": "   ", "text": "hi"}', 400, "user", "must not be empty"),
    ("text not a string", "application/json", b'{"user": "a", "text": 5}', 400, "text", "must be a string"),
    ("user not a string", "application/json", b'{"user": null, "text": "hi"}', 400, "user", "must be a string"),
    ("text too long", "application/json", json.dumps({"user": "a", "text": "x" * 4001}).encode(), 400, "text",
     "at most 4000 characters"),
    ("user too long", "application/json", json.dumps({"user": "u" * 65, "text": "hi"}).encode(), 400, "user",
     "at most 64 characters"),
    ("control chars in user", "application/json", b'{"user": "a\\u0007b", "text": "hi"}', 400, "user",
     "printable"),
    ("control chars in text", "application/json", b'{"user": "a", "text": "a\\u001bb"}', 400, "text",
     "control characters"),
    ("lone surrogate", "application/json", b'{"user": "a", "text": "\\ud800"}', 400, None, "not valid JSON"),
    ("invalid utf-8", "application/json", b'{"user": "a", "text": "\xff\xfe"}', 400, "body", "UTF-8"),
    ("unknown field", "application/json", b'{"user": "a", "text": "hi", "room": "x"}', 400, None,
     "unknown field(s): room"),
    ("wrong content type", "text/plain", b'{"user": "a", "text": "hi"}', 415, None, "application/json"),
    ("no content type", "", b'{"user": "a", "text": "hi"}', 415, None, "application/json"),
    ("body over the limit", "application/json", b'{"user": "a", "text": "' + b"x" * (64 << 10) + b'"}', 413,
     None, "Maximum request body size 65536 exceeded"),
]


async def test_a_bad_post_is_refused_with_what_is_wrong_and_stores_nothing(service):
    # One service for every case (each test builds an app): the cases share nothing but the empty log.
    for n, (what, ctype, body, status, field, phrase) in enumerate(BAD_POSTS, 1):
        r = await service.client.post(f"/api/rooms/{ROOM}/messages", data=body, headers={"Content-Type": ctype})
        refused = await error_of(r, status)
        assert refused.get("field") == field and phrase in refused["error"], (what, refused)
        assert service.texts() == [], what
        assert service.published("refused") == n and service.published("stored") == 0, what


async def test_a_good_post_is_stored_and_answered_with_where(service):
    r = await service.post(user="ann", text="two\nlines\tand a tab")
    assert r.status == 201
    answer = await r.json()
    [msg] = service.messages()
    assert (answer["partition"], answer["offset"], answer["event_id"]) == (P, 0, f"{P}:0")
    assert {k: answer[k] for k in ("id", "room", "user", "text", "sent_at")} == {
        "id": msg.id, "room": ROOM, "user": "ann", "text": "two\nlines\tand a tab", "sent_at": msg.sent_at}
    assert "Idempotent-Replayed" not in r.headers
    assert service.published("stored") == 1


async def test_the_body_limit_is_the_setting(start):
    service = await start(max_body=2048)
    await error_of(await service.post(text="x" * 2500), 413)
    assert service.texts() == []
    assert (await service.post(text="x" * 1500)).status == 201
    assert service.texts() == ["x" * 1500]


async def test_the_text_limit_is_the_setting(start):
    service = await start(max_text=10)
    refused = await error_of(await service.post(text="x" * 11), 400)
    assert refused == {"error": "must be at most 10 characters", "field": "text"}
    assert (await service.post(text="x" * 10)).status == 201
    assert service.texts() == ["x" * 10]


async def test_a_bad_room_name_is_a_400_naming_the_room(service):
    for room in ("bad%20room!", "r" * 65, "caf%C3%A9", "a.b"):
        for method, path in (("POST", "messages"), ("GET", "messages"), ("GET", "events"), ("GET", "presence"),
                             ("GET", "count"), ("PUT", "read")):
            r = await service.client.request(method, f"/api/rooms/{room}/{path}", json={"user": "a", "text": "hi"})
            refused = await error_of(r, 400)
            assert refused["field"] == "room" and "1-64 characters" in refused["error"], (room, method, path)
    assert service.texts() == [] and service.publisher.sent == []


async def test_unknown_paths_and_methods_answer_json(service):
    assert await error_of(await service.client.get("/no/such/page"), 404) == {"error": "Not Found"}
    assert await error_of(await service.client.delete(f"/api/rooms/{ROOM}/messages"), 405) == {
        "error": "Method Not Allowed"}
    assert await error_of(await service.client.put("/stats/users"), 405) == {"error": "Method Not Allowed"}


async def test_the_seed_endpoint_takes_text_plain_into_the_default_room_and_refuses_the_rest(service):
    r = await service.client.post("/api/topics/chatroom", data=b"carol: hello world",
                                  headers={"Content-Type": "text/plain"})
    assert r.status == 200 and await r.read() == b""
    r2 = await service.client.post("/api/topics/chatroom", data=b"no prefix here",
                                   headers={"Content-Type": "text/plain; charset=utf-8"})
    assert r2.status == 200
    assert [(m.room, m.user, m.text) for m in service.messages()] == [
        (ROOM, "carol", "hello world"), (ROOM, "anonymous", "no prefix here")]
    assert (r.headers["X-Kchat-Event-Id"], r2.headers["X-Kchat-Event-Id"]) == (f"{P}:0", f"{P}:1")

    other = await error_of(await service.client.post("/api/topics/other", data=b"x: y",
                                                     headers={"Content-Type": "text/plain"}), 404)
    assert "'other'" in other["error"] and "'chatroom'" in other["error"]
    await error_of(await service.client.post("/api/topics/chatroom", data=b"x: y",
                                             headers={"Content-Type": "application/json"}), 415)
    await error_of(await service.client.post("/api/topics/chatroom", data=b"x: \xff",
                                             headers={"Content-Type": "text/plain"}), 400)
    assert len(service.messages()) == 2


# -- the other requests' bad input -------------------------------------------------------------------------
BAD_QUERIES = [  # path, query, the field named
    (f"/api/rooms/{ROOM}/messages", {"limit": "501"}, "limit"),
    (f"/api/rooms/{ROOM}/messages", {"limit": "0"}, "limit"),
    (f"/api/rooms/{ROOM}/messages", {"limit": "ten"}, "limit"),
    (f"/api/rooms/{ROOM}/messages", {"before": "yesterday"}, "before"),
    (f"/api/rooms/{ROOM}/messages", {"before": f"{(P + 1) % 12}:3"}, "before"),  # another partition's event
    (f"/api/rooms/{ROOM}/messages", {"since": "2026-12-04"}, "since"),  # a date alone is not RFC 3339
    (f"/api/rooms/{ROOM}/messages", {"before": f"{P}:3", "since": "0"}, "since"),
    (f"/api/rooms/{ROOM}/messages", {"scope": "everything"}, "scope"),
    (f"/api/rooms/{ROOM}/events", {"last_event_id": "garbage"}, "last_event_id"),
    (f"/api/rooms/{ROOM}/events", {"since": "soon"}, "since"),
    (f"/api/rooms/{ROOM}/events", {"user": "a\u0007b"}, "user"),
    (f"/api/rooms/{ROOM}/count", {"after": f"{(P + 1) % 12}:3"}, "after"),
    (f"/api/rooms/{ROOM}/keys/not-a-keyed-id", {}, "msg_id"),
    ("/api/users/%20/unread", {}, "user"),
    ("/stats/users", {"scope": "all"}, "scope"),
]


async def test_bad_query_input_is_a_400_naming_the_field(service):
    for path, params, field in BAD_QUERIES:
        refused = await error_of(await service.client.get(path, params=params), 400)
        assert refused["field"] == field, (path, params, refused)


async def test_a_bad_last_event_id_header_is_a_400(service):
    r = await service.client.get(f"/api/rooms/{ROOM}/events", headers={"Last-Event-ID": "garbage"})
    assert (await error_of(r, 400))["field"] == "last_event_id"


async def test_read_marks_refuse_bad_input_and_publish_nothing(service):
    first = await (await service.post(text="first")).json()
    elsewhere = await (await service.post(room=ELSEWHERE, text="in another partition")).json()
    neighbour = await (await service.post(room=NEIGHBOUR, text="same partition, other room")).json()
    url = f"/api/rooms/{ROOM}/read"
    cases = [
        (415, None, dict(data=b"{}", headers={"Content-Type": "text/plain"})),
        (400, None, dict(data=b"{not json", headers={"Content-Type": "application/json"})),
        (400, None, dict(json=["user", "event_id"])),
        (400, "event_id", dict(json={"user": "bo"})),
        (400, None, dict(json={"user": "bo", "event_id": first["event_id"], "extra": 1})),
        (400, "user", dict(json={"user": "", "event_id": first["event_id"]})),
        (400, "event_id", dict(json={"user": "bo", "event_id": "yesterday"})),
        (400, "event_id", dict(json={"user": "bo", "event_id": 7})),
        (400, "event_id", dict(json={"user": "bo", "event_id": None})),
        (422, "event_id", dict(json={"user": "bo", "event_id": elsewhere["event_id"]})),
        (422, "event_id", dict(json={"user": "bo", "event_id": neighbour["event_id"]})),
        (422, "event_id", dict(json={"user": "bo", "event_id": f"{P}:{first['offset'] + 10**9}"})),
    ]
    for status, field, kwargs in cases:
        refused = await error_of(await service.client.put(url, **kwargs), status)
        assert refused.get("field") == field, (kwargs, refused)
    assert service.publisher.sent == []
    # The good one, for contrast: one mark, to the reads topic, in the user's partition.
    r = await service.client.put(url, json={"user": "bo", "event_id": first["event_id"]})
    assert r.status == 204, await r.text()
    [(topic, _key, value, partition)] = service.publisher.sent
    assert topic == "chatroom-reads" and partition == partition_for("bo", 12)
    assert json.loads(value) == {"user": "bo", "room": ROOM, "offset": first["offset"]}


# -- authentication ------------------------------------------------------------------------------------------
def bearer(sub: str, secret: str = SECRET, **claims) -> dict:
    return {"Authorization": f"Bearer {jwt.encode({'sub': sub, **claims}, secret, algorithm='HS256')}"}


@pytest.fixture
async def secured(start) -> Service:
    return await start(jwt_secret=SECRET)


async def test_with_a_jwt_secret_a_post_without_a_good_token_is_a_401_with_www_authenticate(secured):
    bad_tokens = {
        "no token": {},
        "wrong secret": bearer("ann", secret="x" * 40),
        "expired": bearer("ann", exp=int(time.time()) - 10),
        "not a JWT": {"Authorization": "Bearer not.a.jwt"},
        "no sub": {"Authorization": f"Bearer {jwt.encode({'name': 'ann'}, SECRET, algorithm='HS256')}"},
        "bad rooms claim": bearer("ann", rooms="lobby"),
    }
    for what, headers in bad_tokens.items():
        refused = await error_of(await secured.post(user="ann", headers=headers), 401)
        assert "token" in refused["error"], what
    r = await secured.post(user="ann")
    assert r.headers["WWW-Authenticate"] == 'Bearer realm="kchat"'
    assert secured.texts() == []
    assert (await secured.post(user="ann", text="signed", headers=bearer("ann"))).status == 201
    assert secured.texts() == ["signed"]


async def test_with_a_jwt_secret_nobody_posts_as_someone_else_or_where_the_token_does_not_reach(secured):
    spoof = await error_of(await secured.post(user="bob", text="spoof", headers=bearer("ann")), 403)
    assert spoof["error"] == "this token belongs to 'ann'; it cannot post as 'bob'"
    assert "WWW-Authenticate" not in (await secured.post(user="bob", headers=bearer("ann"))).headers
    seed = await secured.client.post("/api/topics/chatroom", data=b"bob: via the seed endpoint",
                                     headers={**bearer("ann"), "Content-Type": "text/plain"})
    await error_of(seed, 403)
    team = bearer("ann", rooms=["team-*"])
    private = await error_of(await secured.post(room="general", user="ann", headers=team), 403)
    assert "room 'general'" in private["error"]
    assert secured.texts() == []
    assert (await secured.post(room="team-a", user="ann", text="in the team", headers=team)).status == 201
    assert secured.texts() == ["in the team"]


async def test_with_a_jwt_secret_reading_needs_a_token_too(secured):
    for path, params in ((f"/api/rooms/{ROOM}/messages", {}), (f"/api/rooms/{ROOM}/events", {}),
                         (f"/api/rooms/{ROOM}/events", {"access_token": "not.a.jwt"}),
                         (f"/api/rooms/{ROOM}/presence", {}), (f"/api/rooms/{ROOM}/count", {}),
                         ("/api/rooms", {}), ("/api/users/ann/unread", {})):
        r = await secured.client.get(path, params=params)
        await error_of(r, 401)
        assert r.headers["WWW-Authenticate"].startswith("Bearer"), path
    others = await error_of(await secured.client.get("/api/users/bob/unread", headers=bearer("ann")), 403)
    assert "'bob'" in others["error"]
    marked = await secured.client.put(f"/api/rooms/{ROOM}/read", json={"user": "bob", "event_id": f"{P}:0"},
                                      headers=bearer("ann"))
    assert "mark read for 'bob'" in (await error_of(marked, 403))["error"]
    assert secured.publisher.sent == []


# -- the rate limit ----------------------------------------------------------------------------------------
async def test_the_rate_limit_answers_429_with_retry_after_per_user(start):
    service = await start(rate_limit=1, rate_burst=3)
    now = [1000.0]
    service.app.rate_limiter.clock = lambda: now[0]
    for i in range(3):  # the burst
        assert (await service.post(user="flood", text=f"ok{i}", key=f"k{i}")).status == 201
    r = await service.post(user="flood", text="one too many")
    refused = await error_of(r, 429)
    assert r.headers["Retry-After"] == "1" and refused == {"error": "too many messages; retry in 1s"}
    # A replay stores nothing, so it costs no token; another user has a bucket of its own.
    replay = await service.post(user="flood", text="ok0", key="k0")
    assert replay.status == 201 and replay.headers["Idempotent-Replayed"] == "true"
    assert (await service.post(user="calm", text="not limited")).status == 201
    now[0] += 1
    assert (await service.post(user="flood", text="after waiting")).status == 201
    assert service.texts() == ["ok0", "ok1", "ok2", "not limited", "after waiting"]
    assert service.published("refused") == 1


# -- idempotent publish ----------------------------------------------------------------------------------------
async def test_a_retry_with_the_same_key_is_answered_with_the_stored_message_and_stores_nothing(service):
    first = await service.post(user="ann", text="only once", key="key-1")
    assert first.status == 201 and "Idempotent-Replayed" not in first.headers
    stored = await first.json()
    assert stored["id"] == keyed_id(ROOM, "ann", "key-1")
    for _ in range(2):
        retry = await service.post(user="ann", text="only once", key="key-1")
        assert retry.status == 201 and retry.headers["Idempotent-Replayed"] == "true"
        assert await retry.json() == stored
    assert service.texts() == ["only once"]
    # The key names a message of one user in one room: another user's, or another room's, is another message.
    assert (await service.post(user="bob", text="only once", key="key-1")).status == 201
    assert (await service.post(room=ELSEWHERE, user="ann", text="only once", key="key-1")).status == 201
    assert len(service.messages()) == 3
    assert service.app.metrics.registry.get_sample_value("kchat_idempotent_replays_total") == 2


async def test_a_key_reused_for_another_message_is_a_422_and_stores_nothing(service):
    assert (await service.post(user="ann", text="the first", key="key-1")).status == 201
    clash = await error_of(await service.post(user="ann", text="something else", key="key-1"), 422)
    assert clash == {"error": "Idempotency-Key was used for another message in this room; use a new key",
                     "field": "Idempotency-Key"}
    assert service.texts() == ["the first"]


async def test_a_malformed_key_is_a_400(service):
    for key in ("bad key with spaces", "", "k" * 129, "clé"):
        r = await service.client.post(f"/api/rooms/{ROOM}/messages", json={"user": "ann", "text": "hi"},
                                      headers={"Idempotency-Key": key})
        refused = await error_of(r, 400)
        assert refused == {"error": "must be 1-128 visible ASCII characters", "field": "Idempotency-Key"}, key
    assert service.texts() == []


async def test_a_copy_stored_by_a_racing_attempt_is_answered_with_the_first(service):
    # Another attempt's record is in the log, not yet read by this worker's hub when it looks: it stores a
    # copy, and answers with the first once its hub has read both.
    service.log.hold(P)
    earlier = service.log.post(ROOM, "ann", "raced", key="key-r")
    service.publisher.after_append = lambda: service.log.release(P)
    r = await service.post(user="ann", text="raced", key="key-r")
    assert r.status == 201 and r.headers["Idempotent-Replayed"] == "true"
    assert ((await r.json())["offset"], (await r.json())["id"]) == (earlier.offset, keyed_id(ROOM, "ann", "key-r"))
    assert service.texts() == ["raced", "raced"]  # the copy is in the log: every reader drops it


# -- publishing when Kafka does not confirm ------------------------------------------------------------------
async def test_a_publish_kafka_does_not_confirm_is_a_503_and_never_reported_stored(service):
    service.publisher.failure = NOT_CONNECTED
    refused = await error_of(await service.post(text="lost"), 503)
    assert refused == {"error": "not connected to the Kafka brokers yet"}
    assert service.texts() == []
    assert service.published("failed") == 1 and service.published("stored") == 0
    service.publisher.failure = None
    assert (await service.post(text="back")).status == 201
    assert service.texts() == ["back"]


async def test_an_unknown_outcome_is_a_503_and_the_retry_with_its_key_answers_what_was_stored(service):
    # The brokers took the record but the acknowledgement never came: the client cannot know; its retry
    # with the same key learns the stored message, and nothing is stored twice.
    service.publisher.failure, service.publisher.stored_anyway = TIMED_OUT, True
    first = await error_of(await service.post(user="ann", text="unknown at first", key="key-u"), 503)
    assert first == {"error": "the brokers did not acknowledge within 10s"}
    [msg] = service.messages()
    await until(lambda: service.app.hub.positions[P] == 1)  # this worker's hub has read it
    service.publisher.failure, service.publisher.stored_anyway = None, False
    retry = await service.post(user="ann", text="unknown at first", key="key-u")
    assert retry.status == 201 and retry.headers["Idempotent-Replayed"] == "true"
    answer = await retry.json()
    assert (answer["id"], answer["partition"], answer["offset"]) == (msg.id, P, 0)
    assert service.texts() == ["unknown at first"]
    assert service.published("failed") == 1 and service.published("stored") == 1


async def test_a_read_mark_kafka_does_not_confirm_is_a_503(service):
    first = await (await service.post(text="first")).json()
    service.publisher.failure = TIMED_OUT
    r = await service.client.put(f"/api/rooms/{ROOM}/read", json={"user": "bo", "event_id": first["event_id"]})
    assert await error_of(r, 503) == {"error": "the brokers did not acknowledge within 10s"}
    assert service.publisher.sent == []
