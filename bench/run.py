#!/usr/bin/env python3
"""kchat benchmarks: publish throughput and latency against its baselines, end-to-end latency to SSE
subscribers, fan-out capacity, /stats/users latency, and worker profiles. Measures; never fails on timing.

    .venv/bin/python bench/run.py                 # everything (~15 minutes)
    .venv/bin/python bench/run.py --quick         # a 2-3 minute smoke with short runs and fewer clients
    .venv/bin/python bench/run.py --sections publish,baselines

It starts its own one-broker Kafka (scripts/kafka-local, fresh state in a temp dir, free ports) and real
workers (`faust -A kchat_faust worker`, KCHAT_REPLICATION_FACTOR=1), runs every load in its own process
(bench/load.py; the bare aiohttp baseline is bench/bare.py), prints a table and writes
bench/results/bench-<time>.json with a latency CDF plot (.png) beside it, and py-spy profiles (.txt,
collapsed stacks that speedscope opens) when the profile section runs.

Sections: publish, baselines, e2e, fanout, stats, profile (default: all).
Every figure is printed with its target and whether it is met; the machine is shared, so figures are noisy.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

from kchat_testkit.kafka import KafkaCluster, create_topic, run_kafka_local
from kchat_testkit.procs import free_port, proc_cpu, proc_rss_kb, quiesce, raise_nofile
from kchat_testkit.worker import Worker

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
PY = sys.executable
PYSPY = str(Path(PY).with_name("py-spy"))
TEXT_BYTES = 200


# -- small helpers -----------------------------------------------------------------------------
def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def pcts(lat_s: np.ndarray) -> dict:
    if lat_s is None or len(lat_s) == 0:
        return {"n": 0}
    ms = lat_s * 1000.0
    p50, p95, p99, p999 = np.percentile(ms, [50, 95, 99, 99.9])
    return {"n": int(len(ms)), "p50_ms": float(p50), "p95_ms": float(p95), "p99_ms": float(p99),
            "p999_ms": float(p999), "max_ms": float(ms.max()), "mean_ms": float(ms.mean())}


class Ctx:
    """What a run shares: options, dirs, the cluster, the main worker, results and rows of the table."""

    def __init__(self, args, stamp: str) -> None:
        self.args = args
        self.stamp = stamp
        self.tmp = Path(tempfile.mkdtemp(prefix="kchat-bench-"))
        self.results_dir = BENCH / "results"
        self.results_dir.mkdir(exist_ok=True)
        self.base = self.results_dir / f"bench-{stamp}"
        self.cluster: KafkaCluster | None = None
        self.bootstrap = ""
        self.workers: list[Worker] = []
        self.worker: Worker | None = None
        self.children: list[subprocess.Popen] = []
        self.code_dir: Path | None = None
        self.results: dict = {}
        self.cdf: dict[str, dict[str, np.ndarray]] = {"publish": {}, "e2e": {}, "fanout": {}, "stats": {}}
        self.rows: list[tuple] = []
        self.seq = 0

    def path(self, name: str) -> str:
        self.seq += 1
        return str(self.tmp / f"{self.seq:03d}-{name}")

    def row(self, section: str, figure: str, value: str, target: str = "", met: bool | None = None) -> None:
        self.rows.append((section, figure, value, target, "" if met is None else ("yes" if met else "NO")))
        log(f"{section}: {figure} = {value}" + (f"  (target {target}: {'met' if met else 'NOT met'})"
                                                 if met is not None else ""))


# -- processes ---------------------------------------------------------------------------------
def load_cmd(mode: str, cfg: dict) -> list[str]:
    return [PY, str(BENCH / "load.py"), mode, json.dumps(cfg)]


def subs_cmd(ctx: Ctx, cfg: dict) -> list[str]:
    """The subscriber processes: bench/sse_sink (Go, built once per run) or load.py's `subs` mode."""
    if ctx.args.subscribers == "python":
        return load_cmd("subs", cfg)
    sink = ctx.tmp / "sse_sink"
    if not sink.exists():
        subprocess.run(["go", "build", "-o", str(sink), "."], cwd=BENCH / "sse_sink", check=True,
                       capture_output=True, timeout=300)
    return [str(sink), json.dumps(cfg)]


