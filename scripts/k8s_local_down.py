"""`k8s-local down` and `leftovers`: every trace of a cluster, also of an `up` that failed half-way, found and
removed -- processes, mounts, cgroups, the host's network and sysctls (k8s_local_net), files the kubelet,
containerd and CNI leave outside our directories, our directories."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import k8s_local_layout as L
import k8s_local_net as net
from k8s_local_components import stop_order
from k8s_local_procs import cgroup_dirs, kill_containers, live_pid, our_processes, stop_pid
from local_common import run

# Paths the kubelet and containerd use whatever their configuration says: removed by `down` unless they were
# there before `up`.
HOST_PATHS = [Path("/var/lib/kubelet"), Path("/var/log/containers"), Path("/var/log/pods"), Path("/var/lib/cni"),
              Path("/run/containerd")]
SAVED_HOST_PATHS = L.STATE / "host-paths-before.json"
DIRS = (L.STATE, L.RUN, L.DATA)


def record_host_paths():
    if not SAVED_HOST_PATHS.exists():
        SAVED_HOST_PATHS.write_text(json.dumps([str(p) for p in HOST_PATHS if p.exists()]) + "\n")


def mounts_under(*roots):
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        mp = line.split()[4].replace("\\040", " ")
        if any(mp == str(r) or mp.startswith(str(r) + "/") for r in roots):
            out.append(mp)
    return out


def host_traces():
    """Files the kubelet, containerd and CNI leave outside our directories: the device-plugin socket, the
    containers' log links, the shims' sockets, CNI's result cache."""
    found = [Path("/var/lib/kubelet/device-plugins/kubelet.sock")]
    found += list(Path("/run/containerd/s").glob("*"))
    found += [f for f in Path("/var/log/containers").glob("*.log")
              if f.is_symlink() and os.readlink(f).startswith(str(L.STATE))]
    found += [f for pattern in (f"{L.CNI_NETWORK}-*", "cni-loopback-*")
              for f in Path("/var/lib/cni/results").glob(pattern)]
    return [f for f in found if f.is_symlink() or f.exists()]


def find_leftovers():
    """One line per trace of a cluster still on the machine."""
    found = [f"process {pid}: {' '.join(argv)[:120]}" for pid, argv in sorted(our_processes().items())]
    found += [f"mount {m}" for m in mounts_under(*DIRS)]
    found += [f"cgroup {d}" for d in cgroup_dirs()]
    found += net.leftovers()
    found += [f"directory {d}" for d in DIRS if d.exists()]
    found += [f"file {f}" for f in host_traces()]
    return found


def stop_processes():
    """The components in `down`'s order (the containers just before containerd), then whatever is left."""
    for c in stop_order():
        if c.name == "containerd":
            kill_containers()
        pid = live_pid(c.name)
        if pid:
            stop_pid(pid, c.grace)
    kill_containers()
    for pid in our_processes():  # a component whose pid file was lost
        stop_pid(pid, 5)


def teardown():
    stop_processes()
    if L.kube_bin("kube-proxy").exists():
        run([str(L.kube_bin("kube-proxy")), "--cleanup"], check=False, timeout=60)
    net.remove_rules()
    # container root file systems, network namespaces, volumes: deepest first
    for mp in sorted(mounts_under(*DIRS), key=lambda m: -m.count("/")):
        if run(["umount", mp], check=False).returncode != 0:
            run(["umount", "-l", mp], check=False)
    for d in cgroup_dirs():
        try:
            d.rmdir()
        except OSError:
            pass
    net.remove_links_and_address()
    net.restore_sysctls()
    for f in host_traces():
        f.unlink(missing_ok=True)
    if SAVED_HOST_PATHS.exists():
        had = set(json.loads(SAVED_HOST_PATHS.read_text()))
        for p in HOST_PATHS:
            if str(p) not in had:
                shutil.rmtree(p, ignore_errors=True)
    for d in DIRS:
        shutil.rmtree(d, ignore_errors=True)
