"""The one-node cluster the k8s tests run on: brought up, given the images built here and k8s/overlays/local,
and taken down again with a check that nothing of it is left; the record of the checks that becomes
test-artifacts/k8s-e2e.json (or k8s-smoke.json)."""
from __future__ import annotations

import importlib.util
import json
import os
import random
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from kchat_testkit.k8s import K8S_LOCAL, NS, CheckFailed, Kube

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
LOGS = ARTIFACTS / "k8s-e2e-logs"
WEB = "http://127.0.0.1:30066"

# scripts/ is no package: its shared module is loaded as a file, as the tools beside it do
_spec = importlib.util.spec_from_file_location("local_common", REPO / "scripts" / "local_common.py")
local_common = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(local_common)


@dataclass
class Options:
    smoke: bool
    keep: bool
    deadline: float
    posts: int
    rate: float
    interval: float
    rollout_posts: int
    seed: int | None


@dataclass
class Record:
    """Each check's name, result, seconds and detail, in order, and Part 2's figures. After an essential check
    fails the later tests are not run (they depend on it): first_failure names it."""
    name: str
    say: Callable[[str], None]
    run_id: str = field(default_factory=lambda: f"k8s{uuid.uuid4().hex[:6]}")
    checks: list[dict] = field(default_factory=list)
    figures: dict = field(default_factory=dict)
    first_failure: str | None = None
    began: float = field(default_factory=time.monotonic)

    def add(self, name: str, passed: bool, seconds: float, detail: str, test: str | None = None) -> str:
        """Record a check; returns its line (shown at once for a step, after pytest's own line for a test)."""
        entry = {"name": name, "result": "passed" if passed else "failed", "seconds": round(seconds, 1),
                 "detail": detail}
        self.checks.append({**entry, "test": test} if test else entry)
        line = f"{'PASS' if passed else 'FAIL'} {name} ({seconds:.1f}s): {detail}"
        if not test:
            self.say(line)
        return line

    def step(self, name: str, fn: Callable[[], str]) -> None:
        """A step of the cluster fixture, recorded as a check: a failure also fails every test after it."""
        t0 = time.monotonic()
        try:
            detail = fn()
        except Exception as e:
            self.add(name, False, time.monotonic() - t0, describe_failure(e))
            self.first_failure = self.first_failure or name
            raise
        self.add(name, True, time.monotonic() - t0, detail)

    def counts(self) -> tuple[int, int]:
        passed = sum(c["result"] == "passed" for c in self.checks)
        return passed, len(self.checks) - passed

    def write(self) -> Path:
        passed, failed = self.counts()
        report = {"name": self.name, "run_id": self.run_id, "passed": passed, "failed": failed,
                  "seconds": round(time.monotonic() - self.began, 1), "checks": self.checks, **self.figures}
        ARTIFACTS.mkdir(exist_ok=True)
        path = ARTIFACTS / f"{self.name}.json"
        path.write_text(json.dumps(report, indent=2) + "\n")
        return path


def describe_failure(e: BaseException) -> str:
    """A check's failure as its detail: our own failures say it all; anything else is a bug of the check."""
    if isinstance(e, CheckFailed):
        return str(e)
    if isinstance(e, AssertionError):  # the test's own message; pytest appends the expression's lines
        return str(e).split("\n")[0]
    return f"{e.__class__.__name__}: {e}".split("\n")[0]


@dataclass
class Cluster:
    """What the tests get: the cluster's kubectl, the options, and the run's id and random choices."""
    kube: Kube
    opts: Options
    record: Record
    rng: random.Random

    @property
    def run_id(self) -> str:
        return self.record.run_id

    def collect_logs(self, why: str) -> None:
        # the run's deadline may be what failed: the logs still get a little time
        self.kube.t_end = max(self.kube.t_end, time.monotonic() + 120)
        self.kube.collect_logs(why, LOGS)


def sysctls(kube: Kube) -> dict[str, str]:
    """What `up` and the kubelet may change, as the machine has it now."""
    out = kube.k8s_local("sysctls").stdout
    return dict(line.split("=", 1) for line in out.splitlines())


