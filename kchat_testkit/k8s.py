"""The one-node Kubernetes of scripts/k8s-local as the k8s tests (k8s/tests/) and PodDelete see it: kubectl
with every wait bounded by one deadline, pods and their readiness, the kafka-client pod's shell.

Every failure is a CheckFailed whose message says what was awaited and what was last seen: the tests show it
as their result's detail, one line an operator can act on.
"""
from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parent.parent
K8S_LOCAL = REPO / "scripts" / "k8s-local"
NS = "kafka"


class CheckFailed(Exception):
    pass


class Deadline(CheckFailed):
    """The whole run's time is up: what follows would only pile up timeouts."""


def pod_state(p: dict) -> str:
    """'Running', 'Pending (Unschedulable)', 'Waiting (CrashLoopBackOff)', … for progress details."""
    for cs in p["status"].get("containerStatuses", []) + p["status"].get("initContainerStatuses", []):
        waiting = cs.get("state", {}).get("waiting")
        if waiting and waiting.get("reason") not in (None, "PodInitializing"):
            return f"{waiting['reason']}"
    reason = next((c.get("reason") for c in p["status"].get("conditions", []) if c.get("reason")), None)
    return p["status"].get("phase", "?") + (f" ({reason})" if reason else "")


def is_ready(p: dict) -> bool:
    conds = {c["type"]: c["status"] for c in p["status"].get("conditions", [])}
    return conds.get("Ready") == "True" and not p["metadata"].get("deletionTimestamp")


