"""`k8s-local up`: install, clean up an earlier cluster's remains, the host's network and the configuration, then
each component of the table in k8s_local_components, awaited as the table says."""
from __future__ import annotations

import os
import time

import k8s_local_layout as L
import k8s_local_net as net
from k8s_local_client import node_ready
from k8s_local_components import COMPONENTS, NAMES
from k8s_local_config import write_configs
from k8s_local_down import find_leftovers, record_host_paths, teardown
from k8s_local_install import install
from k8s_local_procs import live_pid, start, wait_for
from local_common import Fail, env_float, info, port_free


def settings():
    """What `up` reads from the environment, checked before it changes anything: each component's timeout, and
    K8S_LOCAL_FAIL_AT=<component> (tests/test_k8s_local.py: an `up` that fails before that component starts)."""
    timeouts = {c.name: env_float(c.timeout_env, c.timeout, lo=1) if c.timeout_env else c.timeout
                for c in COMPONENTS}
    fail_at = os.environ.get("K8S_LOCAL_FAIL_AT", "").strip()
    if fail_at and fail_at not in NAMES:
        raise Fail(f"K8S_LOCAL_FAIL_AT={fail_at}: expected one of {', '.join(NAMES)}")
    return timeouts, fail_at


def up():
    timeouts, fail_at = settings()
    try:
        start_cluster(timeouts, fail_at)
    except Fail as e:
        raise Fail(f"{e}. `k8s-local down` removes what was started (logs stay in {L.STATE / 'logs'} until then)")


def start_cluster(timeouts, fail_at):
    L.require_root()
    running = [n for n in NAMES if live_pid(n)]
    if running == NAMES and node_ready():
        info(f"already up (node {L.NODE_NAME} Ready)")
        return
    if running:
        raise Fail(f"a cluster is partly up ({', '.join(running)} running): `k8s-local down` first")
    install()
    leftovers = find_leftovers()
    if leftovers:
        info(f"found remains of an earlier cluster ({leftovers[0]}, ...): cleaning up first")
        teardown()
    taken = [f"127.0.0.1:{p}" for c in COMPONENTS for p in c.ports if not port_free(p)]
    if taken:
        raise Fail(f"ports already in use: {', '.join(taken)}")
    t0 = time.monotonic()
    for d in (L.STATE / "logs", L.RUN / "pids", L.DATA):
        d.mkdir(parents=True, exist_ok=True)
    record_host_paths()
    net.up()
    write_configs()
    info(f"node address {L.NODE_IP} on lo, guard table inet {L.GUARD_TABLE} on {', '.join(net.uplinks()) or 'eth0'}, "
         f"configuration in {L.STATE}")

    procs = {}

    def await_ready(c):
        wait_for(c.what, c.name, c.ready, timeouts[c.name], procs[c.name])
        if c.announce:
            info(f"{c.announce} ({time.monotonic() - t0:.0f}s)")
        if c.after:
            c.after()

    for c in COMPONENTS:
        if fail_at == c.name:
            raise Fail(f"K8S_LOCAL_FAIL_AT={c.name}: stopping before {c.name} starts")
        if c.before:
            c.before()
        procs[c.name] = start(c.name, c.command())
        if c.ready and not c.at_end:
            await_ready(c)
    for c in COMPONENTS:
        if c.ready and c.at_end:
            await_ready(c)
    info(f"node {L.NODE_NAME} Ready in {time.monotonic() - t0:.0f}s; kubectl: {L.SCRIPT} kubectl "
         f"(kubeconfig {L.KUBECONFIG}); NodePorts on 127.0.0.1")
