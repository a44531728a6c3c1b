"""The chaos run: the tutorial's part 2 (load while a random broker dies every minute), with checks.

bench/chaos.py (`make chaos`) runs it in full; tests/test_chaos.py runs a short variant through
run(Config(...)) and feeds Report.check made-up damage.

What it does, on a cluster of its own (3 controllers + brokers 0..3 from scripts/kafka-local, in a temp
state dir on free ports):
  * creates `chatroom` with 12 partitions, replication factor 4, min.insync.replicas 2;
  * starts two workers (KCHAT_REPLICATION_FACTOR=4, KCHAT_MIN_INSYNC_REPLICAS=2) and, on each, one native
    subscriber (GET /api/rooms/lobby/events) and one seed-compatible one (GET /sse/connect); a subscriber
    whose stream drops resumes on the same worker with Last-Event-ID;
  * posts Config.posts messages through the seed's endpoint (POST /api/topics/chatroom, text/plain
    "<name>: <text>", alternating workers, several users round-robin with names unique to the run) at
    Config.concurrency, paced to Config.rate posts/s (a backlog from a stall is posted as fast as the
    concurrency allows);
  * meanwhile SIGKILLs a random broker every Config.interval seconds and starts it again Config.down_for
    seconds later (kafka-local kill N / start N; one broker down at a time), describing `chatroom` before,
    during each outage, after each restart and at the end.

What it checks (Report.check: a list of failures; timings are reported, never checked):
  * every answer is 200 (with X-Kchat-Event-Id "partition:offset") or a JSON 503: no 500, no other status,
    no connection error;
  * every subscriber receives every 200'd message exactly once, at the offset its 200 named, in room (offset)
    order; and two 200'd posts where one was answered before the other was sent are in that order;
  * a subscriber never receives a message that was not posted, and every subscriber receives the same set:
    each 200'd message plus whichever 503'd ones were stored after all (a 503 means "not confirmed");
  * per-user counts (GET /stats/users, asked of both workers) settle at exactly the messages the log holds
    for that user, i.e. count == 200'd + stored-503'd, hence 200'd <= count <= 200'd + 503'd; and stay there;
  * at least one broker was killed while posts were in flight, and every broker runs again at the end.

The run is bounded: Config.duration_limit caps the posting phase (posts not sent by then are reported),
delivery and counts have their own timeouts, and everything it started is stopped at the end. The state dir
(Kafka and worker logs) is kept when a check fails or with Config.keep, else removed.
"""
from __future__ import annotations

import asyncio
import random
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import httpx

from kchat_faust.models import ValidationError, parse_event_id, partition_for

from .kafka import KafkaCluster, describe_topic, parse_describe, run_kafka_local
from .sse import Subscriber
from .worker import Worker

TOPIC = "chatroom"
ROOM = "lobby"  # the room of the seed-compatible endpoints
BROKERS = 4


@dataclass
class Config:
    posts: int = 5000
    concurrency: int = 4
    interval: float = 20.0  # seconds between broker kills
    down_for: float = 5.0  # seconds a killed broker stays down
    duration_limit: float = 600.0  # seconds the posting phase may take at most
    # posts per second, 0: as fast as answers come. Unpaced, 5,000 posts can take well under a minute on a
    # quiet machine -- one or two kills; at 25/s they span ~200 s, about ten kill cycles.
    rate: float = 25.0
    users: int = 5
    publish_timeout: float = 10.0  # KCHAT_PUBLISH_TIMEOUT of the workers
    deliver_timeout: float = 120.0  # after posting, for every subscriber to have every 200'd message
    settle: float = 3.0  # then this long more, for late (503'd but stored) messages and duplicates
    counts_timeout: float = 120.0
    seed: int | None = None
    # A post that got no HTTP answer at all (the connection reset as a worker pod stopped) counts as not
    # confirmed, like a 503, instead of failing the run: on Kubernetes the NodePort may hand a request to a
    # worker that is going away.
    unanswered_ok: bool = False
    state_dir: Path | None = None
    keep: bool = False
    progress: bool = True


