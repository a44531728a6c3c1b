"""The fault suite: Jepsen-style scenarios against a real cluster in network namespaces, judged by
kchat_testkit.history. bench/faults.py (`make faults`) is its command line; tests/test_faults.py runs the
quick set (`make faults FAULTS_ARGS=--quick`) in `make test`.

One cluster serves every scenario of a run: 3 KRaft controllers + 4 brokers, each in a network namespace
of its own (scripts/kafka-local up --netns --loop-disks), `chatroom` 12 partitions, RF 4, min ISR 2, and
two workers, each in a namespace of its own too. A scenario has rooms and users of its own (so its history
is its own), one subscriber per room on each worker, and posts at a bounded rate for PRE seconds, the
fault's `hold`, and POST seconds; the fault is made, held and healed in the middle. Then the log is read
in full, every subscriber must have caught up, every worker's counts must settle, and the checker judges
the history. Between scenarios everything is healed and the cluster must be whole again (every node up,
every chatroom partition's ISR complete, both workers ready).

The Kafka settings that decide the outcomes are in SETTINGS (and README "Guarantees" says what each shows).
"""
from __future__ import annotations

import asyncio
import json
import random
import shutil
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError

from kchat_faust.models import partition_for

from .history import KEY_RE, History, Recorder, Verdict, Window, check, expected_counts, read_counts, read_log
from .kafka import KafkaCluster, Partition, parse_describe, run_kafka_local
from .sse import Subscriber
from .worker import Worker

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "test-artifacts"
TOPIC, PARTITIONS, BROKERS = "chatroom", 12, 4
CONTROLLERS = (100, 101, 102)

SETTINGS = {
    # Never elect a replica that is not in sync: an election can then lose no acknowledged write (the default
    # since Kafka 0.11; stated, because it is what the zero-loss results rest on).
    "unclean.leader.election.enable": "false",
    # A write is acknowledged once 2 of the 4 replicas have it; the cluster-level value is what eligible leader
    # replicas (KIP-966, on by default for new 4.x clusters) check against.
    "min.insync.replicas": "2",
    # How long a follower may fall behind (a cut, a pause) before its leader drops it from the ISR: acks=all
    # writes wait for it until then. 10 s instead of the default 30 s.
    "replica.lag.time.max.ms": "10000",
    # How long the controller waits for a silent broker's heartbeat before it fences the broker and moves its
    # leaderships (the default, stated: the 5 s and 20 s pauses are chosen around it).
    "broker.session.timeout.ms": "9000",
    "broker.heartbeat.interval.ms": "2000",
}
WORKER_ENV = {
    "KCHAT_REPLICATION_FACTOR": "4", "KCHAT_MIN_INSYNC_REPLICAS": "2",
    "KCHAT_PUBLISH_TIMEOUT": "5",  # a stalled publish becomes an unknown outcome (503) after 5 s
    "KCHAT_KEEPALIVE": "5",
    # the group: a dead or cut-off worker's partitions move after 10 s, not 20 s
    "KCHAT_GROUP_SESSION_TIMEOUT": "10",
}
PRE, POST = 6.0, 12.0  # seconds of load before the fault and after healing


