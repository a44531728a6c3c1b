"""HTTP: thin views over the Publisher, the Hub and the counts table."""
from __future__ import annotations

import asyncio
import functools
import json
import logging
import time

import orjson
from aiohttp import ClientError, ClientTimeout, web
from aiohttp_sse import EventSourceResponse, sse_response
from faust.web import View

from .app import app, hub, local_counts, publisher, ready, settings, user_counts
from .auth import AuthError, check_author, token_subject
from .kafka_io import KafkaUnavailable
from .limits import RateLimiter
from .metrics import FAILED, PUBLISH_LATENCY, REFUSED, RESUMES, STORED, SUBSCRIPTIONS
from .models import ValidationError, check_room, message_json, new_message, parse_compat_body, parse_event_id

log = logging.getLogger(__name__)
MAX_HISTORY = 500
rate_limiter = RateLimiter(settings.rate_limit, settings.rate_burst)


class TooManyRequests(Exception):
    def __init__(self, retry_after: int) -> None:
        super().__init__(retry_after)
        self.retry_after = retry_after


def fast_json(data, status: int = 200) -> web.Response:
    """For the big and the frequent bodies (counts, history, stored messages): orjson is several
    times faster than json. Error bodies stay on json, which also copes with lone surrogates
    echoed from bad input."""
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def error(status: int, message: str, **extra) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


@web.middleware
async def json_errors(request: web.Request, handler):
    """Every refusal, also aiohttp's own (404, 405, 413), answers with a JSON body."""
    try:
        return await handler(request)
    except ValidationError as exc:
        return error(400, exc.message, field=exc.field)
    except AuthError as exc:
        resp = error(exc.status, exc.message)
        if exc.status == 401:
            resp.headers["WWW-Authenticate"] = 'Bearer realm="kchat"'
        return resp
    except TooManyRequests as exc:
        resp = error(429, f"too many messages; retry in {exc.retry_after}s")
        resp.headers["Retry-After"] = str(exc.retry_after)
        return resp
    except KafkaUnavailable as exc:
        return error(503, str(exc))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        reason = exc.text if exc.status == 413 else exc.reason
        return error(exc.status, reason or "error")


async def close_streams(_web_app: web.Application) -> None:
    # Without this, aiohttp waits up to 60 s per open event stream before it stops.
    hub.close_all()


app.web.web_app.middlewares.append(json_errors)
app.web.web_app.on_shutdown.append(close_streams)
# An idle event stream only notices a vanished client when it next writes; with handler
# cancellation aiohttp cancels the handler as soon as the connection drops, so the
# subscriber is released at once. Faust builds its runner without the option: replace it.
app.web._runner = web.AppRunner(app.web.web_app, access_log=None, handler_cancellation=True)


async def read_text_body(request: web.Request) -> str:
    raw = await request.read()  # aiohttp refuses bodies above client_max_size with 413
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ValidationError("body", "is not valid UTF-8") from None


async def store(request: web.Request, room: str, user, text) -> dict:
    """Publish and wait for the brokers' acknowledgement; raises before anything is stored on bad input."""
    msg = new_message(room, user, text, settings.max_text)
    check_author(token_subject(request, settings.jwt_secret), msg.user)
    wait = rate_limiter.retry_after(msg.user)
    if wait:
        raise TooManyRequests(wait)
    began = time.perf_counter()
    meta = await publisher.publish(room, msg.dumps())
    PUBLISH_LATENCY.observe(time.perf_counter() - began)
    return message_json(msg, meta.partition, meta.offset)


def counts_publish(handler):
    """Counts a publish request's outcome, whichever way the handler ends."""

    @functools.wraps(handler)
    async def wrapper(self, request, **kwargs):
        outcome = REFUSED
        try:
            response = await handler(self, request, **kwargs)
            if response.status < 400:
                outcome = STORED
            return response
        except KafkaUnavailable:
            outcome = FAILED
            raise
        finally:
            outcome.inc()

    return wrapper


# -- publish -------------------------------------------------------------------------
@app.page("/api/rooms/{room}/messages")
class RoomMessages(View):
    @counts_publish
    async def post(self, request: web.Request, room: str) -> web.Response:
        check_room(room)
        if request.content_type != "application/json":
            return error(415, "Content-Type must be application/json")
        try:
            body = json.loads(await read_text_body(request))
        except json.JSONDecodeError as exc:
            return error(400, f"body is not valid JSON: {exc.msg} at position {exc.pos}")
        if not isinstance(body, dict):
            return error(400, 'body must be a JSON object {"user": ..., "text": ...}')
        unknown = sorted(set(body) - {"user", "text"})
        if unknown:
            return error(400, f"unknown field(s): {', '.join(unknown)}")
        for field in ("user", "text"):
            if field not in body:
                raise ValidationError(field, "is required")
        stored = await store(request, room, body["user"], body["text"])
        return fast_json(stored, status=201)

    async def get(self, request: web.Request, room: str) -> web.Response:
        check_room(room)
        token_subject(request, settings.jwt_secret)
        raw = request.query.get("limit", "50")
        try:
            limit = int(raw)
        except ValueError:
            limit = 0
        if not 1 <= limit <= MAX_HISTORY:
            raise ValidationError("limit", f"must be a whole number from 1 to {MAX_HISTORY}")
        messages, resume_from = await hub.recent(room, limit)
        return fast_json({"room": room, "messages": messages, "last_event_id": resume_from})


