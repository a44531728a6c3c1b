"""Section fanout: --fanout-subs idle SSE subscribers on one fresh worker (B): its RSS per subscriber,
then the time until the last of them has each of --fanout-probes single messages."""
from __future__ import annotations

import time

from harness import TEXT_BYTES, Ctx, Subscribers, log, pcts, post_json, second_worker
from kchat_testkit.procs import proc_rss_kb, quiesce


def measure(ctx: Ctx) -> None:
    a = ctx.args
    out = ctx.results.setdefault("fanout", {})
    # A fresh worker: RSS growth is then these subscribers' own, not reuse of memory earlier
    # sections' subscribers left behind in the allocator.
    w = second_worker(ctx)
    pid = w.proc.pid
    room = f"fanout-{ctx.seq}"
    quiesce(pid)
    rss0 = proc_rss_kb(pid)
    n = a.fanout_subs
    log(f"fan-out: connecting {n} idle SSE subscribers to one worker (RSS before {rss0 / 1024:.1f} MiB)")
    subs = Subscribers(ctx, w.port, f"/api/rooms/{room}/events", n, per_proc=2500, max_seconds=900,
                       connect_concurrency=100)
    probes = []
    try:
        t0 = time.monotonic()
        connected, failed = subs.wait_ready(600)
        connect_s = time.monotonic() - t0
        time.sleep(2.0)
        quiesce(pid)
        rss1 = proc_rss_kb(pid)
        log(f"fan-out: {connected} connected ({failed} failed) in {connect_s:.1f}s; RSS {rss1 / 1024:.1f} MiB")
        for k in range(a.fanout_probes):
            quiesce(pid, limit=10)
            sent = time.time()
            text = f"E{k} {sent:.6f} " + "x" * (TEXT_BYTES - 30)
            post_json(f"{w.url}/api/rooms/{room}/messages", {"user": "probe", "text": text[:TEXT_BYTES]})
            time.sleep(a.fanout_wait)
    finally:
        res = subs.stop()
    rss2 = proc_rss_kb(pid)
    per_sub = (rss1 - rss0) * 1024 / max(connected, 1)
    for k in range(a.fanout_probes):
        lat = res["lat"][res["seqs"] == k]
        probes.append({"received": int(len(lat)), "all_ms": float(lat.max() * 1000) if len(lat) else None,
                       **pcts(lat)})
    ctx.cdf["fanout"][f"{connected} subs, one message"] = res["lat"]
    full = [p for p in probes if p["received"] == connected]
    all_ms = sorted(p["all_ms"] for p in full)
    median_all = all_ms[len(all_ms) // 2] if all_ms else None
    out.update({"subscribers": n, "connected": connected, "failed": failed, "connect_s": connect_s,
                "rss_before_kb": rss0, "rss_after_kb": rss1, "rss_after_disconnect_kb": rss2,
                "rss_per_subscriber_bytes": per_sub, "probes": probes, "median_time_to_all_ms": median_all,
                "disconnects": res["disconnects"]})
    ctx.row("fanout", f"worker RSS per idle SSE subscriber ({connected} connected)",
            f"{per_sub / 1024:.1f} KB ({rss0 / 1024:.0f} -> {rss1 / 1024:.0f} MiB; "
            f"{rss2 / 1024:.0f} MiB after they left)", "< 15 KB", per_sub < 15 * 1024)
    val = ("never reached all" if median_all is None else
           f"{median_all:.0f} ms median of {len(full)} messages (each: " +
           ", ".join(f"{p['all_ms']:.0f}" for p in full) + " ms)")
    if len(full) < len(probes):
        val += f"; {len(probes) - len(full)} message(s) missed some subscribers"
    ctx.row("fanout", f"one message to all {connected} subscribers", val, "< 250 ms",
            median_all is not None and median_all < 250 and len(full) == len(probes))
    ctx.row("fanout", f"connect {connected} subscribers", f"{connect_s:.1f} s ({failed} failed)")
