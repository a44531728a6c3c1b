"""Pytest plugin: real Kafka clusters started with scripts/kafka-local, one per pytest session.

Fixtures (session scope):
  kafka_cluster      KafkaCluster: a single combined broker+controller node (node id 0)
  kafka_bootstrap    str: its bootstrap list, e.g. "127.0.0.1:23456"
  kafka4_cluster     KafkaCluster: 3 controllers (ids 100..102) + 4 brokers (ids 0..3)
  kafka4_bootstrap   str: "127.0.0.1:P,127.0.0.1:P+1,127.0.0.1:P+2,127.0.0.1:P+3"

Environment:
  KCHAT_TEST_BOOTSTRAP   use this (single-node) cluster instead of starting one
  KCHAT_TEST_BOOTSTRAP4  use this 4-broker cluster instead of starting one (then kafka4_cluster.run() cannot
                         kill or start nodes)

Helpers: create_topic(bootstrap, name, partitions, rf, min_isr=None, configs=None) -> describe text,
describe_topic(bootstrap, name) -> describe text, parse_describe(text) -> {partition: Partition},
free_port_base(span), KafkaCluster.start_new(state_dir, brokers=1).

Clusters use ports below the usual ephemeral range and never 9092, so a developer's own Kafka does not clash.
Each cluster's state dir (logs: <state>/logs/node-<id>.log) lives under pytest's basetemp.
"""

from __future__ import annotations

import json
import os
import random
import re
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
KAFKA_LOCAL = REPO / "scripts" / "kafka-local"

# kafka-local's layout: brokers on base..base+B-1, controllers on base+10.. (multi) or base+1 (single).
PORT_SPAN = 13
PORT_RANGE = (20000, 32000)  # below Linux's default ephemeral range 32768-60999
UP_TIMEOUT = 240  # seconds for `up` itself (the box may be busy); the script waits at most --timeout for brokers


def _port_free(port: int) -> bool:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def free_port_base(span: int = PORT_SPAN, avoid: set[int] = frozenset()) -> int:
    """A base port b such that b..b+span-1 are all free on 127.0.0.1 right now."""
    rng = random.Random()
    for _ in range(500):
        base = rng.randrange(PORT_RANGE[0], PORT_RANGE[1] - span)
        ports = range(base, base + span)
        if not avoid.intersection(ports) and all(_port_free(p) for p in ports):
            return base
    raise RuntimeError("no free port range found for a local Kafka cluster")


def run_kafka_local(*args: str, state_dir: Path | str | None = None, check: bool = True,
                    timeout: float = UP_TIMEOUT) -> subprocess.CompletedProcess:
    """Run scripts/kafka-local (with this interpreter; it is stdlib only). Raises on non-zero exit if check."""
    cmd = [sys.executable, str(KAFKA_LOCAL)]
    if state_dir is not None:
        cmd += ["--state-dir", str(state_dir)]
    cmd += [str(a) for a in args]
    cp = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    if check and cp.returncode != 0:
        raise RuntimeError(f"kafka-local {' '.join(map(str, args))} failed (exit {cp.returncode}):\n"
                           f"{cp.stderr[-4000:]}")
    return cp


@dataclass
class KafkaCluster:
    """A cluster run by scripts/kafka-local (state_dir set) or an external one (state_dir None)."""

    bootstrap: str
    state_dir: Path | None = None
    port_base: int | None = None
    brokers: int = 1
    stopped: bool = field(default=False, repr=False)

    @classmethod
    def start_new(cls, state_dir: Path, brokers: int = 1, attempts: int = 3, extra: tuple[str, ...] = (),
                  avoid: set[int] = frozenset()) -> "KafkaCluster":
        """`up` a fresh cluster in state_dir on a free port base; retries elsewhere if a port got taken."""
        last = ""
        for _ in range(attempts):
            base = free_port_base(avoid=avoid)
            args = ["up", "--port-base", str(base), *extra]
            if brokers != 1:
                args += ["--brokers", str(brokers)]
            cp = run_kafka_local(*args, state_dir=state_dir, check=False)
            if cp.returncode == 0:
                return cls(bootstrap=cp.stdout.strip().splitlines()[-1], state_dir=Path(state_dir),
                           port_base=base, brokers=brokers)
            last = cp.stderr
            run_kafka_local("down", "--timeout", "10", state_dir=state_dir, check=False)
            if "in use" not in cp.stderr:
                break
        raise RuntimeError(f"kafka-local up ({brokers} broker(s), state {state_dir}) failed:\n{last[-4000:]}")

    def run(self, *args: str, check: bool = True, timeout: float = UP_TIMEOUT) -> subprocess.CompletedProcess:
        """Run a kafka-local subcommand against this cluster, e.g. run("kill", "2"), run("start", "2")."""
        if self.state_dir is None:
            raise RuntimeError("this cluster is external (KCHAT_TEST_BOOTSTRAP*); kafka-local cannot manage it")
        return run_kafka_local(*args, state_dir=self.state_dir, check=check, timeout=timeout)

    def kill(self, node_id: int) -> None:
        self.run("kill", str(node_id))

    def start(self, node_id: int) -> None:
        self.run("start", str(node_id))

    def status(self) -> dict[int, dict]:
        """{node_id: {"roles": [...], "port": int, "pid": int | None, "alive": bool}}"""
        cp = self.run("status", check=False)
        if cp.returncode not in (0, 3):
            raise RuntimeError(f"kafka-local status failed: {cp.stderr.strip()}")
        out = {}
        for line in cp.stdout.splitlines():
            nid, roles, port, pid, state = line.split()
            out[int(nid)] = {"roles": roles.split(","), "port": int(port),
                             "pid": None if pid == "-" else int(pid), "alive": state == "alive"}
        return out

    def info(self) -> dict:
        """The cluster.json kafka-local keeps in the state dir."""
        assert self.state_dir is not None
        return json.loads((self.state_dir / "cluster.json").read_text())

    def log(self, node_id: int) -> Path:
        assert self.state_dir is not None
        return self.state_dir / "logs" / f"node-{node_id}.log"

    def create_topic(self, name: str, partitions: int, rf: int, min_isr: int | None = None,
                     configs: dict[str, str] | None = None) -> str:
        return create_topic(self.bootstrap, name, partitions, rf, min_isr, configs)

    def down(self) -> None:
        if self.state_dir is not None and not self.stopped:
            self.stopped = True
            cp = run_kafka_local("down", state_dir=self.state_dir, check=False, timeout=120)
            if cp.returncode != 0:  # last resort: never leave a JVM behind
                cp = run_kafka_local("down", "--kill", state_dir=self.state_dir, check=False, timeout=60)


