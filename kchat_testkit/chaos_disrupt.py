"""What the chaos run does to a deployment while its load runs: a Disruption, and the kill schedule.

A Disruption runs beside the load (kchat_testkit/chaos_load.py) from the first post until posting is over,
finishing a cycle under way so that whatever it stopped runs again; it counts on the Report what it hit while
posts were in flight, and says at the end whether every broker runs again. Three:
  * LocalBrokerKill: SIGKILL a random broker of a scripts/kafka-local cluster, start it again (`make chaos`);
  * PodDelete: delete a random broker pod of the one-node Kubernetes, then one kchat pod (k8s/tests/);
  * RollingUpdate: a new image tag for Deployment kchat, its budget watched (k8s/tests/).
"""
from __future__ import annotations

import asyncio
import time
from typing import Awaitable, Callable, Protocol

from .chaos_load import Phase
from .chaos_report import BROKERS, leaders_line
from .kafka import KafkaCluster, parse_describe
from .k8s import NS, CheckFailed, Kube, is_ready, pod_state

WORKERS = 2  # Deployment kchat's replicas


class Disruption(Protocol):
    what: str  # what Report.kills_while_posting counts, in the report's words

    async def during(self, phase: Phase) -> None:
        """Disrupt until phase.posting_done, then finish the cycle under way."""

    async def all_back(self) -> bool:
        """Whether every broker runs again."""


async def every(interval: float, phase: Phase, cycle: Callable[[], Awaitable[None]]) -> None:
    """cycle() every interval seconds from phase.t0 while posts go out, one at a time: a slot that comes
    while a cycle is still under way is skipped."""
    k = 1
    while True:
        wait = phase.t0 + k * interval - time.monotonic()
        if wait > 0:
            try:
                await asyncio.wait_for(phase.posting_done.wait(), wait)
                return
            except asyncio.TimeoutError:
                pass
        if phase.posting_done.is_set():
            return
        await cycle()
        k = max(k + 1, int((time.monotonic() - phase.t0) / interval) + 1)


class LocalBrokerKill:
    """Every interval s a random broker of a kafka-local cluster is SIGKILLed and started again down_for s
    later; `chatroom` is described during each outage and after each restart."""

    what = "broker"

    def __init__(self, cluster: KafkaCluster, interval: float, down_for: float,
                 describe: Callable[[], Awaitable[str]]) -> None:
        self.cluster, self.interval, self.down_for, self.describe = cluster, interval, down_for, describe

    async def during(self, phase: Phase) -> None:
        await every(self.interval, phase, lambda: self.kill_cycle(phase, phase.rng.randrange(BROKERS)))

    async def log_leaders(self, phase: Phase, when: str) -> None:
        try:
            phase.log(f"  {when}: {leaders_line(await self.describe())}")
        except RuntimeError as exc:
            phase.log(f"  {when}: describe failed: {str(exc).splitlines()[-1][:150]}")

    async def kill_cycle(self, phase: Phase, broker: int) -> None:
        await asyncio.to_thread(self.cluster.kill, broker)
        killed_at = time.monotonic()
        in_flight = not phase.posting_done.is_set()
        phase.log(f"SIGKILL broker {broker}" + ("" if in_flight else " (after the last post)"))
        if in_flight:
            phase.report.kills_while_posting += 1
        await asyncio.sleep(max(0.0, min(self.down_for / 2, 2.0)))
        await self.log_leaders(phase, "during outage")
        await asyncio.sleep(max(0.0, killed_at + self.down_for - time.monotonic()))
        began = time.monotonic()
        await asyncio.to_thread(self.cluster.start, broker)
        phase.log(f"broker {broker} serving again ({time.monotonic() - killed_at:.1f}s after the kill; "
                  f"start took {time.monotonic() - began:.1f}s)")
        await self.log_leaders(phase, "after restart ")

    async def all_back(self) -> bool:
        status = await asyncio.to_thread(self.cluster.status)
        return all(status[b]["alive"] for b in range(BROKERS))


async def brokers_ready(kube: Kube) -> bool:
    """Every broker pod of the cluster Ready: on Kubernetes, what "every broker runs again" means."""
    return len((await asyncio.to_thread(kube.ready_pods, "app=kafka"))[1]) == BROKERS


