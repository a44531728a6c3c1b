"""HTTP: thin views over the app's publisher, hub and counts (all reached through self.app).

The refusals they raise (ValidationError, AuthError, TooManyRequests, KafkaUnavailable,
PeerUnavailable) become JSON answers in web.json_errors.
"""
from __future__ import annotations

import asyncio
import functools
import logging
import re

import orjson
from aiohttp import web
from aiohttp_sse import EventSourceResponse, sse_response
from faust.web import Blueprint, View

from . import auth, peers, rooms, scrollback, unread
from .auth import check_author
from .hub import now_ms
from .kafka_io import KafkaUnavailable
from .limits import DEFAULT_HISTORY, MAX_HISTORY
from .models import (KeyReused, Unprocessable, ValidationError, check_idempotency_key, check_room, check_user, encode,
                     message_json, new_message, parse_compat_body, parse_event_id, parse_time)

log = logging.getLogger(__name__)
blueprint = Blueprint("kchat")
KEYED_ID = re.compile(r"k[0-9a-f]{32}")  # models.keyed_id


def fast_json(data, status: int = 200) -> web.Response:
    """For the big and the frequent bodies (counts, history, stored messages): orjson is several
    times faster than json. Error bodies stay on json, which also copes with lone surrogates
    echoed from bad input."""
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def error(status: int, message: str, **extra) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


class Refused(Exception):
    """A request refused before anything is done, with its status (web.json_errors answers it)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


class KchatView(View):
    """A view of this app: its settings and services are the app's."""

    @property
    def settings(self):
        return self.app.settings


# -- publish -------------------------------------------------------------------------
async def json_object(request: web.Request, fields: tuple[str, ...]) -> dict:
    """The body: a JSON object with these fields and no others."""
    if request.content_type != "application/json":
        raise Refused(415, "Content-Type must be application/json")
    try:
        # orjson: a fifth of json's time. It also refuses lone surrogates ("\ud800"), which no
        # UTF-8 text can hold, where json let them through to the fields' checks: 400 either way.
        body = orjson.loads(await read_text_body(request))
    except orjson.JSONDecodeError as exc:
        raise Refused(400, f"body is not valid JSON: {exc.msg} at position {exc.pos}") from None
    if not isinstance(body, dict):
        raise Refused(400, "body must be a JSON object {" + ", ".join(f'"{f}": ...' for f in fields) + "}")
    unknown = sorted(set(body) - set(fields))
    if unknown:
        raise Refused(400, f"unknown field(s): {', '.join(unknown)}")
    for field in fields:
        if field not in body:
            raise ValidationError(field, "is required")
    return body


async def read_text_body(request: web.Request) -> str:
    raw = await request.read()  # aiohttp refuses bodies above client_max_size with 413
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ValidationError("body", "is not valid UTF-8") from None


async def store(view: KchatView, request: web.Request, room: str, user, text) -> tuple[dict, bool]:
    """Publish and wait for the brokers' acknowledgement; raises before anything is stored on bad input.
    Returns the stored message, and whether an earlier attempt with the same Idempotency-Key stored it."""
    app = view.app
    key = request.headers.get("Idempotency-Key")
    msg = new_message(room, user, text, app.settings.max_text,
                      check_idempotency_key(key) if key is not None else None)
    found = auth.token(request, app.settings.jwt_secret)
    check_author(found, msg.user)
    auth.check_room(found, room)
    if key is not None:
        # The window in memory first; behind it the keys kept for the retention.
        stored = await app.hub.stored(room, msg.id) or await peers.keyed_message(app, room, msg.id)
        if stored is not None:
            return replayed(app, stored, msg.text)
    app.rate_limiter.check(msg.user)  # a replay above costs no token
    meta = await app.publisher.publish(room, encode(msg))
    if key is not None:
        # Another attempt may have stored it first, its record not yet read when we looked: then
        # this record is a copy that every reader drops, and the answer is the first one.
        original = await app.hub.original_of(room, meta.partition, meta.offset, msg.id,
                                             timeout=min(2.0, app.settings.publish_timeout))
        if original is not None:
            return replayed(app, original, msg.text)
    return message_json(msg, meta.partition, meta.offset), False


