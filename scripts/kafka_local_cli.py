"""kafka-local's command line: the parser of every verb and option, and main, which checks the environment
before any command runs (a bad setting is one line and exit 1, never a silent default).

The verbs themselves live in kafka_local_commands (cluster and topic), kafka_local_up and kafka_local_faults.
"""
from __future__ import annotations

import argparse
import signal

import kafka_local_net as netns
from kafka_local_commands import (cmd_bootstrap, cmd_describe, cmd_down, cmd_fetch, cmd_kill, cmd_start,
                                  cmd_status, cmd_topic)
from kafka_local_faults import (cmd_cut, cmd_cuts, cmd_delay, cmd_disk, cmd_heal, cmd_host, cmd_isolate,
                                cmd_leftovers, cmd_quorum, cmd_signal, cmd_slow)
from kafka_local_jvm import DEFAULT_HEAP, cds_enabled, extra_server_opts
from kafka_local_layout import CONTROLLER_ID_BASE, CONTROLLER_PORT_OFFSET, DEFAULT_CONTROLLERS, DEFAULT_PORT_BASE, \
    MAX_BROKERS
from kafka_local_nodes import DEFAULT_TIMEOUT, READY_MARKER
from kafka_local_state import check_state_dir, state_dir_default
from kafka_local_up import cmd_up
from local_common import cache_root, env_int


def main(argv=None, doc=None):
    """Parse argv (doc: the tool's description, scripts/kafka-local's docstring), check the environment, run
    the command; returns its exit code."""
    args = build_parser(doc).parse_args(argv)
    check_environment(args)
    return args.func(args)


def check_environment(args):
    """Read every setting kafka-local takes from the environment, whatever the command, so that a bad one
    fails at once and the same way everywhere."""
    if hasattr(args, "state_dir"):
        check_state_dir(args.state_dir, "--state-dir")
    else:
        args.state_dir = state_dir_default()
        check_state_dir(args.state_dir, "KCHAT_KAFKA_STATE")
    port_base = env_int("KCHAT_KAFKA_PORT", DEFAULT_PORT_BASE, 1, 65535)
    if getattr(args, "port_base", False) is None:
        args.port_base = port_base
    cache_root()
    extra_server_opts()
    cds_enabled()


def build_parser(doc=None):
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--state-dir", metavar="DIR", default=argparse.SUPPRESS,
                        help="state dir (env KCHAT_KAFKA_STATE; default <repo>/.kafka-local)")

    p = argparse.ArgumentParser(
        prog="kafka-local", description=doc, formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common])
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    add_cluster_commands(sub, common)
    add_fault_commands(sub, common)
    return p