# -- records -----------------------------------------------------------------------------------------------
@dataclass
class Post:
    i: int
    user: str
    text: str
    worker: int
    t_sent: float = 0.0
    t_done: float = 0.0
    status: int | None = None  # None: no HTTP answer (connection error, client timeout)
    event_id: str | None = None
    offset: int | None = None
    error: str = ""


@dataclass
class ChaosEvent:
    t: float  # seconds since posting began
    what: str


def leaders_line(describe_text: str) -> str:
    """'leaders 2 3 0 1 … | isr sizes 4 4 3 … | lobby p7: leader 2, isr 2,3,0,1' for one describe output."""
    parts = parse_describe(describe_text)
    if not parts:
        return "(no partitions in describe output)"
    ps = sorted(parts)
    lead = " ".join(str(parts[p].leader) if parts[p].leader >= 0 else "-" for p in ps)
    isr = " ".join(str(len(parts[p].isr)) for p in ps)
    lp = parts.get(partition_for(ROOM, len(parts)))
    room = f" | {ROOM} p{lp.partition}: leader {lp.leader}, isr {','.join(map(str, lp.isr))}" if lp else ""
    return f"leaders {lead} | isr sizes {isr}{room}"


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


# -- the report and its checks -------------------------------------------------------------------------------
@dataclass
class Report:
    config: Config
    run_id: str = ""
    seed: int = 0
    state_dir: Path | None = None
    setup_seconds: float = 0.0
    posting_seconds: float = 0.0
    deliver_seconds: float = 0.0
    counts_seconds: float | None = None
    total_seconds: float = 0.0
    posts: list[Post] = field(default_factory=list)
    not_sent: int = 0
    subscribers: list[Subscriber] = field(default_factory=list)
    chaos: list[ChaosEvent] = field(default_factory=list)
    kills_while_posting: int = 0
    disrupted: str = "broker"  # what kills_while_posting counts
    describe_before: str = ""
    describe_after: str = ""
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # worker url -> {user: count}
    counts_history: list[str] = field(default_factory=list)
    brokers_alive_at_end: bool = False
    worker_logs: list[Path] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    # -- derived ---------------------------------------------------------------------------------------------
    def by_status(self) -> Counter:
        return Counter("in flight" if not p.t_done else "200" if p.status == 200 else "503" if p.status == 503
                       else "other" for p in self.posts)

    def ok_posts(self) -> list[Post]:
        return [p for p in self.posts if p.status == 200]

    def stored_texts(self) -> set[str]:
        """Every message some subscriber received: what the log holds of this run's posts."""
        return {m.text for s in self.subscribers for m in s.events}

    def delays(self, sub: Subscriber) -> list[float]:
        """Seconds from sending a post to this subscriber receiving it (200'd and stored 503'd alike)."""
        sent = {p.text: p.t_sent for p in self.posts}
        return [m.t - sent[m.text] for m in sub.events if m.text in sent]

    def users(self) -> list[str]:
        return sorted({p.user for p in self.posts})

    def expected_counts(self) -> dict[str, int]:
        stored = self.stored_texts()
        users = {p.text: p.user for p in self.posts}
        out = {u: 0 for u in self.users()}
        for t in stored:
            if t in users:
                out[users[t]] += 1
        return out

    def unconfirmed(self, p: Post) -> bool:
        """A post that may or may not be stored: a 503, or no answer at all where the run accepts that."""
        return p.status == 503 or (p.status is None and bool(p.t_done) and self.config.unanswered_ok)

    def count_bounds(self) -> tuple[dict[str, int], dict[str, int]]:
        lows = {u: 0 for u in self.users()}
        highs = dict(lows)
        for p in self.posts:
            if p.status == 200:
                lows[p.user] += 1
                highs[p.user] += 1
            elif self.unconfirmed(p):
                highs[p.user] += 1
        return lows, highs

    # -- checks ------------------------------------------------------------------------------------------------
    def check(self) -> list[str]:
        return (self.check_answers() + self.check_order_of_answers() + self.check_subscribers()
                + self.check_counts() + self.check_chaos_happened())

    def check_answers(self) -> list[str]:
        f: list[str] = []
        ok = self.ok_posts()
        bad = [p for p in self.posts if not self.unconfirmed(p) and p.status != 200]
        if bad:
            kinds = Counter(f"{p.status}: {p.error[:120]}" for p in bad)
            f.append(f"{len(bad)} post(s) answered neither 200 nor 503: "
                     + "; ".join(f"{n}x {k}" for k, n in kinds.most_common(5)))
        for p in self.posts:
            if p.status == 503 and not p.error.startswith("{"):
                f.append(f"post #{p.i}: 503 without a JSON body: {p.error[:120]!r}")
                break
        no_id = [p for p in ok if p.offset is None]
        if no_id:
            f.append(f"{len(no_id)} 200(s) without a valid X-Kchat-Event-Id, e.g. post #{no_id[0].i}: "
                     f"{no_id[0].event_id!r}")
        offsets = Counter(p.offset for p in ok if p.offset is not None)
        dup_offsets = [o for o, n in offsets.items() if n > 1]
        if dup_offsets:
            f.append(f"{len(dup_offsets)} offset(s) named by more than one 200, e.g. {dup_offsets[:5]}")
        partitions = {parse_event_id(p.event_id)[0] for p in ok if p.offset is not None}
        if len(partitions) > 1:
            f.append(f"room {ROOM!r} messages were stored in several partitions: {sorted(partitions)}")
        return f

    def check_order_of_answers(self) -> list[str]:
        """Causality: a post sent after another's 200 came back lies after it in the room."""
        ok = [p for p in self.ok_posts() if p.offset is not None]
        done_order = sorted(ok, key=lambda p: p.t_done)
        best, j, inversions = -1, 0, []
        for p in sorted(ok, key=lambda p: p.t_sent):
            while j < len(done_order) and done_order[j].t_done < p.t_sent:
                best = max(best, done_order[j].offset)
                j += 1
            if p.offset <= best:
                inversions.append(p)
        if inversions:
            return [f"{len(inversions)} 200'd post(s) stored before a post answered earlier, e.g. #{inversions[0].i}"]
        return []

    def check_subscribers(self) -> list[str]:
        f: list[str] = []
        posts = {p.text: p for p in self.posts}
        ok = self.ok_posts()
        union = self.stored_texts()
        for s in self.subscribers:
            label = f"subscriber {s.name}"
            if s.problems:
                f.append(f"{label}: {len(s.problems)} malformed event(s), e.g. {s.problems[0]}")
            texts = Counter(m.text for m in s.events)
            dups = [t for t, n in texts.items() if n > 1]
            if dups:
                f.append(f"{label}: {len(dups)} message(s) received more than once, e.g. {dups[0]!r}")
            offs = [m.offset for m in s.events]
            disorder = sum(1 for a, b in zip(offs, offs[1:]) if b <= a)
            if disorder:
                f.append(f"{label}: {disorder} message(s) out of room order")
            missing = [p for p in ok if p.text not in texts]
            if missing:
                f.append(f"{label}: {len(missing)} 200'd message(s) never arrived, e.g. post #{missing[0].i} "
                         f"({missing[0].event_id})")
            wrong_place = [m for m in s.events
                           if m.text in posts and posts[m.text].status == 200 and posts[m.text].offset is not None
                           and m.offset != posts[m.text].offset]
            if wrong_place:
                m = wrong_place[0]
                f.append(f"{label}: {len(wrong_place)} message(s) at another offset than their 200 named, e.g. "
                         f"{m.text!r} at {m.id}, 200 said {posts[m.text].event_id}")
            never = [m for m in s.events if m.text not in posts]
            if never:
                f.append(f"{label}: {len(never)} message(s) that were never posted, e.g. {never[0].user}: "
                         f"{never[0].text!r} at {never[0].id}")
            other = [m for m in s.events if m.text in posts and posts[m.text].status != 200
                     and not self.unconfirmed(posts[m.text])]
            if other:
                f.append(f"{label}: received {len(other)} message(s) whose post got neither 200 nor 503")
            if set(texts) != union:
                f.append(f"{label}: missed {len(union - set(texts))} message(s) another subscriber received")
        return f

    def check_counts(self) -> list[str]:
        f: list[str] = []
        expected = self.expected_counts()
        lows, highs = self.count_bounds()
        for url, seen in self.counts.items():
            wrong = {u: (seen.get(u, 0), n) for u, n in expected.items() if seen.get(u, 0) != n}
            if wrong:
                f.append(f"counts from {url} != messages in the log, user: (count, expected): {wrong}")
            out = {u: seen.get(u, 0) for u in lows if not lows[u] <= seen.get(u, 0) <= highs[u]}
            if out:
                f.append(f"counts from {url} outside [200'd, 200'd+503'd]: {out} (bounds {lows} .. {highs})")
        if not self.counts:
            f.append("no counts were read")
        return f

    def check_chaos_happened(self) -> list[str]:
        f: list[str] = []
        if self.kills_while_posting < 1:
            f.append(f"no {self.disrupted} was killed while posts were in flight: lower --interval or raise --posts")
        if not self.brokers_alive_at_end:
            f.append("not every broker was running at the end")
        return f

    # -- output ------------------------------------------------------------------------------------------------
    def render(self) -> str:
        c = self.config
        out = [f"chaos run {self.run_id}: seed {self.seed}, {c.posts} posts at concurrency {c.concurrency}"
               f"{f' paced to {c.rate:g}/s' if c.rate else ''}, kill a broker every {c.interval:g}s for "
               f"{c.down_for:g}s; state {self.state_dir}", ""]
        for part in (self._render_topic, self._render_posts, self._render_subscribers, self._render_counts,
                     self._render_notes, self._render_verdict):
            out += part()
        return "\n".join(out)

    def _render_topic(self) -> list[str]:
        out = ["chatroom before:"]
        out += ["  " + line for line in self.describe_before.strip().splitlines()]
        out += ["", "chaos log (seconds since posting began):"]
        out += [f"  {e.t:7.1f}s  {e.what}" for e in self.chaos] or ["  (nothing)"]
        out += ["", "chatroom after:"]
        out += ["  " + line for line in self.describe_after.strip().splitlines()]
        if self.describe_before and self.describe_after:
            before, after = parse_describe(self.describe_before), parse_describe(self.describe_after)
            moved = [f"p{p}: {before[p].leader}->{after[p].leader}" for p in sorted(before)
                     if p in after and before[p].leader != after[p].leader]
            out.append(f"  leadership moved on {len(moved)} of {len(before)} partitions"
                       + (f": {', '.join(moved)}" if moved else ""))
            out.append(f"  room {ROOM!r} is partition {partition_for(ROOM, len(before))}; before: "
                       f"{leaders_line(self.describe_before).rsplit('| ', 1)[-1]}; after: "
                       f"{leaders_line(self.describe_after).rsplit('| ', 1)[-1]}")
        return out + [""]

    def _render_posts(self) -> list[str]:
        st = self.by_status()
        lat_ok = [p.t_done - p.t_sent for p in self.posts if p.status == 200]
        lat_503 = [p.t_done - p.t_sent for p in self.posts if p.status == 503]
        rows = [("posts", "200", "503", "other", "not sent", "posting s", "200 max s", "503 max s"),
                (str(len(self.posts)), str(st["200"]), str(st["503"]), str(st["other"]), str(self.not_sent),
                 f"{self.posting_seconds:.1f}", f"{max(lat_ok, default=0):.2f}",
                 f"{max(lat_503, default=0):.2f}" if lat_503 else "-")]
        return table(rows) + [""]

    def _render_subscribers(self) -> list[str]:
        ok_texts = {p.text for p in self.ok_posts()}
        p503 = {p.text for p in self.posts if p.status == 503}
        rows = [("subscriber", "received", "200'd", "503'd stored", "dups", "resumes", "max delay s", "avg delay s")]
        for s in self.subscribers:
            texts = [m.text for m in s.events]
            d = self.delays(s)
            rows.append((s.name, str(len(texts)), str(len(ok_texts & set(texts))), str(len(p503 & set(texts))),
                         str(len(texts) - len(set(texts))), str(len(s.drops)),
                         f"{max(d):.2f}" if d else "-", f"{statistics.fmean(d):.3f}" if d else "-"))
        return table(rows) + [""]

    def _render_counts(self) -> list[str]:
        lows, highs = self.count_bounds()
        exp = self.expected_counts()
        rows = [("user", "200'd", "503'd", "in log", *[f"count @{u.rsplit(':', 1)[-1]}" for u in self.counts])]
        for u in self.users():
            rows.append((u, str(lows[u]), str(highs[u] - lows[u]), str(exp[u]),
                         *[str(seen.get(u, 0)) for seen in self.counts.values()]))
        out = table(rows)
        if self.counts_seconds is not None:
            out.append(f"counts matched the log {self.counts_seconds:.1f}s after delivery finished and stayed")
        return out + [""]

    def _render_notes(self) -> list[str]:
        out = [f"durations: setup {self.setup_seconds:.1f}s, posting {self.posting_seconds:.1f}s, "
               f"delivery wait {self.deliver_seconds:.1f}s, total {self.total_seconds:.1f}s"]
        errors = Counter(p.error[:150] for p in self.posts if p.status == 503)
        if errors:
            out.append("503 bodies: " + "; ".join(f"{n}x {e}" for e, n in errors.most_common(4)))
        for s in self.subscribers:
            if s.drops:
                out.append(f"{s.name} stream drops: "
                           + "; ".join(f"{n}x {k}" for k, n in Counter(s.drops).most_common(3)))
        return out + [""]

    def _render_verdict(self) -> list[str]:
        if not self.failures:
            return ["OK: every 200'd message reached every subscriber once and in order; counts exact; "
                    "failures were 503s"]
        return ([f"FAILED ({len(self.failures)}):"] + [f"  - {x}" for x in self.failures]
                + ["worker logs: " + ", ".join(map(str, self.worker_logs))])


