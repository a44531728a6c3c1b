#!/usr/bin/env python3
"""A/B rounds: the workers of two or more variants (a commit's kchat_faust, on this Python or another),
interleaved, with the baselines measured in every round. Prints figures and ratios (min / median / max
over the rounds); never fails on timing.

    .venv/bin/python bench/ab.py --a 95e63a3              # that commit's kchat_faust vs the working tree's
    .venv/bin/python bench/ab.py --a REV --b REV2 --rounds 3 --duration 10 --rate 300
    .venv/bin/python bench/ab.py --variant before=95e63a3 --variant after=tree \
        --variant after-3.13=tree@/usr/bin/python3.13      # N variants; NAME=REV[@PYTHON]

A variant on another Python runs its worker from a virtualenv of that interpreter with this project's
dependencies, made once under .cache/bench-venvs/ (pip, from pyproject.toml).

Each round runs, in this order: the bare aiohttp handler (bench/bare.py) and aiokafka's own send_and_wait
at c=64 and c=1 (the ceilings of the publish path), then each variant's worker (the order rotates every
round). A worker is started fresh for its cell, on a Kafka of its own variant (one one-node cluster per
variant: the variants' topics and tables never mix), and measured for
  - publish at c=64 and at c=1 (closed loop, native JSON POSTs): req/s, p50;
  - CPU per published message: `--rate` POSTs a second for `--duration` s (open loop), then the
    worker's CPU until it is quiet again (counting trails the posts) over the messages: everything the
    worker does for a message, counting included;
  - end to end at `--e2e-rate` msg/s x `--e2e-subs` subscribers (bench/sse_sink): POST sent -> SSE
    event, p99, against the same cell on bench/bare_fanout.py (no Kafka: the floor) in the same round.
The load average is printed with every round: the machine is shared, so a round on a busy machine says
less than the ratios, which both sides of a round share.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# bench/ is on sys.path: this runs as a script beside harness.py
from harness import REPO, TEXT_BYTES, BareServer, Ctx, closed_loop, copy_code, e2e_cell, log, pcts, run_load
from kchat_testkit.kafka import KafkaCluster, create_topic
from kchat_testkit.procs import proc_cpu, quiesce, raise_nofile
from kchat_testkit.worker import Worker


def venv_for(python: str) -> str:
    """The faust command of a virtualenv of this interpreter with the project installed (made once)."""
    exe = shutil.which(python) or python
    version = subprocess.run([exe, "-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    venv = REPO / ".cache" / "bench-venvs" / f"python{version}"
    faust = venv / "bin" / "faust"
    if not faust.exists():
        log(f"making {venv.relative_to(REPO)} (Python {version}; pip install of this project)")
        subprocess.run([exe, "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", str(REPO)], check=True)
    return str(faust)


def code_of(rev: str | None, into: Path) -> Path:
    """kchat_faust/ of a commit (git archive), or of the working tree when rev is None."""
    into.mkdir(parents=True)
    if rev is None:
        copy_code(REPO, into)
    else:
        archive = subprocess.run(["git", "archive", rev, "kchat_faust"], cwd=REPO, capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


def parse_variant(spec: str) -> tuple[str, str | None, str | None]:
    """NAME=REV[@PYTHON] -> (name, rev or None for the working tree ("tree"), python or None)."""
    name, sep, rest = spec.partition("=")
    if not sep or not name or not rest:
        raise argparse.ArgumentTypeError(f"--variant {spec!r}: expected NAME=REV[@PYTHON]")
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,20}", name):
        # It names the variant's rooms (and directories).
        raise argparse.ArgumentTypeError(f"--variant {spec!r}: NAME must be 1-20 of A-Z, a-z, 0-9, '_', '-'")
    rev, _, python = rest.partition("@")
    return name, None if rev in ("tree", "") else rev, python or None


# The least lever 4 of the publish path (KCHAT_WEB_PROCESSES) could be, for measuring what it would pay:
# N whole workers of the variant sharing one port, the kernel spreading connections (SO_REUSEPORT). Each
# has its own producer, fan-out reader and share of the tables; what they would have to share to keep
# the single process's guarantees (the per-pod rate limit, metrics, peer routing by URL) is not there.
REUSE_PORT_SHIM = """# bench/ab.py --processes: every aiohttp TCPSite of this process binds with SO_REUSEPORT.
import aiohttp.web_runner as _runner
_init = _runner.TCPSite.__init__
def _reuse_port_init(self, *args, **kwargs):
    kwargs.setdefault("reuse_port", True)
    _init(self, *args, **kwargs)
