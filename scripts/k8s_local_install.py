"""`k8s-local install`: the Debian packages, and Kubernetes and CoreDNS built from the Go module proxy into the
cache (once; a second k8s-local waits on the cache lock, then finds the work done)."""
from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import k8s_local_layout as L
from k8s_local_config import fill
from local_common import Fail, info, run

APT_PACKAGES = ["etcd-server", "containerd", "runc", "containernetworking-plugins", "podman", "buildah", "mmdebstrap",
                "nftables", "iptables", "conntrack", "openssl", "gcc", "libc6-dev", "maven",
                "openjdk-17-jre-headless"]
# CoreDNS with only the plugins the Corefile uses, in CoreDNS's own plugin order (core/dnsserver/zdirectives.go):
# a third of the default build's compile time (no cloud SDKs), and a server that cannot forward a query at all.
COREDNS_PLUGINS = ["bind", "ready", "errors", "loadbalance", "template", "kubernetes"]


def run_logged(cmd, log, timeout, what, **kw):
    """Run a long command with its output in a log file; Fail naming the log if it fails."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as lf:
        lf.write(f"\n$ {' '.join(map(str, cmd))}\n")
        lf.flush()
        try:
            rc = subprocess.run(cmd, stdout=lf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                timeout=timeout, **kw).returncode
        except subprocess.TimeoutExpired:
            raise Fail(f"{what} did not finish within {timeout}s; see {log}")
    if rc != 0:
        raise Fail(f"{what} failed (exit {rc}); see {log}")


class cache_lock:
    """One builder at a time per cache (`make test` builds in the background while the tests run): the second
    waits for the first, then finds its work done."""

    def __init__(self, what):
        self.what = what

    def __enter__(self):
        path = L.cache_dir() / f"k8s-{self.what}.lock"
        self.f = open(path, "a+")
        try:
            fcntl.flock(self.f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            info(f"waiting for another k8s-local to finish its {self.what} ({path})")
            fcntl.flock(self.f, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        self.f.close()


def missing_packages():
    cp = run(["dpkg-query", "-W", "-f", "${Package} ${Status}\n", *APT_PACKAGES], check=False)
    installed = {line.split()[0] for line in cp.stdout.splitlines() if line.endswith(" installed")}
    return [p for p in APT_PACKAGES if p not in installed]


def install_packages():
    missing = missing_packages()
    if not missing:
        return
    L.require_root()
    log = L.cache_dir() / "k8s-apt.log"
    info(f"installing Debian packages: {' '.join(missing)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    run_logged(["apt-get", "update", "-qq"], log, 600, "apt-get update", env=env)
    run_logged(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing], log, 1200,
               "apt-get install", env=env)


def kube_version_ok(path):
    if not path.is_file():
        return False
    args = ["version", "--client", "-o", "json"] if path.name == "kubectl" else ["--version"]
    cp = run([str(path), *args], check=False, timeout=30)
    return f"v{L.K8S_VERSION}" in cp.stdout


def wrapper_module(src):
    """A module that requires k8s.io/kubernetes and maps its ./staging replace directives onto the published
    k8s.io/* modules of the same release (v0.X.Y for v1.X.Y): go install refuses a module with replace
    directives."""
    cp = run(["go", "mod", "download", "-json", f"k8s.io/kubernetes@v{L.K8S_VERSION}"], timeout=900)
    gomod = Path(json.loads(cp.stdout)["GoMod"]).read_text()
    staging = re.findall(r"^\s*(k8s\.io/[\w.-]+)\s*=>\s*\./staging/", gomod, re.M)
    if not staging:
        raise Fail(f"k8s.io/kubernetes v{L.K8S_VERSION}: no ./staging replace directives found in its go.mod")
    minor = "v0." + L.K8S_VERSION.split(".", 1)[1]
    src.mkdir(parents=True, exist_ok=True)
    (src / "go.mod").write_text(fill("kubernetes-go.mod", go_line=re.search(r"^go (\S+)", gomod, re.M).group(1),
                                     replaces="\n".join(f"\t{m} => {m} {minor}" for m in staging)))


def go_env():
    """The build's environment: static binaries, GOFLAGS with ours added to the machine's own."""
    own = run(["go", "env", "GOFLAGS"]).stdout.strip()
    return {**os.environ, "CGO_ENABLED": "0", "GOFLAGS": " ".join(filter(None, [own, "-mod=mod", "-trimpath"]))}


def version_ldflags():
    major, minor, _patch = L.K8S_VERSION.split(".")
    build_date = "1970-01-01T00:00:00Z"  # reproducible: the same inputs give the same binaries
    flags = []
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [f"-X {pkg}.gitVersion=v{L.K8S_VERSION}", f"-X {pkg}.gitMajor={major}",
                  f"-X {pkg}.gitMinor={minor}", f"-X {pkg}.gitTreeState=clean", f"-X {pkg}.buildDate={build_date}"]
    return " ".join(["-s", "-w", *flags])


def need_go(what):
    if not shutil.which("go"):
        raise Fail(f"go is not on PATH ({what} built from the Go module proxy)")


def install_kubernetes():
    bindir = L.kube_bin("kubectl").parent
    missing = [c for c in L.KUBE_COMMANDS if not kube_version_ok(bindir / c)]
    if not missing:
        return
    need_go("the Kubernetes components are")
    base = bindir.parent
    src, log = base / "src", base / "build.log"
    info(f"building Kubernetes v{L.K8S_VERSION} ({', '.join(missing)}) into {bindir}; ~10 min on 2 cores, once; "
         f"log {log}")
    wrapper_module(src)
    tmp = Path(tempfile.mkdtemp(prefix="bin.tmp-", dir=base))
    try:
        cmd = ["go", "build", "-ldflags", version_ldflags(), "-o", str(tmp) + "/",
               *[f"k8s.io/kubernetes/cmd/{c}" for c in missing]]
        run_logged(cmd, log, 3600, f"building Kubernetes v{L.K8S_VERSION}", cwd=src, env=go_env())
        bindir.mkdir(parents=True, exist_ok=True)
        for c in missing:
            os.replace(tmp / c, bindir / c)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    bad = [c for c in missing if not kube_version_ok(bindir / c)]
    if bad:
        raise Fail(f"built {', '.join(bad)} but they do not report v{L.K8S_VERSION}; see {log}")


def coredns_ok(path):
    if not path.is_file():
        return False
    version = run([str(path), "-version"], check=False).stdout
    plugins = set(run([str(path), "-plugins"], check=False).stdout.split())
    return f"CoreDNS-{L.COREDNS_VERSION}" in version and set(COREDNS_PLUGINS) <= plugins and "forward" not in plugins


def install_coredns():
    path = L.coredns_bin()
    if coredns_ok(path):
        return
    need_go("CoreDNS is")
    base = path.parent.parent
    src, log = base / "src", base / "build.log"
    info(f"building CoreDNS v{L.COREDNS_VERSION} (plugins {', '.join(COREDNS_PLUGINS)}) into {path.parent}; "
         f"~3 min, once; log {log}")
    src.mkdir(parents=True, exist_ok=True)
    (src / "go.mod").write_text(fill("coredns-go.mod"))
    (src / "main.go").write_text(fill(
        "coredns-main.go", imports="\n".join(f'\t_ "github.com/coredns/coredns/plugin/{p}"' for p in COREDNS_PLUGINS),
        directives=", ".join(f'"{p}"' for p in COREDNS_PLUGINS)))
    path.parent.mkdir(parents=True, exist_ok=True)
    run_logged(["go", "build", "-ldflags", "-s -w", "-o", str(path) + ".tmp", "."], log, 3600,
               f"building CoreDNS v{L.COREDNS_VERSION}", cwd=src, env=go_env())
    os.replace(str(path) + ".tmp", path)
    if not coredns_ok(path):
        raise Fail(f"built {path} but it does not report CoreDNS-{L.COREDNS_VERSION} with plugins "
                   f"{', '.join(COREDNS_PLUGINS)}; see {log}")


def install(packages_only=False):
    t0 = time.monotonic()
    with cache_lock("install"):
        install_packages()
        if packages_only:
            info("Debian packages installed")
            return
        install_kubernetes()
        install_coredns()
    info(f"installed (Kubernetes v{L.K8S_VERSION}, CoreDNS v{L.COREDNS_VERSION}) in {time.monotonic() - t0:.0f}s")
