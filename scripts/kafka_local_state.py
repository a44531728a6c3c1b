"""kafka-local's state dir: where a cluster's record (cluster.json), properties, data, logs and pid files live,
and which recorded JVMs are really still ours.

The layout of the dir is in scripts/kafka-local's docstring. A pid is trusted only after /proc shows it is a
kafka.Kafka JVM running this state dir's properties: pids are reused, and `down` must never signal a stranger.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from local_common import REPO, Fail, pid_alive, proc_argv

DEFAULT_STATE_DIR = REPO / ".kafka-local"


def state_dir_default() -> str:
    """$KCHAT_KAFKA_STATE, else <repo>/.kafka-local."""
    return os.environ.get("KCHAT_KAFKA_STATE") or str(DEFAULT_STATE_DIR)


def check_state_dir(path, source):
    """Fail in one line if path cannot be a state dir (it is a file); source names where it came from."""
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise Fail(f"{source}={path}: expected a directory (or a path to create one at)")


class State:
    def __init__(self, path):
        self.root = Path(path).expanduser().resolve()
        self.json = self.root / "cluster.json"
        self.nodes_dir = self.root / "nodes"
        self.data_dir = self.root / "data"
        self.logs_dir = self.root / "logs"
        self.pids_dir = self.root / "pids"
        self.disks_dir = self.root / "disks"
        self.tls_dir = self.root / "tls"

    def props(self, nid):
        return self.nodes_dir / f"node-{nid}.properties"

    def data(self, nid):
        return self.data_dir / f"node-{nid}"

    def log(self, nid):
        return self.logs_dir / f"node-{nid}.log"

    def pidfile(self, nid):
        return self.pids_dir / f"node-{nid}.pid"

    def load(self):
        try:
            return json.loads(self.json.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            raise Fail(f"cannot read {self.json}: {e}; run `down`, or delete the state dir")

    def save(self, cluster):
        tmp = self.json.with_suffix(".json.tmp")  # a reader never sees half a file
        tmp.write_text(json.dumps(cluster, indent=2) + "\n")
        os.replace(tmp, self.json)

    def live_pid(self, nid):
        """pid of node nid if its pid file names a live JVM that runs this node's props, else None."""
        try:
            pid = int(self.pidfile(nid).read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if is_our_jvm(pid, self.props(nid)) else None


def is_our_jvm(pid, props_path):
    argv = proc_argv(pid)
    if not argv or not os.path.basename(argv[0]).startswith("java") or not pid_alive(pid):
        return False
    return "kafka.Kafka" in argv and str(props_path) in argv


def is_broker(node):
    return "broker" in node["roles"]


def require_cluster(state):
    cluster = state.load()
    if not cluster or not cluster.get("running"):
        raise Fail(f"no Kafka cluster running from {state.root}; start one with `up`")
    return cluster


def running_nodes(state, cluster):
    return [(n, pid) for n in (cluster or {}).get("nodes", []) for pid in [state.live_pid(n["id"])] if pid]


def find_node(cluster, nid):
    for n in cluster["nodes"]:
        if n["id"] == nid:
            return n
    raise Fail(f"no node {nid} in this cluster (nodes: {', '.join(str(n['id']) for n in cluster['nodes'])})")
