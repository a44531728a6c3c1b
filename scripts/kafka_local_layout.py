"""kafka-local's layouts: which nodes a cluster has, on which addresses and ports, and the server.properties
each runs with -- generated (one combined node, or brokers plus controller-only nodes, on loopback or in
network namespaces, plain or secured) or read from a directory of complete server.properties files.

Ports on loopback (N = --port-base): single node, broker N and controller N+1; --brokers B, brokers N..N+B-1
and controllers N+10... The offset of 10 keeps the two ranges apart for up to 10 brokers.
"""
from __future__ import annotations

import re
from pathlib import Path

import kafka_local_net as netns
import kafka_local_security as security
from kafka_local_state import is_broker
from local_common import Fail

DEFAULT_PORT_BASE = 9092
CONTROLLER_PORT_OFFSET = 10  # multi-node: controllers on base+10, base+11, ...
CONTROLLER_ID_BASE = 100  # multi-node: controller node ids 100, 101, ...
MAX_BROKERS = CONTROLLER_PORT_OFFSET
DEFAULT_CONTROLLERS = 3
NETNS_BROKER_PORT, NETNS_CONTROLLER_PORT = 9092, 9093  # each node has its own address in --netns mode


def read_props(path):
    props = {}
    cont = ""
    for raw in Path(path).read_text().splitlines():
        line = cont + raw.strip()
        cont = ""
        if not line or line[0] in "#!":
            continue
        if line.endswith("\\") and not line.endswith("\\\\"):
            cont = line[:-1]
            continue
        m = re.match(r"([^=:\s]+)\s*[=:\s]\s*(.*)$", line)
        if m:
            props[m.group(1)] = m.group(2)
        else:
            props[line] = ""
    return props


def write_props(path, props, header):
    lines = [f"# {header}"] + [f"{k}={v}" for k, v in props.items()]
    Path(path).write_text("\n".join(lines) + "\n")


def parse_listeners(value):
    """'PLAINTEXT://127.0.0.1:9092,CONTROLLER://:9093' -> [('PLAINTEXT', '127.0.0.1', 9092), ...]."""
    out = []
    for item in filter(None, (x.strip() for x in (value or "").split(","))):
        m = re.match(r"([A-Za-z0-9_.-]+)://(\[[^\]]*\]|[^:]*):(\d+)$", item)
        if not m:
            raise Fail(f"cannot parse listener {item!r}")
        out.append((m.group(1).upper(), m.group(2).strip("[]"), int(m.group(3))))
    return out


