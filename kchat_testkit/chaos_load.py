"""The chaos run's load, wherever it points: subscribers that resume with Last-Event-ID, posts through the
seed's endpoint paced to Config.rate, then waiting for delivery and for the counts to settle.

The local run (kchat_testkit/chaos.py) points it at two workers it started; the Kubernetes tests (k8s/tests/)
at a deployment's NodePorts. A Phase is the clock of one load: the disruption running beside it
(kchat_testkit/chaos_disrupt.py) reads from it whether posts are still going out.
"""
from __future__ import annotations

import asyncio
import random
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import aiohttp
import httpx

from kchat_faust.models import ValidationError, parse_event_id

from .chaos_report import ROOM, TOPIC, ChaosEvent, Config, Post, Report
from .sse import Subscriber


def stderr_say(text: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


@dataclass
class Phase:
    """One load under one disruption: its start, whether posting is over, and the log of what was done."""
    report: Report
    rng: random.Random
    say: Callable[[str], None] = stderr_say
    t0: float = field(default_factory=time.monotonic)
    posting_done: asyncio.Event = field(default_factory=asyncio.Event)

    def rel(self) -> float:
        return time.monotonic() - self.t0

    def log(self, what: str) -> None:
        """A line of the report's chaos log (seconds since posting began), shown as it happens too."""
        self.report.chaos.append(ChaosEvent(self.rel(), what))
        self.say(what)


@dataclass
class Stream:
    """A subscriber to open on base: the room's native stream, or the seed-compatible one (compat)."""
    base: str
    compat: bool
    name: str


async def send_post(session: aiohttp.ClientSession, p: Post, base: str, timeout: aiohttp.ClientTimeout) -> None:
    """POST p through the seed's endpoint of base and record the answer in p."""
    p.t_sent = time.monotonic()
    try:
        async with session.post(f"{base}/api/topics/{TOPIC}", data=f"{p.user}: {p.text}".encode(), timeout=timeout,
                                headers={"Content-Type": "text/plain; charset=utf-8"}) as r:
            body = await r.read()
            p.status = r.status
            p.event_id = r.headers.get("X-Kchat-Event-Id")
            if r.status == 200:
                try:
                    p.offset = parse_event_id(p.event_id or "")[1]
                except ValidationError:
                    pass
            else:
                p.error = body.decode("utf-8", "replace")
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        p.error = f"{exc.__class__.__name__}: {exc}"
    p.t_done = time.monotonic()


class Load:
    """Config.posts posts alternating over post_urls (several users round-robin, names unique to the run), at
    Config.concurrency, paced to Config.rate/s (a backlog from a stall goes out as fast as the concurrency
    allows), none after Config.duration_limit; the streams subscribed first; the counts asked of count_urls."""

    def __init__(self, cfg: Config, report: Report, post_urls: list[str], streams: list[Stream],
                 count_urls: list[str], say: Callable[[str], None] = stderr_say) -> None:
        self.cfg, self.report = cfg, report
        self.post_urls, self.streams, self.count_urls = post_urls, streams, count_urls
        self.say = say if cfg.progress else (lambda text: None)

    async def subscribe(self, client: httpx.AsyncClient, timeout: float = 30.0) -> None:
        for st in self.streams:
            self.report.subscribers.append(Subscriber(
                st.base, None if st.compat else ROOM, compat=st.compat, reconnect=True, retry_delay=0.5,
                read_timeout=60, client=client, name=st.name))
        await asyncio.gather(*(s.start(timeout=timeout) for s in self.report.subscribers))

    async def post_all(self, session: aiohttp.ClientSession, phase: Phase) -> None:
        cfg, rep = self.cfg, self.report
        users = [f"{rep.run_id}-u{k}" for k in range(cfg.users)]
        deadline = phase.t0 + cfg.duration_limit
        counter = iter(range(cfg.posts))
        timeout = aiohttp.ClientTimeout(total=cfg.publish_timeout + 20)

        async def one_poster() -> None:
            for i in counter:
                if cfg.rate:
                    await asyncio.sleep(max(0.0, phase.t0 + i / cfg.rate - time.monotonic()))
                if time.monotonic() > deadline:
                    rep.not_sent += 1
                    continue
                p = Post(i=i, user=users[i % len(users)], text=f"m{i:05d} of {rep.run_id}",
                         worker=i % len(self.post_urls))
                rep.posts.append(p)
                await send_post(session, p, self.post_urls[p.worker], timeout)

        ticker = asyncio.create_task(self.progress(phase))
        try:
            await asyncio.gather(*(one_poster() for _ in range(cfg.concurrency)))
        finally:
            ticker.cancel()

    async def progress(self, phase: Phase) -> None:
        rep = self.report
        while True:
            await asyncio.sleep(10)
            st = rep.by_status()
            subs = "/".join(str(s.count) for s in rep.subscribers)
            self.say(f"t+{phase.rel():.0f}s posted {len(rep.posts)}/{self.cfg.posts} (200 {st['200']}, 503 "
                     f"{st['503']}, other {st['other']}, in flight {st['in flight']}); subscribers have {subs}")

    async def outcome(self, session: aiohttp.ClientSession) -> None:
        """After posting: every subscriber's delivery, then the counts."""
        t = time.monotonic()
        await wait_delivery(self.report, self.cfg)
        self.report.deliver_seconds = time.monotonic() - t
        self.say("reading counts")
        await read_counts(self.report, session, self.count_urls, self.cfg.counts_timeout)

    async def stop(self) -> None:
        for s in self.report.subscribers:
            await s.stop()


# -- waiting for the outcome ---------------------------------------------------------------------------------
async def wait_delivery(rep: Report, cfg: Config) -> None:
    """Until every subscriber has every 200'd message (at most cfg.deliver_timeout), then cfg.settle more."""
    ok = {p.text for p in rep.ok_posts()}
    deadline = time.monotonic() + cfg.deliver_timeout
    while time.monotonic() < deadline:
        if all(ok <= {m.text for m in s.events} for s in rep.subscribers):
            break
        await asyncio.sleep(0.2)
    await asyncio.sleep(cfg.settle)


async def read_counts(rep: Report, session: aiohttp.ClientSession, urls: list[str], timeout: float) -> None:
    """Ask every url for GET /stats/users until all answer the log's counts (then a few times more: they must
    stay), at most timeout seconds; the last answers go to rep.counts (a url asked twice gets a #n suffix)."""
    users = rep.users()
    keys = [u if urls.count(u) == 1 else f"{u}#{k}" for k, u in enumerate(urls)]

    async def ask(url: str) -> dict[str, int] | None:
        try:
            async with session.get(f"{url}/stats/users", timeout=aiohttp.ClientTimeout(total=15)) as r:
                if r.status != 200:
                    rep.counts_history.append(f"{url}: HTTP {r.status}")
                    return None
                allc = (await r.json())["users"]
                return {u: allc.get(u, 0) for u in users}
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            rep.counts_history.append(f"{url}: {exc.__class__.__name__}")
            return None

    expected = rep.expected_counts()
    began = time.monotonic()
    deadline = began + timeout
    seen: list[dict | None] = []
    while time.monotonic() < deadline:
        seen = list(await asyncio.gather(*(ask(u) for u in urls)))
        if all(s == expected for s in seen):
            rep.counts_seconds = time.monotonic() - began
            break
        await asyncio.sleep(0.5)
    if rep.counts_seconds is not None:
        # and they stay: a late replay must not count anything twice
        for _ in range(6):
            await asyncio.sleep(0.5)
            seen = list(await asyncio.gather(*(ask(u) for u in urls)))
            if not all(s == expected for s in seen):
                rep.counts_seconds = None
                break
    rep.counts = {k: s for k, s in zip(keys, seen) if s is not None}

