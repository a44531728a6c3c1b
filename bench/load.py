#!/usr/bin/env python3
"""Load-generator processes for bench/run.py; each runs apart from the service and stops by itself.

    python bench/load.py MODE CONFIG_JSON

MODE
  post      closed loop: `concurrency` keep-alive connections, each sends a request as soon as the last
            one was answered, for warmup + duration seconds; latencies of the requests finished in
            the measured window
  rate      open loop: `rate` POSTs a second for `duration` seconds over a pool of connections; each text
            carries its message number and its *scheduled* wall-clock send time (no coordinated omission)
  subs      `n` SSE subscribers (kchat_testkit.sse's); for every event whose text was written by `rate` (or
            the fan-out probe) the latency (receive wall clock - scheduled send wall clock); prints READY once
            all are connected, stops on a "stop" line on stdin
  aiokafka  aiokafka producer (acks=all, idempotent, linger 0 ms: the service's Publisher settings),
            `concurrency` tasks each awaiting send_and_wait: the ceiling of the service's publish path
  produce   `n` records straight into chatroom in the service's own format (one distinct user each)

Results: a JSON object in cfg["out"]; latency samples (seconds, float64) in cfg["lat"] (and the message
numbers of `subs` samples in cfg["seq"]). The HTTP client is a minimal HTTP/1.1 keep-alive client on
asyncio protocols (no aiohttp client), so the load side costs little CPU; its CPU share is reported.
"""
from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import time
import uuid
from array import array
from datetime import datetime, timezone

import httpx

from kchat_testkit.procs import cpu_seconds, proc_cpu, raise_nofile
from kchat_testkit.sse import Event, Subscriber

_CL = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)", re.I)
# The marker the `rate` mode and the fan-out probe put at the start of a text: E<seq> <wall time>
_MARK = re.compile(r"E(\d+) (\d+\.\d+) ")


