#!/usr/bin/env python3
"""Chaos run: the tutorial's part 2 (load while a random broker dies every minute), with checks.

    .venv/bin/python bench/chaos.py [--posts 5000] [--interval 20] [--down-for 5] [--duration-limit 600]

The run and its checks live in kchat_testkit/chaos.py (tests/test_chaos.py runs a short variant of it); this
is its command line. Exit 1 and a list of failures when a check fails; timings are printed, never asserted.
"""
from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from kchat_testkit import chaos


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=chaos.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    d = chaos.Config()
    ap.add_argument("--posts", type=int, default=d.posts, help=f"messages to post (default {d.posts})")
    ap.add_argument("--concurrency", type=int, default=d.concurrency, help=f"posts in flight (default {d.concurrency})")
    ap.add_argument("--interval", type=float, default=d.interval, help=f"seconds between kills (default {d.interval:g})")
    ap.add_argument("--down-for", type=float, default=d.down_for,
                    help=f"seconds a killed broker stays down (default {d.down_for:g})")
    ap.add_argument("--duration-limit", type=float, default=d.duration_limit,
                    help=f"seconds the posting phase may take; later posts are not sent (default {d.duration_limit:g})")
    ap.add_argument("--rate", type=float, default=d.rate,
                    help=f"pace posts to this many per second, 0: unpaced (default {d.rate:g})")
    ap.add_argument("--users", type=int, default=d.users, help=f"users posting round-robin (default {d.users})")
    ap.add_argument("--publish-timeout", type=float, default=d.publish_timeout,
                    help=f"the workers' KCHAT_PUBLISH_TIMEOUT (default {d.publish_timeout:g})")
    ap.add_argument("--seed", type=int, help="random seed for the choice of brokers")
    ap.add_argument("--state-dir", type=Path, help="keep Kafka and worker state and logs here (default: a temp dir, "
                                                   "removed after a run that passes)")
    ap.add_argument("--keep", action="store_true", help="keep the temp state dir even when the run passes")
    a = ap.parse_args(argv)
    if a.posts < 1 or a.concurrency < 1 or a.interval <= 0 or a.down_for < 0 or a.users < 1:
        ap.error("--posts, --concurrency, --users must be positive; --interval > 0; --down-for >= 0")
    cfg = chaos.Config(posts=a.posts, concurrency=a.concurrency, interval=a.interval, down_for=a.down_for,
                       duration_limit=a.duration_limit, rate=a.rate, users=a.users, publish_timeout=a.publish_timeout,
                       seed=a.seed, state_dir=a.state_dir, keep=a.keep)
    report = asyncio.run(chaos.run(cfg))
    print(report.render())
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
