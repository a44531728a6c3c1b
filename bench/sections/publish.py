"""Section publish: closed loop at each concurrency (--concurrency), native JSON POSTs and the seed's
text/plain POSTs; throughput, latency, the worker's CPU per message and the load generator's CPU."""
from __future__ import annotations

from harness import Ctx, closed_loop, log, pcts
from report import fmt_lat, us


def measure(ctx: Ctx) -> None:
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