def add_cluster_commands(sub, common):
    fmt = argparse.RawDescriptionHelpFormatter
    s = sub.add_parser("fetch", parents=[common], formatter_class=fmt,
                       help="resolve the Kafka jars into the cache (once) and print the lib dir",
                       description="Resolve the jars for kafka/pom.xml's <kafka.version> with mvn into "
                                   "${KCHAT_CACHE:-~/.cache/kchat}/kafka-<version>/lib (reused when present) "
                                   "and print that directory.")
    s.set_defaults(func=cmd_fetch)

    s = sub.add_parser("up", parents=[common], formatter_class=fmt, help="format and start a cluster",
                       description=f"""Format fresh storage and start a cluster, detached. Returns when every
broker serves (logged "{READY_MARKER}" and answers a Metadata request listing every broker), then prints the
bootstrap list as the last stdout line. Progress goes to stderr.

Layouts (N = --port-base):
  default        one combined broker+controller, node id 0: broker 127.0.0.1:N, controller 127.0.0.1:N+1
  --brokers B    B in 2..{MAX_BROKERS}: brokers 0..B-1 on 127.0.0.1:N..N+B-1 and --controllers (3) controller-only
                 nodes {CONTROLLER_ID_BASE}, {CONTROLLER_ID_BASE + 1}, ... on N+{CONTROLLER_PORT_OFFSET}, \
N+{CONTROLLER_PORT_OFFSET + 1}, ...; static controller.quorum.voters;
                 internal topics RF min(3,B), transaction/share state min.isr 2
  --props-dir D  one node per D/*.properties (complete server.properties each); their log.dirs and
                 metadata.log.dir are redirected into the state dir, wildcard listener hosts (0.0.0.0, empty)
                 become 127.0.0.1; bootstrap from the brokers' PLAINTEXT (advertised) listeners

Fails, nothing started, if a cluster from this state dir is already running (exit 1) or if any port is taken
(exit 4, also when a node finds its port taken as it starts: try other ports).
Generated properties: auto.create.topics.enable=false, log.retention.hours=-1, num.partitions=1,
default.replication.factor=min(3,B), group.initial.rebalance.delay.ms=0, log.cleaner.dedupe.buffer.size=2MiB,
internal topics (offsets, transactions, share state) 10 partitions, RF min(3,B), min.isr min(2,RF).
JVMs: -Xms/-Xmx --heap, -XX:+UseSerialGC. --set applies to every node (controllers ignore broker settings).""")
    s.add_argument("--port-base", type=int, default=None, metavar="N",
                   help=f"first port (env KCHAT_KAFKA_PORT; default {DEFAULT_PORT_BASE})")
    s.add_argument("--brokers", type=int, default=1, metavar="B",
                   help="1 (default): one combined node; B>=2: B brokers + controller-only nodes")
    s.add_argument("--controllers", type=int, default=DEFAULT_CONTROLLERS, metavar="C",
                   help=f"controller-only nodes when --brokers >= 2 (default {DEFAULT_CONTROLLERS})")
    s.add_argument("--props-dir", metavar="DIR", help="start the nodes described by DIR/*.properties")
    s.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="add/override a server property on every node (repeatable)")
    s.add_argument("--keep-data", action="store_true",
                   help="reuse the existing data and cluster id instead of wiping the state dir's data")
    s.add_argument("--heap", default=DEFAULT_HEAP, help=f"JVM heap per node (default {DEFAULT_HEAP})")
    s.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                   help=f"how long to wait for the brokers (default {DEFAULT_TIMEOUT:.0f})")
    s.add_argument("--netns", action="store_true",
                   help="each node in a network namespace of its own on a bridge, 172.29.I.0/24 (root)")
    s.add_argument("--loop-disks", action="store_true",
                   help="each broker's data on a loop-backed ext4 of its own, for disk-stall (root)")
    s.add_argument("--security", choices=("sasl_ssl",),
                   help="brokers on SASL_SSL (SCRAM-SHA-512) listeners; certificates made with openssl")
    s.set_defaults(func=cmd_up)

    s = sub.add_parser("down", parents=[common], formatter_class=fmt, help="stop the cluster",
                       description="Stop exactly the JVMs recorded in the pid files (after checking that each pid "
                                   "is still a kafka.Kafka JVM running this state dir's properties): SIGTERM to "
                                   "brokers, then controllers; SIGKILL after --timeout. Data stays (see up "
                                   "--keep-data). Exit 0 also when nothing runs.")
    s.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS",
                   help="grace period before SIGKILL (default 30)")
    s.add_argument("--kill", action="store_true", help="SIGKILL right away")
    s.set_defaults(func=cmd_down)

    s = sub.add_parser("status", parents=[common], formatter_class=fmt, help="one line per node",
                       description="Print one line per node: node id, roles, port (broker port, or controller "
                                   "port for controller-only nodes), pid ('-' if none), alive/dead; --json: one JSON "
                                   "object for programs (cluster_id, mode, bootstrap, state_dir, nodes: id, "
                                   "roles, host, broker_port, controller_port, pid, alive). Exit 0 if all alive, "
                                   "3 if some node is dead, 1 if no cluster is running.")
    s.add_argument("--json", action="store_true", help="the state as JSON")
    s.set_defaults(func=cmd_status)

    s = sub.add_parser("bootstrap", parents=[common], formatter_class=fmt, help="print the bootstrap list",
                       description="Print the running cluster's bootstrap list (exit 1 if none runs).")
    s.set_defaults(func=cmd_bootstrap)

    s = sub.add_parser("kill", parents=[common], formatter_class=fmt, help="SIGKILL one node",
                       description="SIGKILL one node of the running cluster (data stays; `start` restarts it).")
    s.add_argument("node_id", type=int, metavar="NODE_ID")
    s.set_defaults(func=cmd_kill)

    s = sub.add_parser("start", parents=[common], formatter_class=fmt, help="restart one stopped node",
                       description="Restart one node with its existing properties and data; returns when it "
                                   "serves (a broker: listed in its own Metadata response). Exit 4 if its port is "
                                   "taken.")
    s.add_argument("node_id", type=int, metavar="NODE_ID")
    s.add_argument("--heap", default=None, help="JVM heap (default: as at `up`)")
    s.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS")
    s.set_defaults(func=cmd_start)

    s = sub.add_parser("topic", parents=[common], formatter_class=fmt, help="create a topic idempotently",
                       description="Create a topic with TopicCommand --create --if-not-exists (an existing topic "
                                   "is left as it is), then print TopicCommand --describe for it.")
    s.add_argument("name", metavar="NAME")
    s.add_argument("--partitions", type=int, required=True)
    s.add_argument("--replication-factor", type=int, required=True)
    s.add_argument("--min-insync-replicas", type=int)
    s.add_argument("--config", action="append", metavar="KEY=VALUE", help="topic config (repeatable)")
    s.add_argument("--bootstrap", help="bootstrap servers (default: the running cluster's)")
    s.set_defaults(func=cmd_topic)

    s = sub.add_parser("describe", parents=[common], formatter_class=fmt, help="describe a topic (or all)",
                       description="Print TopicCommand --describe for NAME (all topics if omitted).")
    s.add_argument("name", metavar="NAME", nargs="?")
    s.add_argument("--bootstrap", help="bootstrap servers (default: the running cluster's)")
    s.set_defaults(func=cmd_describe)


