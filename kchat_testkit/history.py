"""A history of what clients did and saw, and the checker that judges it (as Jepsen's histories are judged).

Recorder posts messages and records every one as an Op: its client-chosen key (sent as `Idempotency-Key` and
written at the start of its text, so that the log names it too) and every attempt, each invoked -> ok
(2xx, with partition:offset) / failed (a definite 4xx: nothing was published) / unknown (a timeout, a reset,
a 503 or another 5xx: it may or may not be stored). An unknown attempt is retried with the same key, on the
next worker, a bounded number of times. Subscribers (kchat_testkit.sse) record every event and every
(re)connect with the Last-Event-ID it used. After healing, read_log reads the whole of chatroom and
read_counts asks every worker for GET /stats/users.

check(History) -> Verdict finds:
  lost          an acknowledged message missing from the log, or from a subscriber whose stream covered it
  inconsistent  a (partition, offset) that names different messages in different places (an ack, the log,
                an event), or an ack at another place than the log has the message
  duplicated    a key stored at more than one place by acks, or delivered more than once to a subscriber
  reordered     a subscriber's events of its room out of the log's order
  gaps          an unknown-but-stored message a subscriber never got (resume must leave no gap)
  failed_seen   a definitely failed post that appears anywhere
  count errors  GET /stats/users of any worker != the messages the log holds per user (each key once)
and measures, per fault window, the longest time without an acknowledgement and the time from healing to
the first acknowledgement of a post sent after it.
"""
from __future__ import annotations

import asyncio
import itertools
import json
import re
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field

import httpx
from aiokafka import AIOKafkaConsumer, TopicPartition

from kchat_faust.internals import fetch_all_metadata

from .sse import Subscriber

KEY_RE = re.compile(r"^(\S+) ")
TOPIC = "chatroom"


@dataclass
class Attempt:
    worker: str
    t_sent: float
    t_done: float | None = None
    status: int | None = None
    outcome: str = "unknown"  # ok | failed | unknown
    partition: int | None = None
    offset: int | None = None
    message_id: str | None = None
    error: str = ""


@dataclass
class Op:
    key: str  # the Idempotency-Key; also the first word of the text
    room: str
    user: str
    text: str
    attempts: list[Attempt] = field(default_factory=list)

    @property
    def outcome(self) -> str:
        outcomes = {a.outcome for a in self.attempts}
        if "ok" in outcomes:
            return "ok"
        if outcomes == {"failed"}:
            return "failed"
        return "unknown"

    @property
    def ack(self) -> Attempt | None:
        return next((a for a in self.attempts if a.outcome == "ok"), None)

    @property
    def t_invoked(self) -> float:
        return self.attempts[0].t_sent if self.attempts else 0.0


@dataclass
class LogRecord:
    partition: int
    offset: int
    room: str
    user: str
    text: str
    id: str

    @property
    def key(self) -> str | None:
        m = KEY_RE.match(self.text)
        return m.group(1) if m else None


@dataclass
class Window:
    """A fault: when it began and when it was healed (monotonic seconds)."""
    name: str
    t_start: float
    t_heal: float | None = None
    t_in_force: float | None = None  # the fault fully made (a cut in every namespace, a kill returned)
    t_lifting: float | None = None  # its undoing began


def classify(status: int | None) -> str:
    if status is not None and 200 <= status < 300:
        return "ok"
    if status is not None and 400 <= status < 500:
        return "failed"  # refused before anything was published
    return "unknown"


