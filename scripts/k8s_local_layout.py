"""scripts/k8s-local's fixed facts: the pinned versions, the cluster's addresses and names, where its files live."""
from __future__ import annotations

import os
from pathlib import Path

from local_common import REPO, Fail, cache_root

K8S_VERSION = "1.34.4"
COREDNS_VERSION = "1.14.7"
KUBE_COMMANDS = ["kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy", "kubectl"]

NODE_NAME = "kchat-node"
NODE_IP = "172.31.255.1"
POD_CIDR = "10.244.0.0/16"
POD_SUBNET, POD_GATEWAY = "10.244.0.0/24", "10.244.0.1"
SERVICE_CIDR = "10.96.0.0/16"
API_SERVICE_IP = "10.96.0.1"
CLUSTER_DOMAIN = "cluster.local"
BRIDGE = "kchat0"
CNI_NETWORK = "kchat-k8s"
GUARD_TABLE = "kchat_k8s_guard"
API_PORT = 6443
ETCD_PORTS = (23790, 23800)  # not etcd's usual 2379/2380: another etcd on this machine must not be ours

STATE = Path("/var/lib/kchat-k8s")
RUN = Path("/run/kchat-k8s")
DATA = Path("/data/kafka")
PKI = STATE / "pki"
CONTAINERD_SOCK = RUN / "containerd" / "containerd.sock"
KUBECONFIG = STATE / "admin.kubeconfig"
PAUSE_IMAGE = "localhost/kchat-pause:1.0"
SCRIPT = REPO / "scripts" / "k8s-local"


def kube_bin(name):
    return cache_root() / f"k8s-{K8S_VERSION}" / "bin" / name


def coredns_bin():
    return cache_root() / f"coredns-{COREDNS_VERSION}" / "bin" / "coredns"


def cache_dir(sub=""):
    """The cache (or a folder in it), created; Fail naming KCHAT_CACHE where it cannot be."""
    path = cache_root() / sub
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise Fail(f"KCHAT_CACHE={os.environ.get('KCHAT_CACHE', '')}: expected a directory this user can create "
                   f"({path}: {e.strerror})")
    return path


def require_root():
    if os.geteuid() != 0:
        raise Fail("needs root (it mounts, adds an address on lo and writes nftables rules)")