def add_fault_commands(sub, common):
    fmt = argparse.RawDescriptionHelpFormatter
    fault_help = "(a cluster started with --netns) "
    s = sub.add_parser("host", parents=[common], formatter_class=fmt, help="a namespace for a client (a worker)",
                       description=fault_help + "Add a member namespace NAME on the cluster's bridge (once; "
                                   "again: the same) and print its namespace and address. Run a process in it with "
                                   "`nsenter --net=/run/netns/<namespace> ...`; `down` removes it and kills what "
                                   "runs there.")
    s.add_argument("name", metavar="NAME")
    s.set_defaults(func=cmd_host)

    members = ("MEMBERS: a comma list of node ids, host names and the words brokers, controllers, hosts, all")
    s = sub.add_parser("cut", parents=[common], formatter_class=fmt, help="partition two groups of members",
                       description=fault_help + "Drop every packet between A and B (at the receiving side: the "
                                   "senders only time out). " + members + ". `heal` undoes it.")
    s.add_argument("a", metavar="A")
    s.add_argument("b", metavar="B")
    s.add_argument("--one-way", action="store_true", help="drop only what A sends to B")
    s.set_defaults(func=cmd_cut)

    s = sub.add_parser("isolate", parents=[common], formatter_class=fmt, help="cut members from everyone",
                       description=fault_help + "Cut MEMBERS from every other member and from this machine's "
                                   "side. " + members + ".")
    s.add_argument("members", metavar="MEMBERS")
    s.set_defaults(func=cmd_isolate)

    s = sub.add_parser("heal", parents=[common], formatter_class=fmt, help="undo cuts",
                       description=fault_help + "Remove the cuts at MEMBERS (default: everywhere).")
    s.add_argument("members", metavar="MEMBERS", nargs="?")
    s.set_defaults(func=cmd_heal)

    s = sub.add_parser("cuts", parents=[common], formatter_class=fmt, help="list the cuts in force",
                       description=fault_help + "One line per member that drops something: member, sources.")
    s.set_defaults(func=cmd_cuts)

    s = sub.add_parser("slow", parents=[common], formatter_class=fmt, help="delay and lose packets",
                       description=fault_help + "Delay every packet entering MEMBERS (default all) by "
                                   "--delay ± --jitter ms and drop --loss percent of them; --off restores them.")
    s.add_argument("members", metavar="MEMBERS", nargs="?")
    s.add_argument("--delay", type=float, default=0.0, metavar="MS")
    s.add_argument("--jitter", type=float, default=0.0, metavar="MS")
    s.add_argument("--loss", type=float, default=0.0, metavar="PERCENT")
    s.add_argument("--off", action="store_true")
    s.set_defaults(func=cmd_slow)

    for name, sig, what, text in (("pause", signal.SIGSTOP, "paused", "SIGSTOP one node's JVM"),
                                  ("resume", signal.SIGCONT, "resumed", "SIGCONT one paused node")):
        s = sub.add_parser(name, parents=[common], formatter_class=fmt, help=text, description=text + ".")
        s.add_argument("node_id", type=int, metavar="NODE_ID")
        s.set_defaults(func=lambda a, sig=sig, what=what: cmd_signal(a, sig, what))

    for name, frozen, text in (("disk-stall", True, "freeze one broker's disk (fsfreeze: writes block)"),
                               ("disk-resume", False, "thaw it")):
        s = sub.add_parser(name, parents=[common], formatter_class=fmt, help=text,
                           description="(a cluster started with --loop-disks) " + text + ".")
        s.add_argument("node_id", type=int, metavar="NODE_ID")
        s.set_defaults(func=lambda a, frozen=frozen: cmd_disk(a, frozen))

    s = sub.add_parser("quorum", parents=[common], formatter_class=fmt, help="the active controller",
                       description="Print 'leader <id> epoch <n>' of the KRaft quorum (MetadataQuorumCommand).")
    s.set_defaults(func=cmd_quorum)

    s = sub.add_parser("leftovers", parents=[common], formatter_class=fmt, help="what teardown left behind",
                       description="List this state dir's live JVMs, its network's namespaces, links and processes "
                                   "in them, delayers, loop devices and mounts; --all: every kf- thing of any "
                                   "kafka-local on this machine. Exit 1 if anything is found.")
    s.add_argument("--all", action="store_true")
    s.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                   help="look again for up to SECONDS while anything is found (what the kernel releases late)")
    s.set_defaults(func=cmd_leftovers)

    s = sub.add_parser("_delay", parents=[common])  # internal: the delayer `slow` runs in a member namespace
    s.add_argument("--queue", type=int, required=True)
    s.add_argument("--delay", type=float, required=True)
    s.add_argument("--jitter", type=float, default=0.0)
    s.add_argument("--max-seconds", type=float, default=netns.DELAYER_MAX_SECONDS)
    s.set_defaults(func=cmd_delay)


