#!/usr/bin/env python3
"""The seed's hands-on on a real one-node Kubernetes built here (scripts/k8s-local), checked step by step.

    .venv/bin/python k8s/e2e.py [--smoke] [--keep] [--deadline S] [--posts N] [--rate R] ...   (make k8s-e2e)

Brings the cluster up, builds and loads the images, applies k8s/overlays/local with nothing changed but the
Kafka image's reference (a kustomize `images:` entry in a generated kustomization), then:

Part 1: every PersistentVolume bound to its claim; 3 controllers and 4 brokers Ready; each broker's per-pod
  name resolves inside a pod to that pod's IP (and a name outside the cluster does not resolve); Job
  chatroom-topic complete; from kafka-client, `kafka-topics.sh --describe` shows chatroom with 12 partitions,
  replication factor 4 and every ISR complete; a console producer -> console consumer round trip; Deployment
  kchat 2/2 Ready; from the host through the NodePorts on 127.0.0.1, a seed-format post on 30192 arrives on a
  seed-format stream on 30292; kchat-cli against 30066 sends, listens and shows complete stats.
Part 2: --posts posts through NodePort 30192 at --rate/s with subscribers on 30066 (native) and 30292 (seed
  format) that resume with Last-Event-ID; a random broker pod (app=kafka) deleted every --interval s (the
  next one once the last is back Ready) and, at the end of the load, one kchat pod; then a rolling update of
  Deployment kchat (a new image tag: the same image retagged) under --rollout-posts more posts.
  Asserted as kchat_testkit/chaos.py does: every 200'd message reaches every subscriber once, at its offset, in room
  order; per-user counts (GET /stats/users) exact; no 2xx for an unstored message; the PodDisruptionBudget held.
--smoke (CI): up, images, apply, every pod Ready, one round trip through the NodePorts, down.

The cluster is torn down at the end (and checked to leave nothing behind) unless --keep (K8S_KEEP=1).
Prints one line per check, then `k8s-e2e: N passed, M failed`; writes test-artifacts/k8s-e2e.json (or
k8s-smoke.json): each check's name, result, seconds and detail, and the figures of Part 2. On a failure the
pods' state, events and logs go to test-artifacts/k8s-e2e-logs/. Every wait is bounded; --deadline bounds all.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import aiohttp
import httpx

from kchat_testkit import chaos
from kchat_testkit.kafka import parse_describe
from kchat_testkit.sse import Subscriber

REPO = Path(__file__).resolve().parent.parent

K8S_LOCAL = REPO / "scripts" / "k8s-local"
ARTIFACTS = REPO / "test-artifacts"
NS = "kafka"
HOST = "http://127.0.0.1"
PUBLISH, SUBSCRIBE, WEB = f"{HOST}:30192", f"{HOST}:30292", f"{HOST}:30066"
BROKERS, CONTROLLERS, WORKERS = 4, 3, 2
PARTITIONS, REPLICATION_FACTOR = 12, 4
FQDN = "{pod}.broker.kafka.svc.cluster.local"


class CheckFailed(Exception):
    pass


class Deadline(CheckFailed):
    pass


def kafka_version():
    return re.search(r"<kafka\.version>([^<]+)<", (REPO / "kafka" / "pom.xml").read_text()).group(1)


class E2E:
    def __init__(self, args):
        self.args = args
        self.t_end = time.monotonic() + args.deadline
        self.checks: list[dict] = []
        self.figures: dict = {}
        self.first_failure: str | None = None
        self.run_id = f"k8s{uuid.uuid4().hex[:6]}"
        self.rng = random.Random(args.seed)
        self.sysctl_before = self.sysctls()

    # -- plumbing ------------------------------------------------------------------------------------------------
    @staticmethod
    def sysctls():
        """What `up` and the kubelet may change, as the machine has it now."""
        out = subprocess.run([str(K8S_LOCAL), "sysctls"], capture_output=True, text=True, check=True).stdout
        return dict(line.split("=", 1) for line in out.splitlines())

    def left(self, wanted: float) -> float:
        remaining = self.t_end - time.monotonic()
        if remaining <= 0:
            raise Deadline(f"the run's deadline ({self.args.deadline:.0f}s) has passed")
        return min(wanted, remaining)

    def sh(self, cmd, timeout=120, input=None, check=True):
        try:
            cp = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, input=input,
                                timeout=self.left(timeout), stdin=None if input is not None else subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise CheckFailed(f"`{' '.join(map(str, cmd[:6]))}` did not finish within {timeout:.0f}s")
        if check and cp.returncode != 0:
            err = (cp.stderr.strip() or cp.stdout.strip()).splitlines()
            raise CheckFailed(f"`{' '.join(map(str, cmd[:6]))}` failed ({cp.returncode}): {err[-1][:300] if err else ''}")
        return cp

    def stream(self, cmd, timeout):
        """Run a long step whose progress lines (stderr) the operator should see as they come; returns them."""
        lines = []
        proc = subprocess.Popen([str(c) for c in cmd], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                stdin=subprocess.DEVNULL)
        expired = threading.Event()
        timer = threading.Timer(self.left(timeout), lambda: (expired.set(), proc.kill()))
        timer.start()
        try:
            for line in proc.stderr:  # the step's own lines are few: one per stage
                lines.append(line.rstrip("\n"))
                print(f"k8s-e2e:   {lines[-1]}", flush=True)
            proc.wait()
        finally:
            timer.cancel()
        if expired.is_set():
            raise CheckFailed(f"`{' '.join(map(str, cmd[:3]))}` did not finish within {timeout:.0f}s")
        if proc.returncode != 0:
            raise CheckFailed(f"`{' '.join(map(str, cmd[:3]))}` failed ({proc.returncode}): "
                              f"{lines[-1][:300] if lines else ''}")
        return lines

    def kubectl(self, *args, **kw):
        return self.sh([K8S_LOCAL, "kubectl", *args], **kw)

    def kjson(self, *args):
        return json.loads(self.kubectl(*args, "-o", "json").stdout)

    def client(self, script, timeout=120, input=None, check=True):
        """bash -c script in the kafka-client pod (its $BOOTSTRAP lists the four brokers)."""
        return self.kubectl("exec", *(["-i"] if input is not None else []), "-n", NS, "kafka-client", "--",
                            "bash", "-c", script, timeout=timeout, input=input, check=check)

    def wait(self, what, probe, timeout, interval=2.0):
        """probe() -> (done, detail); bounded; CheckFailed names what was awaited and the last detail."""
        deadline = time.monotonic() + self.left(timeout)
        detail = ""
        while True:
            try:
                done, detail = probe()
            except CheckFailed as e:
                done, detail = False, str(e)
            if done:
                return detail
            if time.monotonic() >= deadline:
                raise CheckFailed(f"{what}: not within {timeout:.0f}s (last: {detail})")
            time.sleep(interval)

    def check(self, name, fn, essential=True):
        """Run one check; record name, result, seconds, detail. After an essential check fails the later ones
        are recorded as failed without running (they depend on it)."""
        t0 = time.monotonic()
        if self.first_failure:
            result, detail = "failed", f"not run: {self.first_failure} failed"
        else:
            try:
                detail = fn() or ""
                result = "passed"
            except Exception as e:  # a check's own bug fails that check, not the tear-down
                result, detail = "failed", (str(e) if isinstance(e, CheckFailed) else f"{e.__class__.__name__}: {e}")
                if essential or isinstance(e, Deadline):
                    self.first_failure = name
                self.collect_logs(name)
        seconds = round(time.monotonic() - t0, 1)
        self.checks.append({"name": name, "result": result, "seconds": seconds, "detail": detail})
        print(f"k8s-e2e: {'PASS' if result == 'passed' else 'FAIL'} {name} ({seconds:.1f}s): {detail}", flush=True)
        return result == "passed"

    def collect_logs(self, why):
        out = ARTIFACTS / "k8s-e2e-logs"
        try:
            out.mkdir(parents=True, exist_ok=True)
            state = self.sh([K8S_LOCAL, "kubectl", "get", "pods,pv,pvc,jobs,events", "-n", NS, "-o", "wide"],
                            timeout=30, check=False)
            (out / "state.txt").write_text(f"after: {why}\n{state.stdout}{state.stderr}")
            for pod in self.kjson("get", "pods", "-n", NS)["items"]:
                name = pod["metadata"]["name"]
                logs = self.sh([K8S_LOCAL, "kubectl", "logs", "-n", NS, name, "--all-containers", "--tail=300"],
                               timeout=30, check=False)
                (out / f"{name}.log").write_text(logs.stdout + logs.stderr)
        except (CheckFailed, OSError, ValueError):
            pass

    # -- Part 1 ---------------------------------------------------------------------------------------------------
    def up(self):
        self.stream([K8S_LOCAL, "up"], timeout=3600)  # a cold install builds Kubernetes (~15 min)
        node = self.kjson("get", "node")["items"][0]
        return f"node {node['metadata']['name']} {node['status']['nodeInfo']['kubeletVersion']}"

    def images(self):
        lines = self.stream([K8S_LOCAL, "images"], timeout=3600)
        names = self.sh([K8S_LOCAL, "ctr", "images", "list", "-q"]).stdout.split()
        want = [f"docker.io/library/kchat-faust:{self.project_version()}",
                f"docker.io/library/kchat-kafka:{kafka_version()}", "localhost/kchat-pause:1.0"]
        missing = [w for w in want if w not in names]
        if missing:
            raise CheckFailed(f"not in containerd: {', '.join(missing)}")
        return "; ".join(line.split(": ", 1)[1] for line in lines if "ready (" in line)

    @staticmethod
    def project_version():
        return re.search(r'^version\s*=\s*"([^"]+)"', (REPO / "pyproject.toml").read_text(), re.M).group(1)

    def apply(self):
        kustomize = self.sh([REPO / "scripts" / "install-kustomize"], timeout=600).stdout.strip().splitlines()[-1]
        with tempfile.TemporaryDirectory(prefix="kchat-e2e-") as tmp:
            # The one difference from k8s/overlays/local: the Kafka image built here (no image registry).
            (Path(tmp) / "kustomization.yaml").write_text(
                "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
                f"resources:\n  - {os.path.relpath(REPO / 'k8s' / 'overlays' / 'local', tmp)}\n"
                f"images:\n  - name: apache/kafka\n    newName: kchat-kafka\n    newTag: \"{kafka_version()}\"\n")
            rendered = self.sh([kustomize, "build", tmp]).stdout
        (ARTIFACTS / "k8s-e2e-applied.yaml").write_text(rendered)
        # ... and nothing else: the overlay as users get it, with only the Kafka image's name changed.
        overlay = self.sh([kustomize, "build", REPO / "k8s" / "overlays" / "local"]).stdout
        ours = f"kchat-kafka:{kafka_version()}"
        if overlay.replace(f"apache/kafka:{kafka_version()}", ours) != rendered or ours not in rendered:
            raise CheckFailed("the applied manifests differ from k8s/overlays/local by more than the Kafka image "
                              f"(or the overlay does not name apache/kafka:{kafka_version()})")
        # A new namespace's default ServiceAccount is created by the controller-manager moments after the
        # namespace: a bare Pod applied at once can be refused until then. kubectl apply is idempotent.
        for attempt in range(1, 6):
            cp = self.kubectl("apply", "-f", "-", input=rendered, check=False, timeout=120)
            if cp.returncode == 0:
                created = sum(1 for line in cp.stdout.splitlines() if line.endswith(" created"))
                return f"{created} objects created (attempt {attempt}); manifests in test-artifacts/k8s-e2e-applied.yaml"
            if "serviceaccount" not in cp.stderr or attempt == 5:
                raise CheckFailed(f"kubectl apply failed: {cp.stderr.strip().splitlines()[-1][:300]}")
            time.sleep(self.left(3))

    def pvs_bound(self):
        def probe():
            pvs = [pv for pv in self.kjson("get", "pv")["items"]
                   if pv["spec"].get("storageClassName") == "kafka-local"]
            unbound = [pv["metadata"]["name"] for pv in pvs if pv["status"].get("phase") != "Bound"]
            claims = {c["metadata"]["name"]: c for c in self.kjson("get", "pvc", "-n", NS)["items"]}
            wrong = [pv["metadata"]["name"] for pv in pvs if claims.get(pv["spec"]["claimRef"]["name"], {})
                     .get("spec", {}).get("volumeName") != pv["metadata"]["name"]]
            ok = len(pvs) == BROKERS + CONTROLLERS and not unbound and not wrong
            return ok, f"{len(pvs)} PVs, unbound {unbound or 'none'}, not bound to their claim {wrong or 'none'}"
        return self.wait("every PersistentVolume bound to its claim", probe, 300)

    def ready_pods(self, selector):
        pods = self.kjson("get", "pods", "-n", NS, "-l", selector)["items"]
        ready = []
        for p in pods:
            conds = {c["type"]: c["status"] for c in p["status"].get("conditions", [])}
            if conds.get("Ready") == "True" and not p["metadata"].get("deletionTimestamp"):
                ready.append(p)
        return pods, ready

    def pods_ready(self, selector, count, timeout, what):
        def probe():
            pods, ready = self.ready_pods(selector)
            states = ", ".join(f"{p['metadata']['name']}:{pod_state(p)}" for p in pods)
            restarts = sum(cs.get("restartCount", 0) for p in pods for cs in p["status"].get("containerStatuses", []))
            return len(ready) == count, f"{len(ready)}/{count} Ready, {restarts} restart(s) ({states or 'no pods'})"
        detail = self.wait(f"{what} Ready", probe, timeout, interval=3)
        return detail + self.save_previous_logs(selector)

    def save_previous_logs(self, selector):
        """The log of a restarted container's previous run, for the operator to see why it stopped."""
        saved = []
        for p in self.kjson("get", "pods", "-n", NS, "-l", selector)["items"]:
            for cs in p["status"].get("containerStatuses", []):
                if cs.get("restartCount"):
                    name = f"{p['metadata']['name']}.{cs['name']}.previous.log"
                    logs = self.kubectl("logs", "-n", NS, p["metadata"]["name"], "-c", cs["name"], "--previous",
                                        "--tail=200", check=False, timeout=60)
                    (ARTIFACTS / "k8s-e2e-logs").mkdir(parents=True, exist_ok=True)
                    (ARTIFACTS / "k8s-e2e-logs" / name).write_text(logs.stdout + logs.stderr)
                    reason = cs.get("lastState", {}).get("terminated", {})
                    saved.append(f"{p['metadata']['name']} (exit {reason.get('exitCode')}, {reason.get('reason')})")
        return f"; restarted: {', '.join(saved)}, their previous logs in test-artifacts/k8s-e2e-logs/" if saved else ""

    def dns(self):
        pods = {p["metadata"]["name"]: p["status"].get("podIP") for p in self.ready_pods("app=kafka")[1]}
        names = [FQDN.format(pod=f"kafka-{i}") for i in range(BROKERS)] + ["kafka-0.broker.kafka"]
        out = self.client("for n in " + " ".join(names) + "; do echo \"$n $(getent hosts $n | awk '{print $1}')\"; "
                          "done; getent hosts kchat.local.example >/dev/null && echo OUTSIDE-RESOLVED || true")
        got = dict(line.split(" ", 1) if " " in line else (line, "") for line in out.stdout.splitlines())
        wrong = [f"{n} -> {got.get(n, '?').strip() or 'nothing'} (pod IP {pods.get(n.split('.')[0])})"
                 for n in names if got.get(n, "").strip() != pods.get(n.split(".")[0])]
        if wrong:
            raise CheckFailed("per-pod names do not resolve to their pods: " + "; ".join(wrong))
        if "OUTSIDE-RESOLVED" in out.stdout:
            raise CheckFailed("a name outside cluster.local resolved: queries leave the cluster DNS")
        return f"{', '.join(f'{n}={got[n].strip()}' for n in names[:BROKERS])}; short name ok; outside names: NXDOMAIN"

    def config_warnings(self):
        """Kafka warns at start-up about settings in the wrong role or about to be ignored: none may appear."""
        found = []
        for pod, container in [(f"kafka-{i}", "broker") for i in range(BROKERS)] + [
                (f"kafka-controller-{i}", "controller") for i in range(CONTROLLERS)]:
            logs = self.kubectl("logs", "-n", NS, pod, "-c", container, timeout=60).stdout
            found += [f"{pod}: {line.split('] ', 1)[-1][:160]}" for line in logs.splitlines()
                      if " WARN " in line and "(kafka.server.KafkaConfig)" in line]
        if found:
            raise CheckFailed(f"{len(found)} configuration warning(s): " + "; ".join(sorted(set(found))[:4]))
        return f"none in the logs of {BROKERS} brokers and {CONTROLLERS} controllers"

    def topic_job(self):
        def probe():
            job = self.kjson("get", "job", "chatroom-topic", "-n", NS)
            st = job["status"]
            return bool(st.get("succeeded")), f"succeeded {st.get('succeeded', 0)}, failed {st.get('failed', 0)}"
        detail = self.wait("Job chatroom-topic complete", probe, 600, interval=3)
        logs = self.kubectl("logs", "-n", NS, "job/chatroom-topic").stdout
        if "Topic chatroom is ready" not in logs:
            raise CheckFailed(f"Job complete but its log lacks 'Topic chatroom is ready': {logs[-300:]}")
        return detail

    def describe(self):
        return self.client('kafka-topics.sh --bootstrap-server "$BOOTSTRAP" --describe --topic chatroom',
                           timeout=120).stdout

    def topic(self):
        def probe():
            text = self.describe()
            parts = parse_describe(text)
            m = re.search(r"PartitionCount:\s*(\d+)\s+ReplicationFactor:\s*(\d+)", text)
            shape = (int(m.group(1)), int(m.group(2))) if m else None
            short = [p.partition for p in parts.values() if sorted(p.isr) != list(range(BROKERS))]
            ok = shape == (PARTITIONS, REPLICATION_FACTOR) and len(parts) == PARTITIONS and not short
            leaders = Counter(p.leader for p in parts.values())
            return ok, (f"PartitionCount {shape[0] if shape else '?'}, ReplicationFactor {shape[1] if shape else '?'}, "
                        f"partitions with an incomplete ISR: {short or 'none'}; leaders per broker "
                        f"{dict(sorted(leaders.items()))}")
        return self.wait("chatroom with 12 partitions, RF 4, every ISR complete", probe, 180, interval=5)

    def console(self):
        token = f"e2e-console: {self.run_id} typed in one terminal"
        self.client('kafka-console-producer.sh --bootstrap-server "$BOOTSTRAP" --topic chatroom', input=token + "\n")
        out = self.client('kafka-console-consumer.sh --bootstrap-server "$BOOTSTRAP" --topic chatroom '
                          '--from-beginning --timeout-ms 20000 --max-messages 100000 2>/dev/null; true', timeout=180)
        if token not in out.stdout:
            raise CheckFailed(f"the consumer did not print the produced line within 20s (it printed "
                              f"{len(out.stdout.splitlines())} lines)")
        return "the line produced on one side was consumed on the other"

    def seed_round_trip(self):
        return asyncio.run(self._seed_round_trip())

    async def _seed_round_trip(self):
        text = f"hello from the host ({self.run_id})"
        async with aiohttp.ClientSession() as session:
            sub = Subscriber(SUBSCRIBE, compat=True, reconnect=True, retry_delay=0.5, read_timeout=60, name="seed")
            try:
                await sub.start(timeout=self.left(60))
                p = chaos.Post(i=0, user=f"{self.run_id}-alice", text=text, worker=0)
                await chaos.send_post(session, p, PUBLISH, aiohttp.ClientTimeout(total=30))
                if p.status != 200:
                    raise CheckFailed(f"POST {PUBLISH}/api/topics/chatroom answered {p.status}: {p.error[:200]}")
                deadline = time.monotonic() + self.left(30)
                while time.monotonic() < deadline:
                    if any(m.text == text and m.user == p.user for m in sub.events):
                        got = next(m for m in sub.events if m.text == text)
                        return (f"POST :30192 -> 200 (event {p.event_id}); event 'test' on :30292 with data "
                                f"'{got.user}: {got.text}' after {got.t - p.t_sent:.2f}s")
                    await asyncio.sleep(0.1)
                raise CheckFailed(f"posted {p.event_id} but the :30292 stream did not deliver it within 30s "
                                  f"(received {len(sub.events)}; drops {sub.drops[:3]})")
            finally:
                await sub.stop()

    def cli(self):
        cli = REPO / ".venv" / "bin" / "kchat-cli"
        user = f"{self.run_id}-bob"
        base = [cli, "--url", WEB]
        first = json.loads(self.sh([*base, "send", "--user", user, "--json", "first"]).stdout)
        listen = subprocess.Popen([str(c) for c in [*base, "listen", "--since", first["event_id"], "--count", "2",
                                                    "--json"]], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True)
        try:
            for text in ("second", "third"):
                self.sh([*base, "send", "--user", user, text])
            out, err = listen.communicate(timeout=self.left(60))
        except subprocess.TimeoutExpired:
            listen.kill()
            raise CheckFailed("kchat-cli listen did not print the two messages sent after its --since within 60s")
        got = [json.loads(line)["text"] for line in out.splitlines() if line.strip()]
        if got != ["second", "third"] or listen.returncode != 0:
            raise CheckFailed(f"kchat-cli listen printed {got} (exit {listen.returncode}; {err.strip()[-200:]})")

        def probe():
            table = self.sh([*base, "stats"]).stdout
            row = re.search(rf"^{re.escape(user)}\s+(\d+)$", table, re.M)
            seed_user = re.search(rf"^{re.escape(self.run_id)}-alice\s+(\d+)$", table, re.M)
            ok = bool(row and row.group(1) == "3" and seed_user and seed_user.group(1) == "1")
            return ok, (f"{user}: {row.group(1) if row else 'absent'} (sent 3), {self.run_id}-alice: "
                        f"{seed_user.group(1) if seed_user else 'absent'} (sent 1)")
        return "send x3, listen --since got the 2 later ones in order; stats: " + self.wait(
            "kchat-cli stats complete", probe, 60)

    # -- Part 2 ---------------------------------------------------------------------------------------------------
    def chaos(self):
        return asyncio.run(self._load_run("chaos", self.args.posts, self._chaos_actions))

    def rollout(self):
        return asyncio.run(self._load_run("rollout", self.args.rollout_posts, self._rollout_actions))

    async def blocking(self, fn, *a):
        return await asyncio.get_running_loop().run_in_executor(None, fn, *a)

    async def _load_run(self, phase, posts, actions):
        """Posts through :30192 with subscribers on :30066 and :30292 while actions() disrupts; then the
        checks of kchat_testkit/chaos.py on what was posted and received."""
        cfg = chaos.Config(posts=posts, rate=self.args.rate, concurrency=4, users=5, unanswered_ok=True,
                           deliver_timeout=180, settle=3, counts_timeout=120, progress=False)
        rep = chaos.Report(config=cfg, run_id=f"{self.run_id}{phase[0]}")
        fig = {"posts": posts, "rate": self.args.rate}
        self.figures[phase] = fig
        t_began = time.monotonic()
        # A new connection per post (as `ab` without -k): kube-proxy spreads them over the workers, and no post
        # rides a kept-alive connection to a pod that is going away.
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True, limit=0)) as posting, \
                httpx.AsyncClient(limits=httpx.Limits(max_connections=None)) as streams:
            for k in range(2):
                for base, compat in ((WEB, False), (SUBSCRIBE, True)):
                    rep.subscribers.append(Subscriber(
                        base, None if compat else chaos.ROOM, compat=compat, reconnect=True, retry_delay=0.5,
                        read_timeout=60, client=streams, name=f"{'seed:30292' if compat else 'native:30066'}-{k}"))
            try:
                await asyncio.gather(*(s.start(timeout=self.left(60)) for s in rep.subscribers))
                done = asyncio.Event()
                t0 = time.monotonic()
                disrupt = asyncio.create_task(actions(rep, fig, done, t0))
                try:
                    await self._post(chaos, rep, posting, t0)
                finally:
                    done.set()
                    fig["posting_seconds"] = round(time.monotonic() - t0, 1)
                await disrupt
                await chaos.wait_delivery(rep, cfg)
                await chaos.read_counts(rep, posting, [WEB, WEB, PUBLISH], self.left(cfg.counts_timeout))
                _, brokers = await self.blocking(self.ready_pods, "app=kafka")
                rep.brokers_alive_at_end = len(brokers) == BROKERS
            finally:
                for s in rep.subscribers:
                    await s.stop()
        rep.failures = rep.check()
        fig.update(load_figures(rep))
        fig["seconds"] = round(time.monotonic() - t_began, 1)
        (ARTIFACTS / f"k8s-e2e-{phase}.txt").write_text(rep.render())
        if rep.failures:
            fig["failures"] = rep.failures
            raise CheckFailed("; ".join(rep.failures)[:1500] + f" (full report: test-artifacts/k8s-e2e-{phase}.txt)")
        return (f"{fig['status']} of {posts} posts; lost {fig['lost']}, duplicated {fig['duplicated']}, out of order "
                f"{fig['out_of_order']}; counts exact: {fig['counts_exact']}; subscriber resumes {fig['resumes']}")

    async def _post(self, chaos, rep, session, t0):
        cfg = rep.config
        users = [f"{rep.run_id}-u{k}" for k in range(cfg.users)]
        counter = iter(range(cfg.posts))
        timeout = aiohttp.ClientTimeout(total=cfg.publish_timeout + 20)

        async def poster():
            for i in counter:
                await asyncio.sleep(max(0.0, t0 + i / cfg.rate - time.monotonic()))
                if time.monotonic() > self.t_end - 300:  # leave time for the checks and the tear-down
                    rep.not_sent += 1
                    continue
                p = chaos.Post(i=i, user=users[i % len(users)], text=f"m{i:05d} of {rep.run_id}", worker=0)
                rep.posts.append(p)
                await chaos.send_post(session, p, PUBLISH, timeout)

        await asyncio.gather(*(poster() for _ in range(cfg.concurrency)))

    async def _chaos_actions(self, rep, fig, done, t0):
        """Every --interval s a random broker pod is deleted (the next once the last is back Ready); when 85 % of
        the posts are out, one kchat pod."""
        fig["deletions"] = deletions = []
        before = parse_describe(await self.blocking(self.describe))
        fig["leaders_before"] = {p: v.leader for p, v in sorted(before.items())}
        k = 1
        kchat_deleted = False
        while not done.is_set():
            try:
                await asyncio.wait_for(done.wait(), max(0.0, t0 + k * self.args.interval - time.monotonic()))
                break
            except asyncio.TimeoutError:
                pass
            if len(rep.posts) < 0.85 * rep.config.posts:
                pod = f"kafka-{self.rng.randrange(BROKERS)}"
                deletions.append(await self.blocking(self.delete_broker, pod, t0))
                rep.kills_while_posting += not done.is_set()
            elif not kchat_deleted:
                kchat_deleted = True
                fig["kchat_pod_deleted"] = await self.blocking(self.delete_kchat_pod, t0)
            k = max(k + 1, int((time.monotonic() - t0) / self.args.interval) + 1)
        after = parse_describe(await self.blocking(self.describe))
        fig["leaders_after"] = {p: v.leader for p, v in sorted(after.items())}
        fig["leadership_moves"] = sum(d.get("leaders_moved", 0) for d in deletions)
        fig["isr_complete_at_end"] = all(sorted(v.isr) == list(range(BROKERS)) for v in after.values())
        if not kchat_deleted:
            fig["kchat_pod_deleted"] = None
            rep.failures.append("no kchat pod was deleted while posting: raise --posts or lower --interval")

    def delete_broker(self, pod, t0):
        t = time.monotonic()
        d = {"pod": pod, "t": round(t - t0, 1)}
        try:
            old = self.kjson("get", "pod", pod, "-n", NS)["metadata"]["uid"]
            before = parse_describe(self.describe())
            self.kubectl("delete", "pod", pod, "-n", NS, "--wait=false")

            def back():
                p = self.kjson("get", "pod", pod, "-n", NS)
                conds = {c["type"]: c["status"] for c in p["status"].get("conditions", [])}
                return p["metadata"]["uid"] != old and conds.get("Ready") == "True", pod_state(p)
            self.wait(f"{pod} back Ready", back, 240, interval=1)
            d["back_ready_s"] = round(time.monotonic() - t, 1)
            after = parse_describe(self.describe())
            d["leaders_moved"] = sum(1 for p in before if p in after and before[p].leader != after[p].leader)
            d["led_before"] = sum(1 for v in before.values() if v.leader == int(pod.rsplit("-", 1)[1]))
        except CheckFailed as e:
            d["error"] = str(e)[:300]
        print(f"k8s-e2e:   t+{d['t']:.0f}s deleted {pod}: " + (f"back Ready after {d.get('back_ready_s')}s, "
              f"{d.get('leaders_moved')} leaders moved" if "error" not in d else d["error"]), flush=True)
        return d

    def delete_kchat_pod(self, t0):
        _, ready = self.ready_pods("app=kchat")
        pod = self.rng.choice(ready)["metadata"]["name"]
        t = time.monotonic()
        self.kubectl("delete", "pod", pod, "-n", NS, "--wait=false")
        try:
            self.wait("Deployment kchat 2/2 Ready again", lambda: (
                len([p for p in self.ready_pods("app=kchat")[1] if p["metadata"]["name"] != pod]) == WORKERS,
                "waiting"), 300, interval=1)
            back = round(time.monotonic() - t, 1)
        except CheckFailed:
            back = None
        print(f"k8s-e2e:   t+{t - t0:.0f}s deleted {pod}: 2/2 Ready again after {back}s", flush=True)
        return {"pod": pod, "t": round(t - t0, 1), "replaced_ready_s": back}

    async def _rollout_actions(self, rep, fig, done, t0):
        """Ten seconds into the load: a new image tag for Deployment kchat; the Ready workers and the budget are
        sampled every second until the rollout is complete."""
        await asyncio.sleep(min(10, rep.config.posts / rep.config.rate / 4))
        tag = f"{self.project_version()}-rollout-{self.run_id}"
        self.sh([K8S_LOCAL, "ctr", "images", "tag", "--force", f"docker.io/library/kchat-faust:{self.project_version()}",
                 f"docker.io/library/kchat-faust:{tag}"])
        old = {p["metadata"]["name"] for p in (await self.blocking(self.ready_pods, "app=kchat"))[1]}
        await self.blocking(lambda: self.kubectl("set", "image", "-n", NS, "deployment/kchat", f"kchat=kchat-faust:{tag}"))
        fig["image"] = f"kchat-faust:{tag}"
        t = time.monotonic()
        samples, pdb_min, replaced_while_posting = [], None, 0
        min_available = self.kjson("get", "pdb", "kchat", "-n", NS)["spec"]["minAvailable"]
        while time.monotonic() - t < self.left(600):
            _pods, ready = await self.blocking(self.ready_pods, "app=kchat")
            pdb = (await self.blocking(self.kjson, "get", "pdb", "kchat", "-n", NS))["status"]
            samples.append(len(ready))
            pdb_min = min(pdb_min if pdb_min is not None else 99, pdb.get("currentHealthy", 0))
            images = {p["spec"]["containers"][0]["image"] for p in ready}
            names = {p["metadata"]["name"] for p in ready}
            if not done.is_set():
                replaced_while_posting = len(old - names)
            if len(ready) == WORKERS and images == {f"kchat-faust:{tag}"} and not old & names:
                break
            await asyncio.sleep(1)
        fig["rollout_seconds"] = round(time.monotonic() - t, 1)
        fig["ready_workers_min"] = min(samples) if samples else 0
        fig["pdb_min_available"] = min_available
        fig["pdb_current_healthy_min"] = pdb_min
        rep.disrupted = "kchat pod"
        rep.kills_while_posting = replaced_while_posting
        status = await self.blocking(lambda: self.kubectl("rollout", "status", "-n", NS, "deployment/kchat",
                                                          "--timeout=10s", check=False))
        if status.returncode != 0:
            rep.failures.append(f"rollout not complete after {fig['rollout_seconds']}s: {status.stderr.strip()[-200:]}")
        if fig["ready_workers_min"] < min_available or (pdb_min is not None and pdb_min < min_available):
            rep.failures.append(f"the budget was broken: {fig['ready_workers_min']} Ready worker(s) at one point, "
                                f"minAvailable {min_available}")

    # -- the end ------------------------------------------------------------------------------------------------
    def down(self):
        self.sh([K8S_LOCAL, "down"], timeout=300)
        left = self.sh([K8S_LOCAL, "leftovers", "--wait", "30"], check=False)
        now = self.sysctls()
        changed = {k: (v, now.get(k)) for k, v in self.sysctl_before.items() if now.get(k) != v}
        if left.returncode != 0 or changed:
            raise CheckFailed(f"left behind: {left.stdout.strip()[:600]} sysctls (before, after): {changed}")
        return ("no process, mount, cgroup, link, address, nft table, iptables chain, host file or changed sysctl "
                "left")

    def run(self):
        t0 = time.monotonic()
        ARTIFACTS.mkdir(exist_ok=True)
        try:
            self.checks_in_order()
        finally:  # also on Ctrl-C: no cluster is left behind unless asked for
            if self.args.keep:
                print(f"k8s-e2e: cluster kept (K8S_KEEP=1): scripts/k8s-local kubectl get pods -n {NS}; page on "
                      f"{WEB}/; scripts/k8s-local down to remove it", flush=True)
            else:
                self.first_failure = None  # tear down whatever happened before
                self.t_end = max(self.t_end, time.monotonic() + 300)
                self.check("down leaves nothing behind", self.down)
        passed = sum(ch["result"] == "passed" for ch in self.checks)
        failed = len(self.checks) - passed
        name = "k8s-smoke" if self.args.smoke else "k8s-e2e"
        report = {"name": name, "run_id": self.run_id, "passed": passed, "failed": failed,
                  "seconds": round(time.monotonic() - t0, 1), "checks": self.checks, **self.figures}
        (ARTIFACTS / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
        print(f"{name}: {passed} passed, {failed} failed")
        return 1 if failed else 0

    def checks_in_order(self):
        a, c = self.args, self.check
        c("cluster up (scripts/k8s-local up)", self.up)
        c("images built here and loaded into containerd", self.images)
        c("k8s/overlays/local applied (only the Kafka image overridden)", self.apply)
        if not a.smoke:
            c("every PersistentVolume bound to its claim", self.pvs_bound)
        c("3 KRaft controllers Ready", lambda: self.pods_ready("app=kafka-controller", CONTROLLERS, 600, "controllers"))
        c("4 brokers Ready", lambda: self.pods_ready("app=kafka", BROKERS, 600, "brokers"))
        if not a.smoke:
            c("Kafka logs no configuration warnings (KafkaConfig)", self.config_warnings, essential=False)
            c("per-pod DNS names of the brokers resolve inside a pod", self.dns, essential=False)
        c("Job chatroom-topic complete", self.topic_job)
        if not a.smoke:
            c("kafka-topics --describe: chatroom 12 partitions, RF 4, every ISR complete", self.topic, essential=False)
            c("console producer -> console consumer round trip", self.console, essential=False)
        c("Deployment kchat 2/2 Ready", lambda: self.pods_ready("app=kchat", WORKERS, 600, "kchat workers"))
        if a.smoke:
            c("every pod Ready (kafka-client too)", lambda: self.pods_ready("app=kafka-client", 1, 120, "kafka-client"))
        c("seed-format post on :30192 arrives on a seed-format stream on :30292", self.seed_round_trip)
        if not a.smoke:
            c("kchat-cli against :30066: send, listen, stats complete", self.cli, essential=False)
            c(f"Part 2: {a.posts} posts, a broker pod deleted every {a.interval:g}s, then a kchat pod", self.chaos,
              essential=False)
            c(f"rolling update of Deployment kchat under {a.rollout_posts} posts", self.rollout, essential=False)


def pod_state(p):
    """'Running', 'Pending (Unschedulable)', 'Waiting (CrashLoopBackOff)', … for progress details."""
    for cs in p["status"].get("containerStatuses", []) + p["status"].get("initContainerStatuses", []):
        waiting = cs.get("state", {}).get("waiting")
        if waiting and waiting.get("reason") not in (None, "PodInitializing"):
            return f"{waiting['reason']}"
    reason = next((c.get("reason") for c in p["status"].get("conditions", []) if c.get("reason")), None)
    return p["status"].get("phase", "?") + (f" ({reason})" if reason else "")


def load_figures(rep):
    ok = rep.ok_posts()
    statuses = Counter("200" if p.status == 200 else "503" if p.status == 503 else
                       "no answer" if p.status is None else str(p.status) for p in rep.posts)
    lost = max((sum(1 for p in ok if p.text not in {m.text for m in s.events}) for s in rep.subscribers), default=0)
    dups = sum(len(s.events) - len({m.text for m in s.events}) for s in rep.subscribers)
    disorder = sum(sum(1 for x, y in zip(s.events, s.events[1:]) if y.offset <= x.offset) for s in rep.subscribers)
    expected = rep.expected_counts()
    return {"status": ", ".join(f"{n} {k}" for k, n in sorted(statuses.items())), "ok": len(ok),
            "not_sent": rep.not_sent, "lost": lost, "duplicated": dups, "out_of_order": disorder,
            "counts_expected": expected, "counts_seen": rep.counts,
            "counts_exact": bool(rep.counts) and all(v == expected for v in rep.counts.values()),
            "resumes": sum(len(s.drops) for s in rep.subscribers),
            "received": {s.name: len(s.events) for s in rep.subscribers}}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="CI's short run: up, images, apply, Ready, one round trip")
    ap.add_argument("--keep", action="store_true", default=os.environ.get("K8S_KEEP") == "1",
                    help="leave the cluster running at the end (env K8S_KEEP=1)")
    ap.add_argument("--deadline", type=float, default=None,
                    help="seconds for the whole run (default 3600, --smoke 1800; a cold build takes ~20 of them)")
    ap.add_argument("--posts", type=int, default=2000, help="Part 2 posts (default 2000)")
    ap.add_argument("--rate", type=float, default=8.0, help="posts per second (default 8)")
    ap.add_argument("--interval", type=float, default=20.0, help="seconds between broker deletions (default 20)")
    ap.add_argument("--rollout-posts", type=int, default=600, help="posts during the rolling update (default 600)")
    ap.add_argument("--seed", type=int, help="random seed for the choice of pods")
    a = ap.parse_args(argv)
    if a.deadline is None:
        a.deadline = 1800.0 if a.smoke else 3600.0
    if min(a.posts, a.rollout_posts) < 1 or a.rate <= 0 or a.interval <= 0:
        ap.error("--posts, --rollout-posts, --rate and --interval must be positive")
    return E2E(a).run()


if __name__ == "__main__":
    sys.exit(main())