def say(text: str) -> None:
    print(f"[faults {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


# -- the environment: one cluster and two workers for every scenario --------------------------------------------
class Env:
    def __init__(self, state: Path) -> None:
        self.state = state
        self.pool = ThreadPoolExecutor(4, thread_name_prefix="faults")
        self.cluster: KafkaCluster | None = None
        self.workers: list[Worker] = []
        self.leftovers: list[str] = []

    async def do(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    async def start(self) -> None:
        extra = ("--netns", "--loop-disks", *[f"--set={k}={v}" for k, v in SETTINGS.items()])
        say(f"starting 3 controllers + {BROKERS} brokers, each in a network namespace ({self.state / 'kafka'})")
        self.cluster = await self.do(lambda: KafkaCluster.start_new(self.state / "kafka", brokers=BROKERS,
                                                                    extra=extra))
        await self.do(lambda: self.cluster.create_topic(TOPIC, PARTITIONS, BROKERS, min_isr=2))
        for i in range(2):
            net = await self.do(self.cluster.host, f"w{i}")
            self.workers.append(Worker(self.cluster.bootstrap, self.state / f"w{i}", WORKER_ENV, net=net))
        say(f"starting 2 workers ({', '.join(w.url for w in self.workers)})")
        await asyncio.gather(*(self.do(w.start, 240.0) for w in self.workers))

    async def stop(self) -> None:
        await asyncio.gather(*(self.do(w.stop_or_kill) for w in self.workers), return_exceptions=True)
        if self.cluster is not None:
            await self.do(self.cluster.down)
            self.leftovers = await self.do(self.cluster.leftovers)
        else:
            await self.do(lambda: run_kafka_local("down", "--kill", state_dir=self.state / "kafka", check=False))
        self.pool.shutdown(wait=False)

    async def partitions(self) -> dict[int, Partition]:
        """chatroom's leaders and ISRs as the brokers' metadata says now (a metadata request: quick, where
        TopicCommand takes a JVM start; it knows no ELR, describe_room does)."""
        consumer = AIOKafkaConsumer(bootstrap_servers=self.cluster.bootstrap, group_id=None,
                                    request_timeout_ms=10000)
        await consumer.start()
        try:
            meta = await consumer._client.fetch_all_metadata()  # group-less: its own cache lacks the topic
            return {p: Partition(p, pm.leader, list(pm.replicas), list(pm.isr))
                    for p, pm in meta._partitions.get(TOPIC, {}).items()}
        finally:
            await consumer.stop()

    async def leader(self, room: str) -> int:
        return (await self.partitions())[partition_for(room, PARTITIONS)].leader

    async def describe_room(self, room: str) -> str:
        """The room's partition as TopicCommand describes it (with the eligible leader replicas)."""
        try:
            p = parse_describe(await self.do(self.cluster.describe, TOPIC))[partition_for(room, PARTITIONS)]
        except (RuntimeError, KeyError) as exc:
            return f"describe failed: {str(exc).splitlines()[-1][:120]}"
        return f"p{p.partition}: leader {p.leader}, isr {p.isr}, elr {p.elr}"

    async def restore(self) -> None:
        """Undo whatever a scenario may have left: cuts, slowness, pauses, frozen disks, stopped processes."""
        c = self.cluster
        await self.do(c.heal)
        await self.do(c.unslow)
        info = await self.do(c.info)
        for nid, disk in (info.get("disks") or {}).items():
            if disk.get("frozen"):
                await self.do(c.disk_resume, int(nid))
        for nid, st in (await self.do(c.status)).items():
            if st["alive"]:
                await self.do(lambda n=nid: c.run("resume", str(n)))
            else:
                await self.do(c.start, nid)
        for w in self.workers:
            w.resume()
            if not w.running():
                await self.do(w.start, 240.0)

    async def whole(self, timeout: float = 180.0) -> str | None:
        """Wait until every node runs, every chatroom ISR is complete and both workers are ready; None when
        whole, else what is still wrong."""
        deadline = time.monotonic() + timeout
        why = "not checked"
        while time.monotonic() < deadline:
            try:
                dead = [n for n, st in (await self.do(self.cluster.status)).items() if not st["alive"]]
                short = [p for p, part in (await self.partitions()).items() if len(part.isr) < BROKERS]
                unready = [w.url for w in self.workers if not w.ready()]
                why = f"dead nodes {dead}, partitions with short ISR {short}, unready workers {unready}"
                if not (dead or short or unready):
                    return None
            except (RuntimeError, KafkaError) as exc:
                why = str(exc).splitlines()[-1][:200] if str(exc) else repr(exc)
            await asyncio.sleep(2)
        return why


# -- a fault in progress --------------------------------------------------------------------------------------------
@dataclass
class Fault:
    env: Env
    busy_room: str
    rng: random.Random
    windows: list[Window] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    pending: list[asyncio.Task] = field(default_factory=list)
    t0: float = field(default_factory=time.monotonic)

    def note(self, text: str) -> None:
        self.notes.append(f"{time.monotonic() - self.t0:6.1f}s {text}")
        say(f"  {text}")

    def begin(self, name: str) -> None:
        """The fault is being made (availability is measured from here)."""
        self.windows.append(Window(name, time.monotonic()))

    def in_force(self) -> None:
        """It is in force: attempts from here until lifting() are those the fault fully met."""
        self.windows[-1].t_in_force = time.monotonic()

    def lifting(self) -> None:
        self.windows[-1].t_lifting = time.monotonic()

    def heal(self) -> None:
        """It is undone (recovery is measured from here)."""
        self.windows[-1].t_heal = time.monotonic()

    async def hold(self, seconds: float, describe_at: float | None = None) -> None:
        """Keep the fault for `seconds`; describe the busy room's partition `describe_at` seconds in, on the side
        (TopicCommand may wait long on a paused or cut-off broker: that must not lengthen the fault)."""
        end = time.monotonic() + seconds
        if describe_at is not None and describe_at < seconds:
            await asyncio.sleep(describe_at)
            t = time.monotonic() - self.t0

            async def describe() -> None:
                self.notes.append(f"{t:6.1f}s during: {await self.env.describe_room(self.busy_room)}")
            self.pending.append(asyncio.create_task(describe()))
        await asyncio.sleep(max(0.0, end - time.monotonic()))

    async def finish(self) -> None:
        """Wait (a while) for the describes still running."""
        if self.pending:
            await asyncio.wait(self.pending, timeout=60)
            for task in self.pending:
                task.cancel()

    async def held(self, name: str, make: Callable[[], object], undo: Callable[[], object], seconds: float,
                   describe_at: float | None = None) -> None:
        """Make the fault (make runs in a thread: kafka-local and process control block), keep it for
        `seconds`, undo it; the window's four times are noted on the way."""
        self.begin(name)
        await self.env.do(make)
        self.in_force()
        await self.hold(seconds, describe_at)
        self.lifting()
        await self.env.do(undo)
        self.heal()

    @property
    def cluster(self) -> KafkaCluster:
        return self.env.cluster


# -- the scenarios -------------------------------------------------------------------------------------------------
async def kill_busy_leader(f: Fault) -> None:
    leader, c = await f.env.leader(f.busy_room), f.cluster
    f.note(f"SIGKILL broker {leader}, leader of the busy room's partition")
    await f.held(f"broker {leader} killed", lambda: c.kill(leader), lambda: c.start(leader), 10, describe_at=4)


async def kill_two_brokers(f: Fault) -> None:
    leader, c = await f.env.leader(f.busy_room), f.cluster
    other = f.rng.choice([b for b in range(BROKERS) if b != leader])
    f.note(f"SIGKILL brokers {leader} (the busy leader) and {other} at once: 2 of 4 replicas left = min ISR")
    await f.held(f"brokers {leader},{other} killed", lambda: (c.kill(leader), c.kill(other)),
                 lambda: (c.start(leader), c.start(other)), 15, describe_at=8)


def pause_leader(seconds: float) -> Callable[[Fault], Awaitable[None]]:
    async def fault(f: Fault) -> None:
        leader, c = await f.env.leader(f.busy_room), f.cluster
        f.note(f"SIGSTOP broker {leader} (busy leader) for {seconds:g}s; broker.session.timeout.ms is "
               f"{int(SETTINGS['broker.session.timeout.ms']) / 1000:g}s")
        await f.held(f"broker {leader} paused {seconds:g}s", lambda: c.pause(leader), lambda: c.resume(leader),
                     seconds, describe_at=min(seconds - 1, 12))
        f.note(f"resumed; a few seconds later: {await f.env.describe_room(f.busy_room)}")
    return fault


async def pause_follower(f: Fault) -> None:
    leader, c = await f.env.leader(f.busy_room), f.cluster
    follower = f.rng.choice([b for b in range(BROKERS) if b != leader])
    f.note(f"SIGSTOP broker {follower}, a follower of the busy partition, for 20s")
    await f.held(f"broker {follower} paused", lambda: c.pause(follower), lambda: c.resume(follower), 20,
                 describe_at=12)


async def isolate_broker(f: Fault) -> None:
    leader, c = await f.env.leader(f.busy_room), f.cluster
    f.note(f"isolate broker {leader} (busy leader) from every node, worker and this machine for 20s")
    await f.held(f"broker {leader} isolated", lambda: c.isolate(str(leader)), c.heal, 20, describe_at=14)


async def cut_leader_from_followers(f: Fault) -> None:
    leader, c = await f.env.leader(f.busy_room), f.cluster
    followers = ",".join(str(b) for b in range(BROKERS) if b != leader)
    f.note(f"cut broker {leader} (busy leader) from brokers {followers} only (controllers and workers still "
           f"reach it) for 20s; replica.lag.time.max.ms is {int(SETTINGS['replica.lag.time.max.ms']) / 1000:g}s")
    await f.held(f"broker {leader} cut from followers", lambda: c.cut(str(leader), followers), c.heal, 20,
                 describe_at=14)


async def cut_broker_from_controllers(f: Fault) -> None:
    leader, c = await f.env.leader(f.busy_room), f.cluster
    f.note(f"cut broker {leader} (busy leader) from the controllers only for 20s")
    await f.held(f"broker {leader} cut from controllers", lambda: c.cut(str(leader), "controllers"), c.heal, 20,
                 describe_at=14)


async def kill_active_controller(f: Fault) -> None:
    c = f.cluster
    active = await f.env.do(c.active_controller)
    f.note(f"SIGKILL controller {active}, the active one, for 10s")
    await f.held(f"controller {active} killed", lambda: c.kill(active), lambda: c.start(active), 10)
    f.note(f"quorum now led by {await f.env.do(c.active_controller)}")


async def pause_active_controller(f: Fault) -> None:
    c = f.cluster
    active = await f.env.do(c.active_controller)
    f.note(f"SIGSTOP controller {active}, the active one, for 15s")
    await f.held(f"controller {active} paused", lambda: c.pause(active), lambda: c.resume(active), 15)
    f.note(f"quorum now led by {await f.env.do(c.active_controller)}")


async def random_halves(f: Fault) -> None:
    members = [str(n) for n in CONTROLLERS] + [str(b) for b in range(BROKERS)] + ["w0", "w1"]
    f.rng.shuffle(members)
    a, b = sorted(members[:len(members) // 2]), sorted(members[len(members) // 2:])
    f.note(f"random halves for 20s: {','.join(a)} | {','.join(b)}")
    await f.held("random halves", lambda: f.cluster.cut(",".join(a), ",".join(b)), f.cluster.heal, 20,
                 describe_at=14)


async def worker_cut_from_brokers(f: Fault) -> None:
    f.note("cut worker w0 from every broker for 20s (clients still reach it)")
    await f.held("w0 cut from brokers", lambda: f.cluster.cut("w0", "brokers"), f.cluster.heal, 20)


async def netem_everywhere(f: Fault) -> None:
    f.note("every node and worker: +40±10 ms on every packet in, 1% lost, for 25s")
    await f.held("slow network", lambda: f.cluster.slow("all", 40, 10, 1), f.cluster.unslow, 25, describe_at=15)


async def kill_worker(f: Fault) -> None:
    w = f.env.workers[1]
    f.note("SIGKILL worker w1 mid-batch; start it again 5s later")
    await f.held("w1 killed", w.kill, lambda: w.start(240.0), 5)


async def pause_worker(f: Fault) -> None:
    w = f.env.workers[1]
    f.note(f"SIGSTOP worker w1 mid-batch for 15s (Faust's group session timeout is "
           f"{WORKER_ENV['KCHAT_GROUP_SESSION_TIMEOUT']}s)")
    await f.held("w1 paused", w.pause, w.resume, 15)


async def stall_leader_disk(f: Fault) -> None:
    leader, c = await f.env.leader(f.busy_room), f.cluster
    f.note(f"freeze broker {leader}'s disk (busy leader) for 15s")
    await f.held(f"broker {leader} disk stalled", lambda: c.disk_stall(leader), lambda: c.disk_resume(leader), 15,
                 describe_at=10)


@dataclass
class Scenario:
    name: str
    fault: Callable[[Fault], Awaitable[None]]
    hold: float  # seconds from the fault to its healing, about
    quick: bool = False


SCENARIOS = [
    Scenario("kill-busy-leader", kill_busy_leader, 12, quick=True),
    Scenario("kill-two-brokers", kill_two_brokers, 18),
    Scenario("pause-leader-5s", pause_leader(5), 5),
    Scenario("pause-leader-20s", pause_leader(20), 20),
    Scenario("pause-follower", pause_follower, 20),
    Scenario("isolate-broker", isolate_broker, 20, quick=True),
    Scenario("cut-leader-from-followers", cut_leader_from_followers, 20),
    Scenario("cut-broker-from-controllers", cut_broker_from_controllers, 20),
    Scenario("kill-active-controller", kill_active_controller, 15),
    Scenario("pause-active-controller", pause_active_controller, 15),
    Scenario("random-halves", random_halves, 20),
    Scenario("worker-cut-from-brokers", worker_cut_from_brokers, 20, quick=True),
    Scenario("netem-everywhere", netem_everywhere, 25),
    Scenario("kill-worker", kill_worker, 8),
    Scenario("pause-worker", pause_worker, 15),
    Scenario("stall-leader-disk", stall_leader_disk, 15),
]


# -- running them ------------------------------------------------------------------------------------------------
@dataclass
class Outcome:
    scenario: str
    verdict: Verdict | None = None
    notes: list[str] = field(default_factory=list)
    attempts: dict = field(default_factory=dict)
    seconds: float = 0.0
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error and self.verdict is not None and self.verdict.ok

    def to_json(self) -> dict:
        return {"scenario": self.scenario, "ok": self.ok, "seconds": round(self.seconds, 1), "error": self.error,
                "notes": self.notes, "attempts": self.attempts,
                "verdict": self.verdict.to_json() if self.verdict else None}


def rooms_for(run_id: str, n: int = 3) -> list[str]:
    """n rooms of this run in n different partitions (the first is the busy one)."""
    rooms, used = [], set()
    for k in range(1000):
        room = f"{run_id}-r{k}"
        p = partition_for(room, PARTITIONS)
        if p not in used:
            rooms.append(room)
            used.add(p)
        if len(rooms) == n:
            return rooms
    raise RuntimeError("no rooms in distinct partitions")


async def settle(subs: list[Subscriber], rooms: set[str], bootstrap: str, timeout: float = 120.0):
    """Read the log, then wait until every subscriber has every message of its room (its first copy: readers
    drop later copies of a key) -- at most timeout (resumed streams after a fault, on a machine that may
    stall: a subscriber still short at the end counts as a loss)."""
    deadline = time.monotonic() + timeout
    log = await read_log(bootstrap, rooms)
    first = {}
    for r in log:
        first.setdefault(r.key, r)
    want = {room: {r.key for r in first.values() if r.room == room} for room in rooms}
    while time.monotonic() < deadline:
        if all(want[s.room] <= {KEY_RE.match(e.text).group(1) for e in s.events if KEY_RE.match(e.text)}
               for s in subs):
            break
        await asyncio.sleep(0.5)
    await asyncio.sleep(2)  # room for late duplicates to show
    return await read_log(bootstrap, rooms)


async def settled_counts(workers: list[str], users: list[str], expected: dict[str, int], fault: Fault,
                         timeout: float = 120.0):
    """Counts once every worker answers the expected ones and still does a few seconds later (or at timeout,
    noting how the totals moved, to tell a lag from a loss)."""
    began = time.monotonic()
    seen, trail = {}, []
    while time.monotonic() < began + timeout:
        seen = await read_counts(workers, users)
        if all(c == expected for c in seen.values()):
            await asyncio.sleep(3)
            return await read_counts(workers, users)
        totals = [sum(c.values()) if c else None for c in seen.values()]
        if not trail or trail[-1][1] != totals:
            trail.append((round(time.monotonic() - began), totals))
        await asyncio.sleep(1)
    fault.note(f"counts not settled after {timeout:g}s: want {sum(expected.values())} in all; "
               f"totals per worker over time (s, totals): {trail[-8:]}")
    return seen


async def run_scenario(env: Env, sc: Scenario, rate: float, rng: random.Random) -> Outcome:
    out = Outcome(sc.name)
    began = time.monotonic()
    run_id = f"{sc.name.split('-')[0][:6]}{uuid.uuid4().hex[:6]}"
    rooms, users = rooms_for(run_id), [f"{run_id}-u{k}" for k in range(4)]
    urls = [w.url for w in env.workers]
    subs = [Subscriber(w.url, room, reconnect=True, retry_delay=0.5, read_timeout=20, name=f"{room}@w{i}")
            for i, w in enumerate(env.workers) for room in rooms]
    fault = Fault(env, rooms[0], rng)
    try:
        await asyncio.gather(*(s.start(timeout=30) for s in subs))
        # an attempt gives up 3 s after the workers' publish timeout would have answered 503
        rec = Recorder(urls, rooms, users, run_id, rate=rate,
                       attempt_timeout=float(WORKER_ENV["KCHAT_PUBLISH_TIMEOUT"]) + 3)
        fault.note(f"busy room {rooms[0]}: {await env.describe_room(rooms[0])}")

        stop = asyncio.Event()

        async def fault_then_stop():
            try:
                await asyncio.sleep(PRE)
                await sc.fault(fault)
                await asyncio.sleep(POST)  # load after healing: how it recovers
            finally:
                stop.set()
                await fault.finish()

        await asyncio.gather(rec.run(stop, max_duration=PRE + sc.hold + POST + 180, retry_for=30),
                             fault_then_stop())
        t = time.monotonic()
        await env.restore()
        why = await env.whole()
        fault.note(f"load done; cluster whole again {time.monotonic() - t:.0f}s later" if not why
                   else f"cluster not whole after healing: {why}")
        t = time.monotonic()
        log = await settle(subs, set(rooms), env.cluster.bootstrap)
        history = History(rec.ops, subs, log, {}, fault.windows, busy_room=rooms[0])
        expected = expected_counts(history)
        t_subs = time.monotonic() - t
        history.counts = await settled_counts(urls, users, {u: expected.get(u, 0) for u in users}, fault)
        fault.note(f"log read and subscribers caught up in {t_subs:.0f}s; counts settled "
                   f"{time.monotonic() - t - t_subs:.0f}s later")
        out.verdict = check(history)
        out.attempts = attempt_summary(rec, fault.windows)
        if why:
            out.error = f"the cluster was not whole again after healing: {why}"
    except Exception as exc:  # a broken scenario must not stop the others
        out.error = f"{exc.__class__.__name__}: {exc}"[:500]
        say(f"  scenario failed to run: {out.error}")
    finally:
        for s in subs:
            await s.stop()
        out.notes = sorted(fault.notes, key=lambda n: float(n.split('s', 1)[0]))  # describes finish late
        out.seconds = time.monotonic() - began
    return out


def attempt_summary(rec: Recorder, windows: list[Window]) -> dict:
    """Attempts by worker and outcome, overall and while the fault lasted (what the clients saw)."""
    t_start = (windows[0].t_in_force or windows[0].t_start) if windows else None
    t_heal = (windows[-1].t_lifting or windows[-1].t_heal) if windows else None
    total, during = Counter(), Counter()
    for op in rec.ops:
        for a in op.attempts:
            tag = f"{a.worker.rsplit('/', 1)[-1]} {a.outcome}" + (f" {a.status}" if a.status else "")
            total[tag] += 1
            if t_start and t_heal and t_start <= a.t_sent <= t_heal:
                during[tag] += 1
    return {"all": dict(total), "during the fault": dict(during)}


async def server_deduplicates(url: str) -> bool:
    """Whether the worker honours Idempotency-Key: the same key twice gives the same stored message."""
    key = f"probe-{uuid.uuid4().hex[:8]}"
    async with httpx.AsyncClient(timeout=30) as client:
        answers = [await client.post(f"{url}/api/rooms/{key}/messages", json={"user": "probe", "text": key},
                                     headers={"Idempotency-Key": key}) for _ in range(2)]
    return all(a.status_code in (200, 201) for a in answers) and answers[0].json() == answers[1].json()


# -- the run and its report ---------------------------------------------------------------------------------------
@dataclass
class Report:
    outcomes: list[Outcome] = field(default_factory=list)
    server_deduplicates: bool | None = None  # whether the workers honoured Idempotency-Key when probed
    setup_error: str = ""
    leftovers: list[str] = field(default_factory=list)
    seconds: float = 0.0
    seed: int = 0
    json_path: Path | None = None

    @property
    def ok(self) -> bool:
        return not self.setup_error and not self.leftovers and all(o.ok for o in self.outcomes)

    def table(self) -> str:
        head = ("scenario", "acked", "lost", "dup", "reord", "unknown(stored)", "gaps", "counts", "no-ack s",
                "busy no-ack s", "recovery s", "verdict")
        rows = [head]
        for o in self.outcomes:
            v = o.verdict
            if v is None:
                rows.append((o.scenario, *["-"] * 10, "ERROR"))
                continue
            rec = [x for x in v.recovery.values() if x is not None]
            rows.append((o.scenario, str(v.acknowledged), str(v.lost), str(v.duplicated), str(v.reordered),
                         f"{v.unknown}({v.unknown_stored})", str(v.gaps), "ok" if not v.count_errors else "WRONG",
                         f"{v.longest_ack_gap:.1f}", f"{v.longest_ack_gap_busy:.1f}",
                         f"{max(rec):.1f}" if rec else "-", "ok" if o.ok else "FAIL"))
        widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
        return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
                         for r in rows)

    def render(self) -> str:
        out = [self.table(), ""]
        for o in self.outcomes:
            out.append(f"{o.scenario} ({o.seconds:.0f}s): {'ok' if o.ok else 'FAILED'}")
            out += [f"    {n}" for n in o.notes]
            if o.attempts.get("during the fault"):
                out.append(f"    attempts during the fault: {o.attempts['during the fault']}")
            if o.error:
                out.append(f"    error: {o.error}")
            if o.verdict:
                out += [f"    - {p}" for p in o.verdict.problems[:12]]
        if self.server_deduplicates is not None:
            out.append(f"the workers {'honour' if self.server_deduplicates else 'do NOT honour'} Idempotency-Key "
                       "(a post repeated with its key " + ("gives the same message)" if self.server_deduplicates
                                                            else "is stored twice): retried unknowns may duplicate)"))
        if self.setup_error:
            out.append(f"setup failed: {self.setup_error}")
        out.append("teardown left: " + ("; ".join(self.leftovers) if self.leftovers else "nothing"))
        out.append(f"{len(self.outcomes)} scenario(s) in {self.seconds / 60:.1f} min (seed {self.seed})"
                   + (f"; JSON: {self.json_path}" if self.json_path else ""))
        return "\n".join(out)

    def to_json(self) -> dict:
        return {"ok": self.ok, "seconds": round(self.seconds, 1), "seed": self.seed, "settings": SETTINGS,
                "server_deduplicates": self.server_deduplicates,
                "worker_env": WORKER_ENV, "setup_error": self.setup_error, "leftovers": self.leftovers,
                "scenarios": [o.to_json() for o in self.outcomes]}


async def run(names: list[str] | None = None, quick: bool = False, rate: float = 20.0, seed: int | None = None,
              state_dir: Path | None = None, keep: bool = False, artifacts: Path = ARTIFACTS) -> Report:
    """Run the chosen scenarios (default all; quick: the quick three) on one cluster; write the JSON report.
    The state dir (Kafka and worker logs) is kept when something failed, or with keep."""
    chosen = [s for s in SCENARIOS if (names and s.name in names) or (not names and (s.quick or not quick))]
    rep = Report(seed=seed if seed is not None else random.randrange(1 << 30))
    rng = random.Random(rep.seed)
    began = time.monotonic()
    state = Path(state_dir) if state_dir else Path(tempfile.mkdtemp(prefix="kchat-faults-"))
    env = Env(state)
    try:
        await env.start()
        rep.server_deduplicates = await server_deduplicates(env.workers[0].url)
        for sc in chosen:
            why = await env.whole()
            if why:
                rep.outcomes.append(Outcome(sc.name, error=f"the cluster was not whole before it: {why}"))
                await env.restore()
                continue
            say(f"scenario {sc.name}")
            o = await run_scenario(env, sc, rate, rng)
            rep.outcomes.append(o)
            say(f"  {'ok' if o.ok else 'FAILED'} in {o.seconds:.0f}s"
                + (f": {o.verdict.problems[:2]}" if o.verdict and o.verdict.problems else "")
                + (f" {o.error}" if o.error else ""))
    except Exception as exc:
        rep.setup_error = f"{exc.__class__.__name__}: {exc}"[:1000]
    finally:
        await env.stop()
        rep.leftovers = env.leftovers
        rep.seconds = time.monotonic() - began
        artifacts.mkdir(parents=True, exist_ok=True)
        rep.json_path = artifacts / f"faults-{time.strftime('%Y%m%d-%H%M%S')}{'-quick' if quick else ''}.json"
        rep.json_path.write_text(json.dumps(rep.to_json(), indent=2))
        if rep.ok and not keep and state_dir is None:
            shutil.rmtree(state, ignore_errors=True)
        else:
            say(f"kept {state} (Kafka logs in kafka/logs/, worker logs in w*/worker.log)")
    return rep