def create_topic(bootstrap: str, name: str, partitions: int, rf: int, min_isr: int | None = None,
                 configs: dict[str, str] | None = None) -> str:
    """Create a topic idempotently (kafka-local topic, i.e. TopicCommand --create --if-not-exists);
    returns TopicCommand --describe output. Raises RuntimeError on failure."""
    args = ["topic", name, "--partitions", str(partitions), "--replication-factor", str(rf),
            "--bootstrap", bootstrap]
    if min_isr is not None:
        args += ["--min-insync-replicas", str(min_isr)]
    for k, v in (configs or {}).items():
        args += ["--config", f"{k}={v}"]
    return run_kafka_local(*args, timeout=180).stdout


def describe_topic(bootstrap: str, name: str) -> str:
    return run_kafka_local("describe", name, "--bootstrap", bootstrap, timeout=180).stdout


@dataclass
class Partition:
    partition: int
    leader: int
    replicas: list[int]
    isr: list[int]


def parse_describe(text: str) -> dict[int, Partition]:
    """Partitions from TopicCommand --describe output (one topic)."""
    out = {}
    for line in text.splitlines():
        m = re.search(r"Partition:\s*(\d+)\s+Leader:\s*(-?\d+|none)\s+Replicas:\s*([\d,]*)\s+Isr:\s*([\d,]*)", line)
        if m:
            out[int(m.group(1))] = Partition(
                partition=int(m.group(1)),
                leader=-1 if m.group(2) == "none" else int(m.group(2)),
                replicas=[int(x) for x in m.group(3).split(",") if x],
                isr=[int(x) for x in m.group(4).split(",") if x])
    return out


def pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def jvms_naming(path: Path) -> list[int]:
    """pids of live kafka.Kafka processes whose command line names path (like `pgrep -f <path>`)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"kafka.Kafka" in argv and any(str(path).encode() in a for a in argv) and pid_alive(int(proc.name)):
            found.append(int(proc.name))
    return found


def _session_cluster(tmp_path_factory, name: str, brokers: int, env: str):
    external = os.environ.get(env)
    if external:
        yield KafkaCluster(bootstrap=external, brokers=brokers)
        return
    state = tmp_path_factory.mktemp(name)
    cluster = None
    try:
        cluster = KafkaCluster.start_new(state, brokers=brokers)
        yield cluster
    finally:
        if cluster is not None:
            cluster.down()
        else:  # a failed `up` stops what it started; make sure anyway
            run_kafka_local("down", "--kill", state_dir=state, check=False, timeout=60)


@pytest.fixture(scope="session")
def kafka_cluster(tmp_path_factory):
    yield from _session_cluster(tmp_path_factory, "kafka1-", 1, "KCHAT_TEST_BOOTSTRAP")


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_cluster) -> str:
    return kafka_cluster.bootstrap


@pytest.fixture(scope="session")
def kafka4_cluster(tmp_path_factory):
    yield from _session_cluster(tmp_path_factory, "kafka4-", 4, "KCHAT_TEST_BOOTSTRAP4")


@pytest.fixture(scope="session")
def kafka4_bootstrap(kafka4_cluster) -> str:
    return kafka4_cluster.bootstrap


@pytest.fixture
def own_kafka(tmp_path):
    """A single-node cluster of the test's own, for tests that stop brokers or need their own group."""
    cluster = KafkaCluster.start_new(tmp_path / "kafka")
    yield cluster
    cluster.down()
