#!/usr/bin/env python3
"""How long `scripts/kafka-local up` (and `down`) take: a single node and --brokers 4, each in a fresh temp
state dir on free ports. Not a test; nothing is asserted.

    python bench/kafka_up.py [--runs 2] [--layouts 1,4]
"""

import argparse
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
KAFKA_LOCAL = REPO / "scripts" / "kafka-local"


def free_base(span=13):
    for _ in range(500):
        base = random.randrange(20000, 32000 - span)
        ok = True
        for port in range(base, base + span):
            with socket.socket() as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise SystemExit("no free port range")


def kafka_local(state, *args, timeout=600):
    return subprocess.run([sys.executable, str(KAFKA_LOCAL), "--state-dir", str(state), *args],
                          capture_output=True, text=True, timeout=timeout)


def one_run(brokers):
    state = Path(tempfile.mkdtemp(prefix="kafka-up-bench-"))
    try:
        args = ["up", "--port-base", str(free_base())] + (["--brokers", str(brokers)] if brokers > 1 else [])
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
    fetch = subprocess.run([sys.executable, str(KAFKA_LOCAL), "fetch"], capture_output=True, text=True)
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
