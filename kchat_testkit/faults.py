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

Here the runner; beside it, each of one concern: faults_env (the cluster, the workers, SETTINGS: the Kafka
settings that decide the outcomes), faults_scenarios (the faults and SCENARIOS, the table of how long each is
held), faults_report (outcomes, the printed table, the JSON); kchat_testkit.history records and judges.
"""
from __future__ import annotations

import asyncio
import json
import random
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import httpx

from kchat_faust.models import partition_for

from .faults_env import PARTITIONS, SETTINGS, WORKER_ENV, Env, say
from .faults_report import Outcome, Report, attempt_summary
from .faults_scenarios import SCENARIOS, Fault, Scenario
from .history import KEY_RE, History, Recorder, check, expected_counts, read_counts, read_log
from .sse import Subscriber

__all__ = ["SCENARIOS", "SETTINGS", "WORKER_ENV", "Outcome", "Report", "Scenario", "run"]

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "test-artifacts"
PRE, POST = 6.0, 12.0  # seconds of load before the fault and after healing


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
    fault = Fault(env, rooms[0], rng, sc.hold, sc.describe_at)
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


async def server_deduplicates(url: str) -> bool:
    """Whether the worker honours Idempotency-Key: the same key twice gives the same stored message."""
    key = f"probe-{uuid.uuid4().hex[:8]}"
    async with httpx.AsyncClient(timeout=30) as client:
        answers = [await client.post(f"{url}/api/rooms/{key}/messages", json={"user": "probe", "text": key},
                                     headers={"Idempotency-Key": key}) for _ in range(2)]
    return all(a.status_code in (200, 201) for a in answers) and answers[0].json() == answers[1].json()


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
