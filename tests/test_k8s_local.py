"""The deployment on a real one-node Kubernetes built here (scripts/k8s-local, k8s/tests --smoke), and that
`scripts/k8s-local down` leaves nothing behind, also after an `up` that failed half-way.

Needs root (CI runs as root). The first run on a machine builds Kubernetes and CoreDNS from the Go module proxy
and the images (~20 min); later runs reuse them from ~/.cache/kchat (KCHAT_CACHE).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
K8S_LOCAL = REPO / "scripts" / "k8s-local"
ARTIFACTS = REPO / "test-artifacts"

# Kafka runs in the cluster's pods: not a unit test either.
pytestmark = [pytest.mark.skipif(os.geteuid() != 0, reason="a local Kubernetes needs root"), pytest.mark.kafka,
              pytest.mark.k8s]


def sysctls() -> dict[str, str]:
    """Every sysctl that `up` or the kubelet changes, as the machine has it now."""
    out = subprocess.run([str(K8S_LOCAL), "sysctls"], capture_output=True, text=True, check=True).stdout
    return dict(line.split("=", 1) for line in out.splitlines())


def k8s_local(*args: str, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(K8S_LOCAL), *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL)


@pytest.fixture
def no_cluster():
    """Nothing of a cluster on the machine before the test; whatever the test leaves is removed after."""
    assert k8s_local("leftovers", "--wait", "30").returncode == 0, "a cluster (or its remains) is already on this machine"
    yield
    k8s_local("down", timeout=300)


@pytest.mark.timeout(3600)  # cold: builds Kubernetes and CoreDNS first
def test_down_after_a_half_failed_up_leaves_nothing(no_cluster):
    before = sysctls()
    install = k8s_local("install", timeout=3500)
    assert install.returncode == 0, install.stderr
    up = k8s_local("up", env={"K8S_LOCAL_FAIL_AT": "kubelet"}, timeout=600)
    assert up.returncode == 1 and "K8S_LOCAL_FAIL_AT=kubelet" in up.stderr, up.stderr
    left = k8s_local("leftovers")
    assert left.returncode == 1 and "process" in left.stdout and "address 172.31.255.1 on lo" in left.stdout, left.stdout
    down = k8s_local("down", timeout=300)
    assert down.returncode == 0, down.stderr
    after = k8s_local("leftovers", "--wait", "30")
    assert after.returncode == 0 and after.stdout == "", after.stdout
    assert sysctls() == before


@pytest.mark.timeout(3600)  # cold: builds the images too
def test_smoke_on_a_local_cluster(no_cluster):
    """Both images built here, k8s/overlays/local applied, every pod Ready, one chat round trip through the
    NodePorts, and nothing left after `down` (the cluster fixture's last check). The short run of k8s/tests
    (pytest, in a process of its own: its conftest and its cluster are not this suite's)."""
    log = ARTIFACTS / "k8s-smoke.log"
    ARTIFACTS.mkdir(exist_ok=True)
    with open(log, "w") as out:
        rc = subprocess.run([sys.executable, "-m", "pytest", "k8s/tests", "--smoke", "--deadline", "3300",
                             "-p", "no:cacheprovider"], cwd=REPO,
                            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=3500,
                            env={k: v for k, v in os.environ.items() if k != "K8S_KEEP"}).returncode
    text = log.read_text()
    print(text)
    report = json.loads((ARTIFACTS / "k8s-smoke.json").read_text())
    failed = [c for c in report["checks"] if c["result"] != "passed"]
    assert rc == 0 and not failed, f"failed checks: {failed}\n(log: {log})"
    names = [c["name"] for c in report["checks"]]
    for needle in ("images built here", "overlays/local applied", "brokers Ready", "kchat 2/2 Ready", ":30292",
                   "down leaves nothing behind"):
        assert any(needle in n for n in names), needle
    lines = text.rstrip().splitlines()
    assert f"k8s-smoke: {len(names)} passed, 0 failed (test-artifacts/k8s-smoke.json)" in lines
    # pytest's own last line: every test of the short run passed (the rest deselected), no error at tear-down
    tests = [c for c in report["checks"] if "test" in c]
    assert re.fullmatch(rf"=+ {len(tests)} passed, \d+ deselected(, \d+ warnings?)? in .+ =+", lines[-1]), lines[-1]
