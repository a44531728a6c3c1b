"""The cluster's certificates, static tokens and configuration files, filled from scripts/k8s_local_templates/."""
from __future__ import annotations

import base64
import hashlib
import os
import string
from pathlib import Path

import k8s_local_layout as L
from local_common import Fail, run

TEMPLATES = Path(__file__).resolve().parent / "k8s_local_templates"

# user, groups of each component's static token (--token-auth-file); RBAC's built-in bindings know these users.
IDENTITIES = {
    "admin": ("kchat-admin", ["system:masters"]),
    "kubelet": (f"system:node:{L.NODE_NAME}", ["system:nodes"]),
    "kube-proxy": ("system:kube-proxy", []),
    "kube-controller-manager": ("system:kube-controller-manager", []),
    "kube-scheduler": ("system:kube-scheduler", []),
    "coredns": ("kchat:coredns", []),
}

# What every template may name: $node_ip, $state ...
LAYOUT = {
    "node_ip": L.NODE_IP, "node_name": L.NODE_NAME, "api_port": L.API_PORT, "cluster_domain": L.CLUSTER_DOMAIN,
    "pod_cidr": L.POD_CIDR, "pod_subnet": L.POD_SUBNET, "pod_gateway": L.POD_GATEWAY,
    "service_cidr": L.SERVICE_CIDR, "bridge": L.BRIDGE, "cni_network": L.CNI_NETWORK,
    "guard_table": L.GUARD_TABLE, "state": L.STATE, "run": L.RUN, "pki": L.PKI,
    "containerd_sock": L.CONTAINERD_SOCK, "pause_image": L.PAUSE_IMAGE, "coredns_user": IDENTITIES["coredns"][0],
    "k8s_version": L.K8S_VERSION, "coredns_version": L.COREDNS_VERSION,
}

# template -> where `up` writes it
CONFIG_FILES = {
    "kubelet.yaml": L.STATE / "kubelet.yaml",
    "kube-proxy.yaml": L.STATE / "kube-proxy.yaml",
    "10-kchat.conflist": L.STATE / "cni" / "net.d" / "10-kchat.conflist",
    "containerd.toml": L.STATE / "containerd.toml",
    "Corefile": L.STATE / "Corefile",
}


def fill(template, **values):
    """The template's text with $names replaced by the layout's values and these; Fail on a name not given."""
    text = (TEMPLATES / template).read_text()
    try:
        return string.Template(text).substitute({**LAYOUT, **values})
    except (KeyError, ValueError) as e:  # a $name with no value, a stray $
        raise Fail(f"cannot fill {TEMPLATES / template}: {type(e).__name__} {e}")


def openssl(*args):
    run(["openssl", *args], timeout=60)


def make_pki(pki=L.PKI):
    pki.mkdir(parents=True, exist_ok=True)
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", pki / "ca.key", "-out", pki / "ca.crt",
            "-days", "3650", "-subj", "/CN=kchat-k8s-ca")
    sans = ",".join([f"IP:{L.NODE_IP}", "IP:127.0.0.1", f"IP:{L.API_SERVICE_IP}", "DNS:localhost", "DNS:kubernetes",
                     "DNS:kubernetes.default", "DNS:kubernetes.default.svc",
                     f"DNS:kubernetes.default.svc.{L.CLUSTER_DOMAIN}"])
    for name, subject, ext in (("apiserver", "/CN=kube-apiserver", f"subjectAltName={sans}"),
                               # the apiserver's identity towards the kubelet (logs, exec)
                               ("apiserver-kubelet-client", "/O=system:masters/CN=kube-apiserver-kubelet-client",
                                "extendedKeyUsage=clientAuth")):
        openssl("req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", pki / f"{name}.key",
                "-out", pki / f"{name}.csr", "-subj", subject, "-addext", ext)
        openssl("x509", "-req", "-in", pki / f"{name}.csr", "-CA", pki / "ca.crt", "-CAkey", pki / "ca.key",
                "-CAcreateserial", "-days", "3650", "-copy_extensions", "copyall", "-out", pki / f"{name}.crt")
    openssl("genrsa", "-out", pki / "sa.key", "2048")
    openssl("rsa", "-in", pki / "sa.key", "-pubout", "-out", pki / "sa.pub")


def token_lines(tokens):
    """--token-auth-file's lines: token,user,uid[,"group,group"]."""
    lines = []
    for name, (user, groups) in IDENTITIES.items():
        line = f"{tokens[name]},{user},{user}"
        lines.append(f'{line},"{",".join(groups)}"' if groups else line)
    return lines


def write_private(path, text):
    path.write_text(text)
    path.chmod(0o600)


def write_configs():
    make_pki()
    ca_data = base64.b64encode((L.PKI / "ca.crt").read_bytes()).decode()
    tokens = {name: hashlib.sha256(os.urandom(32)).hexdigest()[:32] for name in IDENTITIES}
    for name in IDENTITIES:  # YAML is a superset of JSON; JSON so that api_get reads them with the stdlib
        write_private(L.STATE / f"{name}.kubeconfig", fill("kubeconfig.json", token=tokens[name], ca_data=ca_data))
    write_private(L.PKI / "tokens.csv", "\n".join(token_lines(tokens)) + "\n")
    (L.STATE / "resolv.conf").write_text(f"nameserver {L.NODE_IP}\n")
    for template, path in CONFIG_FILES.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(fill(template))