def run_load(ctx: Ctx, mode: str, cfg: dict, timeout: float, on_start=None) -> dict:
    """Run one load process to completion; its result dict, with "lat" (seconds) as a numpy array."""
    name = f"{mode}"
    cfg = {**cfg, "out": ctx.path(name + ".json"), "lat": ctx.path(name + ".lat"), "max_seconds": timeout}
    proc = subprocess.Popen(load_cmd(mode, cfg), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ctx.children.append(proc)
    if on_start is not None:
        on_start()
    try:
        out, err = proc.communicate(timeout=timeout + 60)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise RuntimeError(f"load process {mode} overran {timeout + 60:.0f}s")
    finally:
        ctx.children.remove(proc)
    if proc.returncode != 0:
        raise RuntimeError(f"load process {mode} failed ({proc.returncode}): {err[-2000:]}")
    result = json.loads(Path(cfg["out"]).read_text())
    result["loadavg_1m"] = os.getloadavg()[0]  # how busy the shared machine was
    lat_path = Path(cfg["lat"])
    result["lat"] = np.fromfile(lat_path, dtype=np.float64) if lat_path.exists() else np.empty(0)
    return result


class Subscribers:
    """n SSE subscribers over several client processes (at most per_proc each)."""

    def __init__(self, ctx: Ctx, port: int, path: str, n: int, per_proc: int = 2500,
                 max_seconds: float = 600, connect_concurrency: int = 64) -> None:
        self.ctx = ctx
        self.procs: list[tuple[subprocess.Popen, dict]] = []
        nproc = max(1, math.ceil(n / per_proc))
        for i in range(nproc):
            share = n // nproc + (1 if i < n % nproc else 0)
            cfg = {"port": port, "path": path, "n": share, "max_seconds": max_seconds,
                   "connect_concurrency": connect_concurrency,
                   "out": ctx.path("subs.json"), "lat": ctx.path("subs.lat"), "seq": ctx.path("subs.seq"),
                   "lat_service": ctx.path("subs.lat2")}
            p = subprocess.Popen(subs_cmd(ctx, cfg), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
            ctx.children.append(p)
            self.procs.append((p, cfg))

    def wait_ready(self, timeout: float) -> tuple[int, int]:
        connected = failed = 0
        deadline = time.monotonic() + timeout
        for p, _ in self.procs:
            line = ""
            while time.monotonic() < deadline and not line.startswith("READY"):
                line = p.stdout.readline()
                if not line and p.poll() is not None:
                    raise RuntimeError(f"subscriber process exited: {p.stderr.read()[-2000:]}")
            if not line.startswith("READY"):
                raise RuntimeError("subscribers did not connect in time")
            _, ok, bad = line.split()
            connected += int(ok)
            failed += int(bad)
        return connected, failed

    def stop(self) -> dict:
        for p, _ in self.procs:
            try:
                p.stdin.write("stop\n")
                p.stdin.flush()
            except OSError:
                pass
        agg = {"connected": 0, "failed": 0, "events": 0, "disconnects": 0, "per_sub_min": None,
               "per_sub_max": 0, "connect_s": 0.0, "failures": [], "client_cpu": 0.0}
        lats, seqs, lats2 = [], [], []
        for p, cfg in self.procs:
            try:
                p.wait(timeout=120)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            finally:
                self.ctx.children.remove(p)
            if p.returncode != 0 or not Path(cfg["out"]).exists():
                agg["failures"].append(f"subscriber process exit {p.returncode}: {p.stderr.read()[-500:]}")
                continue
            r = json.loads(Path(cfg["out"]).read_text())
            for k in ("connected", "failed", "events", "disconnects"):
                agg[k] += r[k]
            agg["per_sub_min"] = r["per_sub_min"] if agg["per_sub_min"] is None else min(agg["per_sub_min"],
                                                                                           r["per_sub_min"])
            agg["per_sub_max"] = max(agg["per_sub_max"], r["per_sub_max"])
            agg["connect_s"] = max(agg["connect_s"], r["connect_s"])
            agg["client_cpu"] += r["client_cpu"]
            agg["failures"] += r["failures"]
            lats.append(np.fromfile(cfg["lat"], dtype=np.float64))
            seqs.append(np.fromfile(cfg["seq"], dtype=np.int64))
            lats2.append(np.fromfile(cfg["lat_service"], dtype=np.float64))
        agg["lat"] = np.concatenate(lats) if lats else np.empty(0)
        agg["seqs"] = np.concatenate(seqs) if seqs else np.empty(0, dtype=np.int64)
        agg["lat_service"] = np.concatenate(lats2) if lats2 else np.empty(0)
        return agg


class BareServer:
    """A baseline server (bench/bare.py or bench/bare_fanout.py) in its own process, for at most
    max_seconds; has .port and .proc like a Worker, so the same loads run against it."""

    def __init__(self, ctx: Ctx, script: str, max_seconds: float, *args: str) -> None:
        self.ctx, self.port = ctx, free_port()
        self.proc = subprocess.Popen([PY, str(BENCH / script), str(self.port), str(max_seconds), *args]
                                     + (["uvloop"] if ctx.args.loop == "uvloop" else []),
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        ctx.children.append(self.proc)

    def __enter__(self) -> "BareServer":
        if not self.proc.stdout.readline().startswith("READY"):
            self.__exit__()
            raise RuntimeError(f"bare server did not start: {self.proc.stderr.read()[-1000:]}")
        return self

    def __exit__(self, *exc) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.ctx.children.remove(self.proc)


def snapshot_code(ctx: Ctx) -> dict:
    """Copy kchat_faust/ so that every worker of this run runs the same code even while the tree
    is being edited (workers import the copy: PYTHONPATH comes before the editable install)."""
    src = Path(ctx.args.code) if ctx.args.code else REPO
    if not (src / "kchat_faust" / "__init__.py").exists():
        raise SystemExit(f"--code {src}: no kchat_faust/ there")
    dst = ctx.tmp / "code"
    shutil.copytree(src / "kchat_faust", dst / "kchat_faust",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    digest = hashlib.sha1()
    for f in sorted((dst / "kchat_faust").rglob("*")):
        if f.is_file():
            digest.update(str(f.relative_to(dst)).encode())
            digest.update(f.read_bytes())
    ctx.code_dir = dst
    return {"code_from": str(src), "code_sha1": digest.hexdigest()[:12]}


def start_worker(ctx: Ctx, name: str) -> Worker:
    env = {"KCHAT_REPLICATION_FACTOR": "1"}
    if ctx.code_dir is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(ctx.code_dir)] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    if ctx.args.loop == "uvloop":
        env["F_LOOP"] = "uvloop"  # faust reads it at import: `faust --loop uvloop`
    w = Worker(ctx.bootstrap, ctx.tmp / name, env)
    ctx.workers.append(w)
    log(f"starting worker {name}")
    w.start(timeout=180)
    log(f"worker {name} ready on {w.url} (pid {w.proc.pid}); warming it up")
    # A fresh worker is slow for its first seconds (connections, first batches, agents' first
    # commits): load it a little, unrecorded, so the first cell measured is not its start-up.
    run_load(ctx, "post", {"port": w.port, "kind": "native", "concurrency": 16, "room": "warmup",
                           "warmup": 0.0, "duration": 3.0, "text_bytes": TEXT_BYTES}, timeout=60)
    quiesce(w.proc.pid)
    return w


def post_json(url: str, body: dict, timeout: float = 15) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def get_json(url: str, timeout: float = 30) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


# -- sections ----------------------------------------------------------------------------------
def closed_loop(ctx: Ctx, port: int, kind: str, c: int, watch_pid: int, duration: float,
                warmup: float, path: str = "", max_requests: int = 0) -> dict:
    quiesce(watch_pid)
    return run_load(ctx, "post", {"port": port, "kind": kind, "path": path, "concurrency": c,
                                  "room": "bench", "warmup": warmup, "duration": duration,
                                  "text_bytes": TEXT_BYTES, "max_requests": max_requests,
                                  "watch_pid": watch_pid},
                    timeout=warmup + duration + 60)


def us(x) -> str:
    return "?" if x is None else f"{x:.0f}"


def fmt_lat(p: dict) -> str:
    if not p.get("n"):
        return "no samples"
    return f"p50 {p['p50_ms']:.2f} ms, p99 {p['p99_ms']:.2f} ms"


def section_publish(ctx: Ctx) -> None:
    a = ctx.args
    out = ctx.results.setdefault("publish", {})
    for kind in ("native", "seed"):
        for c in a.concurrency:
            log(f"publish {kind} c={c} for {a.duration}s")
            r = closed_loop(ctx, ctx.worker.port, kind, c, ctx.worker.proc.pid, a.duration, a.warmup)
            p = pcts(r["lat"])
            if c == max(a.concurrency):
                ctx.cdf["publish"][f"kchat {kind} c={c}"] = r["lat"]
            good = r["ok"] == r["completed"] and not r["n_errors"]
            out[f"{kind}_c{c}"] = {**{k: v for k, v in r.items() if k != "lat"}, "latency": p}
            label = "POST /api/rooms/{room}/messages" if kind == "native" else "POST /api/topics/chatroom"
            ctx.row("publish", f"{label} c={c}",
                    f"{r['throughput']:.0f} msg/s, {fmt_lat(p)}, worker {us(r['server_cpu_us_per_req'])} us CPU/msg, "
                    f"client {100 * r['client_cpu']:.0f}% of a core"
                    + ("" if good else f", statuses {r['statuses']} errors {r['n_errors']}"))


def section_baselines(ctx: Ctx) -> None:
    a = ctx.args
    out = ctx.results.setdefault("baselines", {})
    # 1. a bare aiohttp handler, same client, same bytes
    with BareServer(ctx, "bare.py", len(a.concurrency) * (a.duration + a.warmup + 60) + 60) as bare:
        for c in a.concurrency:
            log(f"bare aiohttp c={c} for {a.duration}s")
            r = closed_loop(ctx, bare.port, "native", c, bare.proc.pid, a.duration, a.warmup)
            p = pcts(r["lat"])
            if c == max(a.concurrency):
                ctx.cdf["publish"][f"bare aiohttp c={c}"] = r["lat"]
            out[f"bare_aiohttp_c{c}"] = {**{k: v for k, v in r.items() if k != "lat"}, "latency": p}
            ctx.row("baseline", f"bare aiohttp POST -> 200 c={c}",
                    f"{r['throughput']:.0f} req/s, {fmt_lat(p)}, server {us(r['server_cpu_us_per_req'])} us CPU/req, "
                    f"client {100 * r['client_cpu']:.0f}% of a core")

    # 2. aiokafka alone with the Publisher's settings: the ceiling of the service's publish path
    create_topic(ctx.bootstrap, "bench-aiokafka", 12, 1)
    for c in a.concurrency:
        log(f"aiokafka send_and_wait c={c} for {a.duration}s")
        r = run_load(ctx, "aiokafka", {"bootstrap": ctx.bootstrap, "topic": "bench-aiokafka", "concurrency": c,
                                       "warmup": a.warmup, "duration": a.duration, "record_bytes": TEXT_BYTES},
                     timeout=a.warmup + a.duration + 60)
        p = pcts(r["lat"])
        if c == max(a.concurrency):
            ctx.cdf["publish"][f"aiokafka send_and_wait c={c}"] = r["lat"]
        out[f"aiokafka_c{c}"] = {**{k: v for k, v in r.items() if k != "lat"}, "latency": p}
        ctx.row("baseline", f"aiokafka send_and_wait (acks=all, idempotent) c={c}",
                f"{r['throughput']:.0f} msg/s, {fmt_lat(p)}, client {100 * r['client_cpu']:.0f}% of a core")

    # 3. Kafka's own ProducerPerformance, acks=all, same record size, as fast as it can
    create_topic(ctx.bootstrap, "bench-perf", 12, 1)
    lib = run_kafka_local("fetch").stdout.strip().splitlines()[-1]
    cmd = ["java", "-Xmx512m", "-XX:+UseSerialGC", "-cp", f"{lib}/*", "org.apache.kafka.tools.ProducerPerformance",
           "--topic", "bench-perf", "--num-records", str(a.kafka_records), "--record-size", str(TEXT_BYTES),
           "--throughput", "-1", "--producer-props", f"bootstrap.servers={ctx.bootstrap}", "acks=all"]
    log(f"Kafka ProducerPerformance, {a.kafka_records} records")
    cp = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    last = [ln for ln in cp.stdout.splitlines() if "records sent" in ln]
    if cp.returncode != 0 or not last:
        out["kafka_producer_perf"] = {"error": (cp.stderr or cp.stdout)[-1000:]}
        ctx.row("baseline", "Kafka ProducerPerformance", f"failed: {(cp.stderr or cp.stdout).strip()[-200:]}")
        return

    m = re.search(r"([\d.]+) records/sec \(([\d.]+) MB/sec\), ([\d.]+) ms avg latency, ([\d.]+) ms max latency, "
                  r"(\d+) ms 50th, (\d+) ms 95th, (\d+) ms 99th", last[-1])
    res = {"line": last[-1], "records": a.kafka_records}
    if m:
        res.update(throughput=float(m.group(1)), mb_s=float(m.group(2)), avg_ms=float(m.group(3)),
                   p50_ms=float(m.group(5)), p99_ms=float(m.group(7)))
    out["kafka_producer_perf"] = res
    ctx.row("baseline", "Kafka ProducerPerformance (acks=all, 200 B, unthrottled, batched)",
            f"{res.get('throughput', 0):.0f} msg/s, p50 {res.get('p50_ms', float('nan')):.0f} ms, "
            f"p99 {res.get('p99_ms', float('nan')):.0f} ms")


def ratios(ctx: Ctx) -> None:
    pub, base = ctx.results.get("publish", {}), ctx.results.get("baselines", {})
    if not pub or not base:
        return
    out = ctx.results.setdefault("ratios", {})
    kafka = base.get("kafka_producer_perf", {}).get("throughput")
    for kind in ("native", "seed"):
        for c in ctx.args.concurrency:
            r = pub.get(f"{kind}_c{c}")
            bare = base.get(f"bare_aiohttp_c{c}")
            aiok = base.get(f"aiokafka_c{c}")
            if not r or not bare:
                continue
            x = r["throughput"] / bare["throughput"] if bare["throughput"] else 0.0
            out[f"{kind}_c{c}_over_bare"] = x
            target = c == max(ctx.args.concurrency)
            ctx.row("ratio", f"{kind} c={c} / bare aiohttp c={c}", f"{100 * x:.1f}%",
                    ">= 40% at c=64" if target else "", (x >= 0.40) if target else None)
            # Less sensitive to a busy machine: the server CPU each needs per request.
            if r.get("server_cpu_us_per_req") and bare.get("server_cpu_us_per_req"):
                y = bare["server_cpu_us_per_req"] / r["server_cpu_us_per_req"]
                out[f"{kind}_c{c}_cpu_ratio"] = y
                ctx.row("ratio", f"{kind} c={c}: bare CPU/req / worker CPU/msg",
                        f"{100 * y:.1f}% ({bare['server_cpu_us_per_req']:.0f} / {r['server_cpu_us_per_req']:.0f} us)")
            if aiok and aiok["throughput"]:
                out[f"{kind}_c{c}_over_aiokafka"] = r["throughput"] / aiok["throughput"]
                ctx.row("ratio", f"{kind} c={c} / aiokafka send_and_wait c={c}",
                        f"{100 * r['throughput'] / aiok['throughput']:.1f}%")
            if kafka:
                out[f"{kind}_c{c}_over_kafka"] = r["throughput"] / kafka
                ctx.row("ratio", f"{kind} c={c} / Kafka ProducerPerformance", f"{100 * r['throughput'] / kafka:.2f}%")


def e2e_cell(ctx: Ctx, rate: int, nsubs: int, duration: float, worker: Worker | BareServer, tag: str = "",
             on_start=None) -> dict:
    room = f"e2e{tag}-{rate}-{nsubs}-{ctx.seq}"
    subs = Subscribers(ctx, worker.port, f"/api/rooms/{room}/events", nsubs, per_proc=250,
                       max_seconds=duration + 300)
    try:
        connected, failed = subs.wait_ready(120)
        quiesce(worker.proc.pid)
        cpu0 = proc_cpu(worker.proc.pid)
        pool = 64 if rate >= 500 else 16
        pub = run_load(ctx, "rate", {"port": worker.port, "kind": "native", "room": room, "rate": rate,
                                     "duration": duration, "pool": pool, "text_bytes": TEXT_BYTES,
                                     "drain": min(10.0, max(3.0, duration))},
                       timeout=duration + 60, on_start=on_start)
        time.sleep(2.0)  # let the last events arrive
        cpu = proc_cpu(worker.proc.pid) - cpu0
    finally:
        res = subs.stop()
    expected = pub["ok"] * connected
    return {"rate": rate, "subscribers": nsubs, "connected": connected, "connect_failed": failed,
            "scheduled": pub["scheduled"], "not_sent": pub["not_sent"],
            "published_ok": pub["ok"], "achieved_rate": pub["achieved_rate"], "publish_statuses": pub["statuses"],
            "publish_latency": pcts(pub["lat"]), "send_lag_p99_ms": pub["send_lag_p99_ms"],
            "loadgen_cpu": pub["client_cpu"],
            "events": res["events"], "expected": expected,
            "delivered_fraction": res["events"] / expected if expected else 0.0,
            "disconnects": res["disconnects"], "per_sub_min": res["per_sub_min"], "per_sub_max": res["per_sub_max"],
            "worker_cpu_share": cpu / (pub["elapsed_s"] + 2.0), "subscriber_clients_cpu": res["client_cpu"],
            "latency": pcts(res["lat"]), "latency_from_sent_at": pcts(res["lat_service"]), "_lat": res["lat"]}


def e2e_row(ctx: Ctx, r: dict, label: str, server: str, target: bool) -> None:
    p, q = r["latency"], r["latency_from_sent_at"]
    met = None
    if target:
        met = bool(p.get("n")) and p["p50_ms"] < 5 and p["p99_ms"] < 25 and r["delivered_fraction"] > 0.999
    val = ("no events" if not p.get("n") else
           f"p50 {p['p50_ms']:.1f} / p95 {p['p95_ms']:.1f} / p99 {p['p99_ms']:.1f} ms "
           f"(from the service's sent_at: p50 {q['p50_ms']:.1f} / p99 {q['p99_ms']:.1f})")
    val += (f"; {r['published_ok']}/{r['scheduled']} published ({r['achieved_rate']:.0f}/s), "
            f"{100 * r['delivered_fraction']:.1f}% delivered, "
            f"{r['disconnects']} dropped, {server} {100 * r['worker_cpu_share']:.0f}% CPU, "
            f"subscriber clients {100 * r['subscriber_clients_cpu']:.0f}%")
    ctx.row("e2e", label, val, "p50 < 5 ms, p99 < 25 ms (all delivered)" if target else "", met)


def section_e2e(ctx: Ctx) -> None:
    a = ctx.args
    out = ctx.results.setdefault("e2e", {})
    for rate in a.e2e_rates:
        for nsubs in a.e2e_subs:
            log(f"end to end: {rate} msg/s, {nsubs} subscribers, {a.e2e_duration}s")
            r = e2e_cell(ctx, rate, nsubs, a.e2e_duration, ctx.worker)
            ctx.cdf["e2e"][f"{rate}/s x {nsubs} subs"] = r.pop("_lat")
            out[f"r{rate}_s{nsubs}"] = r
            e2e_row(ctx, r, f"POST sent -> SSE event, {rate} msg/s x {nsubs} subs", "worker",
                    target=rate == 1000 and nsubs == 1000)
    # The same cells against bench/bare_fanout.py: the floor of this machine and load, no Kafka.
    for rate in a.e2e_floor_rates:
        for nsubs in a.e2e_subs:
            for window in a.e2e_floor_windows:
                log(f"end to end, bare fan-out floor ({window:g} ms window): {rate} msg/s, {nsubs} subscribers, "
                    f"{a.e2e_duration}s")
                with BareServer(ctx, "bare_fanout.py", a.e2e_duration + 600, f"{window:g}") as bare:
                    r = e2e_cell(ctx, rate, nsubs, a.e2e_duration, bare)
                ctx.cdf["e2e"][f"floor {window:g} ms, {rate}/s x {nsubs} subs"] = r.pop("_lat")
                out[f"floor_w{window:g}_r{rate}_s{nsubs}"] = r
                e2e_row(ctx, r, f"floor (no Kafka, {window:g} ms batches), {rate} msg/s x {nsubs} subs", "server",
                        target=False)


def second_worker(ctx: Ctx) -> Worker:
    """Worker B: started fresh (its memory not yet grown by other sections), in the same group as A."""
    w = next((w for w in ctx.workers if w is not ctx.worker and w.proc and w.proc.poll() is None), None)
    if w is None:
        w = start_worker(ctx, "worker-b")
    for x in (ctx.worker, w):
        x.wait_ready(180)
    return w


def section_fanout(ctx: Ctx) -> None:
    a = ctx.args
    out = ctx.results.setdefault("fanout", {})
    # A fresh worker: RSS growth is then these subscribers' own, not reuse of memory earlier
    # sections' subscribers left behind in the allocator.
    w = second_worker(ctx)
    pid = w.proc.pid
    room = f"fanout-{ctx.seq}"
    quiesce(pid)
    rss0 = proc_rss_kb(pid)
    n = a.fanout_subs
    log(f"fan-out: connecting {n} idle SSE subscribers to one worker (RSS before {rss0 / 1024:.1f} MiB)")
    subs = Subscribers(ctx, w.port, f"/api/rooms/{room}/events", n, per_proc=2500, max_seconds=900,
                       connect_concurrency=100)
    probes = []
    try:
        t0 = time.monotonic()
        connected, failed = subs.wait_ready(600)
        connect_s = time.monotonic() - t0
        time.sleep(2.0)
        quiesce(pid)
        rss1 = proc_rss_kb(pid)
        log(f"fan-out: {connected} connected ({failed} failed) in {connect_s:.1f}s; RSS {rss1 / 1024:.1f} MiB")
        for k in range(a.fanout_probes):
            quiesce(pid, limit=10)
            sent = time.time()
            text = f"E{k} {sent:.6f} " + "x" * (TEXT_BYTES - 30)
            post_json(f"{w.url}/api/rooms/{room}/messages", {"user": "probe", "text": text[:TEXT_BYTES]})
            time.sleep(a.fanout_wait)
    finally:
        res = subs.stop()
    rss2 = proc_rss_kb(pid)
    per_sub = (rss1 - rss0) * 1024 / max(connected, 1)
    for k in range(a.fanout_probes):
        lat = res["lat"][res["seqs"] == k]
        probes.append({"received": int(len(lat)), "all_ms": float(lat.max() * 1000) if len(lat) else None,
                       **pcts(lat)})
    ctx.cdf["fanout"][f"{connected} subs, one message"] = res["lat"]
    full = [p for p in probes if p["received"] == connected]
    all_ms = sorted(p["all_ms"] for p in full)
    median_all = all_ms[len(all_ms) // 2] if all_ms else None
    out.update({"subscribers": n, "connected": connected, "failed": failed, "connect_s": connect_s,
                "rss_before_kb": rss0, "rss_after_kb": rss1, "rss_after_disconnect_kb": rss2,
                "rss_per_subscriber_bytes": per_sub, "probes": probes, "median_time_to_all_ms": median_all,
                "disconnects": res["disconnects"]})
    ctx.row("fanout", f"worker RSS per idle SSE subscriber ({connected} connected)",
            f"{per_sub / 1024:.1f} KB ({rss0 / 1024:.0f} -> {rss1 / 1024:.0f} MiB; "
            f"{rss2 / 1024:.0f} MiB after they left)", "< 15 KB", per_sub < 15 * 1024)
    val = ("never reached all" if median_all is None else
           f"{median_all:.0f} ms median of {len(full)} messages (each: " +
           ", ".join(f"{p['all_ms']:.0f}" for p in full) + " ms)")
    if len(full) < len(probes):
        val += f"; {len(probes) - len(full)} message(s) missed some subscribers"
    ctx.row("fanout", f"one message to all {connected} subscribers", val, "< 250 ms",
            median_all is not None and median_all < 250 and len(full) == len(probes))
    ctx.row("fanout", f"connect {connected} subscribers", f"{connect_s:.1f} s ({failed} failed)")


def section_stats(ctx: Ctx) -> None:
    a = ctx.args
    out = ctx.results.setdefault("stats", {})
    wa = ctx.worker
    wb = second_worker(ctx)
    prefix = f"su{ctx.stamp[-6:]}-"
    n = a.stats_users
    log(f"stats: producing {n} messages from {n} distinct users straight into chatroom")
    t0 = time.monotonic()
    prod = run_load(ctx, "produce", {"bootstrap": ctx.bootstrap, "topic": "chatroom", "n": n,
                                     "user_prefix": prefix, "rooms": 100}, timeout=600)
    log(f"stats: produced at {prod['rate']:.0f} msg/s; waiting until the counts are complete")
    counted = 0
    deadline = time.monotonic() + a.stats_wait
    while time.monotonic() < deadline:
        try:
            users = get_json(f"{wa.url}/stats/users", timeout=60)["users"]
            counted = sum(1 for u in users if u.startswith(prefix))
        except OSError as exc:
            log(f"stats: poll failed ({exc}); retrying")
        if counted >= n:
            break
        time.sleep(3)
    count_s = time.monotonic() - t0
    out.update({"users": n, "produce_rate": prod["rate"], "counted": counted, "count_complete_s": count_s,
                "counting_rate": n / count_s if counted >= n else None})
    ctx.row("stats", f"{n} users counted (2 workers)",
            f"{counted}/{n} after {count_s:.0f} s" + (f" (~{n / count_s:.0f} msg/s counted)" if counted >= n else ""))
    for name, w in (("worker A", wa), ("worker B", wb)):
        log(f"stats: GET /stats/users on {name}, c=1, {a.stats_requests} requests")
        r = closed_loop(ctx, w.port, "get", 1, w.proc.pid, a.stats_duration, 1.0, path="/stats/users",
                        max_requests=a.stats_requests)
        p = pcts(r["lat"])
        ctx.cdf["stats"][f"GET /stats/users {name}"] = r["lat"]
        out[name.replace(" ", "_")] = {**{k: v for k, v in r.items() if k != "lat"}, "latency": p}
        ctx.row("stats", f"GET /stats/users on {name}, {counted} users, c=1",
                f"{fmt_lat(p)} ({r['ok']} requests)", "p99 < 50 ms", bool(p.get("n")) and p["p99_ms"] < 50)


_INFRA = ("click/", "faust/cli/", "mode/worker.py", "mode/threads.py", "threading.py", "<module>",
          "BaseEventLoop.run_", "BaseEventLoop._run_once", "Handle._run")


def _package(frame: str) -> str:
    where = frame.rsplit(" (", 1)[-1].rstrip(")")
    path = where.rsplit(":", 1)[0]
    return path.split("/", 1)[0] if "/" in path else path


# What the worker was doing: the first of these found in a stack (from the root) names the sample.
ACTIVITIES = (
    ("HTTP requests (aiohttp, views)", ("RequestHandler.", "aiohttp/web_protocol.py", "kchat_faust/views.py")),
    ("agents (counting, presence, rooms)", ("Agent._execute_actor", "route_by_user", "count_messages",
                                            "track_presence")),
    ("fan-out reader (Hub)", ("Hub.", "kchat_faust/hub.py", "kchat_faust/feed.py")),
    ("aiokafka producer sender", ("aiokafka/producer/",)),
    ("aiokafka connections", ("aiokafka/conn.py",)),
    ("faust consumer/fetcher", ("faust/transport/", "aiokafka/consumer/")),
    ("tables/stores", ("faust/tables/", "faust/stores/")),
    ("event loop (select, scheduling)", ("EpollSelector.select", "BaseEventLoop._run_once", "uvloop")),
)


def _activity(frames: list[str]) -> str:
    for name, keys in ACTIVITIES:
        if any(k in f for f in frames for k in keys):
            return name
    return "other (incl. partial async stacks)"


def pyspy_summary(raw: Path, top: int = 15) -> dict:
    """Shares of py-spy's (non-idle) samples: self time per function and per package, and inclusive time
    per function leaving out the event loop and start-up frames every stack shares."""
    self_s: dict[str, int] = {}
    pkg: dict[str, int] = {}
    incl: dict[str, int] = {}
    ours: dict[str, int] = {}
    acts: dict[str, int] = {}
    total = threads = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        c = int(count)
        total += c
        frames = [f for f in stack.split(";") if " (" in f]
        if not frames:
            continue
        if frames[0].startswith("Thread._bootstrap"):
            threads += c
        self_s[frames[-1]] = self_s.get(frames[-1], 0) + c
        p = _package(frames[-1])
        pkg[p] = pkg.get(p, 0) + c
        act = _activity(frames)
        acts[act] = acts.get(act, 0) + c
        for f in set(frames):
            if not any(x in f for x in _INFRA):
                incl[f] = incl.get(f, 0) + c
            if "kchat_faust/" in f:
                ours[f] = ours.get(f, 0) + c

    def share(d):
        return [(f, round(100 * v / max(total, 1), 1)) for f, v in sorted(d.items(), key=lambda kv: -kv[1])[:top]]
    return {"samples": total, "other_threads_pct": round(100 * threads / max(total, 1), 1),
            "activities": share(acts), "self": share(self_s), "self_by_package": share(pkg),
            "inclusive": share(incl), "inclusive_kchat": share(ours)}


def profiled(ctx: Ctx, name: str, duration: float, pid: int, run) -> dict:
    """run(on_start) starts the load and calls on_start() as the load process starts; py-spy then samples
    the worker for `duration` seconds (100 Hz, non-blocking, idle samples left out)."""
    raw = Path(f"{ctx.base}-profile-{name}.txt")
    box: dict = {}

    def on_start() -> None:
        box["spy"] = subprocess.Popen(
            [PYSPY, "record", "--pid", str(pid), "--duration", str(int(duration)), "--rate", "100",
             "--nonblocking", "--function", "--format", "raw", "--output", str(raw)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        ctx.children.append(box["spy"])
        box["cpu0"], box["t0"] = proc_cpu(pid), time.monotonic()

    try:
        result = run(on_start)
        spy = box["spy"]
        spy.wait(timeout=duration + 120)
        cpu_share = (proc_cpu(pid) - box["cpu0"]) / (time.monotonic() - box["t0"])
    finally:
        spy = box.get("spy")
        if spy is not None:
            if spy.poll() is None:
                spy.kill()
                spy.wait()
            ctx.children.remove(spy)
    if not raw.exists():
        return {"error": spy.stderr.read()[-1000:] if spy else "py-spy did not start"}
    s = pyspy_summary(raw)
    s.update(file=str(raw.relative_to(REPO)), worker_cpu_share=cpu_share, load=result)
    return s


def section_profile(ctx: Ctx) -> None:
    a = ctx.args
    out = ctx.results.setdefault("profile", {})
    w = ctx.worker
    d = a.profile_duration
    rate, nsubs = a.profile_fanout
    runs = {}
    if "stats" in ctx.results:  # first: the other two leave a counting backlog behind
        runs["stats"] = ("GET /stats/users (c=1) on worker A",
                         lambda on_start: strip(run_load(ctx, "post", {
                             "port": w.port, "kind": "get", "path": "/stats/users", "concurrency": 1,
                             "warmup": 0.5, "duration": d, "watch_pid": w.proc.pid},
                             timeout=d + 60, on_start=on_start)))
    for c in a.profile_publish:
        runs[f"publish_c{c}"] = (f"publish load (native, c={c}) on worker A",
                                 lambda on_start, c=c: strip(run_load(ctx, "post", {
                                     "port": w.port, "kind": "native", "concurrency": c, "room": "bench",
                                     "warmup": 0.5, "duration": d, "text_bytes": TEXT_BYTES,
                                     "watch_pid": w.proc.pid}, timeout=d + 60, on_start=on_start)))
    for r in a.profile_rates:  # open loop: what each message costs at a steady rate, counting included
        runs[f"rate{r}"] = (f"publish load ({r} msg/s, open loop) on worker A",
                            lambda on_start, r=r: strip(run_load(ctx, "rate", {
                                "port": w.port, "kind": "native", "room": "bench-rate", "rate": r,
                                "duration": d, "pool": 32, "text_bytes": TEXT_BYTES},
                                timeout=d + 60, on_start=on_start)))
    if rate and nsubs:
        runs["fanout"] = (f"fan-out load ({rate} msg/s x {nsubs} subscribers) on worker A",
                          lambda on_start: strip(e2e_cell(ctx, rate, nsubs, d + 0.5, w, tag="prof",
                                                          on_start=on_start)))
    for name, (what, run) in runs.items():
        waited = quiesce(w.proc.pid, limit=120)
        if waited > 2:
            log(f"profile: waited {waited:.0f}s for worker A to finish its backlog")
        log(f"profile: py-spy on the worker under {what} for {d:g}s")
        try:
            out[name] = profiled(ctx, name, d, w.proc.pid, run)
        except Exception as exc:
            out[name] = {"error": repr(exc)}
        s = out[name]
        if "self" not in s:
            ctx.row("profile", name, f"py-spy failed: {s.get('error', '')[-200:]}")
            continue
        ctx.row("profile", f"{name}: {what}", f"worker {100 * s['worker_cpu_share']:.0f}% of a core, "
                f"{s['samples']} samples ({s['file']})")
        ctx.row("profile", f"{name}: activities",
                ", ".join(f"{p} {pct:.0f}%" for p, pct in s["activities"][:6]))
        ctx.row("profile", f"{name}: self by package",
                ", ".join(f"{p} {pct:.0f}%" for p, pct in s["self_by_package"][:7]))
        for fn, pct in s["self"][:6]:
            ctx.row("profile", f"{name}: self", f"{pct:5.1f}%  {fn}")
        for fn, pct in s["inclusive_kchat"][:6]:
            ctx.row("profile", f"{name}: inclusive (kchat_faust)", f"{pct:5.1f}%  {fn}")


def strip(r: dict) -> dict:
    return {k: v for k, v in r.items() if k not in ("lat", "_lat")}


# -- report ------------------------------------------------------------------------------------
def plot(ctx: Ctx, png: Path) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib is not installed: no plot")
        return False
    panels = [(k, v) for k, v in ctx.cdf.items() if any(len(x) for x in v.values())]
    if not panels:
        return False
    cols = min(2, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(7 * cols, 4.8 * rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    titles = {"publish": "publish: POST latency (closed loop)", "e2e": "end to end: POST sent -> SSE event",
              "fanout": "fan-out: one message -> each idle subscriber", "stats": "GET /stats/users"}
    for ax, (key, curves) in zip(axes.flat, panels):
        for label, lat in curves.items():
            if not len(lat):
                continue
            ms = np.sort(lat * 1000.0)
            if len(ms) > 100_000:
                ms = ms[np.linspace(0, len(ms) - 1, 100_000).astype(int)]
            ax.plot(np.maximum(ms, 1e-3), np.linspace(0, 1, len(ms)), label=f"{label} (n={len(lat)})")
        ax.set_xscale("log")
        ax.set_xlabel("latency (ms, log)")
        ax.set_ylabel("fraction")
        ax.set_title(titles[key], fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(f"kchat bench {ctx.stamp} ({os.cpu_count()} cpus, shared machine: noisy)", fontsize=10)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return True


def print_table(ctx: Ctx) -> None:
    w = [max(len(str(r[i])) for r in ctx.rows + [("section", "figure", "value", "target", "met")])
         for i in range(5)]
    w[2] = min(w[2], 110)
    head = ("section", "figure", "value", "target", "met")
    line = "  ".join(h.ljust(w[i]) for i, h in enumerate(head))
    print(line)
    print("-" * len(line))
    for r in ctx.rows:
        print("  ".join(str(x).ljust(w[i]) for i, x in enumerate(r)))


# The sections, in the order they run (--sections picks a subset), as load.py picks its MODES.
SECTIONS = {"publish": section_publish, "baselines": section_baselines, "e2e": section_e2e,
            "fanout": section_fanout, "stats": section_stats, "profile": section_profile}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sections", default=",".join(SECTIONS),
                    help=f"comma-separated subset of {','.join(SECTIONS)} (default: all)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: short durations, 2,000 fan-out subscribers, 10,000 stats users")
    ap.add_argument("--duration", type=float, help="seconds per publish/baseline cell (10; quick 2)")
    ap.add_argument("--warmup", type=float, help="warm-up seconds before each cell (2; quick 0.5)")
    ap.add_argument("--concurrency", default="1,16,64", help="publish concurrencies (1,16,64)")
    ap.add_argument("--kafka-records", type=int, help="ProducerPerformance records (1,000,000; quick 200,000)")
    ap.add_argument("--e2e-duration", type=float, help="seconds of load per end-to-end cell (15; quick 3)")
    ap.add_argument("--e2e-rates", default="100,1000", help="messages per second (100,1000)")
    ap.add_argument("--e2e-subs", default="1,100,1000", help="subscriber counts (1,100,1000)")
    ap.add_argument("--e2e-floor-rates", default="1000",
                    help="rates whose cells also run against bench/bare_fanout.py, the floor ('': none)")
    ap.add_argument("--e2e-floor-windows", default="0,5",
                    help="batch windows of the floor in ms, one run each (0: one loop turn; 0,5)")
    ap.add_argument("--fanout-subs", type=int, help="idle subscribers on one worker (10,000; quick 2,000)")
    ap.add_argument("--fanout-probes", type=int, help="messages sent to all of them (5; quick 3)")
    ap.add_argument("--fanout-wait", type=float, default=2.0, help="seconds between probe messages (2)")
    ap.add_argument("--stats-users", type=int, help="distinct users for /stats/users (100,000; quick 10,000)")
    ap.add_argument("--stats-requests", type=int, help="GET /stats/users requests per worker (200; quick 30)")
    ap.add_argument("--stats-duration", type=float, default=60.0, help="at most this many seconds of GETs (60)")
    ap.add_argument("--stats-wait", type=float, default=900.0, help="at most this long for counting (900 s)")
    ap.add_argument("--profile-duration", type=float, help="seconds per profile (15; quick 3)")
    ap.add_argument("--profile-fanout", default="1000,1000", help="rate,subscribers of the profiled fan-out (1000,1000; 0,0: none)")
    ap.add_argument("--profile-publish", default="1,64", help="concurrencies of the profiled publish loads (1,64)")
    ap.add_argument("--profile-rates", default="300", help="rates of the profiled open-loop publish loads (300)")
    ap.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio",
                    help="event loop of the workers and of the bare aiohttp baseline (asyncio; uvloop needs the "
                         "uvloop package); the load processes always use asyncio")
    ap.add_argument("--code", metavar="DIR",
                    help="run the kchat_faust/ found in DIR (e.g. a saved copy, to compare two runs on the same "
                         "code); default: a copy of this tree's, taken when the run starts")
    ap.add_argument("--live-code", action="store_true",
                    help="run the tree's kchat_faust/ itself, not a copy (edits during the run then apply to "
                         "workers started later)")
    ap.add_argument("--subscribers", choices=("go", "python"), default="go" if shutil.which("go") else "python",
                    help="SSE subscriber processes: bench/sse_sink in Go (default where go is installed; at 1,000 "
                         "msg/s x 1,000 streams it needs about a core) or load.py's, which run kchat_testkit's "
                         "httpx-sse subscriber (already at 100 msg/s x 1,000 streams they fall seconds behind)")
    ap.add_argument("--bootstrap", help="use this running Kafka (host:port) instead of starting one")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (worker logs, Kafka state)")
    a = ap.parse_args(argv)
    q = a.quick
    defaults = {"duration": (10, 2), "warmup": (2, 0.5), "kafka_records": (1_000_000, 200_000),
                "e2e_duration": (15, 3), "fanout_subs": (10_000, 2_000), "fanout_probes": (5, 3),
                "stats_users": (100_000, 10_000), "stats_requests": (200, 30), "profile_duration": (15, 3)}
    for k, (full, quick) in defaults.items():
        if getattr(a, k) is None:
            setattr(a, k, quick if q else full)
    a.sections = [s.strip() for s in a.sections.split(",") if s.strip()]
    bad = set(a.sections) - set(SECTIONS)
    if bad:
        ap.error(f"unknown section(s): {', '.join(sorted(bad))}")
    a.concurrency = [int(x) for x in a.concurrency.split(",")]
    a.e2e_rates = [int(x) for x in a.e2e_rates.split(",") if x]
    a.e2e_subs = [int(x) for x in a.e2e_subs.split(",")]
    a.e2e_floor_rates = [int(x) for x in a.e2e_floor_rates.split(",") if x]
    a.e2e_floor_windows = [float(x) for x in a.e2e_floor_windows.split(",") if x]
    a.profile_fanout = [int(x) for x in a.profile_fanout.split(",")]
    a.profile_publish = [int(x) for x in a.profile_publish.split(",") if x]
    a.profile_rates = [int(x) for x in a.profile_rates.split(",") if x]
    return a


def run_meta(ctx: Ctx, nofile: int) -> dict:
    """What a reader of the results needs to compare runs: the machine, its load, the options, the code."""
    a = ctx.args

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout.strip()
    return {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "cpus": os.cpu_count(), "loop": a.loop,
            "subscribers": a.subscribers,
            "loadavg_start": os.getloadavg(), "python": platform.python_version(), "nofile": nofile,
            "options": {k: v for k, v in vars(a).items()},
            "commit": git("rev-parse", "--short", "HEAD"),
            "kchat_faust_uncommitted": bool(git("status", "--porcelain", "--", "kchat_faust")),
            "note": "shared machine (other engineers' tests run at the same time): figures are noisy"}


def run_sections(ctx: Ctx) -> Exception | None:
    """Kafka, worker A, then each chosen section; returns the first section's failure (the others still run)."""
    a, failed = ctx.args, None
    if a.bootstrap:
        ctx.bootstrap = a.bootstrap
    else:
        log("starting Kafka (scripts/kafka-local, one node)")
        ctx.cluster = KafkaCluster.start_new(ctx.tmp / "kafka")
        ctx.bootstrap = ctx.cluster.bootstrap
        log(f"Kafka up at {ctx.bootstrap}")
    if set(a.sections) - {"baselines"}:
        ctx.worker = start_worker(ctx, "worker-a")
        ctx.results["meta"]["worker_rss_start_kb"] = proc_rss_kb(ctx.worker.proc.pid)
    for name, section in SECTIONS.items():
        if name in a.sections:
            try:
                section(ctx)
            except Exception as exc:  # one broken section must not lose the others' figures
                failed = failed or exc
                log(f"section {name} failed: {exc!r}")
                ctx.row(name, "section failed", repr(exc)[:200])
    ratios(ctx)
    return failed


def stop_everything(ctx: Ctx) -> None:
    for p in list(ctx.children):
        if p.poll() is None:
            p.kill()
            p.wait()
    for w in ctx.workers:
        w.stop_or_kill()
    if ctx.cluster is not None:
        ctx.cluster.down()


def write_results(ctx: Ctx) -> Path:
    """The JSON results and the CDF plot beside them; returns the JSON's path."""
    meta = ctx.results["meta"]
    json_path = Path(f"{ctx.base}.json")
    png = Path(f"{ctx.base}.png")
    if plot(ctx, png):
        meta["plot"] = str(png.relative_to(REPO))
    ctx.results["table"] = [dict(zip(("section", "figure", "value", "target", "met"), r)) for r in ctx.rows]
    json_path.write_text(json.dumps(ctx.results, indent=2, default=float))
    return json_path


def print_summary(ctx: Ctx, json_path: Path) -> None:
    meta = ctx.results["meta"]
    print()
    print(f"kchat bench {ctx.stamp} ({ctx.args.loop} loop): {os.cpu_count()} cpus, load average "
          f"{meta['loadavg_start'][0]:.1f} at start, {meta['loadavg_end'][0]:.1f} at end; "
          f"{meta['elapsed_s'] / 60:.1f} min. The machine is shared: figures are noisy, re-run at a quiet moment.")
    print("Publish is HTTP request/response (one message per request); Kafka's ProducerPerformance batches "
          "asynchronously, so that ratio is a scale, not a target. One broker: acks=all = the leader only.")
    print()
    print_table(ctx)
    print()
    print(f"results: {json_path.relative_to(REPO)}" + (f", plot: {meta['plot']}" if "plot" in meta else ""))


def main(argv=None) -> int:
    a = parse_args(argv)
    ctx = Ctx(a, time.strftime("%Y%m%d-%H%M%S"))
    began = time.monotonic()
    nofile = raise_nofile()  # workers inherit it: 10,000 subscribers need 10,000+ descriptors
    meta = ctx.results["meta"] = run_meta(ctx, nofile)
    log(f"bench {ctx.stamp}: sections {','.join(a.sections)}; temp dir {ctx.tmp}; fd limit {nofile}; "
        f"load average {meta['loadavg_start'][0]:.1f}")
    if "fanout" in a.sections and nofile < a.fanout_subs + 1000:
        log(f"warning: fd limit {nofile} is below {a.fanout_subs} subscribers + margin")
    if not a.live_code:
        meta.update(snapshot_code(ctx))
        log(f"workers run a copy of {meta['code_from']}/kchat_faust (sha1 {meta['code_sha1']})")
    failed = None
    try:
        failed = run_sections(ctx)
    except KeyboardInterrupt:
        log("interrupted; writing what was measured")
    finally:
        stop_everything(ctx)
        meta["loadavg_end"] = os.getloadavg()
        meta["elapsed_s"] = time.monotonic() - began
        json_path = write_results(ctx)
        if a.keep or failed is not None:
            log(f"kept {ctx.tmp} (worker logs: */worker.log)")
        else:
            shutil.rmtree(ctx.tmp, ignore_errors=True)
    print_summary(ctx, json_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
