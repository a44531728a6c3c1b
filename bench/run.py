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
# This file is the command: its options, Kafka and worker A, the sections in order, the results. Each section
# is a module of sections/; what they share (Ctx, the load processes, workers, cells) is harness.py; the
# table, the plot, the JSON and the summary of py-spy's samples are report.py.
from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import time

from harness import REPO, Ctx, log, snapshot_code, start_worker, stop_everything
from kchat_testkit.kafka import KafkaCluster
from kchat_testkit.procs import proc_rss_kb, raise_nofile
from report import print_summary, write_results
from sections import SECTIONS
from sections.baselines import ratios


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
