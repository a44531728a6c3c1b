"""What every part of the bench shares: the run's context (Ctx), the load and subscriber processes, the
baseline servers, the workers, and the cells several sections (and bench/ab.py) measure with."""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

from kchat_testkit.kafka import KafkaCluster
from kchat_testkit.procs import free_port, proc_cpu, quiesce
from kchat_testkit.worker import Worker

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
PY = sys.executable
TEXT_BYTES = 200


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


# -- the code and the workers ------------------------------------------------------------------
def copy_code(src: Path, dst: Path) -> None:
    """kchat_faust/ of the tree at src into dst, without caches."""
    shutil.copytree(src / "kchat_faust", dst / "kchat_faust",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


def snapshot_code(ctx: Ctx) -> dict:
    """Copy kchat_faust/ so that every worker of this run runs the same code even while the tree
    is being edited (workers import the copy: PYTHONPATH comes before the editable install)."""
    src = Path(ctx.args.code) if ctx.args.code else REPO
    if not (src / "kchat_faust" / "__init__.py").exists():
        raise SystemExit(f"--code {src}: no kchat_faust/ there")
    dst = ctx.tmp / "code"
    copy_code(src, dst)
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


def second_worker(ctx: Ctx) -> Worker:
    """Worker B: started fresh (its memory not yet grown by other sections), in the same group as A."""
    w = next((w for w in ctx.workers if w is not ctx.worker and w.proc and w.proc.poll() is None), None)
    if w is None:
        w = start_worker(ctx, "worker-b")
    for x in (ctx.worker, w):
        x.wait_ready(180)
    return w


# -- HTTP, for the few requests a section makes itself -----------------------------------------
def post_json(url: str, body: dict, timeout: float = 15) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def get_json(url: str, timeout: float = 30) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


# -- cells -------------------------------------------------------------------------------------
def closed_loop(ctx: Ctx, port: int, kind: str, c: int, watch_pid: int, duration: float,
                warmup: float, path: str = "", max_requests: int = 0) -> dict:
    quiesce(watch_pid)
    return run_load(ctx, "post", {"port": port, "kind": kind, "path": path, "concurrency": c,
                                  "room": "bench", "warmup": warmup, "duration": duration,
                                  "text_bytes": TEXT_BYTES, "max_requests": max_requests,
                                  "watch_pid": watch_pid},
                    timeout=warmup + duration + 60)


def e2e_cell(ctx: Ctx, rate: int, nsubs: int, duration: float, worker: Worker | BareServer, tag: str = "",
             on_start=None) -> dict:
    """Open loop at `rate` msg/s for `duration` s into a fresh room with `nsubs` subscribers (processes of at
    most 250 streams); what was published, delivered and dropped, and the latencies of delivery."""
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


def stop_everything(ctx: Ctx) -> None:
    """Whatever the run left running: load and subscriber processes, workers, its own Kafka."""
    for p in list(ctx.children):
        if p.poll() is None:
            p.kill()
            p.wait()
    for w in ctx.workers:
        w.stop_or_kill()
    if ctx.cluster is not None:
        ctx.cluster.down()
