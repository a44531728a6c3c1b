#!/usr/bin/env python3
"""The baseline: a bare aiohttp app that reads a POST body and answers 200, served the way the worker serves
its own web app (AppRunner with access_log=None and handler cancellation, TCPSite on 127.0.0.1), on the
default asyncio loop.

    python bench/bare.py PORT MAX_SECONDS [uvloop]

Stops by itself after MAX_SECONDS (or on SIGTERM/SIGINT).
"""
from __future__ import annotations

import asyncio
import signal
import sys

from aiohttp import web


async def handle(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(status=200)


async def serve(app: web.Application, port: int, max_seconds: float, on_stop=None) -> None:
    """Serve app on 127.0.0.1:port as the worker serves its own (handler cancellation on), print
    READY, and stop after max_seconds or on SIGTERM/SIGINT, calling on_stop() first if given."""
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=4096).start()
    print("READY", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await asyncio.wait_for(stop.wait(), max_seconds)
    except asyncio.TimeoutError:
        pass
    if on_stop is not None:
        on_stop()
    await runner.cleanup()


async def main(port: int, max_seconds: float) -> None:
    app = web.Application(client_max_size=65536)
    app.router.add_route("POST", "/{tail:.*}", handle)
    app.router.add_route("GET", "/{tail:.*}", handle)
    await serve(app, port, max_seconds)


if __name__ == "__main__":
    if sys.argv[3:] == ["uvloop"]:  # the same loop as workers started with F_LOOP=uvloop
        import uvloop
        uvloop.install()
    asyncio.run(main(int(sys.argv[1]), float(sys.argv[2])))
