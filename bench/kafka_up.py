#!/usr/bin/env python3
"""How long `scripts/kafka-local up` (and `down`) take: a single node and --brokers 4, each in a fresh temp
state dir on free ports. Not a test; nothing is asserted.

    python bench/kafka_up.py [--runs 2] [--layouts 1,4]
"""

import argparse
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

from kchat_testkit.kafka import PORT_SPAN, run_kafka_local
from kchat_testkit.procs import free_port_base


def kafka_local(state, *args, timeout=600):
    return run_kafka_local(*args, state_dir=state, check=False, timeout=timeout)


def one_run(brokers):
    state = Path(tempfile.mkdtemp(prefix="kafka-up-bench-"))
    try:
        args = ["up", "--port-base", str(free_port_base(PORT_SPAN))] + (["--brokers", str(brokers)] if brokers > 1 else [])
        t0 = time.monotonic()
        up = kafka_local(state, *args)
        t_up = time.monotonic() - t0
        fmt = re.search(r"formatted in ([\d.]+)s", up.stderr)
        t0 = time.monotonic()
        down = kafka_local(state, "down")
        t_down = time.monotonic() - t0
        if up.returncode != 0:
            return None, up.stderr.strip().splitlines()[-1:]
        return (t_up, float(fmt.group(1)) if fmt else float("nan"), t_down, down.returncode), []
    finally:
        kafka_local(state, "down", "--kill", timeout=60)
        shutil.rmtree(state, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--layouts", default="1,4", help="comma-separated broker counts (default 1,4)")
    args = ap.parse_args()
    fetch = run_kafka_local("fetch", check=False)
    if fetch.returncode != 0:
        raise SystemExit(fetch.stderr.strip())
    load = os.getloadavg()[0]
    print(f"kafka-local up/down, {os.cpu_count()} cpus, load average {load:.1f} at start")
    print(f"{'layout':<26} {'run':>3} {'up (s)':>8} {'format (s)':>11} {'down (s)':>9}")
    for brokers in [int(x) for x in args.layouts.split(",")]:
        name = "1 combined node" if brokers == 1 else f"3 controllers + {brokers} brokers"
        for run in range(1, args.runs + 1):
            result, err = one_run(brokers)
            if result is None:
                print(f"{name:<26} {run:>3} failed: {' '.join(err)}")
                continue
            t_up, t_fmt, t_down, _rc = result
            print(f"{name:<26} {run:>3} {t_up:>8.1f} {t_fmt:>11.1f} {t_down:>9.1f}", flush=True)
    print(f"load average {os.getloadavg()[0]:.1f} at end")


if __name__ == "__main__":
    main()
