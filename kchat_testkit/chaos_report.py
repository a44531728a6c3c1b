"""The chaos run's records and its verdict: the settings (Config), each post's answer (Post), and the Report
that checks what was posted against what every subscriber received and what the counts say, and renders it.

kchat_testkit/chaos.py says what the run does and checks; the checks live here so that any load -- the local
cluster's (`make chaos`) or the one through a Kubernetes deployment's NodePorts (k8s/tests/) -- is judged by
the same rules. tests/test_chaos.py feeds Report.check made-up damage.
"""
from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from kchat_faust.models import parse_event_id, partition_for

from .kafka import parse_describe
from .sse import Subscriber

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

    def figures(self) -> dict:
        """The run's outcome as figures for a JSON artifact (the k8s tests'): answers by status, what each
        subscriber lost, got twice or out of order, the counts and the resumes."""
        ok = self.ok_posts()
        statuses = Counter("200" if p.status == 200 else "503" if p.status == 503 else
                           "no answer" if p.status is None else str(p.status) for p in self.posts)
        lost = max((sum(1 for p in ok if p.text not in {m.text for m in s.events}) for s in self.subscribers),
                   default=0)
        dups = sum(len(s.events) - len({m.text for m in s.events}) for s in self.subscribers)
        disorder = sum(sum(1 for x, y in zip(s.events, s.events[1:]) if y.offset <= x.offset)
                       for s in self.subscribers)
        expected = self.expected_counts()
        return {"status": ", ".join(f"{n} {k}" for k, n in sorted(statuses.items())), "ok": len(ok),
                "not_sent": self.not_sent, "lost": lost, "duplicated": dups, "out_of_order": disorder,
                "counts_expected": expected, "counts_seen": self.counts,
                "counts_exact": bool(self.counts) and all(v == expected for v in self.counts.values()),
                "resumes": sum(len(s.drops) for s in self.subscribers),
                "received": {s.name: len(s.events) for s in self.subscribers}}

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

