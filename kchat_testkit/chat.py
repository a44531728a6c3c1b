"""Talking to a worker over HTTP the way clients do: post, read a page of history, read counts, fresh names."""
from __future__ import annotations

import asyncio
import uuid

import httpx

from .procs import until


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def post(client: httpx.AsyncClient, base: str, room: str, user: str, text: str) -> dict:
    """POST a message; asserts the 201 and returns the stored message."""
    r = await client.post(f"{base}/api/rooms/{room}/messages", json={"user": user, "text": text})
    assert r.status_code == 201, r.text
    return r.json()


async def index_page(client: httpx.AsyncClient, base: str, room: str, timeout: float = 240.0,
                     headers: dict | None = None, **params) -> dict:
    """A history page from the room index: a 503 (the index catching up, the group moving), or a partial page
    read from the log's end while no worker held the index, is asked again until `timeout`."""
    last: list = []

    async def from_the_index() -> dict | None:
        r = await client.get(f"{base}/api/rooms/{room}/messages", params=params, headers=headers)
        assert r.status_code in (200, 503), (r.status_code, r.text)
        last[:] = [r.status_code, r.text]
        return r.json() if r.status_code == 200 and not r.json().get("partial") else None
    return await until(from_the_index, timeout, lambda: f"a page of {room} from the room index through {base} "
                       f"(last answer {last})", interval=1)


async def read_counts(client: httpx.AsyncClient, base: str, users: list[str]) -> dict[str, int] | None:
    """GET /stats/users for these users (0 for a user not counted yet); None if the worker did not answer 200."""
    try:
        r = await client.get(f"{base}/stats/users")
    except httpx.HTTPError:
        return None
    if r.status_code != 200:
        return None
    got = r.json()["users"]
    return {u: got.get(u, 0) for u in users}


async def wait_counts(client: httpx.AsyncClient, base: str, expected: dict[str, int],
                      timeout: float = 60.0) -> dict[str, int]:
    """Poll /stats/users until the given users have the expected counts; return what was seen last.

    Counts pass through Faust agents and a table: the default timeout leaves room for a stalled machine."""
    deadline = asyncio.get_running_loop().time() + timeout
    seen: dict[str, int] = {}
    while asyncio.get_running_loop().time() < deadline:
        seen = await read_counts(client, base, list(expected)) or seen
        if seen == expected:
            return seen
        await asyncio.sleep(0.3)
    return seen
