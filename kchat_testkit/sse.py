"""The one SSE test client: a subscriber that records every event and every (re)connect, and resumes.

    sub = await Subscriber(url, room).start()          # waits for the first stream (200)
    ... sub.events / sub.messages / await sub.wait_for(n)
    await sub.stop()

It runs in the background (an asyncio task). Every event is recorded with the time it arrived and its
resume token; every connect attempt with the Last-Event-ID it sent and its HTTP status or error. With
reconnect=True a stream that ends or breaks is reopened (on resume_url, default the same worker) with
Last-Event-ID, as a browser's EventSource does; with reconnect=False the stream ending ends the subscriber,
and stop() then start() resumes by hand. compat=True follows the seed's stream (GET /sse/connect, event
`test`, data "<name>: <text>") instead of a room's. Malformed events go to `problems`, never to `events`.

Many subscribers can share one httpx.AsyncClient (pass client=; give it Limits(max_connections=None)).
"""
from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
from httpx_sse import SSEError, aconnect_sse

from kchat_faust.models import ValidationError, parse_event_id


@dataclass
class Event:
    t: float  # time.monotonic() when it arrived
    id: str  # the SSE id: the resume token "partition:offset"
    partition: int
    offset: int
    user: str
    text: str
    data: dict | None = None  # the message JSON (native streams)


@dataclass
class Connect:
    t: float
    url: str
    last_event_id: str | None  # the Last-Event-ID it sent
    status: int | None = None  # the HTTP status; None when no answer came
    error: str = ""  # why the attempt failed, or how its stream ended
    t_end: float | None = None


@dataclass
class Subscriber:
    url: str  # the worker's base URL
    room: str | None = None  # None with compat=True
    compat: bool = False
    reconnect: bool = False
    resume_url: str | None = None  # where to reconnect after a drop (default: url)
    name: str = ""
    retry_delay: float = 0.3
    read_timeout: float | None = None  # seconds without a byte (keep-alives count) before the stream is dead
    client: httpx.AsyncClient | None = None
    on_event: Callable[[Event], None] | None = None
    keep: bool = True  # False: do not keep events (on_event sees them), for thousands of streams
    events: list[Event] = field(default_factory=list)
    connects: list[Connect] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    last_id: str | None = None
    count: int = 0

    def __post_init__(self) -> None:
        self.name = self.name or f"{'compat' if self.compat else self.room}@{self.url}"
        self.connected = asyncio.Event()
        self.task: asyncio.Task | None = None

    @property
    def path(self) -> str:
        return "/sse/connect" if self.compat else f"/api/rooms/{self.room}/events"

    @property
    def messages(self) -> list[dict]:
        """The message JSON of every native event, in arrival order."""
        return [e.data for e in self.events]

    @property
    def streams(self) -> list[Connect]:
        """The connects that opened a stream (200)."""
        return [c for c in self.connects if c.status == 200]

    @property
    def drops(self) -> list[str]:
        """Why each failed attempt or stream ended, in order."""
        return [c.error for c in self.connects if c.error]

    @property
    def ended(self) -> bool:
        return self.task is not None and self.task.done()

    async def start(self, wait: bool = True, timeout: float = 60.0) -> "Subscriber":
        """Start (or, after stop(), resume from last_id); wait=True returns once a stream is open.

        The default timeout leaves room for a machine that stalls for tens of seconds."""
        assert self.task is None or self.task.done(), "already running"
        self.connected.clear()
        self.task = asyncio.create_task(self._run(), name=f"sse {self.name}")
        if wait:
            waiter = asyncio.ensure_future(self.connected.wait())
            await asyncio.wait([waiter, self.task], timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            if not self.connected.is_set():
                waiter.cancel()
                if self.task.done():
                    self.task.result()
                last = self.connects[-1] if self.connects else None
                raise AssertionError(f"{self.name}: no stream within {timeout}s (last attempt: {last})")
        return self

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except (asyncio.CancelledError, httpx.HTTPError, AssertionError):
                pass

    async def wait_for(self, n: int, timeout: float = 60.0) -> list[dict]:
        """Until n events have arrived; raises if the stream ended first, or on a malformed event."""
        deadline = time.monotonic() + timeout
        while self.count < n:
            self._raise_problems()
            if self.ended:
                self.task.result()  # surfaces the stream's error
                raise AssertionError(f"{self.name}: stream ended after {self.count} of {n} events "
                                     f"({self.connects[-1] if self.connects else 'never connected'})")
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name}: got {self.count} of {n} events in {timeout}s")
            await asyncio.sleep(0.05)
        self._raise_problems()
        return self.messages

    def _raise_problems(self) -> None:
        if self.problems:
            raise AssertionError(f"{self.name}: {len(self.problems)} malformed event(s): {self.problems[:3]}")

    # -- the stream --------------------------------------------------------------------------------------------
    async def _run(self) -> None:
        own = self.client is None
        client = self.client or httpx.AsyncClient(timeout=httpx.Timeout(10, read=self.read_timeout))
        try:
            while True:
                await self._one_stream(client)
                if not self.reconnect:
                    return
                await asyncio.sleep(self.retry_delay)
        finally:
            if own:
                await client.aclose()

    async def _one_stream(self, client: httpx.AsyncClient) -> None:
        url = self.resume_url if (self.resume_url and self.streams) else self.url
        headers = {"Last-Event-ID": self.last_id} if self.last_id else {}
        c = Connect(time.monotonic(), url, self.last_id)
        self.connects.append(c)
        try:
            async with aconnect_sse(client, "GET", url + self.path, headers=headers,
                                    timeout=httpx.Timeout(10, read=self.read_timeout)) as source:
                c.status = source.response.status_code
                if c.status != 200:
                    body = (await source.response.aread()).decode("utf-8", "replace")
                    c.error = f"HTTP {c.status}: {body[:200]}"
                    if not self.reconnect:
                        raise AssertionError(f"{self.name}: {c.error}")
                    return
                self.connected.set()
                async for sse in source.aiter_sse():
                    self._take(sse.event, sse.data, sse.id)
                c.error = "stream ended"
        except (httpx.HTTPError, SSEError) as exc:
            c.error = f"{exc.__class__.__name__}: {exc}"[:200]
            if not self.reconnect:
                raise
        finally:
            c.t_end = time.monotonic()

    def _take(self, event: str, data: str, id_: str) -> None:
        now = time.monotonic()
        try:
            partition, offset = parse_event_id(id_ or "")
        except ValidationError:
            self.problems.append(f"event without a valid id: {event!r} id={id_!r} data={data[:100]!r}")
            return
        msg = None
        if self.compat:
            user, sep, text = data.partition(": ")
            if event != "test" or not sep:
                self.problems.append(f"compat event {event!r} id {id_} data {data[:100]!r}")
                return
        else:
            try:
                msg = json.loads(data)
                user, text = msg["user"], msg["text"]
                ok = event == "message" and msg["event_id"] == id_ and (msg["partition"], msg["offset"]) == (
                    partition, offset)
            except (ValueError, KeyError, TypeError) as exc:
                self.problems.append(f"bad message data (id {id_}): {exc!r} {data[:100]!r}")
                return
            if not ok:
                self.problems.append(f"event {event!r} id {id_} does not match its data {data[:100]!r}")
                return
        e = Event(now, id_, partition, offset, user, text, msg)
        self.count += 1
        self.last_id = id_
        if self.keep:
            self.events.append(e)
        if self.on_event is not None:
            self.on_event(e)
