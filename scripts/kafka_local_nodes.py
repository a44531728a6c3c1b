"""kafka-local's node JVMs: the ports they need, starting them detached, waiting until they serve, stopping
them (brokers before controllers).

A node serves when its log says READY_MARKER and, for a broker, a Metadata request to it lists every broker of
the cluster (a broker that logged "started" may not yet be known to its peers), or, for a controller-only node,
its port accepts a connection.
"""
from __future__ import annotations

import os
import re
import signal
import socket
import struct
import subprocess
import time

import kafka_local_net as netns
import kafka_local_security as security
from kafka_local_jvm import server_cmd
from kafka_local_state import is_broker
from local_common import Fail, info, pid_alive, port_free

READY_MARKER = "Kafka Server started"
DEFAULT_TIMEOUT = 120.0  # seconds for the nodes to serve
PORT_IN_USE = " (a port is already in use)"


class PortInUse(Fail):
    """A port the cluster needs is taken: exit 4, so that a caller can try again on other ports without
    reading the message."""

    exit_code = 4


def check_ports_free(ports):
    for port in ports:
        if not (0 < port < 65536):
            raise Fail(f"port {port} is out of range; choose another --port-base")
    taken = [p for p in ports if not port_free(p)]
    if taken:
        listing = ", ".join(f"127.0.0.1:{p}" for p in taken)
        raise PortInUse(f"port {listing} already in use; stop whatever listens there or choose another --port-base")


def metadata_brokers(host, port, timeout=2.0, sec=None):
    """Kafka Metadata v1 round trip (no topics), over SASL_SSL when sec (the cluster's security record) is given.
    Returns {node_id: (host, port)} of the live, unfenced brokers."""
    if sec:
        s = security.connect(host, port, sec, timeout=max(timeout, 5.0))
    else:
        s = socket.create_connection((host, port), timeout=timeout)
        s.settimeout(timeout)
    with s:
        data = security.request(s, 3, 1, struct.pack(">i", 0))
    (count,) = struct.unpack_from(">i", data, 0)
    off = 4
    brokers = {}
    for _ in range(count):
        nid, hlen = struct.unpack_from(">ih", data, off)
        off += 6
        bhost = data[off:off + hlen].decode()
        off += hlen
        bport, rlen = struct.unpack_from(">ih", data, off)
        off += 6 + max(rlen, 0)
        brokers[nid] = (bhost, bport)
    return brokers


def can_connect(port, host="127.0.0.1"):
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def log_since(path, offset):
    """What a node logged from offset on (its log file is appended to by every start); '' if unreadable."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def startup_cause(text):
    """A short cause for a node that died while starting, from its log text ('' if none is recognised)."""
    if "Address already in use" in text:
        return PORT_IN_USE
    for ln in text.splitlines():
        m = re.search(r"(?:ERROR|FATAL).*?(?:Exception|Error): (.+)", ln)
        if m:
            return f" ({m.group(1).strip()[:200]})"
    return ""


def log_size(path):
    try:
        return path.stat().st_size
    except OSError:
        return 0


def launch(state, lib, node, heap, cds=()):
    """Start one node detached; write its pid file. Returns (Popen, log offset at start)."""
    nid = node["id"]
    log = state.log(nid)
    offset = log_size(log)
    with open(log, "ab") as lf:
        lf.write(f"===== kafka-local: starting node {nid} at {time.strftime('%Y-%m-%d %H:%M:%S')} =====\n".encode())
        lf.flush()
        cmd = server_cmd(lib, state.props(nid), state.logs_dir, heap, cds)
        if node.get("ns"):
            cmd = netns.nsenter_prefix(node["ns"]) + cmd
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=lf,
                                stderr=subprocess.STDOUT, start_new_session=True, close_fds=True, cwd=state.root)
    state.pidfile(nid).write_text(f"{proc.pid}\n")
    node["pid"] = proc.pid
    return proc, offset


def wait_ready(state, started, expect_brokers, timeout, sec=None):
    """Wait until each started broker logged READY_MARKER and answers Metadata listing expect_brokers (and
    each started controller-only node logged READY_MARKER and accepts TCP). started: [(node, proc, offset)].
    sec: the cluster's security record (Metadata then goes over SASL_SSL)."""
    deadline = time.monotonic() + timeout
    pending = list(started)
    t0 = time.monotonic()
    while pending:
        still = []
        for node, proc, offset in pending:
            nid = node["id"]
            rc = proc.poll() if proc is not None else (None if pid_alive(node["pid"]) else -1)
            if rc is not None:
                cause = startup_cause(log_since(state.log(nid), offset))
                raise (PortInUse if cause == PORT_IN_USE else Fail)(
                    f"node {nid} ({','.join(node['roles'])}) exited with code {rc} during startup{cause}; "
                    f"see {state.log(nid)}")
            ready = False
            if READY_MARKER in log_since(state.log(nid), offset):
                if is_broker(node):
                    try:
                        seen = metadata_brokers(node.get("host") or "127.0.0.1", node["broker_port"], sec=sec)
                        ready = set(expect_brokers | {nid}) <= set(seen)
                    except (OSError, struct.error, ValueError, security.SecurityFail):
                        ready = False
                else:
                    ready = can_connect(node["controller_port"], node.get("host") or "127.0.0.1")
            if ready:
                info(f"node {nid} ({','.join(node['roles'])}) serving after {time.monotonic() - t0:.1f}s")
            else:
                still.append((node, proc, offset))
        pending = still
        if pending:
            if time.monotonic() > deadline:
                node = pending[0][0]
                port = node["broker_port"] or node["controller_port"]
                raise Fail(f"node {node['id']} ({','.join(node['roles'])}, port {port}) not serving after "
                           f"{timeout:g}s; see {state.log(node['id'])}")
            time.sleep(0.2)


def stop_pids(state, targets, timeout, sig=signal.SIGTERM):
    """targets: [(nid, pid)] of verified JVMs. Signal all, wait up to timeout, SIGKILL leftovers."""
    for nid, pid in targets:
        try:
            os.kill(pid, sig)
            os.kill(pid, signal.SIGCONT)  # a paused (SIGSTOPped) JVM acts on SIGTERM only once continued
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    remaining = list(targets)
    while remaining and time.monotonic() < deadline:
        remaining = [(n, p) for n, p in remaining if pid_alive(p)]
        if remaining:
            time.sleep(0.1)
    for nid, pid in remaining:
        info(f"node {nid} (pid {pid}) did not stop within {timeout:.0f}s; sending SIGKILL")
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 10
    while any(pid_alive(p) for _n, p in remaining) and time.monotonic() < deadline:
        time.sleep(0.1)
    for nid, _pid in targets:
        state.pidfile(nid).unlink(missing_ok=True)


def stop_nodes(state, nodes, timeout, kill=False):
    """Stop the recorded, verified JVMs of nodes: brokers first (their controlled shutdown needs a controller),
    then controllers. Returns the number of JVMs stopped."""
    live = [(n, state.live_pid(n["id"])) for n in nodes]
    for n, pid in live:
        if pid is None:
            state.pidfile(n["id"]).unlink(missing_ok=True)
    brokers = [(n["id"], pid) for n, pid in live if pid and is_broker(n)]
    others = [(n["id"], pid) for n, pid in live if pid and not is_broker(n)]
    sig = signal.SIGKILL if kill else signal.SIGTERM
    if brokers:
        stop_pids(state, brokers, timeout, sig)
    if others:
        stop_pids(state, others, timeout, sig)
    return len(brokers) + len(others)

