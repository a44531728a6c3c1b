"""Section stats: --stats-users distinct users, one message each, produced straight into chatroom; both
workers count them; then GET /stats/users at c=1 on each."""
from __future__ import annotations

import time

from harness import Ctx, closed_loop, get_json, log, pcts, run_load, second_worker
from report import fmt_lat


def measure(ctx: Ctx) -> None:
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
