"""kafka-local's faults and what checks them: network cuts, delay and loss (a cluster started with --netns),
paused JVMs, frozen disks (--loop-disks), the active controller, and what a teardown left behind.
How each fault is made is in scripts/kafka_local_net.py.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import kafka_local_net as netns
from kafka_local_jvm import lib_dir, run_tool
from kafka_local_state import State, find_node, require_cluster, running_nodes
from local_common import Fail, info, print_leftovers

# `slow` starts its delayers as `kafka-local _delay ...` inside the members' namespaces
SCRIPT = Path(__file__).resolve().with_name("kafka-local")


def running_cluster(args):
    state = State(args.state_dir)
    return state, require_cluster(state)


def require_net(cluster):
    if not cluster.get("net"):
        raise Fail("this cluster was not started with --netns")
    return cluster["net"]


def cmd_host(args):
    state, cluster = running_cluster(args)
    member = netns.add_host(require_net(cluster), args.name)
    state.save(cluster)
    print(member["ns"], member["ip"])


def cmd_cut(args):
    state, cluster = running_cluster(args)
    net = require_net(cluster)
    a, b = netns.resolve(net, args.a, cluster["nodes"]), netns.resolve(net, args.b, cluster["nodes"])
    netns.cut(net, a, b, one_way=args.one_way)
    info(f"cut {','.join(a)} {'->' if args.one_way else '<->'} {','.join(b)}")


def cmd_isolate(args):
    state, cluster = running_cluster(args)
    net = require_net(cluster)
    alone = netns.resolve(net, args.members, cluster["nodes"])
    others = [m for m in net["members"] if m not in alone]
    netns.cut(net, others + ["host"], alone, one_way=True)  # nothing reaches them, this machine's side included
    netns.cut(net, alone, others, one_way=True)
    info(f"isolated {','.join(alone)}")


def cmd_heal(args):
    state, cluster = running_cluster(args)
    net = require_net(cluster)
    netns.heal(net, netns.resolve(net, args.members, cluster["nodes"]) if args.members else None)
    info("healed")


def cmd_cuts(args):
    state, cluster = running_cluster(args)
    for member, sources in sorted(netns.cuts(require_net(cluster)).items()):
        print(member, ",".join(sources))


def cmd_slow(args):
    state, cluster = running_cluster(args)
    net = require_net(cluster)
    members = netns.resolve(net, args.members or "all", cluster["nodes"])
    try:
        if args.off:
            netns.unslow(net, members)
        else:
            netns.slow(net, members, args.delay, args.jitter, args.loss, SCRIPT, state.root)
    finally:
        state.save(cluster)
    info(f"{'normal network' if args.off else f'delay {args.delay:g}±{args.jitter:g} ms, loss {args.loss:g}%'} "
         f"on {','.join(members)}")


def cmd_signal(args, sig, what):
    state, cluster = running_cluster(args)
    node = find_node(cluster, args.node_id)
    pid = state.live_pid(node["id"])
    if pid is None:
        raise Fail(f"node {node['id']} is not running")
    os.kill(pid, sig)
    info(f"{what} node {node['id']} (pid {pid})")


def cmd_disk(args, frozen):
    state, cluster = running_cluster(args)
    disk = (cluster.get("disks") or {}).get(str(args.node_id))
    if disk is None:
        raise Fail(f"node {args.node_id} has no loop disk (start the cluster with --loop-disks)")
    try:
        netns.freeze(disk, frozen)
    finally:
        state.save(cluster)
    info(f"{'froze' if frozen else 'thawed'} node {args.node_id}'s disk {disk['mount']}")


def cmd_quorum(args):
    state, cluster = running_cluster(args)
    controllers = ",".join(f"{n['host']}:{n['controller_port']}" for n in cluster["nodes"] if n["controller_port"])
    cp = run_tool(lib_dir(), "org.apache.kafka.tools.MetadataQuorumCommand",
                  ["--bootstrap-controller", controllers, "describe", "--status"], timeout=120)
    leader = re.search(r"LeaderId:\s*(-?\d+)", cp.stdout)
    epoch = re.search(r"LeaderEpoch:\s*(\d+)", cp.stdout)
    if not leader:
        raise Fail(f"no LeaderId in MetadataQuorumCommand's answer: {cp.stdout.strip()[:200]!r}")
    print(f"leader {leader.group(1)} epoch {epoch.group(1) if epoch else '?'}")


def cmd_leftovers(args):
    state = State(args.state_dir)
    cluster = state.load() or {}
    index = None if args.all else (cluster.get("net") or {}).get("index") or cluster.get("net_index")

    def look():
        found = [f"JVM pid {pid} of node {n['id']}" for n, pid in running_nodes(state, cluster)]
        if args.all or index:
            return found + netns.leftovers(index, None if args.all else state.root)
        return found + netns.disk_leftovers(state.root)  # never had a network: its disks and delayers only

    return print_leftovers(look, args.wait)


def cmd_delay(args):
    netns.delayer(args.queue, args.delay, args.jitter, args.max_seconds)

