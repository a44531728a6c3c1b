"""The bench's report: the rows' values, the summary of py-spy's samples, the latency CDF plot, the table on
stdout and the results JSON."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from harness import REPO, Ctx, log


# -- values of the table's rows ----------------------------------------------------------------
def us(x) -> str:
    return "?" if x is None else f"{x:.0f}"


def fmt_lat(p: dict) -> str:
    if not p.get("n"):
        return "no samples"
    return f"p50 {p['p50_ms']:.2f} ms, p99 {p['p99_ms']:.2f} ms"


# -- py-spy's collapsed stacks -----------------------------------------------------------------
_INFRA = ("click/", "faust/cli/", "mode/worker.py", "mode/threads.py", "threading.py", "<module>",
          "BaseEventLoop.run_", "BaseEventLoop._run_once", "Handle._run")


def _package(frame: str) -> str:
    where = frame.rsplit(" (", 1)[-1].rstrip(")")
    path = where.rsplit(":", 1)[0]
    return path.split("/", 1)[0] if "/" in path else path


# What the worker was doing: the first of these found in a stack (from the root) names the sample.
ACTIVITIES = (
    ("HTTP requests (aiohttp, views)", ("RequestHandler.", "aiohttp/web_protocol.py", "kchat_faust/views.py")),
    ("agents (counting, presence, rooms)", ("Agent._execute_actor", "route_by_user", "count_messages",
                                            "track_presence")),
    ("fan-out reader (Hub)", ("Hub.", "kchat_faust/hub.py", "kchat_faust/feed.py")),
    ("aiokafka producer sender", ("aiokafka/producer/",)),
    ("aiokafka connections", ("aiokafka/conn.py",)),
    ("faust consumer/fetcher", ("faust/transport/", "aiokafka/consumer/")),
    ("tables/stores", ("faust/tables/", "faust/stores/")),
    ("event loop (select, scheduling)", ("EpollSelector.select", "BaseEventLoop._run_once", "uvloop")),
)


def _activity(frames: list[str]) -> str:
    for name, keys in ACTIVITIES:
        if any(k in f for f in frames for k in keys):
            return name
    return "other (incl. partial async stacks)"


def pyspy_summary(raw: Path, top: int = 15) -> dict:
    """Shares of py-spy's (non-idle) samples: self time per function and per package, and inclusive time
    per function leaving out the event loop and start-up frames every stack shares."""
    self_s: dict[str, int] = {}
    pkg: dict[str, int] = {}
    incl: dict[str, int] = {}
    ours: dict[str, int] = {}
    acts: dict[str, int] = {}
    total = threads = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        c = int(count)
        total += c
        frames = [f for f in stack.split(";") if " (" in f]
        if not frames:
            continue
        if frames[0].startswith("Thread._bootstrap"):
            threads += c
        self_s[frames[-1]] = self_s.get(frames[-1], 0) + c
        p = _package(frames[-1])
        pkg[p] = pkg.get(p, 0) + c
        act = _activity(frames)
        acts[act] = acts.get(act, 0) + c
        for f in set(frames):
            if not any(x in f for x in _INFRA):
                incl[f] = incl.get(f, 0) + c
            if "kchat_faust/" in f:
                ours[f] = ours.get(f, 0) + c

    def share(d):
        return [(f, round(100 * v / max(total, 1), 1)) for f, v in sorted(d.items(), key=lambda kv: -kv[1])[:top]]
    return {"samples": total, "other_threads_pct": round(100 * threads / max(total, 1), 1),
            "activities": share(acts), "self": share(self_s), "self_by_package": share(pkg),
            "inclusive": share(incl), "inclusive_kchat": share(ours)}


# -- plot, table, JSON -------------------------------------------------------------------------
def plot(ctx: Ctx, png: Path) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib is not installed: no plot")
        return False
    panels = [(k, v) for k, v in ctx.cdf.items() if any(len(x) for x in v.values())]
    if not panels:
        return False
    cols = min(2, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(7 * cols, 4.8 * rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    titles = {"publish": "publish: POST latency (closed loop)", "e2e": "end to end: POST sent -> SSE event",
              "fanout": "fan-out: one message -> each idle subscriber", "stats": "GET /stats/users"}
    for ax, (key, curves) in zip(axes.flat, panels):
        for label, lat in curves.items():
            if not len(lat):
                continue
            ms = np.sort(lat * 1000.0)
            if len(ms) > 100_000:
                ms = ms[np.linspace(0, len(ms) - 1, 100_000).astype(int)]
            ax.plot(np.maximum(ms, 1e-3), np.linspace(0, 1, len(ms)), label=f"{label} (n={len(lat)})")
        ax.set_xscale("log")
        ax.set_xlabel("latency (ms, log)")
        ax.set_ylabel("fraction")
        ax.set_title(titles[key], fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(f"kchat bench {ctx.stamp} ({os.cpu_count()} cpus, shared machine: noisy)", fontsize=10)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return True


def print_table(ctx: Ctx) -> None:
    w = [max(len(str(r[i])) for r in ctx.rows + [("section", "figure", "value", "target", "met")])
         for i in range(5)]
    w[2] = min(w[2], 110)
    head = ("section", "figure", "value", "target", "met")
    line = "  ".join(h.ljust(w[i]) for i, h in enumerate(head))
    print(line)
    print("-" * len(line))
    for r in ctx.rows:
        print("  ".join(str(x).ljust(w[i]) for i, x in enumerate(r)))


def write_results(ctx: Ctx) -> Path:
    """The JSON results and the CDF plot beside them; returns the JSON's path."""
    meta = ctx.results["meta"]
    json_path = Path(f"{ctx.base}.json")
    png = Path(f"{ctx.base}.png")
    if plot(ctx, png):
        meta["plot"] = str(png.relative_to(REPO))
    ctx.results["table"] = [dict(zip(("section", "figure", "value", "target", "met"), r)) for r in ctx.rows]
    json_path.write_text(json.dumps(ctx.results, indent=2, default=float))
    return json_path


def print_summary(ctx: Ctx, json_path: Path) -> None:
    meta = ctx.results["meta"]
    print()
    print(f"kchat bench {ctx.stamp} ({ctx.args.loop} loop): {os.cpu_count()} cpus, load average "
          f"{meta['loadavg_start'][0]:.1f} at start, {meta['loadavg_end'][0]:.1f} at end; "
          f"{meta['elapsed_s'] / 60:.1f} min. The machine is shared: figures are noisy, re-run at a quiet moment.")
    print("Publish is HTTP request/response (one message per request); Kafka's ProducerPerformance batches "
          "asynchronously, so that ratio is a scale, not a target. One broker: acks=all = the leader only.")
    print()
    print_table(ctx)
    print()
    print(f"results: {json_path.relative_to(REPO)}" + (f", plot: {meta['plot']}" if "plot" in meta else ""))