def replayed(app, stored: dict, text: str) -> tuple[dict, bool]:
    if stored["text"] != text:
        raise KeyReused("Idempotency-Key", "was used for another message in this room; use a new key")
    app.metrics.replays.inc()
    return stored, True


def counts_publish(handler):
    """Counts a publish request's outcome, whichever way the handler ends."""

    @functools.wraps(handler)
    async def wrapper(self: KchatView, request, **kwargs):
        metrics = self.app.metrics
        outcome = metrics.refused
        try:
            response = await handler(self, request, **kwargs)
            if response.status < 400:
                outcome = metrics.stored
            return response
        except KafkaUnavailable:
            outcome = metrics.failed
            raise
        finally:
            outcome.inc()

    return wrapper


@blueprint.route("/api/rooms/{room}/messages", name="room_messages")
class RoomMessages(KchatView):
    @counts_publish
    async def post(self, request: web.Request, room: str) -> web.Response:
        check_room(room)
        body = await json_object(request, ("user", "text"))
        stored, again = await store(self, request, room, body["user"], body["text"])
        response = fast_json(stored, status=201)
        if again:
            response.headers["Idempotent-Replayed"] = "true"
        return response

    async def get(self, request: web.Request, room: str) -> web.Response:
        check_room(room)
        auth.check_room(auth.token(request, self.settings.jwt_secret), room)
        raw = request.query.get("limit", str(DEFAULT_HISTORY))
        try:
            limit = int(raw)
        except ValueError:
            limit = 0
        if not 1 <= limit <= MAX_HISTORY:
            raise ValidationError("limit", f"must be a whole number from 1 to {MAX_HISTORY}")
        before = room_event(self, room, request.query.get("before"), "before")
        since = request.query.get("since")
        if before is not None and since is not None:
            raise ValidationError("since", "give before or since, not both")
        since_ms = parse_time(since) if since is not None else None
        if _local_scope(request):
            return fast_json(await scrollback.local_page(self.app, room, limit, before, since_ms))
        return fast_json(await scrollback.page(self.app, room, limit, before, since_ms))


def room_event(view: KchatView, room: str, token: str | None, field: str, status: int = 400) -> int | None:
    """The offset of an event id of the room's partition (None if absent); a well-formed id of another
    partition is a 400, or the given status."""
    if token is None:
        return None
    partition, offset = parse_event_id(token, field)
    if partition != view.app.hub.partition_for(room) or offset < 0:
        refusal = Unprocessable if status == 422 else ValidationError
        raise refusal(field, f"{token!r} is not an event of room {room!r}")
    return offset


@blueprint.route("/api/topics/{topic}", name="seed_publish")
class SeedPublish(KchatView):
    """The seed's publish server: text/plain "<name>: <text>" to the chatroom topic."""

    @counts_publish
    async def post(self, request: web.Request, topic: str) -> web.Response:
        settings = self.settings
        if topic != settings.topic:
            return error(404, f"unknown topic {topic!r}; only {settings.topic!r} exists")
        if request.content_type not in ("text/plain", "application/octet-stream"):
            return error(415, "Content-Type must be text/plain")
        user, text = parse_compat_body(await read_text_body(request))
        stored, again = await store(self, request, settings.default_room, user, text)
        headers = {"X-Kchat-Event-Id": stored["event_id"]}
        if again:
            headers["Idempotent-Replayed"] = "true"
        return web.Response(status=200, headers=headers)


@blueprint.route("/api/system/echo", name="echo")
class Echo(KchatView):
    async def get(self, request: web.Request) -> web.Response:
        return web.Response(text="I'm working...")


# -- subscribe ------------------------------------------------------------------------
class ChatEventStream(EventSourceResponse):
    """aiohttp-sse's response without its ping task: with 10,000 streams on a worker, a task and
    a timer each add up. The hub sends keep-alives to every idle stream from one timer."""

    async def _ping(self) -> None:
        return