def table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  " + "  ".join(cell.rjust(w) if k else cell.ljust(w) for k, (cell, w) in enumerate(zip(r, widths)))
            for r in rows]


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


# -- the run -----------------------------------------------------------------------------------------------
class Run:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.report = Report(config=cfg)
        self.rng = random.Random(cfg.seed)
        self.pool = ThreadPoolExecutor(4, thread_name_prefix="chaos")
        self.cluster: KafkaCluster | None = None
        self.workers: list[Worker] = []
        self.t0 = 0.0
        self.posting_done = asyncio.Event()

    def say(self, text: str) -> None:
        if self.cfg.progress:
            print(f"[chaos {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)

    async def blocking(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    def rel(self) -> float:
        return time.monotonic() - self.t0

    def log(self, what: str) -> None:
        self.report.chaos.append(ChaosEvent(self.rel(), what))
        self.say(what)

    async def describe(self) -> str:
        return await self.blocking(describe_topic, self.cluster.bootstrap, TOPIC)

    async def log_leaders(self, when: str) -> None:
        try:
            self.log(f"  {when}: {leaders_line(await self.describe())}")
        except RuntimeError as exc:
            self.log(f"  {when}: describe failed: {str(exc).splitlines()[-1][:150]}")

    # -- phases -------------------------------------------------------------------------------------------------
    async def setup(self, state: Path) -> None:
        self.say(f"starting 3 controllers + {BROKERS} brokers in {state / 'kafka'}")
        self.cluster = await self.blocking(lambda: KafkaCluster.start_new(state / "kafka", brokers=BROKERS))
        await self.blocking(lambda: self.cluster.run("topic", TOPIC, "--partitions", "12", "--replication-factor",
                                                     "4", "--min-insync-replicas", "2", timeout=180))
        env = {"KCHAT_REPLICATION_FACTOR": "4", "KCHAT_MIN_INSYNC_REPLICAS": "2",
               "KCHAT_PUBLISH_TIMEOUT": f"{self.cfg.publish_timeout:g}", "KCHAT_KEEPALIVE": "5"}
        self.workers = [Worker(self.cluster.bootstrap, state / f"worker{i}", env) for i in range(2)]
        self.report.worker_logs = [w.log_path for w in self.workers]
        self.say(f"starting 2 workers against {self.cluster.bootstrap}")
        await asyncio.gather(*(self.blocking(w.start, 180.0) for w in self.workers))
        self.report.describe_before = await self.describe()

    async def subscribe(self, streams: httpx.AsyncClient) -> None:
        for i, w in enumerate(self.workers):
            for compat in (False, True):
                s = Subscriber(w.url, None if compat else ROOM, compat=compat, reconnect=True, retry_delay=0.5,
                               read_timeout=60, client=streams, name=f"w{i}-{'compat' if compat else 'native'}")
                self.report.subscribers.append(s)
        await asyncio.gather(*(s.start(timeout=30) for s in self.report.subscribers))

    async def chaos(self) -> None:
        cfg, k = self.cfg, 1
        while True:
            wait = self.t0 + k * cfg.interval - time.monotonic()
            if wait > 0:
                try:
                    await asyncio.wait_for(self.posting_done.wait(), wait)
                    return
                except asyncio.TimeoutError:
                    pass
            if self.posting_done.is_set():
                return
            await self.kill_cycle(self.rng.randrange(BROKERS))
            # next slot on the schedule that is still ahead (a slow restart skips slots)
            k = max(k + 1, int((time.monotonic() - self.t0) / cfg.interval) + 1)

    async def kill_cycle(self, broker: int) -> None:
        """SIGKILL broker, describe the topic during the outage, start it again after cfg.down_for."""
        cfg = self.cfg
        await self.blocking(self.cluster.kill, broker)
        killed_at = time.monotonic()
        in_flight = not self.posting_done.is_set()
        self.log(f"SIGKILL broker {broker}" + ("" if in_flight else " (after the last post)"))
        if in_flight:
            self.report.kills_while_posting += 1
        await asyncio.sleep(max(0.0, min(cfg.down_for / 2, 2.0)))
        await self.log_leaders("during outage")
        await asyncio.sleep(max(0.0, killed_at + cfg.down_for - time.monotonic()))
        began = time.monotonic()
        await self.blocking(self.cluster.start, broker)
        self.log(f"broker {broker} serving again ({time.monotonic() - killed_at:.1f}s after the kill; "
                 f"start took {time.monotonic() - began:.1f}s)")
        await self.log_leaders("after restart ")

    async def post_all(self, session: aiohttp.ClientSession) -> None:
        cfg, rep = self.cfg, self.report
        users = [f"{rep.run_id}-u{k}" for k in range(cfg.users)]
        deadline = self.t0 + cfg.duration_limit
        counter = iter(range(cfg.posts))
        timeout = aiohttp.ClientTimeout(total=cfg.publish_timeout + 20)

        async def one_poster() -> None:
            for i in counter:
                if cfg.rate:
                    await asyncio.sleep(max(0.0, self.t0 + i / cfg.rate - time.monotonic()))
                if time.monotonic() > deadline:
                    rep.not_sent += 1
                    continue
                p = Post(i=i, user=users[i % len(users)], text=f"m{i:05d} of {rep.run_id}", worker=i % 2)
                rep.posts.append(p)
                await send_post(session, p, self.workers[p.worker].url, timeout)

        ticker = asyncio.create_task(self.progress())
        try:
            await asyncio.gather(*(one_poster() for _ in range(cfg.concurrency)))
        finally:
            ticker.cancel()

    async def progress(self) -> None:
        rep = self.report
        while True:
            await asyncio.sleep(10)
            st = rep.by_status()
            subs = "/".join(str(s.count) for s in rep.subscribers)
            self.say(f"t+{self.rel():.0f}s posted {len(rep.posts)}/{self.cfg.posts} (200 {st['200']}, 503 "
                     f"{st['503']}, other {st['other']}, in flight {st['in flight']}); subscribers have {subs}")

    async def outcome(self, session: aiohttp.ClientSession) -> None:
        """After posting: delivery, counts, the topic and the brokers at the end."""
        rep = self.report
        t = time.monotonic()
        await wait_delivery(rep, self.cfg)
        rep.deliver_seconds = time.monotonic() - t
        self.say("reading counts")
        await read_counts(rep, session, [w.url for w in self.workers], self.cfg.counts_timeout)
        rep.describe_after = await self.describe()
        status = await self.blocking(self.cluster.status)
        rep.brokers_alive_at_end = all(status[b]["alive"] for b in range(BROKERS))

    async def teardown(self, state: Path, chaos_task: asyncio.Task | None) -> None:
        self.say("stopping the subscribers, the workers and Kafka")
        if chaos_task is not None and not chaos_task.done():
            chaos_task.cancel()
            try:
                await chaos_task
            except (asyncio.CancelledError, Exception):
                pass
        for s in self.report.subscribers:
            await s.stop()
        await asyncio.gather(*(self.blocking(w.stop_or_kill) for w in self.workers), return_exceptions=True)
        if self.cluster is not None:
            await self.blocking(self.cluster.down)
        else:
            await self.blocking(lambda: run_kafka_local("down", "--kill", state_dir=state / "kafka",
                                                        check=False, timeout=60))
        self.pool.shutdown(wait=False)

    async def main(self) -> Report:
        cfg, rep = self.cfg, self.report
        began = time.monotonic()
        rep.seed = cfg.seed if cfg.seed is not None else random.randrange(1 << 30)
        self.rng.seed(rep.seed)
        rep.run_id = f"chaos{uuid.uuid4().hex[:6]}"
        state = Path(cfg.state_dir) if cfg.state_dir else Path(tempfile.mkdtemp(prefix="kchat-chaos-"))
        state.mkdir(parents=True, exist_ok=True)
        rep.state_dir = state
        chaos_task: asyncio.Task | None = None
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session, \
                httpx.AsyncClient(limits=httpx.Limits(max_connections=None)) as streams:
            try:
                await self.setup(state)
                rep.setup_seconds = time.monotonic() - began
                await self.subscribe(streams)
                self.say(f"4 subscribers connected; posting {cfg.posts} messages, killing a broker every "
                         f"{cfg.interval:g}s (seed {rep.seed})")
                self.t0 = time.monotonic()
                chaos_task = asyncio.create_task(self.chaos())
                try:
                    await self.post_all(session)
                finally:
                    rep.posting_seconds = self.rel()
                    self.posting_done.set()
                self.say(f"posting done in {rep.posting_seconds:.1f}s; waiting for the chaos cycle to end")
                await chaos_task  # finishes a cycle under way: the killed broker is started again
                await self.outcome(session)
            finally:
                await self.teardown(state, chaos_task)
                rep.total_seconds = time.monotonic() - began
        rep.failures = rep.check()
        if not rep.failures and not cfg.keep and cfg.state_dir is None:
            shutil.rmtree(state, ignore_errors=True)
        return rep


async def run(cfg: Config) -> Report:
    """One chaos run; never raises for a failed check (see Report.failures), only for a broken setup."""
    return await Run(cfg).main()

