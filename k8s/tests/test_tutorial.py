"""The seed's hands-on on the one-node cluster, step by step, in order (the `cluster` fixture of conftest.py
has brought it up, loaded the images and applied k8s/overlays/local).

Part 1: every PersistentVolume bound to its claim; 3 controllers and 4 brokers Ready; each broker's per-pod
  name resolves inside a pod to that pod's IP (and a name outside the cluster does not resolve); Job
  chatroom-topic complete; from kafka-client, `kafka-topics.sh --describe` shows chatroom with 12 partitions,
  replication factor 4 and every ISR complete; a console producer -> console consumer round trip; Deployment
  kchat 2/2 Ready; from the host through the NodePorts on 127.0.0.1, a seed-format post on 30192 arrives on a
  seed-format stream on 30292; kchat-cli against 30066 sends, listens and shows complete stats.
Part 2: the chaos run's load (kchat_testkit/chaos_load.py) through NodePort 30192 with subscribers on 30066
  (native) and 30292 (seed format), judged by its Report: first under PodDelete (a random broker pod deleted
  every --interval s, then one kchat pod), then under RollingUpdate of Deployment kchat.
The tests marked smoke are the short run (--smoke).
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import aiohttp
import httpx
import pytest

from kchat_testkit import chaos
from kchat_testkit.chaos_disrupt import WORKERS, PodDelete, RollingUpdate
from kchat_testkit.chaos_report import BROKERS
from kchat_testkit.kafka import parse_describe
from kchat_testkit.k8s import NS, CheckFailed
from kchat_testkit.procs import until
from kchat_testkit.sse import Subscriber

from k8s_cluster import ARTIFACTS, LOGS, WEB, project_version, worker_image

PUBLISH, SUBSCRIBE = "http://127.0.0.1:30192", "http://127.0.0.1:30292"
CONTROLLERS = 3
PARTITIONS, REPLICATION_FACTOR = 12, 4
FQDN = "{pod}.broker.kafka.svc.cluster.local"

essential, smoke, check_name = pytest.mark.essential, pytest.mark.smoke, pytest.mark.check


# -- Part 1 -------------------------------------------------------------------------------------------------------
@essential
@check_name("every PersistentVolume bound to its claim")
def test_persistent_volumes_bound(cluster, check):
    kube = cluster.kube

    def probe():
        pvs = [pv for pv in kube.kjson("get", "pv")["items"] if pv["spec"].get("storageClassName") == "kafka-local"]
        unbound = [pv["metadata"]["name"] for pv in pvs if pv["status"].get("phase") != "Bound"]
        claims = {c["metadata"]["name"]: c for c in kube.kjson("get", "pvc", "-n", NS)["items"]}
        wrong = [pv["metadata"]["name"] for pv in pvs if claims.get(pv["spec"]["claimRef"]["name"], {})
                 .get("spec", {}).get("volumeName") != pv["metadata"]["name"]]
        ok = len(pvs) == BROKERS + CONTROLLERS and not unbound and not wrong
        return ok, f"{len(pvs)} PVs, unbound {unbound or 'none'}, not bound to their claim {wrong or 'none'}"
    check.detail = kube.wait("every PersistentVolume bound to its claim", probe, 300)


@smoke
@essential
@check_name("3 KRaft controllers Ready")
def test_controllers_ready(cluster, check):
    check.detail = cluster.kube.pods_ready("app=kafka-controller", CONTROLLERS, 600, "controllers", LOGS)


@smoke
@essential
@check_name("4 brokers Ready")
def test_brokers_ready(cluster, check):
    check.detail = cluster.kube.pods_ready("app=kafka", BROKERS, 600, "brokers", LOGS)


@check_name("Kafka logs no configuration warnings (KafkaConfig)")
def test_no_configuration_warnings(cluster, check):
    """Kafka warns at start-up about settings in the wrong role or about to be ignored: none may appear."""
    found = []
    for pod, container in [(f"kafka-{i}", "broker") for i in range(BROKERS)] + [
            (f"kafka-controller-{i}", "controller") for i in range(CONTROLLERS)]:
        logs = cluster.kube.kubectl("logs", "-n", NS, pod, "-c", container, timeout=60).stdout
        found += [f"{pod}: {line.split('] ', 1)[-1][:160]}" for line in logs.splitlines()
                  if " WARN " in line and "(kafka.server.KafkaConfig)" in line]
    assert not found, f"{len(found)} configuration warning(s): " + "; ".join(sorted(set(found))[:4])
    check.detail = f"none in the logs of {BROKERS} brokers and {CONTROLLERS} controllers"


@check_name("per-pod DNS names of the brokers resolve inside a pod")
def test_per_pod_dns_names(cluster, check):
    kube = cluster.kube
    pods = {p["metadata"]["name"]: p["status"].get("podIP") for p in kube.ready_pods("app=kafka")[1]}
    names = [FQDN.format(pod=f"kafka-{i}") for i in range(BROKERS)] + ["kafka-0.broker.kafka"]
    out = kube.client("for n in " + " ".join(names) + "; do echo \"$n $(getent hosts $n | awk '{print $1}')\"; "
                      "done; getent hosts kchat.local.example >/dev/null && echo OUTSIDE-RESOLVED || true")
    got = dict(line.split(" ", 1) if " " in line else (line, "") for line in out.stdout.splitlines())
    wrong = [f"{n} -> {got.get(n, '?').strip() or 'nothing'} (pod IP {pods.get(n.split('.')[0])})"
             for n in names if got.get(n, "").strip() != pods.get(n.split(".")[0])]
    assert not wrong, "per-pod names do not resolve to their pods: " + "; ".join(wrong)
    assert "OUTSIDE-RESOLVED" not in out.stdout, "a name outside cluster.local resolved: queries leave the cluster DNS"
    resolved = ", ".join(f"{n}={got[n].strip()}" for n in names[:BROKERS])
    check.detail = f"{resolved}; short name ok; outside names: NXDOMAIN"


@smoke
@essential
@check_name("Job chatroom-topic complete")
def test_topic_job_complete(cluster, check):
    kube = cluster.kube

    def probe():
        st = kube.kjson("get", "job", "chatroom-topic", "-n", NS)["status"]
        return bool(st.get("succeeded")), f"succeeded {st.get('succeeded', 0)}, failed {st.get('failed', 0)}"
    check.detail = kube.wait("Job chatroom-topic complete", probe, 600, interval=3)
    logs = kube.kubectl("logs", "-n", NS, "job/chatroom-topic").stdout
    assert "Topic chatroom is ready" in logs, f"Job complete but its log lacks 'Topic chatroom is ready': {logs[-300:]}"


@check_name("kafka-topics --describe: chatroom 12 partitions, RF 4, every ISR complete")
def test_topic_layout(cluster, check):
    def probe():
        text = cluster.kube.describe()
        parts = parse_describe(text)
        m = re.search(r"PartitionCount:\s*(\d+)\s+ReplicationFactor:\s*(\d+)", text)
        shape = (int(m.group(1)), int(m.group(2))) if m else None
        short = [p.partition for p in parts.values() if sorted(p.isr) != list(range(BROKERS))]
        ok = shape == (PARTITIONS, REPLICATION_FACTOR) and len(parts) == PARTITIONS and not short
        leaders = Counter(p.leader for p in parts.values())
        return ok, (f"PartitionCount {shape[0] if shape else '?'}, ReplicationFactor {shape[1] if shape else '?'}, "
                    f"partitions with an incomplete ISR: {short or 'none'}; leaders per broker "
                    f"{dict(sorted(leaders.items()))}")
    check.detail = cluster.kube.wait("chatroom with 12 partitions, RF 4, every ISR complete", probe, 180, interval=5)


@check_name("console producer -> console consumer round trip")
def test_console_round_trip(cluster, check):
    token = f"e2e-console: {cluster.run_id} typed in one terminal"
    cluster.kube.client('kafka-console-producer.sh --bootstrap-server "$BOOTSTRAP" --topic chatroom',
                        input=token + "\n")
    out = cluster.kube.client('kafka-console-consumer.sh --bootstrap-server "$BOOTSTRAP" --topic chatroom '
                              '--from-beginning --timeout-ms 20000 --max-messages 100000 2>/dev/null; true',
                              timeout=180)
    assert token in out.stdout, (f"the consumer did not print the produced line within 20s (it printed "
                                 f"{len(out.stdout.splitlines())} lines)")
    check.detail = "the line produced on one side was consumed on the other"


@smoke
@essential
@check_name("Deployment kchat 2/2 Ready")
def test_kchat_ready(cluster, check):
    check.detail = cluster.kube.pods_ready("app=kchat", WORKERS, 600, "kchat workers", LOGS)


@smoke
@essential
@check_name("every pod Ready (kafka-client too)")
def test_kafka_client_ready(cluster, check):
    check.detail = cluster.kube.pods_ready("app=kafka-client", 1, 120, "kafka-client", LOGS)


@smoke
@essential
@check_name("seed-format post on :30192 arrives on a seed-format stream on :30292")
async def test_seed_round_trip(cluster, check):
    kube, text = cluster.kube, f"hello from the host ({cluster.run_id})"
    async with aiohttp.ClientSession() as session:
        sub = Subscriber(SUBSCRIBE, compat=True, reconnect=True, retry_delay=0.5, read_timeout=60, name="seed")
        try:
            await sub.start(timeout=kube.left(60))
            p = chaos.Post(i=0, user=f"{cluster.run_id}-alice", text=text, worker=0)
            await chaos.send_post(session, p, PUBLISH, aiohttp.ClientTimeout(total=30))
            assert p.status == 200, f"POST {PUBLISH}/api/topics/chatroom answered {p.status}: {p.error[:200]}"
            got = await until(lambda: next((m for m in sub.events if m.text == text and m.user == p.user), None),
                              kube.left(30), lambda: f"posted {p.event_id} but the :30292 stream did not deliver it "
                              f"(received {len(sub.events)}; drops {sub.drops[:3]})", interval=0.1)
            check.detail = (f"POST :30192 -> 200 (event {p.event_id}); event 'test' on :30292 with data "
                            f"'{got.user}: {got.text}' after {got.t - p.t_sent:.2f}s")
        finally:
            await sub.stop()


@check_name("kchat-cli against :30066: send, listen, stats complete")
def test_kchat_cli(cluster, check):
    kube, user = cluster.kube, f"{cluster.run_id}-bob"
    base = [str(Path(sys.executable).parent / "kchat-cli"), "--url", WEB]  # the virtualenv's
    first = json.loads(kube.sh([*base, "send", "--user", user, "--json", "first"]).stdout)
    listen = subprocess.Popen([*base, "listen", "--since", first["event_id"], "--count", "2", "--json"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for text in ("second", "third"):
            kube.sh([*base, "send", "--user", user, text])
        out, err = listen.communicate(timeout=kube.left(60))
    except subprocess.TimeoutExpired:
        listen.kill()
        listen.communicate()
        raise CheckFailed("kchat-cli listen did not print the two messages sent after its --since within 60s")
    got = [json.loads(line)["text"] for line in out.splitlines() if line.strip()]
    assert got == ["second", "third"] and listen.returncode == 0, \
        f"kchat-cli listen printed {got} (exit {listen.returncode}; {err.strip()[-200:]})"

    def probe():
        table = kube.sh([*base, "stats"]).stdout
        row = re.search(rf"^{re.escape(user)}\s+(\d+)$", table, re.M)
        seed_user = re.search(rf"^{re.escape(cluster.run_id)}-alice\s+(\d+)$", table, re.M)
        ok = bool(row and row.group(1) == "3" and seed_user and seed_user.group(1) == "1")
        return ok, (f"{user}: {row.group(1) if row else 'absent'} (sent 3), {cluster.run_id}-alice: "
                    f"{seed_user.group(1) if seed_user else 'absent'} (sent 1)")
    check.detail = ("send x3, listen --since got the 2 later ones in order; stats: "
                    + kube.wait("kchat-cli stats complete", probe, 60))


# -- Part 2 -------------------------------------------------------------------------------------------------------
async def load_run(cluster, phase: str, posts: int, disruption) -> str:
    """The chaos run's load through the NodePorts while disruption runs, judged by its Report; the figures go
    to the record, the full report to test-artifacts/k8s-e2e-<phase>.txt."""
    kube, o = cluster.kube, cluster.opts
    # A post without any answer (the NodePort handed it to a worker going away) is "not confirmed", like a
    # 503; none is sent when less than 5 minutes of the run are left, for the checks and the tear-down.
    cfg = chaos.Config(posts=posts, rate=o.rate, interval=o.interval, concurrency=4, users=5, unanswered_ok=True,
                       deliver_timeout=180, settle=3, counts_timeout=120, seed=o.seed,
                       duration_limit=max(0.0, kube.t_end - time.monotonic() - 300))
    rep = chaos.Report(config=cfg, run_id=f"{cluster.run_id}{phase[0]}", disrupted=disruption.what)
    fig = cluster.record.figures[phase] = {"posts": posts, "rate": o.rate}
    say = (lambda text: kube.say(f"  {text}"))
    load = chaos.Load(cfg, rep, [PUBLISH],
                      [chaos.Stream(base, compat, f"{'seed:30292' if compat else 'native:30066'}-{k}")
                       for k in range(2) for base, compat in ((WEB, False), (SUBSCRIBE, True))],
                      [WEB, WEB, PUBLISH], say=say)
    t_began = time.monotonic()
    # A new connection per post (as `ab` without -k): kube-proxy spreads them over the workers, and no post
    # rides a kept-alive connection to a pod that is going away.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True, limit=0)) as posting, \
            httpx.AsyncClient(limits=httpx.Limits(max_connections=None)) as streams:
        try:
            await load.subscribe(streams, timeout=kube.left(60))
            await chaos.under_load(load, disruption, posting, chaos.Phase(rep, cluster.rng, say=say))
            fig["posting_seconds"] = round(rep.posting_seconds, 1)
            cfg.counts_timeout = kube.left(cfg.counts_timeout)
            await load.outcome(posting)
            rep.brokers_alive_at_end = await disruption.all_back()
        finally:
            await load.stop()
    rep.failures = rep.check() + disruption.failures
    fig.update(disruption.figures)
    fig.update(rep.figures())
    fig["seconds"] = round(time.monotonic() - t_began, 1)
    (ARTIFACTS / f"k8s-e2e-{phase}.txt").write_text(rep.render())
    if rep.failures:
        fig["failures"] = rep.failures
        raise CheckFailed("; ".join(rep.failures)[:1500] + f" (full report: test-artifacts/k8s-e2e-{phase}.txt)")
    return (f"{fig['status']} of {posts} posts; lost {fig['lost']}, duplicated {fig['duplicated']}, out of order "
            f"{fig['out_of_order']}; counts exact: {fig['counts_exact']}; subscriber resumes {fig['resumes']}")


@check_name("Part 2: {posts} posts, a broker pod deleted every {interval:g}s, then a kchat pod")
async def test_part2_under_pod_deletion(cluster, check):
    check.detail = await load_run(cluster, "chaos", cluster.opts.posts, PodDelete(cluster.kube, cluster.opts.interval))


@check_name("rolling update of Deployment kchat under {rollout_posts} posts")
async def test_rolling_update(cluster, check):
    update = RollingUpdate(cluster.kube, worker_image(), f"{project_version()}-rollout-{cluster.run_id}")
    check.detail = await load_run(cluster, "rollout", cluster.opts.rollout_posts, update)
