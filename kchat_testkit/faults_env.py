"""The fault suite's environment: one cluster of 3 KRaft controllers + 4 brokers and two workers, each in a
network namespace of its own (scripts/kafka-local up --netns --loop-disks), serving every scenario of a run;
and the Kafka and worker settings that decide the outcomes (README "Guarantees" says what each shows).
"""
from __future__ import annotations

import asyncio
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError

from kchat_faust import internals
from kchat_faust.models import partition_for

from .kafka import KafkaCluster, Partition, parse_describe, run_kafka_local
from .worker import Worker

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


def say(text: str) -> None:
    print(f"[faults {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


class Env:
    """One cluster and two workers for every scenario of a run."""

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
            meta = await internals.fetch_all_metadata(consumer)
            return {p: Partition(p, pm.leader, list(pm.replicas), list(pm.isr))
                    for p, pm in internals.topic_partitions(meta, TOPIC).items()}
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