def parse_kv(items, what):
    out = {}
    for item in items or ():
        if "=" not in item:
            raise Fail(f"{what} expects key=value, got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def node_ports(node):
    return [p for p in (node.get("broker_port"), node.get("controller_port")) if p]


def generated_layout(port_base, brokers, controllers, net=None):
    """Node descriptions (without properties) for the generated layouts: on loopback from port_base, or, with
    net (a network record), each node on its own address with the standard ports."""
    if brokers < 1 or brokers > MAX_BROKERS:
        raise Fail(f"--brokers must be between 1 and {MAX_BROKERS}")
    if controllers < 1 or controllers > 9:
        raise Fail("--controllers must be between 1 and 9")
    if brokers == 1:
        nodes = [{"id": 0, "roles": ["broker", "controller"], "broker_port": port_base,
                  "controller_port": port_base + 1}]
    else:
        nodes = [{"id": CONTROLLER_ID_BASE + i, "roles": ["controller"], "broker_port": None,
                  "controller_port": port_base + CONTROLLER_PORT_OFFSET + i} for i in range(controllers)]
        nodes += [{"id": i, "roles": ["broker"], "broker_port": port_base + i, "controller_port": None}
                  for i in range(brokers)]
    for n in nodes:
        n["host"] = "127.0.0.1"
        if net is not None:
            member = netns.add_member(net, f"n{n['id']}", netns.member_ip(net["index"], f"n{n['id']}"))
            n.update(host=member["ip"], ns=member["ns"])
            n["broker_port"] = NETNS_BROKER_PORT if n["broker_port"] else None
            n["controller_port"] = NETNS_CONTROLLER_PORT if n["controller_port"] else None
    return nodes


def generated_props(state, nodes, brokers, overrides, sec=None):
    voters = ",".join(f"{n['id']}@{n['host']}:{n['controller_port']}" for n in nodes if n["controller_port"])
    rf = min(3, brokers)
    min_isr = min(2, rf)
    listener = security.LISTENER if sec else "PLAINTEXT"
    result = {}
    for n in nodes:
        listeners = []
        if n["broker_port"]:
            listeners.append(f"{listener}://{n['host']}:{n['broker_port']}")
        if n["controller_port"]:
            listeners.append(f"CONTROLLER://{n['host']}:{n['controller_port']}")
        p = {
            "process.roles": ",".join(n["roles"]),
            "node.id": str(n["id"]),
            "controller.quorum.voters": voters,
            "listeners": ",".join(listeners),
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": n.get("log_dir") or str(state.data(n["id"])),
        }
        if is_broker(n):
            p.update({
                "advertised.listeners": f"{listener}://{n['host']}:{n['broker_port']}",
                "inter.broker.listener.name": listener,
            })
        if sec:
            p.update(security.server_props(sec, is_broker(n)))
        p.update({
            "auto.create.topics.enable": "false",
            "num.partitions": "1",
            "default.replication.factor": str(rf),
            "log.retention.hours": "-1",
            "group.initial.rebalance.delay.ms": "0",
            "log.cleaner.dedupe.buffer.size": str(2 * 1024 * 1024),
            "offsets.topic.replication.factor": str(rf),
            "offsets.topic.num.partitions": "10",
            "transaction.state.log.replication.factor": str(rf),
            "transaction.state.log.min.isr": str(min_isr),
            "transaction.state.log.num.partitions": "10",
            "share.coordinator.state.topic.replication.factor": str(rf),
            "share.coordinator.state.topic.min.isr": str(min_isr),
            "share.coordinator.state.topic.num.partitions": "10",
            "num.network.threads": "2",
            "num.io.threads": "4",
            "num.recovery.threads.per.data.dir": "1",
            "background.threads": "4",
        })
        p.update(overrides)
        result[n["id"]] = p
    return result


def props_dir_layout(state, props_dir, overrides):
    """Nodes and properties from DIR/*.properties; log.dirs / metadata.log.dir are moved into the state dir."""
    files = sorted(Path(props_dir).glob("*.properties"))
    if not files:
        raise Fail(f"no *.properties files in {props_dir}")
    nodes, result = [], {}
    for f in files:
        p = read_props(f)
        p.update(overrides)
        if "node.id" not in p or "process.roles" not in p:
            raise Fail(f"{f} lacks node.id or process.roles")
        try:
            nid = int(p["node.id"])
        except ValueError:
            raise Fail(f"{f}: node.id {p['node.id']!r} is not an integer")
        if nid in result:
            raise Fail(f"{f}: node.id {nid} appears twice in {props_dir}")
        roles = [r.strip() for r in p["process.roles"].split(",") if r.strip()]
        listeners, host, broker_port, controller_port = node_endpoints(p, roles)
        if "broker" in roles and not broker_port:
            raise Fail(f"{f}: broker node {nid} has no PLAINTEXT listener")
        p["log.dirs"] = str(state.data(nid))
        if "metadata.log.dir" in p:
            p["metadata.log.dir"] = str(state.data(nid) / "metadata")
        p.pop("log.dir", None)
        nodes.append({"id": nid, "roles": roles, "broker_port": broker_port if "broker" in roles else None,
                      "host": host, "controller_port": controller_port, "source": str(f.resolve()),
                      "listen_ports": sorted({port for _n, _h, port in listeners})})
        result[nid] = p
    if not any("broker" in n["roles"] for n in nodes):
        raise Fail(f"no node in {props_dir} has process.roles including broker")
    return nodes, result


def node_endpoints(p, roles):
    """(listeners, broker host, broker port, controller port) of a node's properties; wildcard listener hosts
    become 127.0.0.1 in p (local runs stay on loopback); the broker's address is its advertised PLAINTEXT one."""
    listeners = parse_listeners(p.get("listeners", ""))
    if any(host in ("", "0.0.0.0", "::") for _n, host, _p in listeners):
        listeners = [(n, "127.0.0.1" if h in ("", "0.0.0.0", "::") else h, port) for n, h, port in listeners]
        p["listeners"] = ",".join(f"{n}://{h}:{port}" for n, h, port in listeners)
    ctl_names = {x.strip().upper() for x in p.get("controller.listener.names", "CONTROLLER").split(",")}
    broker_port = controller_port = None
    for name, host, port in listeners:
        if name in ctl_names:
            controller_port = controller_port or port
        elif broker_port is None or name == "PLAINTEXT":
            broker_port = port
    broker_host = "127.0.0.1"
    for name, host, port in parse_listeners(p.get("advertised.listeners", "")) if "broker" in roles else []:
        if name == "PLAINTEXT" or (name not in ctl_names and broker_port is None):
            broker_host, broker_port = host or broker_host, port
    if broker_host in ("", "0.0.0.0", "::"):
        broker_host = "127.0.0.1"
    return listeners, broker_host, broker_port, controller_port


def bootstrap_of(nodes):
    brokers = sorted((n for n in nodes if is_broker(n)), key=lambda n: n["id"])
    return ",".join(f"{n.get('host') or '127.0.0.1'}:{n['broker_port']}" for n in brokers)

