"""The fault suite's scenarios: what each fault does, and SCENARIOS, the one table of how long each is held.

A scenario's fault function makes the fault, keeps it `f.hold` seconds (its row's `hold`) and undoes it, through
Fault.held; its notes quote the same `f.hold`, so the table is the only place a scenario's timing is written.
"""
from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from .faults_env import BROKERS, CONTROLLERS, SETTINGS, WORKER_ENV, Env, say
from .history import Window
from .kafka import KafkaCluster

@dataclass
class Fault:
    """A fault in progress: its windows (history.Window) and notes, as the checker and the report read them."""
    env: Env
    busy_room: str
    rng: random.Random
    hold: float  # seconds to keep the fault (its Scenario's)
    describe_at: float | None = None  # describe the busy room's partition this many seconds in (its Scenario's)
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

    async def keep(self) -> None:
        """Keep the fault for `hold` seconds; describe the busy room's partition `describe_at` seconds in, on the
        side (TopicCommand may wait long on a paused or cut-off broker: that must not lengthen the fault)."""
        end = time.monotonic() + self.hold
        if self.describe_at is not None and self.describe_at < self.hold:
            await asyncio.sleep(self.describe_at)
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

    async def held(self, name: str, make: Callable[[], object], undo: Callable[[], object]) -> None:
        """Make the fault (make runs in a thread: kafka-local and process control block), keep it `hold`
        seconds, undo it; the window's four times are noted on the way."""
        self.begin(name)
        await self.env.do(make)
        self.in_force()
        await self.keep()
        self.lifting()
        await self.env.do(undo)
        self.heal()

    @property
    def cluster(self) -> KafkaCluster:
        return self.env.cluster


# -- the scenarios -------------------------------------------------------------------------------------------------
async def kill_busy_leader(f: Fault) -> None:
    leader, c = await f.env.leader(f.busy_room), f.cluster
    f.note(f"SIGKILL broker {leader}, leader of the busy room's partition, for {f.hold:g}s")
    await f.held(f"broker {leader} killed", lambda: c.kill(leader), lambda: c.start(leader))


async def kill_two_brokers(f: Fault) -> None:
    leader, c = await f.env.leader(f.busy_room), f.cluster
    other = f.rng.choice([b for b in range(BROKERS) if b != leader])
    f.note(f"SIGKILL brokers {leader} (the busy leader) and {other} at once for {f.hold:g}s: 2 of 4 replicas "
           "left = min ISR")
    await f.held(f"brokers {leader},{other} killed", lambda: (c.kill(leader), c.kill(other)),
                 lambda: (c.start(leader), c.start(other)))


async def pause_leader(f: Fault) -> None:
    leader, c = await f.env.leader(f.busy_room), f.cluster
    f.note(f"SIGSTOP broker {leader} (busy leader) for {f.hold:g}s; broker.session.timeout.ms is "
           f"{int(SETTINGS['broker.session.timeout.ms']) / 1000:g}s")
    await f.held(f"broker {leader} paused {f.hold:g}s", lambda: c.pause(leader), lambda: c.resume(leader))
    f.note(f"resumed; a few seconds later: {await f.env.describe_room(f.busy_room)}")


async def pause_follower(f: Fault) -> None:
    leader, c = await f.env.leader(f.busy_room), f.cluster
    follower = f.rng.choice([b for b in range(BROKERS) if b != leader])
    f.note(f"SIGSTOP broker {follower}, a follower of the busy partition, for {f.hold:g}s")
    await f.held(f"broker {follower} paused", lambda: c.pause(follower), lambda: c.resume(follower))


async def isolate_broker(f: Fault) -> None:
    leader, c = await f.env.leader(f.busy_room), f.cluster
    f.note(f"isolate broker {leader} (busy leader) from every node, worker and this machine for {f.hold:g}s")
    await f.held(f"broker {leader} isolated", lambda: c.isolate(str(leader)), c.heal)


async def cut_leader_from_followers(f: Fault) -> None:
    leader, c = await f.env.leader(f.busy_room), f.cluster
    followers = ",".join(str(b) for b in range(BROKERS) if b != leader)
    f.note(f"cut broker {leader} (busy leader) from brokers {followers} only (controllers and workers still "
           f"reach it) for {f.hold:g}s; replica.lag.time.max.ms is "
           f"{int(SETTINGS['replica.lag.time.max.ms']) / 1000:g}s")
    await f.held(f"broker {leader} cut from followers", lambda: c.cut(str(leader), followers), c.heal)


async def cut_broker_from_controllers(f: Fault) -> None:
    leader, c = await f.env.leader(f.busy_room), f.cluster
    f.note(f"cut broker {leader} (busy leader) from the controllers only for {f.hold:g}s")
    await f.held(f"broker {leader} cut from controllers", lambda: c.cut(str(leader), "controllers"), c.heal)