_runner.TCPSite.__init__ = _reuse_port_init
"""


class Variant:
    def __init__(self, name: str, rev: str | None, tmp: Path, python: str | None = None,
                 processes: int = 1) -> None:
        self.name, self.rev = name, (rev or "working tree") + (f" on {python}" if python else "")
        if processes > 1:
            self.rev += f", {processes} processes on one port"
        self.faust = venv_for(python) if python else None
        self.code = code_of(rev, tmp / f"code-{name}")
        self.processes = processes
        if processes > 1:
            (self.code / "sitecustomize.py").write_text(REUSE_PORT_SHIM)
        self.cluster = KafkaCluster.start_new(tmp / f"kafka-{name}")
        self.tmp = tmp
        self.cells = 0

    def worker(self) -> "Workers":
        self.cells += 1
        env = {"KCHAT_REPLICATION_FACTOR": "1", "PYTHONPATH": str(self.code)}
        extra = {"faust": self.faust} if self.faust else {}
        first = Worker(self.cluster.bootstrap, self.tmp / f"worker-{self.name}-{self.cells}", env, **extra)
        group = Workers([first])
        try:
            first.start(timeout=180)
            for i in range(1, self.processes):
                # Same port; its own advertised address, so the group's members have distinct URLs.
                w = Worker(self.cluster.bootstrap, self.tmp / f"worker-{self.name}-{self.cells}-{i}",
                           {**env, "KCHAT_ADVERTISED_HOST": f"127.0.0.{i + 1}"}, **extra)
                w.port, w.url = first.port, first.url  # ready when the shared port answers: see below
                w.proc = subprocess.Popen(w.command(), cwd=w.workdir, env=w.env, stdout=open(w.log_path, "ab"),
                                          stderr=subprocess.STDOUT, start_new_session=True)
                group.members.append(w)
            group.wait_all_ready(180)
        except BaseException:
            group.stop_or_kill()
            raise
        return group


class Workers:
    """One or more workers on one port, measured as one: CPU summed, quiet when all are."""

    def __init__(self, members: list[Worker]) -> None:
        self.members = members

    @property
    def port(self) -> int:
        return self.members[0].port

    @property
    def pids(self) -> list[int]:
        return [w.proc.pid for w in self.members]

    def cpu(self) -> float:
        return sum(proc_cpu(pid) for pid in self.pids)

    def quiesce(self, limit: float = 30.0) -> None:
        for pid in self.pids:
            quiesce(pid, limit=limit)

    def wait_all_ready(self, timeout: float) -> None:
        """Each member logged Faust's "Ready", then the port answered ready on 20 fresh connections in a row
        (the kernel picks a member per connection; a rebalance after the last join makes some not ready)."""
        deadline = time.monotonic() + timeout
        streak = 0
        while time.monotonic() < deadline:
            for w in self.members:
                if not w.running():
                    raise RuntimeError(f"worker exited: {w.log_text()[-2000:]}")
            if all("Ready" in w.log_text() for w in self.members):
                streak = streak + 1 if self.members[0].readyz() == 200 else 0
                if streak >= 20:
                    return
            time.sleep(0.1 if streak else 0.5)
        raise RuntimeError(f"{len(self.members)} workers not all ready in {timeout:.0f}s")

    def stop_or_kill(self) -> None:
        for w in self.members:
            if w.proc is not None:
                w.stop_or_kill()


def cell(ctx: Ctx, v: Variant, a) -> dict:
    """One variant's figures in one round, on fresh workers."""
    ws = v.worker()
    pid = ws.pids[0]  # the load client's own figure of server CPU reads one; the cells below sum them all
    try:
        # Warm it up unrecorded: connections, first batches, the agents' first commits.
        closed_loop(ctx, ws.port, "native", 16, pid, 3.0, 0.0)
        ws.quiesce()
        each0 = [proc_cpu(p_) for p_ in ws.pids]
        c64 = closed_loop(ctx, ws.port, "native", 64, pid, a.duration, a.warmup)
        # Cores each member used in that cell (warm-up included): the kernel's spread of the connections.
        each = [(proc_cpu(p_) - c0) / (a.warmup + a.duration) for p_, c0 in zip(ws.pids, each0)]
        ws.quiesce()
        c1 = closed_loop(ctx, ws.port, "native", 1, pid, a.duration, a.warmup)
        ws.quiesce()
        cpu0 = ws.cpu()
        r = run_load(ctx, "rate", {"port": ws.port, "kind": "native", "room": f"ab-{v.name}", "rate": a.rate,
                                   "duration": a.duration, "pool": 32, "text_bytes": TEXT_BYTES},
                     timeout=a.duration + 60)
        ws.quiesce(limit=60)  # the counting that trails the posts belongs to them
        cpu = ws.cpu() - cpu0
        e2e = e2e_cell(ctx, a.e2e_rate, a.e2e_subs, a.e2e_duration, ws.members[0], tag=v.name)
        e2e.pop("_lat")
        return {"e2e_p99_ms": e2e["latency"].get("p99_ms"), "e2e_p50_ms": e2e["latency"].get("p50_ms"),
                "e2e_delivered": e2e["delivered_fraction"],
                "c64": c64["throughput"], "c64_p50_ms": pcts(c64["lat"])["p50_ms"],
                "c64_cores_each": [round(x, 2) for x in each], "c1": c1["throughput"], "c1_p50_ms": pcts(c1["lat"])["p50_ms"],
                "cpu_us_per_msg": 1e6 * cpu / r["ok"] if r["ok"] else None, "rate_ok": r["ok"],
                "loadavg": os.getloadavg()[0]}
    finally:
        ws.stop_or_kill()


