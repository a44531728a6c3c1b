"""Talking to the running cluster: its API over HTTPS, kubectl and ctr with its kubeconfig and socket, the
components' plain HTTP health endpoints."""
from __future__ import annotations

import json
import ssl
import urllib.request

import k8s_local_layout as L
from local_common import run


def api_get(path, kubeconfig=L.KUBECONFIG, timeout=5):
    """(status, body) of a GET on the apiserver, with the kubeconfig's token."""
    cfg = json.loads(kubeconfig.read_text())
    ctx = ssl.create_default_context(cafile=str(L.PKI / "ca.crt"))
    req = urllib.request.Request(f"https://{L.NODE_IP}:{L.API_PORT}{path}",
                                 headers={"Authorization": f"Bearer {cfg['users'][0]['user']['token']}"})
    with urllib.request.urlopen(req, timeout=timeout, context=ctx) as r:
        return r.status, r.read().decode()


def http_ok(url, timeout=3):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status == 200
    except OSError:
        return False


def kubectl(*args, check=True, timeout=60, **kw):
    return run([str(L.kube_bin("kubectl")), "--kubeconfig", str(L.KUBECONFIG), *args], check=check, timeout=timeout,
               **kw)


def node_ready():
    cp = kubectl("get", "node", L.NODE_NAME, "-o", "json", check=False)
    if cp.returncode != 0:
        return False
    conds = {c["type"]: c["status"] for c in json.loads(cp.stdout)["status"].get("conditions", [])}
    return conds.get("Ready") == "True"


def ctr(*args, timeout=600):
    return run(["ctr", "--address", str(L.CONTAINERD_SOCK), "--namespace", "k8s.io", *args], timeout=timeout)


def containerd_up():
    """containerd answers on its socket."""
    return L.CONTAINERD_SOCK.exists() and ctr("version", timeout=10)
