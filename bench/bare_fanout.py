#!/usr/bin/env python3
"""The end-to-end floor: the chat API with nothing behind it, served the way bare.py serves its baseline.

    python bench/bare_fanout.py PORT MAX_SECONDS WINDOW_MS [uvloop]

POST /api/rooms/{room}/messages takes the same JSON body as a worker and answers 201 with the same
message JSON; GET /api/rooms/{room}/events streams the room as Server-Sent Events in the worker's
frame format. In between there is no Kafka, no validation beyond JSON and no Faust: each POST is
rendered once, and what a room got within WINDOW_MS (0: one turn of the event loop) is written to
each of its streams as one write, as the worker's hub writes each batch it fetched.
What one Python process on this machine does here bounds what any worker could do with the same
load and subscriber processes. Stops by itself after MAX_SECONDS (or on SIGTERM/SIGINT).
"""
from __future__ import annotations

import asyncio
import json
import sys
import uuid
from datetime import datetime, timezone

from aiohttp import web

from bare import serve  # bench/ is on sys.path: this runs as a script beside bare.py

rooms: dict[str, set[asyncio.Transport]] = {}
offsets: dict[str, int] = {}
chunked: dict[asyncio.Transport, bool] = {}
pending: dict[str, list[bytes]] = {}  # room -> frames not yet written
WINDOW = 0.0  # seconds a room's first unwritten frame waits for others to join it


async def publish(request: web.Request) -> web.Response:
    room = request.match_info["room"]
    body = json.loads(await request.read())
    offset = offsets[room] = offsets.get(room, -1) + 1
    msg = {"id": uuid.uuid4().hex, "room": room, "user": body["user"], "text": body["text"],
           "sent_at": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
           "partition": 0, "offset": offset, "event_id": f"0:{offset}"}
    data = json.dumps(msg, ensure_ascii=False, separators=(",", ":"))
    frames = pending.setdefault(room, [])
    if not frames:
        asyncio.get_running_loop().call_later(WINDOW, flush, room)
    frames.append(f"id: 0:{offset}\nevent: message\ndata: {data}\n\n".encode())
    return web.Response(body=data.encode(), status=201, content_type="application/json")


def flush(room: str) -> None:
    """Everything posted to the room in one turn of the loop goes to each stream as one write."""
    payload = b"".join(pending.pop(room))
    framed = b"%x\r\n%b\r\n" % (len(payload), payload)  # HTTP/1.1 streams are chunked, as the worker's
    for transport in list(rooms.get(room, ())):
        if not transport.is_closing():
            transport.write(framed if chunked.get(transport) else payload)


async def events(request: web.Request) -> web.StreamResponse:
    room = request.match_info["room"]
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await resp.prepare(request)
    chunked[request.transport] = resp.headers.get("Transfer-Encoding") == "chunked"
    subs = rooms.setdefault(room, set())
    subs.add(request.transport)
    try:
        await asyncio.Event().wait()  # until the client goes (handler cancellation)
    finally:
        subs.discard(request.transport)
        chunked.pop(request.transport, None)
    return resp


def close_streams() -> None:
    for subs in rooms.values():
        for transport in subs:
            transport.close()


async def main(port: int, max_seconds: float) -> None:
    app = web.Application(client_max_size=65536)
    app.router.add_post("/api/rooms/{room}/messages", publish)
    app.router.add_get("/api/rooms/{room}/events", events)
    await serve(app, port, max_seconds, on_stop=close_streams)


if __name__ == "__main__":
    WINDOW = float(sys.argv[3]) / 1000
    if sys.argv[4:] == ["uvloop"]:
        import uvloop
        uvloop.install()
    asyncio.run(main(int(sys.argv[1]), float(sys.argv[2])))
