"""The fault suite's report: each scenario's outcome, the table and text `make faults` prints, the JSON it writes."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .faults_env import SETTINGS, WORKER_ENV
from .history import Recorder, Verdict, Window

@dataclass
class Outcome:
    scenario: str
    verdict: Verdict | None = None
    notes: list[str] = field(default_factory=list)
    attempts: dict = field(default_factory=dict)
    seconds: float = 0.0
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error and self.verdict is not None and self.verdict.ok

    def to_json(self) -> dict:
        return {"scenario": self.scenario, "ok": self.ok, "seconds": round(self.seconds, 1), "error": self.error,
                "notes": self.notes, "attempts": self.attempts,
                "verdict": self.verdict.to_json() if self.verdict else None}


def attempt_summary(rec: Recorder, windows: list[Window]) -> dict:
    """Attempts by worker and outcome, overall and while the fault lasted (what the clients saw)."""
    t_start = (windows[0].t_in_force or windows[0].t_start) if windows else None
    t_heal = (windows[-1].t_lifting or windows[-1].t_heal) if windows else None
    total, during = Counter(), Counter()
    for op in rec.ops:
        for a in op.attempts:
            tag = f"{a.worker.rsplit('/', 1)[-1]} {a.outcome}" + (f" {a.status}" if a.status else "")
            total[tag] += 1
            if t_start and t_heal and t_start <= a.t_sent <= t_heal:
                during[tag] += 1
    return {"all": dict(total), "during the fault": dict(during)}


@dataclass
class Report:
    outcomes: list[Outcome] = field(default_factory=list)
    server_deduplicates: bool | None = None  # whether the workers honoured Idempotency-Key when probed
    setup_error: str = ""
    leftovers: list[str] = field(default_factory=list)
    seconds: float = 0.0
    seed: int = 0
    json_path: Path | None = None

    @property
    def ok(self) -> bool:
        return not self.setup_error and not self.leftovers and all(o.ok for o in self.outcomes)

    def table(self) -> str:
        head = ("scenario", "acked", "lost", "dup", "reord", "unknown(stored)", "gaps", "counts", "no-ack s",
                "busy no-ack s", "recovery s", "verdict")
        rows = [head]
        for o in self.outcomes:
            v = o.verdict
            if v is None:
                rows.append((o.scenario, *["-"] * 10, "ERROR"))
                continue
            rec = [x for x in v.recovery.values() if x is not None]
            rows.append((o.scenario, str(v.acknowledged), str(v.lost), str(v.duplicated), str(v.reordered),
                         f"{v.unknown}({v.unknown_stored})", str(v.gaps), "ok" if not v.count_errors else "WRONG",
                         f"{v.longest_ack_gap:.1f}", f"{v.longest_ack_gap_busy:.1f}",
                         f"{max(rec):.1f}" if rec else "-", "ok" if o.ok else "FAIL"))
        widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
        return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
                         for r in rows)

    def render(self) -> str:
        out = [self.table(), ""]
        for o in self.outcomes:
            out.append(f"{o.scenario} ({o.seconds:.0f}s): {'ok' if o.ok else 'FAILED'}")
            out += [f"    {n}" for n in o.notes]
            if o.attempts.get("during the fault"):
                out.append(f"    attempts during the fault: {o.attempts['during the fault']}")
            if o.error:
                out.append(f"    error: {o.error}")
            if o.verdict:
                out += [f"    - {p}" for p in o.verdict.problems[:12]]
        if self.server_deduplicates is not None:
            out.append(f"the workers {'honour' if self.server_deduplicates else 'do NOT honour'} Idempotency-Key "
                       "(a post repeated with its key " + ("gives the same message)" if self.server_deduplicates
                                                            else "is stored twice): retried unknowns may duplicate)"))
        if self.setup_error:
            out.append(f"setup failed: {self.setup_error}")
        out.append("teardown left: " + ("; ".join(self.leftovers) if self.leftovers else "nothing"))
        out.append(f"{len(self.outcomes)} scenario(s) in {self.seconds / 60:.1f} min (seed {self.seed})"
                   + (f"; JSON: {self.json_path}" if self.json_path else ""))
        return "\n".join(out)

    def to_json(self) -> dict:
        return {"ok": self.ok, "seconds": round(self.seconds, 1), "seed": self.seed, "settings": SETTINGS,
                "server_deduplicates": self.server_deduplicates,
                "worker_env": WORKER_ENV, "setup_error": self.setup_error, "leftovers": self.leftovers,
                "scenarios": [o.to_json() for o in self.outcomes]}

