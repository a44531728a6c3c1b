"""The fault tooling (scripts/kafka-local --netns and its faults) and the quick fault suite (`make faults
FAULTS_ARGS=--quick`), against real Kafka in network namespaces. Needs root."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time

import pytest

from kchat_testkit import faults
from kchat_testkit.kafka import KafkaCluster
from kchat_testkit.procs import proc_state

pytestmark = [pytest.mark.kafka, pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("nsenter"), reason="network namespaces need root and nsenter")]


def connect_time(ip: str, port: int, timeout: float = 3.0) -> float | str:
    """Seconds a TCP connect took, or how it failed ('timeout' for a silent drop, 'refused' for a reject)."""
    began = time.monotonic()
    try:
        with socket.create_connection((ip, port), timeout=timeout):
            return time.monotonic() - began
    except socket.timeout:
        return "timeout"
    except ConnectionRefusedError:
        return "refused"


def test_netns_cluster_faults_are_real_and_teardown_leaves_nothing(tmp_path):
    cluster = KafkaCluster.start_new(tmp_path / "kafka", extra=("--netns", "--loop-disks"))
    try:
        info = cluster.info()
        net, node = info["net"], info["nodes"][0]
        ip = node["host"]
        assert ip.startswith("172.29.") and node["ns"] == f"kf-{net['index']}-n0"
        assert cluster.bootstrap == f"{ip}:9092"
        assert isinstance(connect_time(ip, 9092), float)

        # a partition drops silently (the sender times out), it does not refuse; heal restores it
        cluster.isolate("0")
        assert connect_time(ip, 9092) == "timeout"
        cluster.heal()
        assert isinstance(connect_time(ip, 9092), float)

        # a cut between two members only: the host still reaches the node, the worker namespace does not
        ns, wip = cluster.host("w0")
        cluster.cut("w0", "0")
        probe = ["nsenter", f"--net=/run/netns/{ns}", "python3", "-c",
                 f"import socket; socket.create_connection(('{ip}', 9092), timeout=2)"]
        assert subprocess.run(probe, capture_output=True, timeout=30).returncode != 0
        assert isinstance(connect_time(ip, 9092), float)
        assert cluster.cuts() == {"n0": [wip], "w0": [ip]}
        cluster.heal()
        assert subprocess.run(probe, capture_output=True, timeout=30).returncode == 0

        # delay: every packet into the node waits; off again
        cluster.slow("0", delay_ms=300)
        slow = connect_time(ip, 9092)
        cluster.unslow()
        assert isinstance(slow, float) and slow >= 0.3, slow
        assert connect_time(ip, 9092) < 0.3

        # pause / resume the JVM
        pid = cluster.status()[0]["pid"]
        cluster.pause(0)
        assert proc_state(pid) == "T"
        cluster.resume(0)
        assert proc_state(pid) in ("S", "R")

        # a frozen disk blocks writes until it is thawed
        mount = info["disks"]["0"]["mount"]
        cluster.disk_stall(0)
        done = threading.Event()
        writer = threading.Thread(target=lambda: (open(f"{mount}/probe", "w").write("x"), done.set()), daemon=True)
        writer.start()
        assert not done.wait(2), "a write went through a frozen disk"
        cluster.disk_resume(0)
        assert done.wait(10), "the write did not go through after thawing"
    finally:
        cluster.down()
    assert cluster.leftovers() == []
    assert not [n for n in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
                if n.startswith(f"kf-{net['index']}-")]


@pytest.mark.timeout(1500)
async def test_quick_fault_suite_loses_nothing_reorders_nothing_and_counts_exactly():
    report = await faults.run(quick=True)
    print(report.render())
    assert not report.setup_error, report.setup_error
    assert report.leftovers == [], f"teardown left: {report.leftovers}"
    assert [o.scenario for o in report.outcomes] == [s.name for s in faults.SCENARIOS if s.quick]
    for o in report.outcomes:
        assert not o.error, f"{o.scenario}: {o.error}"
        v = o.verdict
        assert v.acknowledged > 0, f"{o.scenario}: nothing was acknowledged"
        assert (v.lost, v.inconsistent, v.reordered, v.gaps, v.failed_seen, v.count_errors) == (0, 0, 0, 0, 0, 0), \
            f"{o.scenario}: {v.problems}"
    duplicated = {o.scenario: o.verdict.duplicated for o in report.outcomes if o.verdict.duplicated}
    if duplicated and not report.server_deduplicates:
        pytest.xfail(f"retried unknown posts were stored twice ({duplicated}): the workers do not honour "
                     "Idempotency-Key yet (issue 15 deliverable 6)")
    assert not duplicated, f"duplicates although the workers honour Idempotency-Key: {duplicated}"