class Kube:
    """kubectl and friends through scripts/k8s-local, each call bounded by its own timeout and by the run's
    deadline (seconds from now), so that a stuck cluster ends the run instead of hanging it."""

    def __init__(self, deadline: float, say: Callable[[str], None] = print) -> None:
        self.deadline = deadline
        self.t_end = time.monotonic() + deadline
        self.say = say

    def left(self, wanted: float) -> float:
        remaining = self.t_end - time.monotonic()
        if remaining <= 0:
            raise Deadline(f"the run's deadline ({self.deadline:.0f}s) has passed")
        return min(wanted, remaining)

    def sh(self, cmd, timeout: float = 120, input: str | None = None, check: bool = True):
        words = " ".join(map(str, cmd[:6]))
        try:
            cp = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, input=input,
                                timeout=self.left(timeout), stdin=None if input is not None else subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise CheckFailed(f"`{words}` did not finish within {timeout:.0f}s") from None
        if check and cp.returncode != 0:
            err = (cp.stderr.strip() or cp.stdout.strip()).splitlines()
            raise CheckFailed(f"`{words}` failed ({cp.returncode}): {err[-1][:300] if err else ''}")
        return cp

    def stream(self, cmd, timeout: float) -> list[str]:
        """Run a long step whose progress lines (stderr) the operator should see as they come; returns them."""
        lines: list[str] = []
        proc = subprocess.Popen([str(c) for c in cmd], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                stdin=subprocess.DEVNULL)
        expired = threading.Event()
        timer = threading.Timer(self.left(timeout), lambda: (expired.set(), proc.kill()))
        timer.start()
        try:
            for line in proc.stderr:  # the step's own lines are few: one per stage
                lines.append(line.rstrip("\n"))
                self.say(f"  {lines[-1]}")
            proc.wait()
        finally:
            timer.cancel()
        words = " ".join(map(str, cmd[:3]))
        if expired.is_set():
            raise CheckFailed(f"`{words}` did not finish within {timeout:.0f}s")
        if proc.returncode != 0:
            raise CheckFailed(f"`{words}` failed ({proc.returncode}): {lines[-1][:300] if lines else ''}")
        return lines

    def k8s_local(self, *args, **kw):
        return self.sh([K8S_LOCAL, *args], **kw)

    def kubectl(self, *args, **kw):
        return self.sh([K8S_LOCAL, "kubectl", *args], **kw)

    def kjson(self, *args) -> dict:
        return json.loads(self.kubectl(*args, "-o", "json").stdout)

    def client(self, script: str, timeout: float = 120, input: str | None = None, check: bool = True):
        """bash -c script in the kafka-client pod (its $BOOTSTRAP lists the four brokers)."""
        return self.kubectl("exec", *(["-i"] if input is not None else []), "-n", NS, "kafka-client", "--",
                            "bash", "-c", script, timeout=timeout, input=input, check=check)

    def describe(self) -> str:
        """kafka-topics --describe of chatroom, from inside the cluster."""
        return self.client('kafka-topics.sh --bootstrap-server "$BOOTSTRAP" --describe --topic chatroom').stdout

    def wait(self, what: str, probe, timeout: float, interval: float = 2.0) -> str:
        """probe() -> (done, detail); bounded; CheckFailed names what was awaited and the last detail."""
        deadline = time.monotonic() + self.left(timeout)
        detail = ""
        while True:
            try:
                done, detail = probe()
            except CheckFailed as e:
                if isinstance(e, Deadline):
                    raise
                done, detail = False, str(e)
            if done:
                return detail
            if time.monotonic() >= deadline:
                raise CheckFailed(f"{what}: not within {timeout:.0f}s (last: {detail})")
            time.sleep(interval)

    def pods(self, selector: str) -> list[dict]:
        return self.kjson("get", "pods", "-n", NS, "-l", selector)["items"]

    def ready_pods(self, selector: str) -> tuple[list[dict], list[dict]]:
        pods = self.pods(selector)
        return pods, [p for p in pods if is_ready(p)]

    def pods_ready(self, selector: str, count: int, timeout: float, what: str, logs: Path) -> str:
        """Wait until count pods of selector are Ready; the previous logs of any restarted container go to logs."""
        def probe():
            pods, ready = self.ready_pods(selector)
            states = ", ".join(f"{p['metadata']['name']}:{pod_state(p)}" for p in pods)
            restarts = sum(cs.get("restartCount", 0) for p in pods for cs in p["status"].get("containerStatuses", []))
            return len(ready) == count, f"{len(ready)}/{count} Ready, {restarts} restart(s) ({states or 'no pods'})"
        detail = self.wait(f"{what} Ready", probe, timeout, interval=3)
        return detail + self.save_previous_logs(selector, logs)

    def save_previous_logs(self, selector: str, logs: Path) -> str:
        """The log of a restarted container's previous run, for the operator to see why it stopped."""
        saved = []
        for p in self.pods(selector):
            for cs in p["status"].get("containerStatuses", []):
                if cs.get("restartCount"):
                    name = f"{p['metadata']['name']}.{cs['name']}.previous.log"
                    out = self.kubectl("logs", "-n", NS, p["metadata"]["name"], "-c", cs["name"], "--previous",
                                       "--tail=200", check=False, timeout=60)
                    logs.mkdir(parents=True, exist_ok=True)
                    (logs / name).write_text(out.stdout + out.stderr)
                    reason = cs.get("lastState", {}).get("terminated", {})
                    saved.append(f"{p['metadata']['name']} (exit {reason.get('exitCode')}, {reason.get('reason')})")
        return f"; restarted: {', '.join(saved)}, their previous logs in {logs}/" if saved else ""

    def collect_logs(self, why: str, out: Path) -> None:
        """The pods' state, the events and every pod's log, for the operator after a failure; best effort."""
        try:
            out.mkdir(parents=True, exist_ok=True)
            state = self.kubectl("get", "pods,pv,pvc,jobs,events", "-n", NS, "-o", "wide", timeout=30, check=False)
            (out / "state.txt").write_text(f"after: {why}\n{state.stdout}{state.stderr}")
            for pod in self.kjson("get", "pods", "-n", NS)["items"]:
                name = pod["metadata"]["name"]
                logs = self.kubectl("logs", "-n", NS, name, "--all-containers", "--tail=300", timeout=30, check=False)
                (out / f"{name}.log").write_text(logs.stdout + logs.stderr)
        except (CheckFailed, OSError, ValueError):
            pass