# -- recording ------------------------------------------------------------------------------------------------
@dataclass
class Recorder:
    """Posts at `rate` per second, round-robin over rooms, users and workers, each with its own key."""
    workers: list[str]
    rooms: list[str]  # rooms[0] gets `busy` of the posts, the others share the rest
    users: list[str]
    run_id: str
    rate: float = 20.0
    busy: float = 0.5
    attempt_timeout: float = 15.0
    max_attempts: int = 4
    retry_delay: float = 1.0
    concurrency: int = 8
    pad: int = 40  # characters of text after the key
    ops: list[Op] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._n = itertools.count()

    def room_for(self, n: int) -> str:
        if len(self.rooms) == 1 or (n * 0.6180339887) % 1.0 < self.busy:
            return self.rooms[0]
        return self.rooms[1 + n % (len(self.rooms) - 1)]

    def new_op(self) -> Op:
        n = next(self._n)
        key = f"{self.run_id}-{n:06d}"
        op = Op(key, self.room_for(n), self.users[n % len(self.users)], f"{key} " + "x" * self.pad)
        self.ops.append(op)
        return op

    async def post(self, client: httpx.AsyncClient, op: Op, first_worker: int, give_up_at: float) -> None:
        """Attempt op until it is ok or definitely failed, retrying an unknown outcome with the same key on
        the next worker, at most max_attempts times and not after give_up_at."""
        for k in range(self.max_attempts):
            w = self.workers[(first_worker + k) % len(self.workers)]
            a = Attempt(w, time.monotonic())
            op.attempts.append(a)
            try:
                r = await client.post(f"{w}/api/rooms/{op.room}/messages", json={"user": op.user, "text": op.text},
                                      headers={"Idempotency-Key": op.key}, timeout=self.attempt_timeout)
                a.status, a.outcome = r.status_code, classify(r.status_code)
                if a.outcome == "ok":
                    body = r.json()
                    a.partition, a.offset, a.message_id = body.get("partition"), body.get("offset"), body.get("id")
                else:
                    a.error = r.text[:200]
            except (httpx.HTTPError, ValueError) as exc:
                a.error = f"{exc.__class__.__name__}: {exc}"[:200]
            a.t_done = time.monotonic()
            if a.outcome != "unknown" or time.monotonic() + self.retry_delay > give_up_at:
                return
            await asyncio.sleep(self.retry_delay)

    async def run(self, stop: asyncio.Event, max_duration: float, retry_for: float = 30.0) -> None:
        """Post at self.rate (a backlog is posted as fast as the concurrency allows) until stop is set, at most
        max_duration seconds; retries go on at most retry_for seconds after that."""
        t0 = time.monotonic()
        end = t0 + max_duration
        slots = iter(range(int(max_duration * self.rate)))
        limits = httpx.Limits(max_connections=self.concurrency * 2, max_keepalive_connections=self.concurrency * 2)

        async def poster(client: httpx.AsyncClient) -> None:
            for i in slots:
                await asyncio.sleep(max(0.0, t0 + i / self.rate - time.monotonic()))
                if stop.is_set() or time.monotonic() > end:
                    return
                give_up_at = min(end, time.monotonic() + 600) + retry_for
                await self.post(client, self.new_op(), i % len(self.workers), give_up_at)

        async with httpx.AsyncClient(limits=limits) as client:
            await asyncio.gather(*(poster(client) for _ in range(self.concurrency)))


async def read_log(bootstrap: str, rooms: set[str], kafka_options: dict | None = None,
                   timeout: float = 60.0) -> list[LogRecord]:
    """Every record of chatroom (beginning to the end offsets of now) whose message is in one of rooms."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                auto_offset_reset="earliest", **(kafka_options or {}))
    await consumer.start()
    out: list[LogRecord] = []
    try:
        # a group-less consumer tracks no topic, so its own metadata cache lacks this one
        cluster = await fetch_all_metadata(consumer)
        tps = [TopicPartition(TOPIC, p) for p in sorted(cluster.partitions_for_topic(TOPIC) or ())]
        ends = await consumer.end_offsets(tps)
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        pending = {tp for tp in tps if ends[tp] > 0}
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            batches = await consumer.getmany(*pending, timeout_ms=1000)
            for tp, records in batches.items():
                for r in records:
                    if r.offset >= ends[tp]:
                        continue
                    try:
                        m = json.loads(r.value)
                    except (TypeError, ValueError):
                        continue
                    if isinstance(m, dict) and m.get("room") in rooms:
                        out.append(LogRecord(tp.partition, r.offset, m["room"], m.get("user", ""),
                                             m.get("text", ""), m.get("id", "")))
                if records and records[-1].offset >= ends[tp] - 1:
                    pending.discard(tp)
            for tp in list(pending):
                if await consumer.position(tp) >= ends[tp]:
                    pending.discard(tp)
        if pending:
            raise RuntimeError(f"could not read chatroom to its end within {timeout}s: {sorted(pending)}")
    finally:
        await consumer.stop()
    return sorted(out, key=lambda r: (r.partition, r.offset))


async def read_counts(workers: list[str], users: list[str]) -> dict[str, dict[str, int] | None]:
    """Each worker's GET /stats/users for these users (None where it did not answer 200)."""
    async with httpx.AsyncClient(timeout=15) as client:
        async def one(w: str):
            try:
                r = await client.get(f"{w}/stats/users")
                if r.status_code == 200:
                    got = r.json()["users"]
                    return {u: got.get(u, 0) for u in users}
            except (httpx.HTTPError, ValueError, KeyError):
                pass
            return None
        return dict(zip(workers, await asyncio.gather(*(one(w) for w in workers))))


