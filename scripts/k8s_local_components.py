"""THE table of the cluster's components: what `up` starts (in this order), how it knows each is ready, what
`status` lists and what `down` stops (in the reverse order, the kubelet first)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable

import k8s_local_layout as L
from k8s_local_client import api_get, containerd_up, http_ok, kubectl, node_ready
from k8s_local_config import fill
from k8s_local_images import after_containerd

ETCD_URL = f"http://127.0.0.1:{L.ETCD_PORTS[0]}"
PEER_URL = f"http://127.0.0.1:{L.ETCD_PORTS[1]}"
S, P = L.STATE, L.PKI


@dataclass(frozen=True)
class Component:
    name: str  # also its executable's name and its log's and pid file's
    command: Callable[[], list]  # argv, built when it starts (the binaries' paths depend on KCHAT_CACHE)
    ready: Callable[[], object] | None = None  # polled until true; None: started, not awaited
    what: str = ""  # what ready() means, for messages
    timeout: float = 0  # seconds for ready()
    timeout_env: str = ""  # an environment variable that sets timeout instead
    at_end: bool = False  # ready() awaited once every component has started (it needs the later ones)
    before: Callable[[], None] | None = None  # run before it starts
    after: Callable[[], None] | None = None  # run once it is ready
    announce: str = ""  # printed once it is ready
    ports: tuple = ()  # on 127.0.0.1; `up` refuses to start when one is taken
    grace: float = 10  # seconds `down` gives it between SIGTERM and SIGKILL
    stop_first: bool = False  # `down` stops it before the others


def kube(name, *args):
    return lambda: [L.kube_bin(name), *args]


def kubeconfig_flags(name):
    cfg = S / f"{name}.kubeconfig"
    return [f"--kubeconfig={cfg}", f"--authentication-kubeconfig={cfg}", f"--authorization-kubeconfig={cfg}"]


def apply_coredns_rbac():
    kubectl("apply", "-f", "-", input=fill("coredns-rbac.yaml"))


def serviceaccount_default():
    return kubectl("get", "serviceaccount", "default", "-n", "default", check=False).returncode == 0


COMPONENTS = [
    Component("etcd", lambda: [
        "etcd", "--name", L.NODE_NAME, "--data-dir", S / "etcd", "--listen-client-urls", ETCD_URL,
        "--advertise-client-urls", ETCD_URL, "--listen-peer-urls", PEER_URL, "--initial-advertise-peer-urls", PEER_URL,
        "--initial-cluster", f"{L.NODE_NAME}={PEER_URL}", "--log-level", "warn"],
        ready=lambda: http_ok(f"{ETCD_URL}/health"), what="etcd healthy", timeout=30, ports=L.ETCD_PORTS, grace=15),
    Component("kube-apiserver", kube(
        "kube-apiserver", f"--etcd-servers={ETCD_URL}",
        f"--bind-address={L.NODE_IP}", f"--advertise-address={L.NODE_IP}", f"--secure-port={L.API_PORT}",
        f"--tls-cert-file={P / 'apiserver.crt'}", f"--tls-private-key-file={P / 'apiserver.key'}",
        f"--client-ca-file={P / 'ca.crt'}", f"--token-auth-file={P / 'tokens.csv'}",
        "--authorization-mode=Node,RBAC", f"--service-cluster-ip-range={L.SERVICE_CIDR}",
        "--service-node-port-range=30000-32767",
        f"--kubelet-client-certificate={P / 'apiserver-kubelet-client.crt'}",
        f"--kubelet-client-key={P / 'apiserver-kubelet-client.key'}",
        "--kubelet-preferred-address-types=InternalIP",
        f"--service-account-issuer=https://kubernetes.default.svc.{L.CLUSTER_DOMAIN}",
        f"--service-account-key-file={P / 'sa.pub'}", f"--service-account-signing-key-file={P / 'sa.key'}",
        "--allow-privileged=false", "--profiling=false", "--v=1"),
        ready=lambda: api_get("/readyz")[0] == 200, what="kube-apiserver ready (/readyz)", timeout=90, grace=15,
        announce=f"etcd and kube-apiserver ready at https://{L.NODE_IP}:{L.API_PORT}"),
    # Pods of a new namespace need its default ServiceAccount, which the controller-manager creates.
    Component("kube-controller-manager", kube(
        "kube-controller-manager", *kubeconfig_flags("kube-controller-manager"),
        "--bind-address=127.0.0.1", "--leader-elect=false", "--use-service-account-credentials",
        f"--service-account-private-key-file={P / 'sa.key'}", f"--root-ca-file={P / 'ca.crt'}",
        f"--cluster-signing-cert-file={P / 'ca.crt'}", f"--cluster-signing-key-file={P / 'ca.key'}",
        f"--service-cluster-ip-range={L.SERVICE_CIDR}", f"--cluster-cidr={L.POD_CIDR}", "--profiling=false", "--v=1"),
        ready=serviceaccount_default, what="ServiceAccount default/default", timeout=60, at_end=True, ports=(10257,)),
    Component("kube-scheduler", kube(
        "kube-scheduler", *kubeconfig_flags("kube-scheduler"),
        "--bind-address=127.0.0.1", "--leader-elect=false", "--profiling=false", "--v=1"), ports=(10259,)),
    Component("containerd", lambda: ["containerd", "--config", S / "containerd.toml"],
              ready=containerd_up, what="containerd answering", timeout=30, after=after_containerd, grace=15),
    Component("kubelet", kube(
        "kubelet", f"--config={S / 'kubelet.yaml'}", f"--kubeconfig={S / 'kubelet.kubeconfig'}",
        f"--hostname-override={L.NODE_NAME}", f"--node-ip={L.NODE_IP}", f"--root-dir={S / 'kubelet'}",
        f"--cert-dir={S / 'kubelet' / 'pki'}", "--v=1"),
        ready=node_ready, what=f"node {L.NODE_NAME} Ready", timeout=180, timeout_env="K8S_LOCAL_TIMEOUT",
        at_end=True, ports=(10248,),
        stop_first=True),  # it would restart the containers `down` stops
    Component("kube-proxy", kube("kube-proxy", f"--config={S / 'kube-proxy.yaml'}", "--v=1"), ports=(10249, 10256)),
    Component("coredns", lambda: [L.coredns_bin(), "-conf", S / "Corefile"], before=apply_coredns_rbac,
              ready=lambda: http_ok("http://127.0.0.1:8181/ready"), what="CoreDNS ready (127.0.0.1:8181/ready)",
              timeout=60, ports=(8181,)),
]
NAMES = [c.name for c in COMPONENTS]


def stop_order():
    """`down`'s order: the kubelet first, then the others in the reverse of `up`'s."""
    return [c for c in COMPONENTS if c.stop_first] + [c for c in reversed(COMPONENTS) if not c.stop_first]


def status(live_pid):
    """{"components": [{name, pid, state}], "node": {name, ready}}; ready is None (not asked) while a
    component is down."""
    comps = [{"name": c.name, "pid": (pid := live_pid(c.name)), "state": "running" if pid else "down"}
             for c in COMPONENTS]
    all_up = all(c["pid"] for c in comps)
    return {"components": comps, "node": {"name": L.NODE_NAME, "ready": node_ready() if all_up else None}}


def status_lines(st):
    """`status`'s human output."""
    lines = [f"{c['name']:<24} {c['pid'] or '-':<8} {c['state']}" for c in st["components"]]
    if st["node"]["ready"] is not None:
        lines.append(f"{'node ' + st['node']['name']:<24} {'':<8} {'Ready' if st['node']['ready'] else 'NotReady'}")
    return lines


def status_json(st):
    return json.dumps(st, indent=1)
