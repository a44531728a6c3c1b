"""Helpers for tests/test_k8s.py: render the kustomize variants under k8s/, look objects up in them,
run the scripts the manifests carry, and read the Dockerfile."""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from kchat_testkit.procs import free_ports  # noqa: F401 (tests use s.free_ports)

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
VARIANTS = ("default", "local")
INSTALL_KUSTOMIZE = REPO / "scripts" / "install-kustomize"
KAFKA_LOCAL = REPO / "scripts" / "kafka-local"
LOG4J_CONFIG = REPO / "scripts" / "kafka-log4j2.properties"

# Kinds whose objects carry a pod template at spec.template.
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job")
CLUSTER_SCOPED_KINDS = ("Namespace", "PersistentVolume", "StorageClass")


def kustomize_bin(timeout: float = 300) -> str:
    """Path of the pinned kustomize binary, installed by scripts/install-kustomize if needed."""
    out = subprocess.run([str(INSTALL_KUSTOMIZE)], check=True, capture_output=True, text=True, timeout=timeout)
    return out.stdout.strip().splitlines()[-1]


def build(kustomize: str, variant: str) -> "Rendered":
    out = subprocess.run([kustomize, "build", str(K8S / "overlays" / variant)], capture_output=True, text=True,
                         timeout=120)
    if out.returncode != 0:
        raise AssertionError(f"kustomize build {variant} failed:\n{out.stderr}")
    return Rendered(variant, [d for d in yaml.safe_load_all(out.stdout) if d])


@dataclass
class Rendered:
    variant: str
    objects: list[dict] = field(default_factory=list)

    def all(self, kind: str) -> list[dict]:
        return [o for o in self.objects if o["kind"] == kind]

    def get(self, kind: str, name: str) -> dict:
        found = [o for o in self.all(kind) if o["metadata"]["name"] == name]
        assert len(found) == 1, f"{self.variant}: expected one {kind} {name!r}, found {len(found)}"
        return found[0]

    def configmap(self, name: str) -> dict[str, str]:
        return self.get("ConfigMap", name)["data"]

    def pod_templates(self) -> list[tuple[dict, dict, dict]]:
        """(owner object, pod labels, pod spec) of every workload and bare Pod."""
        out = []
        for o in self.objects:
            if o["kind"] in WORKLOAD_KINDS:
                tpl = o["spec"]["template"]
                out.append((o, tpl["metadata"].get("labels", {}), tpl["spec"]))
            elif o["kind"] == "Pod":
                out.append((o, o["metadata"].get("labels", {}), o["spec"]))
        return out

    def pods_selected(self, selector: dict) -> list[dict]:
        """Owners of the pod templates a label selector (LabelSelector or a Service's plain map) selects."""
        return [owner for owner, labels, _spec in self.pod_templates() if selects(selector, labels)]


def pod_spec(obj: dict) -> dict:
    return obj["spec"] if obj["kind"] == "Pod" else obj["spec"]["template"]["spec"]


def container(obj: dict, name: str | None = None) -> dict:
    containers = pod_spec(obj)["containers"]
    if name is None:
        assert len(containers) == 1, f"{obj['metadata']['name']} has {len(containers)} containers"
        return containers[0]
    return next(c for c in containers if c["name"] == name)


def all_containers(spec: dict) -> list[dict]:
    return list(spec.get("initContainers", [])) + list(spec["containers"])


def env_values(c: dict) -> dict[str, str]:
    """The container's literal env values (valueFrom entries left out)."""
    return {e["name"]: e["value"] for e in c.get("env", []) if "value" in e}


def named_port(c: dict, port) -> int:
    """A probe's or Service's port (number or container port name) as a number on container c."""
    if isinstance(port, int):
        return port
    if isinstance(port, str) and port.isdigit():
        return int(port)
    for p in c.get("ports", []):
        if p.get("name") == port:
            return p["containerPort"]
    raise AssertionError(f"container {c['name']} has no port named {port!r}")


def selects(selector: dict, labels: dict) -> bool:
    """Kubernetes label selector semantics: matchLabels + matchExpressions, or a plain map (Service)."""
    if "matchLabels" not in selector and "matchExpressions" not in selector:
        selector = {"matchLabels": selector}
    if not selector.get("matchLabels") and not selector.get("matchExpressions"):
        return True
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


def kubernetes_expand(text: str, env: dict[str, str]) -> str:
    """What the kubelet makes of a command/args string: $(VAR) is replaced by env VAR when defined, $$ becomes $
    (k8s.io/kubernetes third_party/forked/golang/expansion)."""
    out, i = [], 0
    while i < len(text):
        if text[i] == "$" and i + 1 < len(text):
            nxt = text[i + 1]
            if nxt == "$":
                out.append("$")
                i += 2
                continue
            if nxt == "(":
                end = text.find(")", i + 2)
                if end != -1:
                    name = text[i + 2:end]
                    out.append(env[name] if name in env else text[i:end + 1])
                    i = end + 1
                    continue
            out.append(text[i:i + 2])
            i += 2
            continue
        out.append(text[i])
        i += 1
    return "".join(out)


def read_properties(path: Path) -> dict[str, str]:
    props = {}
    for raw in Path(path).read_text().splitlines():
        line = raw.strip()
        if not line or line[0] in "#!":
            continue
        key, _, value = line.partition("=")
        props[key.strip()] = value.strip()
    return props


def write_configmap(data: dict[str, str], directory: Path) -> Path:
    """The ConfigMap's keys as files, as a configMap volume mounts them."""
    directory.mkdir(parents=True, exist_ok=True)
    for key, value in data.items():
        (directory / key).write_text(value)
    return directory


def render_node_properties(config_dir: Path, out: Path, env: dict[str, str]) -> dict[str, str]:
    """Run the ConfigMap's kafka-start.sh in render-only mode with env; returns the properties it wrote."""
    full_env = {"PATH": "/usr/local/bin:/usr/bin:/bin", **env, "KAFKA_RENDER_ONLY": "true",
                "KAFKA_PROPERTIES_OUT": str(out)}
    proc = subprocess.run(["bash", str(config_dir / "kafka-start.sh")], env=full_env, capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 0, f"kafka-start.sh failed ({proc.returncode}): {proc.stderr}"
    assert proc.stdout.strip() == str(out)
    return read_properties(out)


# ------------------------------------------------------------------------------------------------------------
# Dockerfile


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)  # (INSTRUCTION, arguments)

    def args(self, instruction: str) -> list[str]:
        return [a for i, a in self.instructions if i == instruction]


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs; comments dropped, backslash continuations joined."""
    out, current = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # comment inside a continued instruction
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        if current.strip():
            instr, _, args = current.strip().partition(" ")
            out.append((instr.upper(), args.strip()))
        current = ""
    return out


def dockerfile_stages(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults (before the first FROM) and the build stages, with ${ARG} bases resolved."""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for instr, args in dockerfile_instructions(text):
        if instr == "ARG" and not stages:
            name, _, default = args.partition("=")
            global_args[name.strip()] = default.strip().strip('"')
        elif instr == "FROM":
            words = [w for w in args.split() if not w.startswith("--")]
            base = re.sub(r"\$\{?(\w+)\}?", lambda m: global_args.get(m.group(1), m.group(0)), words[0])
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base, name))
        elif stages:
            stages[-1].instructions.append((instr, args))
    return global_args, stages