# -- checking -------------------------------------------------------------------------------------------------
@dataclass
class History:
    ops: list[Op]
    subscribers: list[Subscriber]
    log: list[LogRecord]
    counts: dict[str, dict[str, int] | None]
    windows: list[Window] = field(default_factory=list)
    busy_room: str | None = None


@dataclass
class Verdict:
    posts: int = 0
    acknowledged: int = 0
    failed: int = 0
    unknown: int = 0
    unknown_stored: int = 0
    retried: int = 0
    lost: int = 0
    inconsistent: int = 0
    duplicated: int = 0
    log_copies: int = 0  # keys the log holds more than once (readers may drop the copies: then not duplicated)
    reordered: int = 0
    gaps: int = 0
    failed_seen: int = 0
    count_errors: int = 0
    resumes: int = 0
    longest_ack_gap: float = 0.0
    longest_ack_gap_busy: float = 0.0
    recovery: dict[str, float | None] = field(default_factory=dict)  # window name -> seconds after healing
    problems: list[str] = field(default_factory=list)
    # distinct keys behind lost / duplicated / gaps (one message missing at three subscribers is one lost)
    lost_keys: set = field(default_factory=set, repr=False)
    duplicated_keys: set = field(default_factory=set, repr=False)
    gap_keys: set = field(default_factory=set, repr=False)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict:
        out = asdict(self)
        for k in ("lost_keys", "duplicated_keys", "gap_keys"):
            out[k] = sorted(out[k])
        return {**out, "ok": self.ok}


def check(h: History) -> Verdict:
    v = Verdict(posts=len(h.ops))
    ops = {op.key: op for op in h.ops}
    at = {(r.partition, r.offset): r for r in h.log}
    by_key = defaultdict(list)
    for r in h.log:
        by_key[r.key].append(r)
    _check_outcomes(h, v, at, by_key)
    _check_log(h, v, ops, by_key)
    for s in h.subscribers:
        _check_subscriber(s, v, ops, at, by_key)
    _check_counts(h, v, ops, by_key)
    _measure(h, v)
    v.lost, v.duplicated, v.gaps = len(v.lost_keys), len(v.duplicated_keys), len(v.gap_keys)
    return v


def _problem(v: Verdict, what: str, examples: list) -> None:
    v.problems.append(f"{what}: {len(examples)}, e.g. {examples[:3]}")


def _check_outcomes(h: History, v: Verdict, at: dict, by_key: dict) -> None:
    lost, wrong_place, two_places, failed_seen = [], [], [], []
    for op in h.ops:
        outcome = op.outcome
        v.retried += len(op.attempts) > 1
        if outcome == "failed":
            v.failed += 1
            if by_key.get(op.key):
                failed_seen.append(op.key)
            continue
        if outcome == "unknown":
            v.unknown += 1
            v.unknown_stored += bool(by_key.get(op.key))
            continue
        v.acknowledged += 1
        places = {(a.partition, a.offset) for a in op.attempts if a.outcome == "ok"}
        if len(places) > 1:
            two_places.append((op.key, sorted(places)))
        for place in places:
            r = at.get(place)
            if r is None or r.key != op.key:
                (wrong_place if by_key.get(op.key) else lost).append(
                    (op.key, place, r.key if r else "nothing there"))
    v.lost_keys.update(k for k, _p, _r in lost)
    v.inconsistent += len(wrong_place)
    v.duplicated_keys.update(k for k, _p in two_places)
    v.failed_seen += len(failed_seen)
    if lost:
        _problem(v, "acknowledged but not in the log (lost)", lost)
    if wrong_place:
        _problem(v, "acknowledged at a place the log has another message at", wrong_place)
    if two_places:
        _problem(v, "acknowledged twice at different places (duplicated)", two_places)
    if failed_seen:
        _problem(v, "definitely failed but stored", failed_seen)


def _check_log(h: History, v: Verdict, ops: dict, by_key: dict) -> None:
    foreign = [(r.partition, r.offset, r.text[:30]) for k, rs in by_key.items() if k not in ops for r in rs]
    if foreign:
        v.inconsistent += len(foreign)
        _problem(v, "records in the test's rooms that no post of it wrote", foreign)
    copies = [(k, [(r.partition, r.offset) for r in rs]) for k, rs in by_key.items() if k in ops and len(rs) > 1]
    v.log_copies = len(copies)
    rooms = defaultdict(set)
    for r in h.log:
        rooms[r.room].add(r.partition)
    split = {room: sorted(ps) for room, ps in rooms.items() if len(ps) > 1}
    if split:
        v.inconsistent += len(split)
        _problem(v, "rooms stored in more than one partition", list(split.items()))


