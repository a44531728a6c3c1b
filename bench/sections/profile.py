"""Section profile: py-spy on worker A under publish load (closed and open loop), under fan-out load and,
after the stats section, under GET /stats/users; the summary of its samples goes into the table."""
from __future__ import annotations

import subprocess
import time
from pathlib import Path

from harness import PY, REPO, TEXT_BYTES, Ctx, e2e_cell, log, run_load
from kchat_testkit.procs import proc_cpu, quiesce
from report import pyspy_summary

PYSPY = str(Path(PY).with_name("py-spy"))


def profiled(ctx: Ctx, name: str, duration: float, pid: int, run) -> dict:
    """run(on_start) starts the load and calls on_start() as the load process starts; py-spy then samples
    the worker for `duration` seconds (100 Hz, non-blocking, idle samples left out)."""
    raw = Path(f"{ctx.base}-profile-{name}.txt")
    box: dict = {}

    def on_start() -> None:
        box["spy"] = subprocess.Popen(
            [PYSPY, "record", "--pid", str(pid), "--duration", str(int(duration)), "--rate", "100",
             "--nonblocking", "--function", "--format", "raw", "--output", str(raw)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        ctx.children.append(box["spy"])
        box["cpu0"], box["t0"] = proc_cpu(pid), time.monotonic()

    try:
        result = run(on_start)
        spy = box["spy"]
        spy.wait(timeout=duration + 120)
        cpu_share = (proc_cpu(pid) - box["cpu0"]) / (time.monotonic() - box["t0"])
    finally:
        spy = box.get("spy")
        if spy is not None:
            if spy.poll() is None:
                spy.kill()
                spy.wait()
            ctx.children.remove(spy)
    if not raw.exists():
        return {"error": spy.stderr.read()[-1000:] if spy else "py-spy did not start"}
    s = pyspy_summary(raw)
    s.update(file=str(raw.relative_to(REPO)), worker_cpu_share=cpu_share, load=result)
    return s


def measure(ctx: Ctx) -> None:
    a = ctx.args
    out = ctx.results.setdefault("profile", {})
    w = ctx.worker
    d = a.profile_duration
    rate, nsubs = a.profile_fanout
    runs = {}
    if "stats" in ctx.results:  # first: the other two leave a counting backlog behind
        runs["stats"] = ("GET /stats/users (c=1) on worker A",
                         lambda on_start: strip(run_load(ctx, "post", {
                             "port": w.port, "kind": "get", "path": "/stats/users", "concurrency": 1,
                             "warmup": 0.5, "duration": d, "watch_pid": w.proc.pid},
                             timeout=d + 60, on_start=on_start)))
    for c in a.profile_publish:
        runs[f"publish_c{c}"] = (f"publish load (native, c={c}) on worker A",
                                 lambda on_start, c=c: strip(run_load(ctx, "post", {
                                     "port": w.port, "kind": "native", "concurrency": c, "room": "bench",
                                     "warmup": 0.5, "duration": d, "text_bytes": TEXT_BYTES,
                                     "watch_pid": w.proc.pid}, timeout=d + 60, on_start=on_start)))
    for r in a.profile_rates:  # open loop: what each message costs at a steady rate, counting included
        runs[f"rate{r}"] = (f"publish load ({r} msg/s, open loop) on worker A",
                            lambda on_start, r=r: strip(run_load(ctx, "rate", {
                                "port": w.port, "kind": "native", "room": "bench-rate", "rate": r,
                                "duration": d, "pool": 32, "text_bytes": TEXT_BYTES},
                                timeout=d + 60, on_start=on_start)))
    if rate and nsubs:
        runs["fanout"] = (f"fan-out load ({rate} msg/s x {nsubs} subscribers) on worker A",
                          lambda on_start: strip(e2e_cell(ctx, rate, nsubs, d + 0.5, w, tag="prof",
                                                          on_start=on_start)))
    for name, (what, run) in runs.items():
        waited = quiesce(w.proc.pid, limit=120)
        if waited > 2:
            log(f"profile: waited {waited:.0f}s for worker A to finish its backlog")
        log(f"profile: py-spy on the worker under {what} for {d:g}s")
        try:
            out[name] = profiled(ctx, name, d, w.proc.pid, run)
        except Exception as exc:
            out[name] = {"error": repr(exc)}
        s = out[name]
        if "self" not in s:
            ctx.row("profile", name, f"py-spy failed: {s.get('error', '')[-200:]}")
            continue
        ctx.row("profile", f"{name}: {what}", f"worker {100 * s['worker_cpu_share']:.0f}% of a core, "
                f"{s['samples']} samples ({s['file']})")
        ctx.row("profile", f"{name}: activities",
                ", ".join(f"{p} {pct:.0f}%" for p, pct in s["activities"][:6]))
        ctx.row("profile", f"{name}: self by package",
                ", ".join(f"{p} {pct:.0f}%" for p, pct in s["self_by_package"][:7]))
        for fn, pct in s["self"][:6]:
            ctx.row("profile", f"{name}: self", f"{pct:5.1f}%  {fn}")
        for fn, pct in s["inclusive_kchat"][:6]:
            ctx.row("profile", f"{name}: inclusive (kchat_faust)", f"{pct:5.1f}%  {fn}")


def strip(r: dict) -> dict:
    return {k: v for k, v in r.items() if k not in ("lat", "_lat")}
