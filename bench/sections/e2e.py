"""Section e2e: open loop at each rate (--e2e-rates) to each number of subscribers (--e2e-subs), POST sent ->
SSE event; the cells at --e2e-floor-rates once more against bench/bare_fanout.py, the floor (no Kafka)."""
from __future__ import annotations

from harness import BareServer, Ctx, e2e_cell, log


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


def measure(ctx: Ctx) -> None:
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