def pad_text(head: str, size: int) -> str:
    filler = "lorem ipsum dolor sit amet consectetur adipiscing elit "
    body = head + filler * (size // len(filler) + 1)
    return body[:size]


# -- a minimal HTTP/1.1 keep-alive client ---------------------------------------------------------
class HttpConn(asyncio.Protocol):
    """One connection; one request at a time; responses must carry Content-Length (ours all do)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future | None = None
        self.lost = False

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.waiter is None:
            return
        i = self.buf.find(b"\r\n\r\n")
        if i < 0:
            return
        head = bytes(self.buf[:i])
        m = _CL.search(head)
        if m is None:
            self.waiter.set_exception(RuntimeError(f"response without Content-Length: {head[:200]!r}"))
            self.waiter = None
            return
        end = i + 4 + int(m.group(1))
        if len(self.buf) < end:
            return
        status = int(head[9:12])
        body = bytes(self.buf[i + 4:end])
        del self.buf[:end]
        w, self.waiter = self.waiter, None
        w.set_result((status, body))

    def connection_lost(self, exc) -> None:
        self.lost = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("connection lost"))
            self.waiter = None

    async def request(self, data: bytes) -> tuple[int, bytes]:
        if self.lost:
            raise ConnectionError("connection lost")
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return await self.waiter


async def connect(port: int) -> HttpConn:
    _, proto = await asyncio.get_running_loop().create_connection(HttpConn, "127.0.0.1", port)
    return proto


def request_bytes(method: str, port: int, path: str, body: bytes = b"", ctype: str | None = None) -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
    if ctype:
        head += f"Content-Type: {ctype}\r\n"
    if body or method == "POST":
        head += f"Content-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


def publish_request(kind: str, port: int, room: str, user: str, text: str) -> bytes:
    if kind == "native":
        body = json.dumps({"user": user, "text": text}).encode()
        return request_bytes("POST", port, f"/api/rooms/{room}/messages", body, "application/json")
    if kind == "seed":
        return request_bytes("POST", port, "/api/topics/chatroom", f"{user}: {text}".encode(), "text/plain")
    raise ValueError(kind)


# -- modes ------------------------------------------------------------------------------------------
async def mode_post(cfg: dict) -> dict:
    """Closed loop. cfg: port, kind (native|seed|get), path (get), room, concurrency, warmup, duration."""
    port, c = cfg["port"], cfg["concurrency"]
    text = pad_text("", cfg.get("text_bytes", 200))
    reqs = []
    for i in range(c):
        if cfg["kind"] == "get":
            reqs.append(request_bytes("GET", port, cfg["path"]))
        else:
            reqs.append(publish_request(cfg["kind"], port, cfg.get("room", "bench"), f"bench-{i}", text))
    conns = [await connect(port) for _ in range(c)]
    lat = array("d")
    statuses: dict[str, int] = {}
    errors: list[str] = []
    max_requests = cfg.get("max_requests") or 1 << 62
    issued = 0
    now = time.perf_counter()
    t_start, t_end = now + cfg["warmup"], now + cfg["warmup"] + cfg["duration"]
    cpu = {}

    async def loop(conn: HttpConn, req: bytes) -> None:
        nonlocal issued
        while True:
            t0 = time.perf_counter()
            if t0 >= t_end or issued >= max_requests:
                return
            if t0 >= t_start:
                issued += 1
            try:
                status, _ = await conn.request(req)
            except (ConnectionError, RuntimeError) as exc:
                errors.append(repr(exc))
                return
            t1 = time.perf_counter()
            if t_start <= t0 and t1 <= t_end:
                lat.append(t1 - t0)
                statuses[str(status)] = statuses.get(str(status), 0) + 1

    async def cpu_marks() -> None:
        await asyncio.sleep(max(0.0, t_start - time.perf_counter()))
        cpu["start"], cpu["server_start"] = cpu_seconds(), proc_cpu(cfg.get("watch_pid"))
        await asyncio.sleep(max(0.0, t_end - time.perf_counter()))
        cpu["end"], cpu["server_end"] = cpu_seconds(), proc_cpu(cfg.get("watch_pid"))

    tasks = [asyncio.ensure_future(loop(conn, req)) for conn, req in zip(conns, reqs)]
    marks = asyncio.ensure_future(cpu_marks())
    bound = cfg["warmup"] + cfg["duration"] + cfg.get("grace", 20)
    done, pending = await asyncio.wait(tasks, timeout=bound)
    for t in pending:
        t.cancel()
    if not marks.done():  # a bounded request count finished early
        cpu["end"], cpu["server_end"] = cpu_seconds(), proc_cpu(cfg.get("watch_pid"))
        marks.cancel()
    window = min(time.perf_counter(), t_end) - t_start
    for conn in conns:
        conn.transport.close()
    ok = sum(v for k, v in statuses.items() if k.startswith("2"))
    server_cpu = cpu.get("server_end", 0.0) - cpu.get("server_start", 0.0)
    return {"completed": len(lat), "ok": ok, "statuses": statuses, "errors": errors[:5],
            "n_errors": len(errors), "unfinished": len(pending), "window_s": window,
            "throughput": ok / window if window > 0 else 0.0,
            "client_cpu": ((cpu.get("end", 0.0) - cpu.get("start", 0.0)) / window) if window > 0 else None,
            "server_cpu": server_cpu / window if window > 0 else None,
            "server_cpu_us_per_req": 1e6 * server_cpu / ok if ok else None,
            "_lat": lat}


async def mode_rate(cfg: dict) -> dict:
    """Open loop. cfg: port, kind, room, rate, duration, pool, text_bytes, drain (s after duration)."""
    port, rate, duration = cfg["port"], cfg["rate"], cfg["duration"]
    size = cfg.get("text_bytes", 200)
    n_total = int(rate * duration)
    queue: asyncio.Queue = asyncio.Queue()
    conns = [await connect(port) for _ in range(cfg.get("pool", 32))]
    lat = array("d")  # POST latency, from the scheduled send time
    lag = array("d")  # how late the load generator itself sent (scheduled -> written)
    statuses: dict[str, int] = {}
    errors: list[str] = []
    wall0 = time.time() + 0.2
    mono0 = time.perf_counter() + 0.2
    hard_end = mono0 + duration + cfg.get("drain", 10)
    sent = 0
    cpu0 = cpu_seconds()

    async def schedule() -> None:
        k = 0
        while k < n_total:
            now = time.perf_counter()
            due = int((now - mono0) * rate) + 1
            while k < min(due, n_total):
                queue.put_nowait(k)
                k += 1
            await asyncio.sleep(max(0.0, mono0 + k / rate - time.perf_counter()))
        for _ in conns:
            queue.put_nowait(None)

    async def sender(conn: HttpConn, i: int) -> None:
        nonlocal sent
        while True:
            k = await queue.get()
            if k is None or time.perf_counter() > hard_end:
                return
            t_sched = k / rate
            text = pad_text(f"E{k} {wall0 + t_sched:.6f} ", size)
            req = publish_request(cfg["kind"], port, cfg["room"], f"bench-{i}", text)
            lag.append(time.perf_counter() - (mono0 + t_sched))
            try:
                status, _ = await conn.request(req)
            except (ConnectionError, RuntimeError) as exc:
                errors.append(repr(exc))
                return
            sent += 1
            lat.append(time.perf_counter() - (mono0 + t_sched))
            statuses[str(status)] = statuses.get(str(status), 0) + 1

    sched = asyncio.ensure_future(schedule())
    tasks = [asyncio.ensure_future(sender(c, i)) for i, c in enumerate(conns)]
    done, pending = await asyncio.wait(tasks, timeout=duration + cfg.get("drain", 10) + 5)
    for t in pending:
        t.cancel()
    sched.cancel()
    elapsed = time.perf_counter() - mono0
    for conn in conns:
        conn.transport.close()
    lag_sorted = sorted(lag)
    ok = sum(v for k, v in statuses.items() if k.startswith("2"))
    return {"scheduled": n_total, "answered": sent, "ok": ok, "statuses": statuses,
            "errors": errors[:5], "n_errors": len(errors), "not_sent": n_total - len(lag),
            "achieved_rate": ok / max(elapsed, duration), "elapsed_s": elapsed,
            "send_lag_p99_ms": 1000 * lag_sorted[int(0.99 * (len(lag_sorted) - 1))] if lag_sorted else None,
            "client_cpu": (cpu_seconds() - cpu0) / elapsed, "_lat": lat}


class SubsShared:
    """What all the subscribers of one process record, for every marked event."""

    def __init__(self) -> None:
        self.lat = array("d")  # from the scheduled send time (load generator's clock)
        self.lat_service = array("d")  # from the service's sent_at (it accepted the POST then)
        self.accepted: dict[int, float] = {}
        self.seq = array("q")
        self.per_sub: dict[int, int] = {}

    def take(self, sub: int, e: Event) -> None:
        now = time.time()
        m = _MARK.match(e.text)
        if m is None:
            return
        seq = int(m.group(1))
        self.lat.append(now - float(m.group(2)))
        self.seq.append(seq)
        accepted = self.accepted.get(seq)
        if accepted is None:  # the service's own sent_at: its wall clock when it accepted the POST (ms)
            accepted = self.accepted[seq] = datetime.fromisoformat(e.data["sent_at"]).timestamp()
        self.lat_service.append(now - accepted)
        self.per_sub[sub] = self.per_sub.get(sub, 0) + 1


async def mode_subs(cfg: dict) -> dict:
    """cfg: port, path (/api/rooms/<room>/events), n, connect_concurrency, max_seconds. The subscribers are
    kchat_testkit's, on one shared connection pool, keeping no events (the marks are recorded as they come)."""
    raise_nofile()
    loop = asyncio.get_running_loop()
    n = cfg["n"]
    room = cfg["path"].split("/")[3]
    shared = SubsShared()
    gate = asyncio.Semaphore(cfg.get("connect_concurrency", 64))
    subs: list[tuple[int, Subscriber]] = []
    failures: list[str] = []
    client = httpx.AsyncClient(limits=httpx.Limits(max_connections=None, max_keepalive_connections=0))

    async def one(k: int) -> None:
        sub = Subscriber(f"http://127.0.0.1:{cfg['port']}", room, client=client, keep=False,
                         on_event=lambda e: shared.take(k, e))
        async with gate:
            try:
                await sub.start(timeout=30)
                subs.append((k, sub))
            except AssertionError as exc:
                failures.append(str(exc)[:200])
                await sub.stop()

    t0 = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(one(k) for k in range(n))), cfg.get("max_seconds", 600))
    connect_s = time.perf_counter() - t0
    print(f"READY {len(subs)} {len(failures)}", flush=True)
    stop = asyncio.Event()

    def on_stdin() -> None:
        line = sys.stdin.readline()
        if not line or line.strip() == "stop":
            stop.set()

    loop.add_reader(sys.stdin.fileno(), on_stdin)
    cpu0, t_ready = cpu_seconds(), time.perf_counter()
    try:
        await asyncio.wait_for(stop.wait(), cfg.get("max_seconds", 600))
    except asyncio.TimeoutError:
        pass
    cpu_share = (cpu_seconds() - cpu0) / max(time.perf_counter() - t_ready, 1e-9)
    disconnects = sum(1 for _k, sub in subs if sub.ended)  # a stream the server closed before we stopped
    await asyncio.gather(*(sub.stop() for _k, sub in subs))
    await client.aclose()
    counts = sorted(shared.per_sub.get(k, 0) for k, _sub in subs)
    return {"connected": len(subs), "failed": len(failures), "failures": failures[:5],
            "connect_s": connect_s, "events": len(shared.lat), "client_cpu": cpu_share, "disconnects": disconnects,
            "per_sub_min": counts[0] if counts else 0, "per_sub_max": counts[-1] if counts else 0,
            "_lat": shared.lat, "_seq": shared.seq, "_lat_service": shared.lat_service}


