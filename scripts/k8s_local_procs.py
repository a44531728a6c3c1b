"""The cluster's processes: starting a component with its log and pid file, waiting for it, finding every
process of this cluster (also one whose pid file is lost), stopping them, and the pods' cgroups."""
from __future__ import annotations

import os
import resource
import signal
import subprocess
import time
from pathlib import Path

import k8s_local_layout as L
from k8s_local_components import COMPONENTS
from local_common import Fail, proc_argv

# The executables of a cluster's processes: its components (each named as its executable), kubectl and runc.
EXES = {c.name for c in COMPONENTS} | {"kubectl", "runc"}


def pidfile(name):
    return L.RUN / "pids" / f"{name}.pid"


def logfile(name):
    return L.STATE / "logs" / f"{name}.log"


def ours(argv):
    """True if a command line is one of this cluster's: every component is started with a path under our state
    or run directory (and the shims with containerd's socket)."""
    text = " ".join(argv)
    return str(L.STATE) + "/" in text or str(L.RUN) + "/" in text


def live_pid(name):
    """The pid of the component if its pid file names a live process of this cluster."""
    try:
        pid = int(pidfile(name).read_text())
    except (OSError, ValueError):
        return None
    return pid if ours(proc_argv(pid)) else None


def is_shim(argv):
    return Path(argv[0]).name.startswith("containerd-shim")


def our_processes():
    """pid -> argv of every live component or containerd shim of this cluster (a pid file may be lost)."""
    out = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            argv = proc_argv(int(d.name))
            if argv and ours(argv) and (Path(argv[0]).name in EXES or is_shim(argv)):
                out[int(d.name)] = argv
    return out


def _raise_nofile():
    # Pods inherit containerd's limits: the soft nofile limit up to the hard one.
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def start(name, cmd):
    """Start a component in a session of its own, its output appended to its log, its pid in its pid file."""
    with open(logfile(name), "a") as lf:
        lf.write(f"\n# {time.strftime('%Y-%m-%d %H:%M:%S')} $ {' '.join(map(str, cmd))}\n")
        lf.flush()
        proc = subprocess.Popen([str(c) for c in cmd], stdout=lf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, preexec_fn=_raise_nofile, cwd=str(L.STATE))
    pidfile(name).write_text(f"{proc.pid}\n")
    return proc


def wait_for(what, name, check, timeout, proc=None):
    """Poll check() until it returns a true value; Fail naming what was awaited and the component's log."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            got = check()
            if got:
                return got
        except Exception as e:  # the check's own error is the most telling detail
            last = e
        if proc is not None and proc.poll() is not None:
            raise Fail(f"{name} exited ({proc.returncode}) while waiting for {what}; see {logfile(name)}")
        time.sleep(0.5)
    detail = f" (last: {str(last)[:200]})" if last else ""
    raise Fail(f"{what}: not within {timeout:.0f}s{detail}; see {logfile(name)}")


def stop_pid(pid, grace):
    """SIGTERM, then SIGKILL if it is still there after grace seconds."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and proc_argv(pid):
        time.sleep(0.1)
    if proc_argv(pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def cgroup_dirs():
    """The kubelet's pod cgroups (kubepods) in every hierarchy, deepest first."""
    found = []
    for top in Path("/sys/fs/cgroup").glob("*/kubepods") if Path("/sys/fs/cgroup").is_dir() else ():
        found += [Path(d) for d, _, _ in os.walk(top)]
    for top in (Path("/sys/fs/cgroup/kubepods"), Path("/sys/fs/cgroup/unified/kubepods")):
        if top.is_dir():
            found += [Path(d) for d, _, _ in os.walk(top)]
    return sorted(set(found), key=lambda p: -len(p.parts))


def kill_containers():
    """SIGKILL every process in the pods' cgroups and every containerd shim of this cluster."""
    for _ in range(3):
        pids = set()
        for d in cgroup_dirs():
            try:
                pids |= {int(p) for p in (d / "cgroup.procs").read_text().split()}
            except OSError:
                pass
        shims = {pid for pid, argv in our_processes().items() if is_shim(argv)}
        if not pids and not shims:
            return
        for pid in pids | shims:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.5)