def _coverage(s: Subscriber) -> int | None:
    """The last offset a subscriber's streams covered: None (all of it) if its last stream is open."""
    if s.connects and s.connects[-1].status == 200 and s.connects[-1].t_end is None:
        return None
    return max((e.offset for e in s.events), default=-1)


def _check_subscriber(s: Subscriber, v: Verdict, ops: dict, at: dict, by_key: dict) -> None:
    label = f"subscriber {s.name}"
    v.resumes += sum(1 for c in s.streams if c.last_event_id)
    if s.problems:
        v.inconsistent += len(s.problems)
        _problem(v, f"{label}: malformed events", s.problems)
    phantom = [(e.id, e.text[:30]) for e in s.events
               if at.get((e.partition, e.offset)) is None or at[(e.partition, e.offset)].text != e.text]
    keys = Counter(KEY_RE.match(e.text).group(1) if KEY_RE.match(e.text) else e.text for e in s.events)
    dups = [k for k, n in keys.items() if n > 1]
    offsets = [e.offset for e in s.events]
    disorder = sum(1 for a, b in zip(offsets, offsets[1:]) if b <= a)
    covered = _coverage(s)
    expected = [rs[0] for k, rs in by_key.items() if k in ops and ops[k].room == s.room]
    missing = [r for r in expected if r.key not in keys and (covered is None or r.offset <= covered)]
    lost = [r.key for r in missing if ops[r.key].outcome == "ok"]
    gaps = [r.key for r in missing if ops[r.key].outcome != "ok"]
    v.inconsistent += len(phantom)
    v.duplicated_keys.update(dups)
    v.reordered += disorder
    v.lost_keys.update(lost)
    v.gap_keys.update(gaps)
    if phantom:
        _problem(v, f"{label}: events the log does not hold at their place", phantom)
    if dups:
        _problem(v, f"{label}: delivered more than once (duplicated)", dups)
    if disorder:
        v.problems.append(f"{label}: {disorder} event(s) out of the log's order")
    if lost:
        _problem(v, f"{label}: acknowledged messages never delivered (lost)", lost)
    if gaps:
        _problem(v, f"{label}: stored messages never delivered (a gap)", gaps)


def expected_counts(h: History) -> dict[str, int]:
    """What GET /stats/users must say per user: the log's records of the history's posts, each key once, plus
    every further copy of a key that readers did not drop (some subscriber received it; that copy is already
    counted as duplicated), so that one fault is not reported twice."""
    ops = {op.key: op for op in h.ops}
    delivered = {(e.partition, e.offset) for s in h.subscribers for e in s.events}
    want = {op.user: 0 for op in h.ops}
    seen = set()
    for r in h.log:
        if r.key in ops and (r.key not in seen or (r.partition, r.offset) in delivered):
            want[ops[r.key].user] += 1
            seen.add(r.key)
    return want


def _check_counts(h: History, v: Verdict, ops: dict, by_key: dict) -> None:
    users = sorted({op.user for op in h.ops})
    want = expected_counts(h)
    for worker, seen in h.counts.items():
        if seen is None:
            v.count_errors += 1
            v.problems.append(f"counts: {worker} did not answer GET /stats/users")
        elif seen != want:
            v.count_errors += 1
            v.problems.append(f"counts from {worker} != messages in the log: "
                              f"{ {u: (seen.get(u), want[u]) for u in users if seen.get(u) != want[u]} }")
    if not h.counts:
        v.problems.append("no counts were read")


def _measure(h: History, v: Verdict) -> None:
    def longest_gap(acks: list[float], begin: float, end: float) -> float:
        marks = [begin] + sorted(t for t in acks if begin <= t <= end) + [end]
        return max((b - a for a, b in zip(marks, marks[1:])), default=0.0)

    if not h.ops:
        return
    acks = [(op.room, op.ack.t_done) for op in h.ops if op.ack]
    begin = min(op.t_invoked for op in h.ops)
    end = max([op.t_invoked for op in h.ops] + [t for _r, t in acks])  # posts asked until then
    v.longest_ack_gap = longest_gap([t for _r, t in acks], begin, end)
    if h.busy_room:
        v.longest_ack_gap_busy = longest_gap([t for r, t in acks if r == h.busy_room], begin, end)
    for w in h.windows:
        if w.t_heal is None:
            v.recovery[w.name] = None
            continue
        after = [op.ack.t_done for op in h.ops if op.ack and op.t_invoked >= w.t_heal]
        v.recovery[w.name] = (min(after) - w.t_heal) if after else None
