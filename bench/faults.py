#!/usr/bin/env python3
"""The fault suite (`make faults`): Jepsen-style faults against a cluster in network namespaces, each
scenario's history judged for lost, duplicated, reordered and inconsistent messages and exact counts.

    .venv/bin/python bench/faults.py [--quick] [--only NAME,NAME] [--rate 20] [--seed N] [--keep] [--list]

Needs root (network namespaces, nft, loop devices). The scenarios and the runner live in
kchat_testkit/faults.py, the checker in kchat_testkit/history.py. Prints a table and writes
test-artifacts/faults-<time>.json; exit 1 if any scenario found an anomaly or the teardown left anything.
"""
from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from kchat_testkit import faults


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="the three quick scenarios: " + ", ".join(s.name for s in faults.SCENARIOS if s.quick))
    ap.add_argument("--only", help="comma-separated scenario names (see --list)")
    ap.add_argument("--rate", type=float, default=20.0, help="posts per second during a scenario (default 20)")
    ap.add_argument("--seed", type=int, help="random seed (followers, halves)")
    ap.add_argument("--state-dir", type=Path, help="Kafka and worker state and logs here (default: a temp dir, "
                                                   "removed after a run that passes)")
    ap.add_argument("--keep", action="store_true", help="keep the temp state dir even when the run passes")
    ap.add_argument("--list", action="store_true", help="list the scenarios and exit")
    a = ap.parse_args(argv)
    if a.list:
        for s in faults.SCENARIOS:
            print(f"{s.name:<30} hold ~{s.hold:g}s{'  (quick)' if s.quick else ''}")
        return 0
    names = [n.strip() for n in a.only.split(",")] if a.only else None
    unknown = set(names or ()) - {s.name for s in faults.SCENARIOS}
    if unknown:
        ap.error(f"unknown scenario(s): {', '.join(sorted(unknown))} (see --list)")
    report = asyncio.run(faults.run(names, quick=a.quick, rate=a.rate, seed=a.seed, state_dir=a.state_dir,
                                    keep=a.keep))
    print(report.render())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