def baselines(ctx: Ctx, a, bootstrap: str) -> dict:
    with BareServer(ctx, "bare.py", 4 * (a.duration + a.warmup + 60) + 60) as bare:
        b64 = closed_loop(ctx, bare.port, "native", 64, bare.proc.pid, a.duration, a.warmup)
    out = {"bare_c64": b64["throughput"]}
    for c in (64, 1):
        r = run_load(ctx, "aiokafka", {"bootstrap": bootstrap, "topic": "ab-aiokafka", "concurrency": c,
                                       "warmup": a.warmup, "duration": a.duration,
                                       "record_bytes": TEXT_BYTES}, timeout=a.warmup + a.duration + 60)
        out[f"aiokafka_c{c}"] = r["throughput"]
        out[f"aiokafka_c{c}_p50_ms"] = pcts(r["lat"])["p50_ms"]
    # The floor: the same end-to-end cell on a fan-out server without Kafka (one loop turn per batch).
    with BareServer(ctx, "bare_fanout.py", a.e2e_duration + 600, "0") as bare:
        e2e = e2e_cell(ctx, a.e2e_rate, a.e2e_subs, a.e2e_duration, bare, tag="floor")
    out["floor_e2e_p99_ms"] = e2e["latency"].get("p99_ms")
    out["floor_e2e_p50_ms"] = e2e["latency"].get("p50_ms")
    return out


def spread(xs: list[float]) -> str:
    xs = [x for x in xs if x is not None]
    if not xs:
        return "-"
    return f"{min(xs):.2f} / {statistics.median(xs):.2f} / {max(xs):.2f}"


