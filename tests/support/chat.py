"""Test helpers that talk to a worker over HTTP the way clients do."""
from __future__ import annotations

import asyncio
import json
import uuid

import httpx
from httpx_sse import aconnect_sse


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def post(client: httpx.AsyncClient, base: str, room: str, user: str, text: str) -> dict:
    r = await client.post(f"{base}/api/rooms/{room}/messages", json={"user": user, "text": text})
    assert r.status_code == 201, r.text
    return r.json()


class Listener:
    """An SSE subscriber running in the background, collecting messages; can drop and resume."""

    def __init__(self, base: str, room: str) -> None:
        self.base, self.room = base, room
        self.messages: list[dict] = []
        self.last_id: str | None = None
        self._task: asyncio.Task | None = None
        self._connected = asyncio.Event()

    async def start(self) -> "Listener":
        self._connected.clear()
        self._task = asyncio.create_task(self._run())
        await asyncio.wait_for(self._connected.wait(), 15)
        return self

    async def _run(self) -> None:
        headers = {"Last-Event-ID": self.last_id} if self.last_id else {}
        async with httpx.AsyncClient(timeout=httpx.Timeout(10, read=None)) as client:
            async with aconnect_sse(client, "GET", f"{self.base}/api/rooms/{self.room}/events",
                                    headers=headers) as source:
                assert source.response.status_code == 200, await source.response.aread()
                self._connected.set()
                async for sse in source.aiter_sse():
                    assert sse.event == "message"
                    try:
                        msg = json.loads(sse.data)
                    except ValueError:
                        raise AssertionError(f"bad event {sse.event!r} {sse.id!r} {sse.data[:300]!r}")
                    assert sse.id == msg["event_id"]
                    self.messages.append(msg)
                    self.last_id = sse.id

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, httpx.HTTPError):
                pass
            self._task = None

    async def wait_for(self, n: int, timeout: float = 30.0) -> list[dict]:
        deadline = asyncio.get_running_loop().time() + timeout
        while len(self.messages) < n:
            if self._task is not None and self._task.done():
                self._task.result()  # surfaces the stream's error
                raise AssertionError(f"stream ended after {len(self.messages)} of {n} messages")
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"got {len(self.messages)} of {n} messages in {timeout}s")
            await asyncio.sleep(0.05)
        return self.messages


async def wait_counts(client: httpx.AsyncClient, base: str, expected: dict[str, int],
                      timeout: float = 30.0) -> dict[str, int]:
    """Poll /stats/users until the given users have the expected counts; return what was seen."""
    deadline = asyncio.get_running_loop().time() + timeout
    seen: dict[str, int] = {}
    while asyncio.get_running_loop().time() < deadline:
        r = await client.get(f"{base}/stats/users")
        if r.status_code == 200:
            users = r.json()["users"]
            seen = {u: users.get(u, 0) for u in expected}
            if seen == expected:
                return seen
        await asyncio.sleep(0.3)
    return seen
