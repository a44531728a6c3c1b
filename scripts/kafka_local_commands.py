"""kafka-local's commands on a whole cluster or one node: fetch, status, bootstrap, down, kill, start, and the
topic commands (topic, describe) run through Kafka's own TopicCommand.
"""
from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
from pathlib import Path

from kafka_local_jvm import DEFAULT_HEAP, cds_options, lib_dir, run_tool
from kafka_local_layout import node_ports, parse_kv
from kafka_local_nodes import check_ports_free, launch, stop_nodes, wait_ready
from kafka_local_state import State, find_node, require_cluster, running_nodes
from kafka_local_up import teardown_extras
from local_common import Fail, info, pid_alive


def cmd_fetch(args):
    print(lib_dir())


def cmd_bootstrap(args):
    state = State(args.state_dir)
    cluster = require_cluster(state)
    if not running_nodes(state, cluster):
        raise Fail(f"the cluster in {state.root} has no live node; restart nodes with `start NODE_ID`, or `up`")
    print(cluster["bootstrap"])


def cmd_status(args):
    state = State(args.state_dir)
    cluster = require_cluster(state)
    nodes = [{"id": n["id"], "roles": n["roles"], "host": n.get("host") or "127.0.0.1",
              "broker_port": n["broker_port"], "controller_port": n["controller_port"], "pid": pid,
              "alive": pid is not None} for n in cluster["nodes"] for pid in [state.live_pid(n["id"])]]
    if args.json:  # for programs: the same facts without column parsing
        print(json.dumps({"cluster_id": cluster.get("cluster_id"), "mode": cluster.get("mode"),
                          "bootstrap": cluster.get("bootstrap"), "state_dir": str(state.root), "nodes": nodes},
                         indent=2))
    else:
        for n in nodes:
            port = n["broker_port"] or n["controller_port"]
            print(f"{n['id']:<5} {','.join(n['roles']):<18} {port:<6} {n['pid'] or '-':<8} "
                  f"{'alive' if n['alive'] else 'dead'}")
    return 0 if all(n["alive"] for n in nodes) else 3


def cmd_down(args):
    state = State(args.state_dir)
    cluster = state.load()
    nodes = (cluster or {}).get("nodes", [])
    # pid files of nodes the json does not know (should not happen) are still honoured
    known = {n["id"] for n in nodes}
    for f in state.pids_dir.glob("node-*.pid") if state.pids_dir.is_dir() else ():
        try:
            nid = int(f.stem.split("-", 1)[1])
        except ValueError:
            continue
        if nid not in known:
            nodes.append({"id": nid, "roles": ["broker"]})
    t0 = time.monotonic()
    count = stop_nodes(state, nodes, args.timeout, kill=args.kill)
    if cluster:
        extras = bool(cluster.get("net") or cluster.get("disks"))
        teardown_extras(cluster)
        cluster["running"] = False
        for n in cluster["nodes"]:
            n["pid"] = None
        state.save(cluster)
        if extras:
            info("removed the network namespaces, delayers and loop disks")
    info(f"stopped {count} node(s) in {time.monotonic() - t0:.1f}s" if count else f"nothing running from {state.root}")
    return 0


def cmd_kill(args):
    state = State(args.state_dir)
    cluster = require_cluster(state)
    node = find_node(cluster, args.node_id)
    pid = state.live_pid(node["id"])
    if pid is None:
        state.pidfile(node["id"]).unlink(missing_ok=True)
        raise Fail(f"node {node['id']} is not running")
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    state.pidfile(node["id"]).unlink(missing_ok=True)
    node["pid"] = None
    state.save(cluster)
    info(f"killed node {node['id']} (pid {pid})")


def cmd_start(args):
    state = State(args.state_dir)
    cluster = require_cluster(state)
    node = find_node(cluster, args.node_id)
    if state.live_pid(node["id"]):
        raise Fail(f"node {node['id']} is already running (pid {state.live_pid(node['id'])})")
    if not node.get("ns"):
        check_ports_free(node_ports(node))
    lib = Path(cluster.get("lib") or lib_dir())
    if not lib.is_dir():
        lib = lib_dir()
    t0 = time.monotonic()
    heap = args.heap or cluster.get("heap") or DEFAULT_HEAP
    proc, offset = launch(state, lib, node, heap, cds_options(lib)[0])
    state.save(cluster)
    try:
        wait_ready(state, [(node, proc, offset)], set(), args.timeout, cluster.get("security"))
    except BaseException:
        stop_nodes(state, [node], 10, kill=True)
        node["pid"] = None
        state.save(cluster)
        raise
    info(f"node {node['id']} restarted in {time.monotonic() - t0:.1f}s")


def cluster_bootstrap(args):
    if args.bootstrap:
        return args.bootstrap
    state = State(args.state_dir)
    cluster = require_cluster(state)
    if not running_nodes(state, cluster):
        raise Fail(f"the cluster in {state.root} is not running; start it with `up` or pass --bootstrap")
    return cluster["bootstrap"]


def tool_client_args(args):
    """--command-config for the Kafka tools when this state dir's cluster is secured."""
    cluster = State(args.state_dir).load() or {}
    sec = cluster.get("security")
    return ["--command-config", sec["client_properties"]] if sec else []


def describe(lib, bootstrap, name, client_args=()):
    targs = ["--bootstrap-server", bootstrap, "--describe", *client_args] + (["--topic", name] if name else [])
    out = run_tool(lib, "org.apache.kafka.tools.TopicCommand", targs).stdout
    if name and not out.strip():
        raise Fail(f"topic {name!r} not found")
    return out


def cmd_topic(args):
    bootstrap = cluster_bootstrap(args)
    lib = lib_dir()
    configs = parse_kv(args.config, "--config")
    if args.min_insync_replicas is not None:
        configs["min.insync.replicas"] = str(args.min_insync_replicas)
    client_args = tool_client_args(args)
    targs = ["--bootstrap-server", bootstrap, "--create", "--if-not-exists", "--topic", args.name,
             "--partitions", str(args.partitions), "--replication-factor", str(args.replication_factor), *client_args]
    for k, v in configs.items():
        targs += ["--config", f"{k}={v}"]
    cp = run_tool(lib, "org.apache.kafka.tools.TopicCommand", targs)
    for line in cp.stdout.splitlines():
        if line.strip():
            info(line.strip())
    described = describe(lib, bootstrap, args.name, client_args)
    m = re.search(r"PartitionCount:\s*(\d+)\s+ReplicationFactor:\s*(\d+)", described)
    if m and (int(m.group(1)), int(m.group(2))) != (args.partitions, args.replication_factor):
        info(f"warning: topic {args.name} already exists with {m.group(1)} partitions and replication factor "
             f"{m.group(2)} (asked for {args.partitions} and {args.replication_factor}); left as it is")
    sys.stdout.write(described)


def cmd_describe(args):
    sys.stdout.write(describe(lib_dir(), cluster_bootstrap(args), args.name, tool_client_args(args)))