project_version = local_common.project_version


def worker_image() -> str:
    return f"docker.io/library/kchat-faust:{project_version()}"


def up(kube: Kube) -> str:
    kube.stream([K8S_LOCAL, "up"], timeout=3600)  # a cold install builds Kubernetes (~15 min)
    node = kube.kjson("get", "node")["items"][0]
    return f"node {node['metadata']['name']} {node['status']['nodeInfo']['kubeletVersion']}"


def images(kube: Kube) -> str:
    lines = kube.stream([K8S_LOCAL, "images"], timeout=3600)
    names = kube.k8s_local("ctr", "images", "list", "-q").stdout.split()
    want = [worker_image(), f"docker.io/library/kchat-kafka:{local_common.kafka_version()}",
            "localhost/kchat-pause:1.0"]
    missing = [w for w in want if w not in names]
    if missing:
        raise CheckFailed(f"not in containerd: {', '.join(missing)}")
    return "; ".join(line.split(": ", 1)[1] for line in lines if "ready (" in line)


def apply(kube: Kube) -> str:
    version = local_common.kafka_version()
    kustomize = kube.sh([REPO / "scripts" / "install-kustomize"], timeout=600).stdout.strip().splitlines()[-1]
    with tempfile.TemporaryDirectory(prefix="kchat-e2e-") as tmp:
        # The one difference from k8s/overlays/local: the Kafka image built here (no image registry).
        (Path(tmp) / "kustomization.yaml").write_text(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
            f"resources:\n  - {os.path.relpath(REPO / 'k8s' / 'overlays' / 'local', tmp)}\n"
            f"images:\n  - name: apache/kafka\n    newName: kchat-kafka\n    newTag: \"{version}\"\n")
        rendered = kube.sh([kustomize, "build", tmp]).stdout
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "k8s-e2e-applied.yaml").write_text(rendered)
    # ... and nothing else: the overlay as users get it, with only the Kafka image's name changed.
    overlay = kube.sh([kustomize, "build", REPO / "k8s" / "overlays" / "local"]).stdout
    ours = f"kchat-kafka:{version}"
    if overlay.replace(f"apache/kafka:{version}", ours) != rendered or ours not in rendered:
        raise CheckFailed("the applied manifests differ from k8s/overlays/local by more than the Kafka image "
                          f"(or the overlay does not name apache/kafka:{version})")
    # A new namespace's default ServiceAccount is created by the controller-manager moments after the
    # namespace: a bare Pod applied at once can be refused until then. kubectl apply is idempotent.
    for attempt in range(1, 6):
        cp = kube.kubectl("apply", "-f", "-", input=rendered, check=False, timeout=120)
        if cp.returncode == 0:
            created = sum(1 for line in cp.stdout.splitlines() if line.endswith(" created"))
            return f"{created} objects created (attempt {attempt}); manifests in test-artifacts/k8s-e2e-applied.yaml"
        if "serviceaccount" not in cp.stderr or attempt == 5:
            raise CheckFailed(f"kubectl apply failed: {cp.stderr.strip().splitlines()[-1][:300]}")
        time.sleep(kube.left(3))


def down(kube: Kube, sysctls_before: dict[str, str]) -> str:
    kube.t_end = max(kube.t_end, time.monotonic() + 300)  # tear down whatever happened before
    kube.k8s_local("down", timeout=300)
    left = kube.k8s_local("leftovers", "--wait", "30", check=False)
    now = sysctls(kube)
    changed = {k: (v, now.get(k)) for k, v in sysctls_before.items() if now.get(k) != v}
    if left.returncode != 0 or changed:
        raise CheckFailed(f"left behind: {left.stdout.strip()[:600]} sysctls (before, after): {changed}")
    return "no process, mount, cgroup, link, address, nft table, iptables chain, host file or changed sysctl left"


def kept_message() -> str:
    return (f"cluster kept (K8S_KEEP=1): scripts/k8s-local kubectl get pods -n {NS}; page on {WEB}/; "
            "scripts/k8s-local down to remove it")

