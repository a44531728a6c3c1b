"""Section baselines: the same closed loop against a bare aiohttp app (bench/bare.py), aiokafka's
send_and_wait with the Publisher's settings, and Kafka's own ProducerPerformance; then the ratios of publish
to each (run after all sections, when both are there)."""
from __future__ import annotations

import re
import subprocess

from harness import TEXT_BYTES, BareServer, Ctx, closed_loop, log, pcts, run_load
from kchat_testkit.kafka import create_topic, run_kafka_local
from report import fmt_lat, us


def measure(ctx: Ctx) -> None:
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