def report(rounds: list[dict], names: list[str]) -> dict:
    first = names[0]
    figures = {}
    for n in names:
        figures[f"{n}: publish c=64 / bare aiohttp c=64"] = [r[n]["c64"] / r["base"]["bare_c64"] for r in rounds]
        figures[f"{n}: publish c=64 / aiokafka send_and_wait c=64"] = [
            r[n]["c64"] / r["base"]["aiokafka_c64"] for r in rounds]
        figures[f"{n}: publish c=1 p50 / aiokafka c=1 p50"] = [
            r[n]["c1_p50_ms"] / r["base"]["aiokafka_c1_p50_ms"] for r in rounds]
        figures[f"{n}: end to end p99 / bare fan-out p99"] = [
            r[n]["e2e_p99_ms"] / r["base"]["floor_e2e_p99_ms"]
            if r[n]["e2e_p99_ms"] and r["base"]["floor_e2e_p99_ms"] else None for r in rounds]
        if n != first:
            figures[f"{n}: CPU per message / {first}'s"] = [
                r[n]["cpu_us_per_msg"] / r[first]["cpu_us_per_msg"] for r in rounds]
    print()
    print(f"{'ratio':60s}  min / median / max over {len(rounds)} rounds")
    for name, xs in figures.items():
        print(f"{name:60s}  {spread(xs)}")
    print()
    for n in names:
        print(f"{n}: CPU per message (us): {spread([r[n]['cpu_us_per_msg'] for r in rounds])}; "
              f"c=64 {spread([r[n]['c64'] for r in rounds])} req/s; c=1 p50 {spread([r[n]['c1_p50_ms'] for r in rounds])} ms; "
              f"e2e p99 {spread([r[n]['e2e_p99_ms'] for r in rounds])} ms; cores per process at c=64 "
              + ", ".join(str(r[n]["c64_cores_each"]) for r in rounds))
    print(f"baselines: bare aiohttp c=64 {spread([r['base']['bare_c64'] for r in rounds])} req/s; aiokafka c=64 "
          f"{spread([r['base']['aiokafka_c64'] for r in rounds])} msg/s, c=1 p50 "
          f"{spread([r['base']['aiokafka_c1_p50_ms'] for r in rounds])} ms; bare fan-out e2e p99 "
          f"{spread([r['base']['floor_e2e_p99_ms'] for r in rounds])} ms")
    print("load average (1 min) at each round's start: "
          + ", ".join(f"{r['loadavg_start']:.1f}" for r in rounds))
    return {k: v for k, v in figures.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--a", default=None, help="commit of variant A (git rev)")
    p.add_argument("--b", default=None, help="commit of variant B (default: the working tree)")
    p.add_argument("--variant", action="append", type=parse_variant, default=[], metavar="NAME=REV[@PYTHON]",
                   help="a variant (repeat for more; instead of --a/--b): REV a commit or 'tree', PYTHON an "
                        "interpreter to run its worker with; ratios of CPU are against the first")
    p.add_argument("--processes", action="append", default=[], metavar="NAME=N",
                   help="run variant NAME as N whole workers sharing its port (SO_REUSEPORT): what lever 4 "
                        "(KCHAT_WEB_PROCESSES) could pay at most, without what they would have to share")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=float, default=10.0, help="seconds per load cell")
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--rate", type=int, default=300, help="open-loop POSTs a second for CPU per message")
    p.add_argument("--e2e-rate", type=int, default=100, help="messages per second of the end-to-end cell")
    p.add_argument("--e2e-subs", type=int, default=1000, help="subscribers of the end-to-end cell")
    p.add_argument("--e2e-duration", type=float, default=15.0, help="seconds of load of the end-to-end cell")
    a = p.parse_args(argv)
    specs = a.variant or ([("A", a.a, None), ("B", a.b, None)] if a.a else [])
    if len(specs) < 2 or len({name for name, _, _ in specs}) < len(specs):
        p.error("give --a (and --b), or two or more --variant with distinct names")
    processes = {}
    for spec in a.processes:
        name, _, n = spec.partition("=")
        if name not in {s for s, _, _ in specs} or not n.isdigit() or not 1 <= int(n) <= 8:
            p.error(f"--processes {spec!r}: expected NAME=N, NAME a variant's, N 1-8")
        processes[name] = int(n)
    raise_nofile()
    # A SIGTERM (timeout, kill) tears the clusters and workers down like the end of the run does.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    ctx = Ctx(argparse.Namespace(subscribers="go", loop="asyncio"), time.strftime("%Y%m%d-%H%M%S"))
    tmp = Path(tempfile.mkdtemp(prefix="kchat-ab-"))
    variants: list[Variant] = []
    rounds: list[dict] = []
    try:
        for name, rev, python in specs:
            variants.append(Variant(name, rev, tmp, python, processes.get(name, 1)))
        create_topic(variants[0].cluster.bootstrap, "ab-aiokafka", 12, 1)
        for i in range(a.rounds):
            r = {"loadavg_start": os.getloadavg()[0], "base": baselines(ctx, a, variants[0].cluster.bootstrap)}
            shift = i % len(variants)
            for v in variants[shift:] + variants[:shift]:
                log(f"round {i + 1}: worker {v.name} ({v.rev})")
                r[v.name] = cell(ctx, v, a)
            rounds.append(r)
            log(f"round {i + 1}: {json.dumps(r)}")
        figures = report(rounds, [v.name for v in variants])
        out = ctx.results_dir / f"ab-{ctx.stamp}.json"
        out.write_text(json.dumps({"variants": {v.name: v.rev for v in variants}, "options": vars(a),
                                   "rounds": rounds, "ratios": figures}, indent=2))
        print(f"\nresults: {out.relative_to(REPO)}")
    finally:
        for p_ in ctx.children:
            p_.kill()
        for v in variants:
            v.cluster.down()
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(ctx.tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