@app.page("/api/topics/{topic}")
class SeedPublish(View):
    """The seed's publish server: text/plain "<name>: <text>" to the chatroom topic."""

    @counts_publish
    async def post(self, request: web.Request, topic: str) -> web.Response:
        if topic != settings.topic:
            return error(404, f"unknown topic {topic!r}; only {settings.topic!r} exists")
        if request.content_type not in ("text/plain", "application/octet-stream"):
            return error(415, "Content-Type must be text/plain")
        user, text = parse_compat_body(await read_text_body(request))
        stored = await store(request, settings.default_room, user, text)
        return web.Response(status=200, headers={"X-Kchat-Event-Id": stored["event_id"]})


@app.page("/api/system/echo")
class Echo(View):
    async def get(self, request: web.Request) -> web.Response:
        return web.Response(text="I'm working...")


# -- subscribe ------------------------------------------------------------------------
class ChatEventStream(EventSourceResponse):
    """aiohttp-sse's response without its ping task: with 10,000 streams on a worker, a task and
    a timer each add up. The hub sends keep-alives to every idle stream from one timer."""

    async def _ping(self) -> None:
        return


async def stream_events(request: web.Request, room: str, compat: bool) -> web.StreamResponse:
    token = request.headers.get("Last-Event-ID") or request.query.get("last_event_id")
    after = parse_event_id(token) if token else None
    token_subject(request, settings.jwt_secret)
    if not hub.ready:
        return error(503, "the fan-out reader is not connected to Kafka yet; retry shortly")
    if settings.max_streams and hub.subscriber_count >= settings.max_streams:
        resp = error(503, f"this worker serves its maximum of {settings.max_streams} event streams; "
                          "retry later or through another worker")
        resp.headers["Retry-After"] = "5"
        return resp
    sub = hub.subscribe(room, compat=compat)
    SUBSCRIPTIONS.inc()
    if after is not None:
        RESUMES.inc()
    try:
        if after is not None and after[0] != sub.partition:
            raise ValidationError("last_event_id", f"{token!r} does not belong to room {room!r}")
        async with sse_response(request, headers={"X-Accel-Buffering": "no"},
                                response_cls=ChatEventStream) as resp:
            if after is not None:
                async for frame in hub.catch_up(sub, after[1]):
                    await resp.write(frame)
            # From here on the hub may write live frames to the connection itself.
            sub.attach(request.transport, resp.headers.get("Transfer-Encoding") == "chunked")
            async for frame in sub.frames():
                await resp.write(frame)
        return resp
    except asyncio.CancelledError:
        if sub.overflowed:
            log.info("disconnected a slow subscriber of room %r (buffer of %d full)",
                     room, settings.subscriber_buffer)
        raise
    finally:
        hub.unsubscribe(sub)


@app.page("/api/rooms/{room}/events")
class RoomEvents(View):
    async def get(self, request: web.Request, room: str) -> web.StreamResponse:
        return await stream_events(request, check_room(room), compat=False)


@app.page("/sse/connect")
class SeedEvents(View):
    """The seed's subscribe server: every message of the default room as event "test"."""

    async def get(self, request: web.Request) -> web.StreamResponse:
        return await stream_events(request, settings.default_room, compat=True)


# -- per-user counts ------------------------------------------------------------------
USERS_HEAD = b'{"users":{'


async def gather_counts_json() -> bytes:
    """Every worker's counts as one JSON object {"users": {...}}.

    Each user is counted by exactly one worker, the one holding its partition, so the objects
    the workers send are joined as they come: decoding 100k counts from the others only to
    encode them again was most of the cost of a request.
    """
    # The snapshot covers only the partitions this worker holds actively: no double counting.
    objects = [orjson.dumps(local_counts.snapshot())]
    me = str(app.conf.canonical_url).rstrip("/")
    others = [url.rstrip("/") for url, parts in app.router.table_metadata(user_counts.name).items()
              if url.rstrip("/") != me and any(parts.values())]

    async def fetch(url: str) -> bytes:
        try:
            async with app.http_client.get(f"{url}/stats/users", params={"scope": "local"},
                                           timeout=ClientTimeout(total=5)) as r:
                if r.status != 200:
                    raise KafkaUnavailable(f"worker {url} answered {r.status} for its counts")
                body = await r.read()
        except (ClientError, asyncio.TimeoutError) as exc:
            raise KafkaUnavailable(f"worker {url} did not give its counts ({exc.__class__.__name__})") from None
        if not (body.startswith(USERS_HEAD) and body.endswith(b"}}")):
            raise KafkaUnavailable(f"worker {url} gave its counts in a form this worker does not know")
        return body[len(USERS_HEAD) - 1:-1]

    objects += await asyncio.gather(*(fetch(u) for u in others))
    return USERS_HEAD + b",".join(o[1:-1] for o in objects if len(o) > 2) + b"}}"


@app.page("/stats/users")
class UserStats(View):
    async def get(self, request: web.Request) -> web.Response:
        scope = request.query.get("scope")
        if scope == "local":  # asked by another worker
            return fast_json({"users": local_counts.snapshot()})
        if scope is not None:
            raise ValidationError("scope", "must be 'local' or absent")
        return web.Response(body=await gather_counts_json(), content_type="application/json")


@app.page("/stats/users/{user}")
class OneUserStats(View):
    async def get(self, request: web.Request, user: str) -> web.Response:
        counts = orjson.loads(await gather_counts_json())["users"]
        return web.json_response({"user": user, "count": counts.get(user, 0)})


# -- health ----------------------------------------------------------------------------
@app.page("/healthz")
class Health(View):
    async def get(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})


@app.page("/readyz")
class Ready(View):
    async def get(self, request: web.Request) -> web.Response:
        checks = ready()
        return web.json_response({"ready": all(checks.values()), **checks},
                                 status=200 if all(checks.values()) else 503)