class PodDelete:
    """Every interval s a random broker pod (app=kafka) is deleted, the next once the last is back Ready; then,
    once 85 % of the posts are out -- or sooner, when another broker deletion would last past that point --
    one kchat pod (the Deployment replaces it). figures: each deletion, the partitions' leaders before and
    after; failures: what the schedule could not do."""

    what = "broker pod"
    KCHAT_AT = 0.85  # of the posts: late enough that most of the load saw the brokers go, early enough to be seen

    def __init__(self, kube: Kube, interval: float) -> None:
        self.kube, self.interval = kube, interval
        self.figures: dict = {"deletions": [], "kchat_pod_deleted": None}
        self.failures: list[str] = []
        self.longest = 0.0  # seconds the slowest broker deletion took until the pod was back Ready

    async def during(self, phase: Phase) -> None:
        fig = self.figures
        before = parse_describe(await asyncio.to_thread(self.kube.describe))
        fig["leaders_before"] = {p: v.leader for p, v in sorted(before.items())}
        await self.schedule(phase)
        after = parse_describe(await asyncio.to_thread(self.kube.describe))
        fig["leaders_after"] = {p: v.leader for p, v in sorted(after.items())}
        fig["leadership_moves"] = sum(d.get("leaders_moved", 0) for d in fig["deletions"])
        fig["isr_complete_at_end"] = all(sorted(v.isr) == list(range(BROKERS)) for v in after.values())
        if fig["kchat_pod_deleted"] is None:
            self.failures.append("no kchat pod was deleted while posting: raise --posts or lower --interval")

    def kchat_due(self, phase: Phase) -> bool:
        # A broker deletion takes as long as the pod takes to be Ready again (a minute, on a busy node): one
        # started too late would still be under way when the posts end, and the kchat pod never deleted.
        cfg = phase.report.config
        at = phase.t0 + self.KCHAT_AT * cfg.posts / cfg.rate
        return len(phase.report.posts) >= self.KCHAT_AT * cfg.posts or time.monotonic() + self.longest >= at

    async def schedule(self, phase: Phase) -> None:
        k = 1
        while not phase.posting_done.is_set():
            if self.kchat_due(phase):
                d = await asyncio.to_thread(self.delete_kchat_pod, phase)
                self.figures["kchat_pod_deleted"] = d
                phase.log(f"deleted {d['pod']}: 2/2 Ready again after {d['replaced_ready_s']}s")
                phase.report.kills_while_posting += d.pop("while_posting")
                return
            slot = phase.t0 + k * self.interval
            if time.monotonic() < slot:  # a second at most: the kchat pod may come due meanwhile
                try:
                    await asyncio.wait_for(phase.posting_done.wait(), min(1.0, slot - time.monotonic()))
                except asyncio.TimeoutError:
                    pass
                continue
            t = time.monotonic()
            d = await asyncio.to_thread(self.delete_broker, phase, f"kafka-{phase.rng.randrange(BROKERS)}")
            self.longest = max(self.longest, time.monotonic() - t)
            self.figures["deletions"].append(d)
            phase.log(f"deleted {d['pod']}: " + (d["error"] if "error" in d else
                      f"back Ready after {d['back_ready_s']}s, {d['leaders_moved']} leaders moved"))
            phase.report.kills_while_posting += d.pop("while_posting", False)
            k = max(k + 1, int(phase.rel() / self.interval) + 1)  # a slot that passed meanwhile is skipped

    def delete_broker(self, phase: Phase, pod: str) -> dict:
        kube, t = self.kube, time.monotonic()
        d: dict = {"pod": pod, "t": round(t - phase.t0, 1)}
        try:
            old = kube.kjson("get", "pod", pod, "-n", NS)["metadata"]["uid"]
            before = parse_describe(kube.describe())
            kube.kubectl("delete", "pod", pod, "-n", NS, "--wait=false")
            d["while_posting"] = not phase.posting_done.is_set()

            def back():
                p = kube.kjson("get", "pod", pod, "-n", NS)
                return p["metadata"]["uid"] != old and is_ready(p), pod_state(p)
            kube.wait(f"{pod} back Ready", back, 240, interval=1)
            d["back_ready_s"] = round(time.monotonic() - t, 1)
            after = parse_describe(kube.describe())
            d["leaders_moved"] = sum(1 for p in before if p in after and before[p].leader != after[p].leader)
            d["led_before"] = sum(1 for v in before.values() if v.leader == int(pod.rsplit("-", 1)[1]))
        except CheckFailed as e:
            d["error"] = str(e)[:300]
        return d

    def delete_kchat_pod(self, phase: Phase) -> dict:
        kube = self.kube
        pod = phase.rng.choice(kube.ready_pods("app=kchat")[1])["metadata"]["name"]
        t = time.monotonic()
        kube.kubectl("delete", "pod", pod, "-n", NS, "--wait=false")
        while_posting = not phase.posting_done.is_set()
        try:
            kube.wait("Deployment kchat 2/2 Ready again", lambda: (
                len([p for p in kube.ready_pods("app=kchat")[1] if p["metadata"]["name"] != pod]) == WORKERS,
                "waiting"), 300, interval=1)
            back = round(time.monotonic() - t, 1)
        except CheckFailed:
            back = None
        return {"pod": pod, "t": round(t - phase.t0, 1), "replaced_ready_s": back, "while_posting": while_posting}

    async def all_back(self) -> bool:
        return await brokers_ready(self.kube)