async def active_controller(f: Fault, signal: str, done: str, make: Callable[[KafkaCluster, int], object],
                            undo: Callable[[KafkaCluster, int], object]) -> None:
    """The active controller's fault, and who leads the quorum after it."""
    c = f.cluster
    active = await f.env.do(c.active_controller)
    f.note(f"{signal} controller {active}, the active one, for {f.hold:g}s")
    await f.held(f"controller {active} {done}", lambda: make(c, active), lambda: undo(c, active))
    f.note(f"quorum now led by {await f.env.do(c.active_controller)}")


async def kill_active_controller(f: Fault) -> None:
    await active_controller(f, "SIGKILL", "killed", lambda c, n: c.kill(n), lambda c, n: c.start(n))


async def pause_active_controller(f: Fault) -> None:
    await active_controller(f, "SIGSTOP", "paused", lambda c, n: c.pause(n), lambda c, n: c.resume(n))


async def random_halves(f: Fault) -> None:
    members = [str(n) for n in CONTROLLERS] + [str(b) for b in range(BROKERS)] + ["w0", "w1"]
    f.rng.shuffle(members)
    a, b = sorted(members[:len(members) // 2]), sorted(members[len(members) // 2:])
    f.note(f"random halves for {f.hold:g}s: {','.join(a)} | {','.join(b)}")
    await f.held("random halves", lambda: f.cluster.cut(",".join(a), ",".join(b)), f.cluster.heal)


async def worker_cut_from_brokers(f: Fault) -> None:
    f.note(f"cut worker w0 from every broker for {f.hold:g}s (clients still reach it)")
    await f.held("w0 cut from brokers", lambda: f.cluster.cut("w0", "brokers"), f.cluster.heal)


async def netem_everywhere(f: Fault) -> None:
    f.note(f"every node and worker: +40±10 ms on every packet in, 1% lost, for {f.hold:g}s")
    await f.held("slow network", lambda: f.cluster.slow("all", 40, 10, 1), f.cluster.unslow)


async def kill_worker(f: Fault) -> None:
    w = f.env.workers[1]
    f.note(f"SIGKILL worker w1 mid-batch; start it again {f.hold:g}s later")
    await f.held("w1 killed", w.kill, lambda: w.start(240.0))


async def pause_worker(f: Fault) -> None:
    w = f.env.workers[1]
    f.note(f"SIGSTOP worker w1 mid-batch for {f.hold:g}s (Faust's group session timeout is "
           f"{WORKER_ENV['KCHAT_GROUP_SESSION_TIMEOUT']}s)")
    await f.held("w1 paused", w.pause, w.resume)


async def stall_leader_disk(f: Fault) -> None:
    leader, c = await f.env.leader(f.busy_room), f.cluster
    f.note(f"freeze broker {leader}'s disk (busy leader) for {f.hold:g}s")
    await f.held(f"broker {leader} disk stalled", lambda: c.disk_stall(leader), lambda: c.disk_resume(leader))


@dataclass
class Scenario:
    name: str
    fault: Callable[[Fault], Awaitable[None]]
    hold: float  # seconds the fault is kept: from its being in force to the start of its undoing
    describe_at: float | None = None  # seconds in, the busy room's partition is described (None: not at all)
    quick: bool = False


SCENARIOS = [
    Scenario("kill-busy-leader", kill_busy_leader, hold=10, describe_at=4, quick=True),
    Scenario("kill-two-brokers", kill_two_brokers, hold=15, describe_at=8),
    # 5 s and 20 s: either side of broker.session.timeout.ms (9 s)
    Scenario("pause-leader-5s", pause_leader, hold=5, describe_at=4),
    Scenario("pause-leader-20s", pause_leader, hold=20, describe_at=12),
    Scenario("pause-follower", pause_follower, hold=20, describe_at=12),
    Scenario("isolate-broker", isolate_broker, hold=20, describe_at=14, quick=True),
    Scenario("cut-leader-from-followers", cut_leader_from_followers, hold=20, describe_at=14),
    Scenario("cut-broker-from-controllers", cut_broker_from_controllers, hold=20, describe_at=14),
    Scenario("kill-active-controller", kill_active_controller, hold=10),
    Scenario("pause-active-controller", pause_active_controller, hold=15),
    Scenario("random-halves", random_halves, hold=20, describe_at=14),
    Scenario("worker-cut-from-brokers", worker_cut_from_brokers, hold=20, quick=True),
    Scenario("netem-everywhere", netem_everywhere, hold=25, describe_at=15),
    Scenario("kill-worker", kill_worker, hold=5),
    Scenario("pause-worker", pause_worker, hold=15),
    Scenario("stall-leader-disk", stall_leader_disk, hold=15, describe_at=10),
]