async def stream_events(view: KchatView, request: web.Request, room: str, compat: bool) -> web.StreamResponse:
    hub, settings = view.app.hub, view.settings
    token = request.headers.get("Last-Event-ID") or request.query.get("last_event_id")
    after = parse_event_id(token) if token else None
    since = request.query.get("since")
    # A reconnecting client sends Last-Event-ID with the same URL: the exact point wins over the time.
    since_ms = parse_time(since) if since is not None and after is None else None
    # Who is watching: the token's user when authentication is on, else whom ?user= names;
    # without either the stream is anonymous (counted in the room's presence, not listed).
    found = auth.token(request, settings.jwt_secret)
    auth.check_room(found, room)
    subject = found.sub if found is not None else None
    named = request.query.get("user")
    if subject is not None and named is not None and named != subject:
        raise ValidationError("user", f"this token belongs to {subject!r}")
    user = subject if subject is not None else (check_user(named) if named is not None and not compat else None)
    if not hub.ready:
        return error(503, "the fan-out reader is not connected to Kafka yet; retry shortly")
    if settings.max_streams and hub.subscriber_count >= settings.max_streams:
        resp = error(503, f"this worker serves its maximum of {settings.max_streams} event streams; "
                          "retry later or through another worker")
        resp.headers["Retry-After"] = "5"
        return resp
    sub = hub.subscribe(room, compat=compat)
    view.app.metrics.subscriptions.inc()
    if since_ms is not None:
        after = (sub.partition, await hub.reader.offset_at(sub.partition, since_ms) - 1)
    if after is not None:
        view.app.metrics.resumes.inc()
    session = None
    try:
        if after is not None and after[0] != sub.partition:
            raise ValidationError("last_event_id", f"{token!r} does not belong to room {room!r}")
        async with sse_response(request, headers={"X-Accel-Buffering": "no"},
                                response_cls=ChatEventStream) as resp:
            session = view.app.sessions.start_session(room, user)
            await hub.stream(sub, after[1] if after is not None else None, resp.write,
                             request.transport, resp.headers.get("Transfer-Encoding") == "chunked")
        return resp
    except asyncio.CancelledError:
        if sub.overflowed:
            log.info("disconnected a slow subscriber of room %r (buffer of %d full)",
                     room, settings.subscriber_buffer)
        raise
    finally:
        hub.unsubscribe(sub)
        if session is not None:
            view.app.sessions.end_session(session)


@blueprint.route("/api/rooms/{room}/events", name="room_events")
class RoomEvents(KchatView):
    async def get(self, request: web.Request, room: str) -> web.StreamResponse:
        return await stream_events(self, request, check_room(room), compat=False)


@blueprint.route("/sse/connect", name="seed_events")
class SeedEvents(KchatView):
    """The seed's subscribe server: every message of the default room as event "test"."""

    async def get(self, request: web.Request) -> web.StreamResponse:
        return await stream_events(self, request, self.settings.default_room, compat=True)


# -- rooms: directory, trending, presence -------------------------------------------------
@blueprint.route("/api/rooms", name="rooms")
class Rooms(KchatView):
    async def get(self, request: web.Request) -> web.Response:
        found = auth.token(request, self.settings.jwt_secret)
        if _local_scope(request):
            return fast_json(peers.local_rooms(self.app, found))
        return fast_json({"rooms": auth.visible(found, await peers.directory(self.app, now_ms()))})


@blueprint.route("/api/rooms/trending", name="trending")
class Trending(KchatView):
    async def get(self, request: web.Request) -> web.Response:
        found = auth.token(request, self.settings.jwt_secret)
        listed = auth.visible(found, await peers.directory(self.app, now_ms()))
        return fast_json({"window_minutes": rooms.TRENDING_WINDOWS, "rooms": rooms.trending(listed)})


@blueprint.route("/api/rooms/{room}/presence", name="room_presence")
class RoomPresence(KchatView):
    async def get(self, request: web.Request, room: str) -> web.Response:
        check_room(room)
        auth.check_room(auth.token(request, self.settings.jwt_secret), room)
        if _local_scope(request):
            return fast_json({"room": room, **peers.local_presence(self.app, room)})
        return fast_json({"room": room, **await peers.room_presence(self.app, room)})