async def mode_aiokafka(cfg: dict) -> dict:
    """cfg: bootstrap, topic, concurrency, warmup, duration, record_bytes, linger_ms (the Publisher's: 0)."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=cfg["bootstrap"], acks="all", enable_idempotence=True,
                                linger_ms=cfg.get("linger_ms", 0), client_id="bench-aiokafka")
    await producer.start()
    value = b"x" * cfg.get("record_bytes", 200)
    lat = array("d")
    now = time.perf_counter()
    t_start, t_end = now + cfg["warmup"], now + cfg["warmup"] + cfg["duration"]
    cpu = {}

    async def loop(i: int) -> None:
        key = f"room-{i}".encode()
        while True:
            t0 = time.perf_counter()
            if t0 >= t_end:
                return
            await producer.send_and_wait(cfg["topic"], value, key=key)
            t1 = time.perf_counter()
            if t_start <= t0 and t1 <= t_end:
                lat.append(t1 - t0)

    async def cpu_marks() -> None:
        await asyncio.sleep(cfg["warmup"])
        cpu["start"] = cpu_seconds()
        await asyncio.sleep(cfg["duration"])
        cpu["end"] = cpu_seconds()

    marks = asyncio.ensure_future(cpu_marks())
    try:
        await asyncio.wait_for(asyncio.gather(*(loop(i) for i in range(cfg["concurrency"]))),
                               cfg["warmup"] + cfg["duration"] + 30)
    finally:
        await producer.stop()
    await marks
    return {"completed": len(lat), "ok": len(lat), "window_s": cfg["duration"],
            "throughput": len(lat) / cfg["duration"],
            "client_cpu": (cpu["end"] - cpu["start"]) / cfg["duration"], "_lat": lat}


async def mode_produce(cfg: dict) -> dict:
    """cfg: bootstrap, topic, n, user_prefix, rooms. One message per distinct user, keyed by room."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=cfg["bootstrap"], acks="all", enable_idempotence=True,
                                linger_ms=20, max_batch_size=256 * 1024, client_id="bench-produce")
    await producer.start()
    t0 = time.perf_counter()
    sent_at = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
    text = pad_text("", 60)
    futs = []
    try:
        for i in range(cfg["n"]):
            room = f"stats-{i % cfg['rooms']}"
            value = json.dumps({"id": uuid.uuid4().hex, "room": room, "user": f"{cfg['user_prefix']}{i}",
                                "text": text, "sent_at": sent_at}).encode()
            futs.append(await producer.send(cfg["topic"], value, key=room.encode()))
            if len(futs) >= 5000:
                await asyncio.gather(*futs)
                futs.clear()
        await asyncio.gather(*futs)
    finally:
        await producer.stop()
    elapsed = time.perf_counter() - t0
    return {"produced": cfg["n"], "elapsed_s": elapsed, "rate": cfg["n"] / elapsed}


MODES = {"post": mode_post, "rate": mode_rate, "subs": mode_subs, "aiokafka": mode_aiokafka,
         "produce": mode_produce}


def main() -> None:
    mode, cfg = sys.argv[1], json.loads(sys.argv[2])
    result = asyncio.run(asyncio.wait_for(MODES[mode](cfg), cfg.get("max_seconds", 600) + 30))
    lat = result.pop("_lat", None)
    seq = result.pop("_seq", None)
    lat_service = result.pop("_lat_service", None)
    if lat_service is not None and cfg.get("lat_service"):
        with open(cfg["lat_service"], "wb") as f:
            lat_service.tofile(f)
    if lat is not None and cfg.get("lat"):
        with open(cfg["lat"], "wb") as f:
            lat.tofile(f)
    if seq is not None and cfg.get("seq"):
        with open(cfg["seq"], "wb") as f:
            seq.tofile(f)
    result["pid"] = os.getpid()
    with open(cfg["out"], "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
