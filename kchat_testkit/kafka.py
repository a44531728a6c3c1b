"""Real Kafka clusters run by scripts/kafka-local, and what TopicCommand says about their topics.

KafkaCluster.start_new(state_dir, brokers=1) starts one on free ports (loopback); its kill/start/status
drive single nodes. With extra=("--netns",) every node runs in a network namespace of its own and the
fault methods (cut, isolate, heal, slow, pause, disk_stall ...) apply; host(name) makes a namespace for a
worker. create_topic / describe_topic / parse_describe wrap TopicCommand. Each cluster's logs are in
<state_dir>/logs/node-<id>.log.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .procs import free_port_base

REPO = Path(__file__).resolve().parent.parent
KAFKA_LOCAL = REPO / "scripts" / "kafka-local"

# kafka-local's layout: brokers on base..base+B-1, controllers on base+10.. (multi) or base+1 (single).
PORT_SPAN = 13
PORT_IN_USE = 4  # kafka-local's exit code when a port it needs is taken (its docstring's "Exit codes")
UP_TIMEOUT = 240  # seconds for `up` itself (the box may be busy); the script waits at most --timeout for brokers


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
            base = free_port_base(PORT_SPAN, avoid=avoid)
            args = ["up", "--port-base", str(base), *extra]
            if brokers != 1:
                args += ["--brokers", str(brokers)]
            cp = run_kafka_local(*args, state_dir=state_dir, check=False)
            if cp.returncode == 0:
                return cls(bootstrap=cp.stdout.strip().splitlines()[-1], state_dir=Path(state_dir),
                           port_base=base, brokers=brokers)
            last = cp.stderr
            run_kafka_local("down", "--timeout", "10", state_dir=state_dir, check=False)
            if cp.returncode != PORT_IN_USE:  # only a taken port is worth another try elsewhere
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
        """{node_id: {"roles": [...], "port": int, "pid": int | None, "alive": bool}}; port: the broker's, or
        a controller-only node's controller port (`kafka-local status --json`)."""
        cp = self.run("status", "--json", check=False)
        if cp.returncode not in (0, 3):  # 3: some node is dead, which is what callers look for
            raise RuntimeError(f"kafka-local status failed: {cp.stderr.strip()}")
        return {n["id"]: {"roles": n["roles"], "port": n["broker_port"] or n["controller_port"], "pid": n["pid"],
                          "alive": n["alive"]} for n in json.loads(cp.stdout)["nodes"]}

    def info(self) -> dict:
        """The cluster.json kafka-local keeps in the state dir."""
        assert self.state_dir is not None
        return json.loads((self.state_dir / "cluster.json").read_text())

    def log(self, node_id: int) -> Path:
        assert self.state_dir is not None
        return self.state_dir / "logs" / f"node-{node_id}.log"

    def create_topic(self, name: str, partitions: int, rf: int, min_isr: int | None = None,
                     configs: dict[str, str] | None = None) -> str:
        return create_topic(self.bootstrap, name, partitions, rf, min_isr, configs, state_dir=self.state_dir)

    def describe(self, name: str) -> str:
        return describe_topic(self.bootstrap, name, state_dir=self.state_dir)

    # -- faults (scripts/kafka_local_net.py says how each is made) -----------------------------------------------
    def host(self, name: str) -> tuple[str, str]:
        """A network namespace for a client (a worker) on the cluster's bridge: (namespace, address)."""
        ns, ip = self.run("host", name).stdout.split()
        return ns, ip

    def cut(self, a: str, b: str, one_way: bool = False) -> None:
        """Drop everything between members a and b (comma lists of node ids, host names, brokers, ...)."""
        self.run("cut", a, b, *(["--one-way"] if one_way else []))

    def isolate(self, members: str) -> None:
        self.run("isolate", members)

    def heal(self) -> None:
        self.run("heal")

    def cuts(self) -> dict[str, list[str]]:
        return {line.split()[0]: line.split()[1].split(",") for line in self.run("cuts").stdout.splitlines()}

    def slow(self, members: str = "all", delay_ms: float = 0, jitter_ms: float = 0, loss_pct: float = 0) -> None:
        self.run("slow", members, "--delay", str(delay_ms), "--jitter", str(jitter_ms), "--loss", str(loss_pct))

    def unslow(self) -> None:
        self.run("slow", "--off")

    def pause(self, node_id: int) -> None:
        self.run("pause", str(node_id))

    def resume(self, node_id: int) -> None:
        self.run("resume", str(node_id))

    def disk_stall(self, node_id: int) -> None:
        self.run("disk-stall", str(node_id))

    def disk_resume(self, node_id: int) -> None:
        self.run("disk-resume", str(node_id))

    def active_controller(self) -> int:
        return int(self.run("quorum", timeout=180).stdout.split()[1])

    def leftovers(self, everything: bool = False, wait: float = 30.0) -> list[str]:
        """What of this cluster (everything: of any kafka-local) is still on the machine after up to `wait`
        seconds for what the kernel releases late; [] when clean."""
        cp = self.run("leftovers", "--wait", str(wait), *(["--all"] if everything else []), check=False)
        return cp.stdout.splitlines()

    def security(self) -> dict | None:
        """The secured cluster's record (protocol, mechanism, cafile, users and passwords), or None."""
        return self.info().get("security")

    def down(self) -> None:
        if self.state_dir is not None and not self.stopped:
            self.stopped = True
            cp = run_kafka_local("down", state_dir=self.state_dir, check=False, timeout=120)
            if cp.returncode != 0:  # last resort: never leave a JVM behind
                run_kafka_local("down", "--kill", state_dir=self.state_dir, check=False, timeout=60)