class RollingUpdate:
    """Ten seconds into the load (sooner for a short one), a new image tag for Deployment kchat: the same
    image retagged; the Ready workers and the budget are sampled every second until the rollout is complete.
    Counts the old pods replaced while posting."""

    what = "kchat pod"

    def __init__(self, kube: Kube, image: str, tag: str) -> None:
        self.kube, self.image, self.tag = kube, image, tag  # image: docker.io/library/kchat-faust:<version>
        self.figures: dict = {}
        self.failures: list[str] = []

    async def during(self, phase: Phase) -> None:
        kube, fig, cfg = self.kube, self.figures, phase.report.config
        await asyncio.sleep(min(10, cfg.posts / cfg.rate / 4))
        new = f"{self.image.rsplit(':', 1)[0]}:{self.tag}"
        await asyncio.to_thread(lambda: kube.k8s_local("ctr", "images", "tag", "--force", self.image, new))
        old = {p["metadata"]["name"] for p in (await asyncio.to_thread(kube.ready_pods, "app=kchat"))[1]}
        want = f"kchat-faust:{self.tag}"
        await asyncio.to_thread(lambda: kube.kubectl("set", "image", "-n", NS, "deployment/kchat", f"kchat={want}"))
        fig["image"] = want
        t = time.monotonic()
        samples, pdb_min, replaced = [], None, 0
        min_available = (await asyncio.to_thread(kube.kjson, "get", "pdb", "kchat", "-n", NS))["spec"]["minAvailable"]
        while time.monotonic() - t < kube.left(600):
            _pods, ready = await asyncio.to_thread(kube.ready_pods, "app=kchat")
            pdb = (await asyncio.to_thread(kube.kjson, "get", "pdb", "kchat", "-n", NS))["status"]
            samples.append(len(ready))
            pdb_min = min(pdb_min if pdb_min is not None else 99, pdb.get("currentHealthy", 0))
            names = {p["metadata"]["name"] for p in ready}
            if not phase.posting_done.is_set():
                replaced = len(old - names)
            if len(ready) == WORKERS and {p["spec"]["containers"][0]["image"] for p in ready} == {want} \
                    and not old & names:
                break
            await asyncio.sleep(1)
        fig["rollout_seconds"] = round(time.monotonic() - t, 1)
        fig["ready_workers_min"] = min(samples) if samples else 0
        fig["pdb_min_available"] = min_available
        fig["pdb_current_healthy_min"] = pdb_min
        phase.report.kills_while_posting = replaced
        phase.log(f"rollout to {want}: {replaced} old pod(s) replaced while posting, complete after "
                  f"{fig['rollout_seconds']}s, at least {fig['ready_workers_min']} worker(s) Ready throughout")
        status = await asyncio.to_thread(lambda: kube.kubectl("rollout", "status", "-n", NS, "deployment/kchat",
                                                     "--timeout=10s", check=False))
        if status.returncode != 0:
            self.failures.append(f"rollout not complete after {fig['rollout_seconds']}s: "
                                 f"{status.stderr.strip()[-200:]}")
        if fig["ready_workers_min"] < min_available or (pdb_min is not None and pdb_min < min_available):
            self.failures.append(f"the budget was broken: {fig['ready_workers_min']} Ready worker(s) at one point, "
                                 f"minAvailable {min_available}")

    async def all_back(self) -> bool:
        return await brokers_ready(self.kube)