@blueprint.route("/api/rooms/{room}/keys/{msg_id}", name="room_key")
class RoomKey(KchatView):
    """Between workers: where the message with this keyed id is stored (404 if not within the retention)."""

    async def get(self, request: web.Request, room: str, msg_id: str) -> web.Response:
        check_room(room)
        auth.check_room(auth.token(request, self.settings.jwt_secret), room)
        if not KEYED_ID.fullmatch(msg_id):
            raise ValidationError("msg_id", "is not the id of a message published with an Idempotency-Key")
        local = _local_scope(request)
        found = peers.local_key(self.app, room, msg_id) if local else await peers.room_key(self.app, room, msg_id)
        if found.get("offset") is None and not local:  # between workers "none" is an answer, not an error
            return error(404, f"no message with id {msg_id!r} in room {room!r} within the retention")
        return web.json_response({"room": room, "id": msg_id, **found})


# -- read positions and unread counts ----------------------------------------------------
@blueprint.route("/api/rooms/{room}/read", name="room_read")
class RoomRead(KchatView):
    async def put(self, request: web.Request, room: str) -> web.Response:
        check_room(room)
        body = await json_object(request, ("user", "event_id"))
        user = check_user(body["user"])
        found = auth.token(request, self.settings.jwt_secret)
        check_author(found, user, "mark read for")
        auth.check_room(found, room)
        if not isinstance(body["event_id"], str):
            raise ValidationError("event_id", "must be an event id (a string)")
        offset = room_event(self, room, body["event_id"], "event_id", status=422)
        await unread.mark_read(self.app, user, room, offset)
        return web.Response(status=204)


@blueprint.route("/api/rooms/{room}/count", name="room_count")
class RoomCount(KchatView):
    """How many messages the room has after an event (all of them without `after`)."""

    async def get(self, request: web.Request, room: str) -> web.Response:
        check_room(room)
        auth.check_room(auth.token(request, self.settings.jwt_secret), room)
        after = room_event(self, room, request.query.get("after"), "after")
        after = -1 if after is None else after
        if _local_scope(request):
            return fast_json(await scrollback.local_count_after(self.app, room, after))
        return fast_json(await scrollback.count_after(self.app, room, after))


@blueprint.route("/api/users/{user}/unread", name="user_unread")
class UserUnread(KchatView):
    async def get(self, request: web.Request, user: str) -> web.Response:
        check_user(user)
        found = auth.token(request, self.settings.jwt_secret)
        if found is not None and not found.peer:
            check_author(found, user, "read the unread counts of")
        if _local_scope(request):
            return fast_json(await peers.local_positions(self.app, user))
        return fast_json(await unread.unread(self.app, user, found))


# -- per-user counts ------------------------------------------------------------------
def _local_scope(request: web.Request) -> bool:
    scope = request.query.get("scope")
    if scope is not None and scope != "local":
        raise ValidationError("scope", "must be 'local' or absent")
    return scope == "local"  # asked by another worker: this worker's share only


@blueprint.route("/stats/users", name="user_stats")
class UserStats(KchatView):
    async def get(self, request: web.Request) -> web.Response:
        if _local_scope(request):
            return fast_json({"users": self.app.counts.snapshot()})
        return web.Response(body=await peers.all_counts_json(self.app), content_type="application/json")


@blueprint.route("/stats/users/{user}", name="one_user_stats")
class OneUserStats(KchatView):
    async def get(self, request: web.Request, user: str) -> web.Response:
        if _local_scope(request):
            count = peers.local_count(self.app, user)
        else:
            count = await peers.user_count(self.app, user)
        return web.json_response({"user": user, "count": count})


# -- health ----------------------------------------------------------------------------
@blueprint.route("/healthz", name="healthz")
class Health(KchatView):
    async def get(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})


@blueprint.route("/readyz", name="readyz")
class Ready(KchatView):
    async def get(self, request: web.Request) -> web.Response:
        checks = self.app.readiness()
        return web.json_response({"ready": all(checks.values()), **checks},
                                 status=200 if all(checks.values()) else 503)
