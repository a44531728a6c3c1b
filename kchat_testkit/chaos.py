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

The pieces, one concern each: chaos_report.py (Config, Post, Report: the checks and the rendering),
chaos_load.py (the subscribers, the paced posts, waiting for delivery and counts), chaos_disrupt.py (the
Disruption beside the load: LocalBrokerKill here, PodDelete and RollingUpdate on Kubernetes, k8s/tests/).

The run is bounded: Config.duration_limit caps the posting phase (posts not sent by then are reported),
delivery and counts have their own timeouts, and everything it started is stopped at the end. The state dir
(Kafka and worker logs) is kept when a check fails or with Config.keep, else removed.
"""
from __future__ import annotations

import asyncio
import random
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp
import httpx

from .chaos_disrupt import Disruption, LocalBrokerKill
from .chaos_load import Load, Phase, Stream, send_post, stderr_say
from .chaos_report import BROKERS, ROOM, TOPIC, Config, Post, Report
from .kafka import KafkaCluster, describe_topic, run_kafka_local
from .worker import Worker

# what callers take from this module: the run, and the parts a run of another kind (k8s/tests/) puts together
__all__ = ["Config", "Load", "Phase", "Post", "ROOM", "Report", "Run", "Stream", "run", "send_post", "under_load"]


async def under_load(load: Load, disruption: Disruption, session: aiohttp.ClientSession, phase: Phase) -> None:
    """Post everything while disruption runs; return once its last cycle is over (what it stopped runs
    again). The subscribers are the caller's to open before and to read after."""
    rep = load.report
    task = asyncio.create_task(disruption.during(phase))
    try:
        try:
            await load.post_all(session, phase)
        finally:
            rep.posting_seconds = phase.rel()
            phase.posting_done.set()
        load.say(f"posting done in {rep.posting_seconds:.1f}s; waiting for the chaos cycle to end")
        await task  # finishes a cycle under way
    finally:
        if not task.done():
            task.cancel()
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass


class Run:
    """The local run: its own cluster and two workers, LocalBrokerKill as the disruption."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.report = Report(config=cfg)
        self.rng = random.Random(cfg.seed)
        self.cluster: KafkaCluster | None = None
        self.workers: list[Worker] = []

    def say(self, text: str) -> None:
        if self.cfg.progress:
            stderr_say(text)

    async def describe(self) -> str:
        return await asyncio.to_thread(describe_topic, self.cluster.bootstrap, TOPIC)

    async def setup(self, state: Path) -> None:
        self.say(f"starting 3 controllers + {BROKERS} brokers in {state / 'kafka'}")
        self.cluster = await asyncio.to_thread(lambda: KafkaCluster.start_new(state / "kafka", brokers=BROKERS))
        await asyncio.to_thread(lambda: self.cluster.run("topic", TOPIC, "--partitions", "12", "--replication-factor",
                                                "4", "--min-insync-replicas", "2", timeout=180))
        env = {"KCHAT_REPLICATION_FACTOR": "4", "KCHAT_MIN_INSYNC_REPLICAS": "2",
               "KCHAT_PUBLISH_TIMEOUT": f"{self.cfg.publish_timeout:g}", "KCHAT_KEEPALIVE": "5"}
        self.workers = [Worker(self.cluster.bootstrap, state / f"worker{i}", env) for i in range(2)]
        self.report.worker_logs = [w.log_path for w in self.workers]
        self.say(f"starting 2 workers against {self.cluster.bootstrap}")
        await asyncio.gather(*(asyncio.to_thread(w.start, 180.0) for w in self.workers))
        self.report.describe_before = await self.describe()

    async def teardown(self, state: Path, load: Load | None) -> None:
        self.say("stopping the subscribers, the workers and Kafka")
        if load is not None:
            await load.stop()
        await asyncio.gather(*(asyncio.to_thread(w.stop_or_kill) for w in self.workers), return_exceptions=True)
        if self.cluster is not None:
            await asyncio.to_thread(self.cluster.down)
        else:
            await asyncio.to_thread(lambda: run_kafka_local("down", "--kill", state_dir=state / "kafka", check=False,
                                                   timeout=60))

    async def main(self) -> Report:
        cfg, rep = self.cfg, self.report
        began = time.monotonic()
        rep.seed = cfg.seed if cfg.seed is not None else random.randrange(1 << 30)
        self.rng.seed(rep.seed)
        rep.run_id = f"chaos{uuid.uuid4().hex[:6]}"
        state = Path(cfg.state_dir) if cfg.state_dir else Path(tempfile.mkdtemp(prefix="kchat-chaos-"))
        state.mkdir(parents=True, exist_ok=True)
        rep.state_dir = state
        load: Load | None = None
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session, \
                httpx.AsyncClient(limits=httpx.Limits(max_connections=None)) as streams:
            try:
                await self.setup(state)
                rep.setup_seconds = time.monotonic() - began
                # on each worker a native subscriber and a seed-compatible one; posts alternate workers
                load = Load(cfg, rep, [w.url for w in self.workers],
                            [Stream(w.url, compat, f"w{i}-{'compat' if compat else 'native'}")
                             for i, w in enumerate(self.workers) for compat in (False, True)],
                            [w.url for w in self.workers], say=self.say)
                await load.subscribe(streams)
                kill = LocalBrokerKill(self.cluster, cfg.interval, cfg.down_for, self.describe)
                self.say(f"4 subscribers connected; posting {cfg.posts} messages, killing a broker every "
                         f"{cfg.interval:g}s (seed {rep.seed})")
                await under_load(load, kill, session, Phase(rep, self.rng, say=self.say))
                await load.outcome(session)
                rep.describe_after = await self.describe()
                rep.brokers_alive_at_end = await kill.all_back()
            finally:
                await self.teardown(state, load)
                rep.total_seconds = time.monotonic() - began
        rep.failures = rep.check()
        if not rep.failures and not cfg.keep and cfg.state_dir is None:
            shutil.rmtree(state, ignore_errors=True)
        return rep


async def run(cfg: Config) -> Report:
    """One chaos run; never raises for a failed check (see Report.failures), only for a broken setup."""
    return await Run(cfg).main()