def create_topic(bootstrap: str, name: str, partitions: int, rf: int, min_isr: int | None = None,
                 configs: dict[str, str] | None = None, state_dir: Path | None = None) -> str:
    """Create a topic idempotently (kafka-local topic, i.e. TopicCommand --create --if-not-exists);
    returns TopicCommand --describe output. Raises RuntimeError on failure. state_dir: the cluster's, when
    its tools need its client settings (a secured cluster)."""
    args = ["topic", name, "--partitions", str(partitions), "--replication-factor", str(rf),
            "--bootstrap", bootstrap]
    if min_isr is not None:
        args += ["--min-insync-replicas", str(min_isr)]
    for k, v in (configs or {}).items():
        args += ["--config", f"{k}={v}"]
    return run_kafka_local(*args, state_dir=state_dir, timeout=180).stdout


def describe_topic(bootstrap: str, name: str, state_dir: Path | None = None) -> str:
    return run_kafka_local("describe", name, "--bootstrap", bootstrap, state_dir=state_dir, timeout=180).stdout


@dataclass
class Partition:
    partition: int
    leader: int
    replicas: list[int]
    isr: list[int]
    elr: list[int] = field(default_factory=list)  # eligible leader replicas (KIP-966), when shown


def parse_describe(text: str) -> dict[int, Partition]:
    """Partitions from TopicCommand --describe output (one topic)."""
    out = {}
    for line in text.splitlines():
        m = re.search(r"Partition:\s*(\d+)\s+Leader:\s*(-?\d+|none)\s+Replicas:\s*([\d,]*)\s+Isr:\s*([\d,]*)", line)
        if m:
            elr = re.search(r"Elr:\s*([\d,]*)", line)
            out[int(m.group(1))] = Partition(
                partition=int(m.group(1)),
                leader=-1 if m.group(2) == "none" else int(m.group(2)),
                replicas=[int(x) for x in m.group(3).split(",") if x],
                isr=[int(x) for x in m.group(4).split(",") if x],
                elr=[int(x) for x in elr.group(1).split(",") if x] if elr else [])
    return out
