"""HTTP and SSE access to a kchat-faust worker.

URL building, the mapping of failures to one-line messages and exit codes, and
the resumption of the event stream all live here, so the commands stay thin.
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import quote

import httpx
from httpx_sse import SSEError, aconnect_sse

EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_REFUSED = 4
EXIT_SERVER = 5

BACKOFF_START = 0.5
BACKOFF_MAX = 10.0
# An idle stream still carries keep-alive comments; this much silence means the
# connection is dead even if TCP has not noticed yet.
STREAM_IDLE_TIMEOUT = 60.0
# A pipe of many lines can outrun the server's rate limit; waiting as told is
# better than failing lines, but not forever.
RATE_LIMIT_RETRIES = 5
RATE_LIMIT_MAX_WAIT = 30.0
# A publish whose outcome is unknown (timeout, broken connection, 502/503/504) is sent again with
# the same Idempotency-Key, so that it cannot be stored twice: this many times, backing off.
UNKNOWN_RETRIES = 4


class KchatError(Exception):
    """A failure already phrased for the user, with the exit code it maps to."""

    def __init__(self, message: str, exit_code: int, retry_after: float | None = None,
                 unknown: bool = False):
        super().__init__(message)
        self.exit_code = exit_code
        self.retry_after = retry_after
        # The request may have been carried out: a publish may be stored or not.
        self.unknown = unknown


def _reason(exc: BaseException) -> str:
    # httpx wraps the OS error a few levels deep; its own text ("All connection
    # attempts failed") hides the useful part.
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ConnectionRefusedError):
            return "connection refused"
        if isinstance(seen, socket.gaierror):
            return "unknown host"
        if isinstance(seen, httpx.ConnectTimeout):
            return "connection timed out"
        if isinstance(seen, httpx.RemoteProtocolError):
            return "the connection broke off"
        if isinstance(seen, httpx.ReadTimeout):
            return "no data for too long"
        seen = seen.__cause__ or seen.__context__
    return str(exc) or type(exc).__name__


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return max(0.0, float(response.headers["retry-after"]))
    except (KeyError, ValueError):  # absent, or an HTTP date we do not bother with
        return None


def _http_error(response: httpx.Response) -> KchatError:
    status = response.status_code
    try:
        body = response.json()
        detail = str(body["error"])
        if body.get("field"):  # the server names the input at fault
            detail = f"{body['field']}: {detail}"
    except (ValueError, KeyError, TypeError, AttributeError):
        detail = response.reason_phrase or "no explanation given"
    if status == 429:
        wait = _retry_after(response)
        hint = f"retry in {wait:g}s" if wait is not None else "slow down and retry"
        return KchatError(f"rate limited by the server: {detail} (HTTP 429) — {hint}",
                          EXIT_REFUSED, retry_after=wait if wait is not None else 1.0)
    if 400 <= status < 500:
        return KchatError(f"the server refused the request: {detail} (HTTP {status})",
                          EXIT_REFUSED)
    return KchatError(f"server error: {detail} (HTTP {status}) — try again later, "
                      "or check the worker's log", EXIT_SERVER, unknown=status in (502, 503, 504))


class _Recent:
    """The last few thousand message ids, to drop a message delivered twice."""

    def __init__(self, size: int = 10_000):
        self._ids: OrderedDict[str, None] = OrderedDict()
        self._size = size

    def add(self, msg_id: str | None) -> bool:
        """Remember msg_id; False if it was already there."""
        if not msg_id:
            return True
        if msg_id in self._ids:
            return False
        self._ids[msg_id] = None
        if len(self._ids) > self._size:
            self._ids.popitem(last=False)
        return True


class Client:
    """One HTTP connection pool to one worker; use as `async with Client(...)`."""

    def __init__(self, url: str, timeout: float = 10.0, token: str | None = None):
        self.url = url.rstrip("/")
        self.timeout = timeout
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.AsyncClient(base_url=self.url, timeout=timeout, headers=headers)

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._http.aclose()

    @staticmethod
    def _room_path(room: str, what: str) -> str:
        # Quote everything: a bad room name must reach the server intact so that
        # the server, which owns the rules, can say what is wrong with it.
        return f"/api/rooms/{quote(room, safe='')}/{what}"

    def _transport_error(self, exc: httpx.TransportError) -> KchatError:
        if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
            return KchatError(f"cannot reach {self.url} ({_reason(exc)}) — is the worker "
                              "running? set --url or KCHAT_URL", EXIT_UNREACHABLE)
        if isinstance(exc, httpx.TimeoutException):
            return KchatError(f"no answer from {self.url} within {self.timeout:g}s — the "
                              "worker may be overloaded; retry, or raise --timeout",
                              EXIT_UNREACHABLE, unknown=True)
        return KchatError(f"lost the connection to {self.url} ({_reason(exc)}) — retry",
                          EXIT_UNREACHABLE, unknown=True)

    async def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        return (await self._response(method, path, **kwargs))[0]

    async def _response(self, method: str, path: str, **kwargs: Any) -> tuple[Any, httpx.Response]:
        try:
            response = await self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise self._transport_error(exc) from None
        if not response.is_success:
            raise _http_error(response)
        try:
            return response.json(), response
        except ValueError:
            raise KchatError(f"{self.url} answered {method} {path} with something that is "
                             "not JSON — is --url really a kchat worker?",
                             EXIT_SERVER) from None

    async def send(self, room: str, user: str, text: str, key: str | None = None) -> dict[str, Any]:
        """Publish one message; returns the stored message (partition, offset, ids).

        Each message goes with an Idempotency-Key (a fresh one unless given), so that a
        publish whose outcome is unknown can be sent again without storing it twice; a
        429 is waited out as the server asks.
        """
        headers = {"Idempotency-Key": key or uuid.uuid4().hex}
        rate_limited = unknown = 0
        delay = BACKOFF_START
        while True:
            try:
                body, _ = await self._response("POST", self._room_path(room, "messages"),
                                               json={"user": user, "text": text}, headers=headers)
                return body
            except KchatError as err:
                if err.retry_after is not None and rate_limited < RATE_LIMIT_RETRIES:
                    rate_limited += 1
                    await asyncio.sleep(min(err.retry_after, RATE_LIMIT_MAX_WAIT))
                elif err.unknown and unknown < UNKNOWN_RETRIES:
                    unknown += 1
                    await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                    delay = min(delay * 2, BACKOFF_MAX)
                elif err.unknown:
                    raise KchatError(f"{err}; not confirmed after {unknown + 1} attempts with the same "
                                     f"Idempotency-Key {headers['Idempotency-Key']} — sending it again "
                                     "with that key (send --key) cannot store it twice",
                                     err.exit_code, unknown=True) from None
                else:
                    raise

    async def history(self, room: str, limit: int = 20) -> tuple[list[dict[str, Any]], str | None]:
        """The room's last messages and the event id to resume the stream from after them."""
        body = await self.history_page(room, limit)
        return list(body.get("messages", [])), body.get("last_event_id")

    async def history_page(self, room: str, limit: int = 20, before: str | None = None,
                           since: str | None = None) -> dict[str, Any]:
        """A page of the room's history as the server gives it: "messages" (oldest first), "before"
        (the event id to ask with for the page before; None at the room's start), "last_event_id",
        and "gap" when the log no longer has the room's oldest messages."""
        params: dict[str, Any] = {"limit": limit}
        if before is not None:
            params["before"] = before
        if since is not None:
            params["since"] = since
        return await self._request("GET", self._room_path(room, "messages"), params=params)

    async def rooms(self, trending: bool = False) -> list[dict[str, Any]]:
        body = await self._request("GET", "/api/rooms/trending" if trending else "/api/rooms")
        return list(body.get("rooms", []))

    async def unread(self, user: str) -> dict[str, dict[str, Any]]:
        """room -> {"room", "last_read", "unread", "last_message_at"} for the rooms the user read or posted in."""
        body = await self._request("GET", f"/api/users/{quote(user, safe='')}/unread")
        return {r["room"]: r for r in body.get("rooms", [])}

    async def mark_read(self, room: str, user: str, event_id: str) -> None:
        """Mark the room read up to this event for the user (a position never moves back)."""
        try:
            response = await self._http.put(self._room_path(room, "read"), json={"user": user, "event_id": event_id})
        except httpx.TransportError as exc:
            raise self._transport_error(exc) from None
        if not response.is_success:
            raise _http_error(response)

    async def presence(self, room: str) -> dict[str, Any]:
        return await self._request("GET", self._room_path(room, "presence"))

    async def user_counts(self) -> dict[str, int]:
        body = await self._request("GET", "/stats/users")
        return dict(body.get("users", {}))

    async def user_count(self, user: str) -> int:
        body = await self._request("GET", f"/stats/users/{quote(user, safe='')}")
        return int(body.get("count", 0))

    async def events(
        self,
        room: str,
        since: str | None = None,
        on_reconnect: Callable[[str, float], None] | None = None,
        on_connect: Callable[[bool], None] | None = None,
        user: str | None = None,
        presence: bool = False,
        since_time: str | None = None,
        on_gap: Callable[[dict[str, Any]], None] | None = None,
    ) -> AsyncIterator[dict[str, Any]]:
        """Yield the room's messages as they arrive, forever; with presence, also its joins and
        leaves (dicts with "event": "join" or "leave"). With user, the stream is that user's
        session in the room's presence.

        Resumes after `since` (an event id) if given, or from the first message at or after
        `since_time` (RFC 3339 or epoch milliseconds). `on_gap(info)` is told when the log no
        longer had what came after the resume point (event `gap`). Once connected, a dropped
        stream is reopened with exponential backoff and Last-Event-ID, so the
        caller sees every message once; `on_reconnect(reason, delay)` is told
        before each wait and `on_connect(is_reconnect)` after each (re)connect.
        A failure on the very first connection is raised instead: it usually
        means a wrong URL or room, which retrying will not fix.
        Close it with contextlib.aclosing so the connection is released.
        """
        last_id = since
        recent = _Recent()
        connected_before = False
        delay = BACKOFF_START
        path = self._room_path(room, "events")
        timeout = httpx.Timeout(self.timeout, read=STREAM_IDLE_TIMEOUT)
        while True:
            headers = {"Last-Event-ID": last_id} if last_id else {}
            params = {"user": user} if user else {}
            if since_time is not None and not last_id:
                params["since"] = since_time  # the first connection; later ones resume by id
            wait: float | None = None
            try:
                async with aconnect_sse(self._http, "GET", path, headers=headers, params=params,
                                        timeout=timeout) as source:
                    response = source.response
                    if response.status_code != 200:
                        await response.aread()
                        raise _http_error(response)
                    if on_connect:
                        on_connect(connected_before)
                    connected_before = True
                    delay = BACKOFF_START
                    async for sse in source.aiter_sse():
                        if sse.event == "gap":
                            if sse.id:
                                last_id = sse.id
                            if on_gap:
                                try:
                                    on_gap(json.loads(sse.data))
                                except ValueError:
                                    pass
                            continue
                        if sse.event in ("join", "leave"):
                            if sse.id:
                                last_id = sse.id
                            if presence:
                                try:
                                    yield {**json.loads(sse.data), "event": sse.event}
                                except ValueError:
                                    pass
                            continue
                        if sse.event != "message":
                            continue
                        if sse.id:
                            last_id = sse.id
                        try:
                            msg = json.loads(sse.data)
                        except ValueError:
                            continue
                        if not isinstance(msg, dict):
                            continue
                        if sse.id:
                            msg.setdefault("event_id", sse.id)
                        # Kafka delivers at least once; a message re-sent by a
                        # retrying producer has a new offset but the same id.
                        if recent.add(msg.get("id")):
                            yield msg
                reason = "the server closed the stream"
            except SSEError:
                raise KchatError(f"{self.url} did not answer with an event stream — is "
                                 "--url really a kchat worker?", EXIT_SERVER) from None
            except httpx.TransportError as exc:
                if not connected_before:
                    raise self._transport_error(exc) from None
                reason = _reason(exc)
            except KchatError as err:
                retryable = err.exit_code == EXIT_SERVER or err.retry_after is not None
                if not connected_before or not retryable:
                    raise
                reason, wait = str(err), err.retry_after
            if wait is None:
                # Jitter, so that every client of a restarted worker does not
                # knock at the same instant.
                wait = delay * random.uniform(0.5, 1.0)
                delay = min(delay * 2, BACKOFF_MAX)
            if on_reconnect:
                on_reconnect(reason, wait)
            await asyncio.sleep(wait)
