"""Network namespaces and faults for scripts/kafka-local (`up --netns`, `cut`, `slow`, `disk-stall` ...).

Python 3 standard library only, like kafka-local; needs root and iproute2, nft, iptables, losetup, mkfs.ext4,
fsfreeze.

One cluster's network (index I, 1..254, the first free one):
  kf-I-sw        a "switch" namespace holding the bridge br0. The bridge lives there and not in the host's
                 namespace so that bridged frames never pass the host's netfilter (br_netfilter is on where
                 Kubernetes runs, and its rules are not ours); bridge-nf-call-* is off in kf-I-sw.
  kf-I-h         the host's end of a veth into br0, 172.29.I.1/24: how this machine's processes (tests, tools)
                 reach the nodes. No route leaves 172.29.I.0/24: traffic stays on this machine.
  kf-I-<member>  one namespace per member, eth0 on br0: Kafka node <id> is member n<id> (controllers
                 172.29.I.1x, brokers 172.29.I.2x), an extra host (a worker) is member <name>, 172.29.I.10x.
Processes enter a member's namespace with `nsenter --net=` (network only: mounts stay shared, so a loop disk
mounted by kafka-local is the node's disk too).

Faults, all undone by `heal`, `slow --off`, `disk-resume` and, every one of them, by `down`:
  cut A B        in each namespace of B, drop what comes from A, and the other way round (nft table
                 `inet kf`, chain `cut`): a silent partition, the sender learns of it only by timeouts
  slow M         a delay (and jitter) on every packet entering M's eth0 -- an NFQUEUE rule (iptables mangle
                 PREROUTING) and a small delayer process per namespace (the kernel here has no netem) -- and
                 random loss (nft numgen, chain `loss`); a round trip between two slowed members grows by 2x
  disk-stall N   fsfreeze on node N's data dir, a loop-backed ext4 of its own (`up --loop-disks`): writes
                 block as a dead disk's do (device-mapper, which `dmsetup suspend` needs, is not in this
                 kernel; a suspend freezes the filesystem in the same way)
"""
from __future__ import annotations

import heapq
import json
import os
import random
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

from local_common import Fail, pid_alive, proc_argv  # beside this module, as it is beside kafka-local

PREFIX = "kf-"
SUBNET = "172.29.{index}"
MAX_INDEX = 254
NFQUEUE = 7  # the queue number the delayer binds in each member's namespace
DELAYER_MAX_SECONDS = 3600  # a delayer stops by itself after this long, teardown or not


class NetFail(Fail):
    """A failure of the network tooling: one line for the user."""


def sh(*cmd, ns=None, check=True, input=None):
    """Run a command (in member namespace ns, via nsenter); returns CompletedProcess; raises NetFail on error."""
    full = (["nsenter", f"--net=/run/netns/{ns}"] if ns else []) + [str(c) for c in cmd]
    try:
        cp = subprocess.run(full, capture_output=True, text=True, input=input, timeout=60,
                            stdin=None if input is not None else subprocess.DEVNULL)
    except FileNotFoundError as e:
        raise NetFail(f"{cmd[0]} not found: {e}") from None
    except subprocess.TimeoutExpired:
        raise NetFail(f"{' '.join(full)} did not finish within 60s") from None
    if check and cp.returncode != 0:
        raise NetFail(f"{' '.join(full)} failed (exit {cp.returncode}): {(cp.stderr or cp.stdout).strip()[:300]}")
    return cp


def require_root(what):
    if os.geteuid() != 0:
        raise NetFail(f"{what} needs root (network namespaces, nft, loop devices)")


def netns_names():
    cp = sh("ip", "netns", "list", check=False)
    return [line.split()[0] for line in cp.stdout.splitlines() if line.strip()]


# --------------------------------------------------------------------------------------------------------------
# the network of one cluster


def member_ip(index, member):
    """Kafka node n<id>: controllers (ids 100..) 172.29.I.1x, brokers 172.29.I.2x; hosts are given theirs."""
    nid = int(member[1:])
    return f"{SUBNET.format(index=index)}.{10 + nid - 100 if nid >= 100 else 20 + nid}"


def create(index_hint=None):
    """Make the switch namespace and the host's link for the first free index; returns the net record."""
    require_root("--netns")
    for index in ([index_hint] if index_hint else range(1, MAX_INDEX + 1)):
        switch = f"{PREFIX}{index}-sw"
        if sh("ip", "netns", "add", switch, check=False).returncode == 0:  # atomic: taken if it exists
            break
    else:
        raise NetFail(f"no free network index: {PREFIX}1-sw .. {PREFIX}{MAX_INDEX}-sw all exist")
    net = {"index": index, "switch": switch, "host_link": f"{PREFIX}{index}-h",
           "host_ip": f"{SUBNET.format(index=index)}.1", "members": {}, "delayers": {}}
    for knob in ("iptables", "ip6tables", "arptables"):
        sh("sysctl", "-qw", f"net.bridge.bridge-nf-call-{knob}=0", ns=switch, check=False)
    sh("ip", "-n", switch, "link", "add", "br0", "type", "bridge")
    sh("ip", "-n", switch, "link", "set", "br0", "up")
    sh("ip", "link", "add", net["host_link"], "type", "veth", "peer", "name", "host", "netns", switch)
    sh("ip", "-n", switch, "link", "set", "host", "master", "br0", "up")
    sh("ip", "addr", "add", f"{net['host_ip']}/24", "dev", net["host_link"])
    sh("ip", "link", "set", net["host_link"], "up")
    return net


NFT_TABLE = """table inet kf {
  chain input { type filter hook input priority -10; policy accept; iifname "eth0" jump cut; iifname "eth0" jump loss; }
  chain cut { }
  chain loss { }
}
"""


def add_member(net, member, ip):
    """A namespace for member (a Kafka node n<id> or a host) with eth0 on the bridge at ip."""
    ns = f"{PREFIX}{net['index']}-{member}"
    if member in net["members"]:
        return net["members"][member]
    sh("ip", "netns", "add", ns)
    sh("ip", "-n", net["switch"], "link", "add", member, "type", "veth", "peer", "name", "eth0", "netns", ns)
    sh("ip", "-n", net["switch"], "link", "set", member, "master", "br0", "up")
    sh("ip", "-n", ns, "link", "set", "lo", "up")
    sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0")
    sh("ip", "-n", ns, "link", "set", "eth0", "up")
    sh("nft", "-f", "-", ns=ns, input=NFT_TABLE)
    net["members"][member] = {"ns": ns, "ip": ip}
    return net["members"][member]


def add_host(net, name):
    """An extra member (a worker): the next free 172.29.I.10x."""
    if name in net["members"]:
        return net["members"][name]
    if not (name.isalnum() and name.islower() and len(name) <= 8) or name[0] == "n" and name[1:].isdigit():
        raise NetFail(f"host name {name!r}: up to 8 lower-case letters and digits, not n<digits> (Kafka nodes)")
    used = {m["ip"] for m in net["members"].values()}
    for k in range(100, 250):
        ip = f"{SUBNET.format(index=net['index'])}.{k}"
        if ip not in used:
            return add_member(net, name, ip)
    raise NetFail("no free host address left")


def nsenter_prefix(ns):
    return ["nsenter", f"--net=/run/netns/{ns}"]


def destroy(net):
    """Stop the delayers, kill what still runs in our namespaces (only ours are there), delete them."""
    for pid in list(net.get("delayers", {}).values()):
        stop_pid(pid)
    net["delayers"] = {}
    spaces = [m["ns"] for m in net.get("members", {}).values()] + [net["switch"]]
    for ns in spaces:
        if ns in netns_names():
            for pid in ns_pids(ns):
                stop_pid(pid, signal.SIGKILL)
            sh("ip", "netns", "del", ns, check=False)
    sh("ip", "link", "del", net["host_link"], check=False)  # gone with its peer already, normally


def ns_pids(ns):
    cp = sh("ip", "netns", "pids", ns, check=False)
    return [int(x) for x in cp.stdout.split() if x.isdigit()]


def stop_pid(pid, sig=signal.SIGTERM, timeout=10.0):
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return
        time.sleep(0.05)
    if sig != signal.SIGKILL:
        stop_pid(pid, signal.SIGKILL, timeout)


# --------------------------------------------------------------------------------------------------------------
# faults


def resolve(net, names, cluster_nodes):
    """Member names from a comma list of node ids, host names and the words brokers, controllers, hosts, all."""
    out = []
    brokers = [f"n{n['id']}" for n in cluster_nodes if "broker" in n["roles"]]
    controllers = [f"n{n['id']}" for n in cluster_nodes if n["roles"] == ["controller"]]
    hosts = [m for m in net["members"] if not (m[0] == "n" and m[1:].isdigit())]
    for name in filter(None, (x.strip() for x in names.split(","))):
        group = {"brokers": brokers, "controllers": controllers, "hosts": hosts, "all": list(net["members"]),
                 "host": ["host"]}.get(name)
        if group is None:
            member = f"n{name}" if name.isdigit() else name
            if member not in net["members"]:
                raise NetFail(f"no member {name!r} in this cluster's network (members: "
                              f"{', '.join(sorted(net['members']))}; 'host' is this machine's side)")
            group = [member]
        out += [m for m in group if m not in out]
    return out


def address(net, member):
    return net["host_ip"] if member == "host" else net["members"][member]["ip"]


def cut(net, a, b, one_way=False):
    """Drop at each member of b what comes from a (and, unless one_way, at a what comes from b)."""
    pairs = [(b, a)] + ([] if one_way else [(a, b)])
    for dests, sources in pairs:
        ips = sorted({address(net, s) for s in sources})
        for d in dests:
            if d == "host":
                raise NetFail("cutting on this machine's own side is not done (its netfilter is not ours): "
                              "cut the other way, or name the members")
            srcs = [ip for ip in ips if ip != address(net, d)]
            if srcs:
                sh("nft", "add", "rule", "inet", "kf", "cut", "ip", "saddr", "{", ", ".join(srcs), "}", "drop",
                   ns=net["members"][d]["ns"])


def heal(net, members=None):
    for m in members or list(net["members"]):
        sh("nft", "flush", "chain", "inet", "kf", "cut", ns=net["members"][m]["ns"])


def cuts(net):
    """{member: [source addresses dropped]} as the namespaces have them now."""
    out = {}
    for m, rec in net["members"].items():
        text = sh("nft", "list", "chain", "inet", "kf", "cut", ns=rec["ns"], check=False).stdout
        found = []
        for line in text.splitlines():
            if "saddr" in line and "drop" in line:
                found += [x.strip(" {},") for x in line.split("saddr", 1)[1].split("drop")[0].split()]
        if found:
            out[m] = sorted(set(filter(None, found)))
    return out


def slow(net, members, delay_ms, jitter_ms, loss_pct, script, state_root):
    """Delay (± jitter) every packet entering each member's eth0 and drop loss_pct of them."""
    for m in members:
        ns = net["members"][m]["ns"]
        unslow(net, [m])
        if loss_pct:
            sh("nft", "add", "rule", "inet", "kf", "loss", "numgen", "random", "mod", "10000", "<",
               str(int(loss_pct * 100)), "drop", ns=ns)
        if delay_ms or jitter_ms:
            with open(Path(state_root) / "logs" / f"delayer-{m}.log", "ab") as log:
                proc = subprocess.Popen(nsenter_prefix(ns) + [sys.executable, str(script), "--state-dir",
                                        str(state_root), "_delay", "--queue", str(NFQUEUE), "--delay",
                                        str(delay_ms), "--jitter", str(jitter_ms)],
                                        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log,
                                        start_new_session=True, text=True)
            line = proc.stdout.readline()  # "bound" once the queue is ours: only then divert packets to it
            if not line.startswith("bound"):
                proc.kill()
                raise NetFail(f"the delayer in {ns} did not start ({proc.wait()})")
            net["delayers"][m] = proc.pid
            # --queue-bypass: should the delayer die, packets pass instead of being dropped
            sh("iptables", "-t", "mangle", "-A", "PREROUTING", "-i", "eth0", "-j", "NFQUEUE", "--queue-num",
               str(NFQUEUE), "--queue-bypass", ns=ns)


def unslow(net, members=None):
    for m in members or list(net["members"]):
        ns = net["members"][m]["ns"]
        sh("nft", "flush", "chain", "inet", "kf", "loss", ns=ns)
        sh("iptables", "-t", "mangle", "-F", "PREROUTING", ns=ns, check=False)
        pid = net["delayers"].pop(m, None)
        if pid:
            stop_pid(pid)


# --------------------------------------------------------------------------------------------------------------
# the delayer: an nfnetlink_queue client in the standard library (NETLINK_NETFILTER, subsystem QUEUE)

_NFNL_QUEUE, _MSG_PACKET, _MSG_VERDICT, _MSG_CONFIG = 3, 0, 1, 2
_NF_ACCEPT, _F_REQUEST, _F_ACK = 1, 1, 4


def _nlattr(kind, payload):
    n = 4 + len(payload)
    return struct.pack("=HH", n, kind) + payload + b"\0" * ((4 - n % 4) % 4)


def _nlmsg(mtype, queue, attrs, flags=_F_REQUEST):
    body = struct.pack("=BBH", socket.AF_UNSPEC, 0, socket.htons(queue)) + b"".join(attrs)
    return struct.pack("=IHHII", 16 + len(body), (_NFNL_QUEUE << 8) | mtype, flags, 0, 0) + body


def delayer(queue, delay_ms, jitter_ms, max_seconds=DELAYER_MAX_SECONDS):
    """Hold each queued packet delay ± jitter ms, then accept it. Prints "bound" when ready; stops on SIGTERM
    or after max_seconds."""
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 12)  # NETLINK_NETFILTER
    s.bind((0, 0))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)

    def configure(attrs):
        s.send(_nlmsg(_MSG_CONFIG, queue, attrs, _F_REQUEST | _F_ACK))
        reply = s.recv(65536)
        if struct.unpack_from("=H", reply, 4)[0] == 2 and struct.unpack_from("=i", reply, 16)[0]:  # NLMSG_ERROR
            raise OSError(-struct.unpack_from("=i", reply, 16)[0], "nfnetlink_queue configuration refused")

    configure([_nlattr(1, struct.pack("=BBH", 1, 0, 0))])  # command BIND
    configure([_nlattr(2, struct.pack(">IB", 0, 1)),  # copy mode META: the verdict needs only the packet id
               _nlattr(3, struct.pack(">I", 65536))])  # queue length
    configure([_nlattr(4, struct.pack(">I", 1)), _nlattr(5, struct.pack(">I", 1))])  # FAIL_OPEN when full
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    print("bound", flush=True)
    held = []  # (release time, packet id)
    end = time.monotonic() + max_seconds
    while not stop and time.monotonic() < end:
        now = time.monotonic()
        while held and held[0][0] <= now:
            _, pid = heapq.heappop(held)
            s.send(_nlmsg(_MSG_VERDICT, queue, [_nlattr(2, struct.pack(">II", _NF_ACCEPT, pid))]))
        try:
            ready, _, _ = select.select([s], [], [], max(0.0, held[0][0] - time.monotonic()) if held else 0.5)
        except InterruptedError:
            continue
        if ready:
            _take_packets(s, held, delay_ms / 1000, jitter_ms / 1000)
    for _, pid in held:  # let what is held through
        s.send(_nlmsg(_MSG_VERDICT, queue, [_nlattr(2, struct.pack(">II", _NF_ACCEPT, pid))]))


def _take_packets(s, held, delay, jitter):
    while True:
        try:
            buf = s.recv(1 << 20, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return
        off = 0
        while off + 20 <= len(buf):
            length, kind = struct.unpack_from("=IH", buf, off)
            if length < 16:
                break
            if kind == (_NFNL_QUEUE << 8) | _MSG_PACKET:
                a = off + 20
                while a + 4 <= off + length:  # attributes; NFQA_PACKET_HDR (1) starts with the packet id
                    alen, akind = struct.unpack_from("=HH", buf, a)
                    if alen < 4:
                        break
                    if akind & 0x7FFF == 1:
                        pid = struct.unpack_from(">I", buf, a + 4)[0]
                        d = max(0.0, delay + (random.uniform(-jitter, jitter) if jitter else 0.0))
                        heapq.heappush(held, (time.monotonic() + d, pid))
                        break
                    a += (alen + 3) & ~3
            off += (length + 3) & ~3


# --------------------------------------------------------------------------------------------------------------
# loop disks: one loop-backed ext4 per broker, so that one broker's disk can stall


def make_disk(image, mountpoint, size_mb=1024):
    require_root("--loop-disks")
    image.parent.mkdir(parents=True, exist_ok=True)
    with open(image, "wb") as f:
        f.truncate(size_mb << 20)  # sparse
    dev = sh("losetup", "--find", "--show", image).stdout.strip()
    try:
        sh("mkfs.ext4", "-q", "-F", "-m", "0", dev)
        mountpoint.mkdir(parents=True, exist_ok=True)
        sh("mount", dev, mountpoint)
    except NetFail:
        sh("losetup", "-d", dev, check=False)
        raise
    return {"image": str(image), "loop": dev, "mount": str(mountpoint), "frozen": False}


def remove_disk(disk):
    if disk.get("frozen"):
        sh("fsfreeze", "-u", disk["mount"], check=False)
    if disk["mount"] in mounted_targets():
        sh("umount", disk["mount"], check=False)
    def attached():
        return any(lo["name"] == disk["loop"] and lo.get("back-file", "").startswith(disk["image"]) for lo in loops())

    if attached():
        sh("losetup", "-d", disk["loop"], check=False)
        # A mount namespace made while the disk was mounted (podman, buildah, unshare: the local Kubernetes'
        # image builds run beside the tests) holds a private copy of the mount, and the device stays
        # attached until that namespace ends -- a minute later, seen. Unmount those copies too: they are ours.
        for pid in copies_of(disk["mount"]):
            sh("nsenter", f"--mount=/proc/{pid}/ns/mnt", "umount", "-l", disk["mount"], check=False)
        # The detach completes in the kernel a moment later (seen: still listed right after `losetup -d`).
        deadline = time.monotonic() + 20
        while attached() and time.monotonic() < deadline:
            time.sleep(0.5)
            sh("losetup", "-d", disk["loop"], check=False)
    Path(disk["image"]).unlink(missing_ok=True)


def copies_of(mountpoint):
    """One process in each other mount namespace that still has `mountpoint` mounted."""
    mine = os.readlink("/proc/self/ns/mnt")
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            ns = os.readlink(proc / "ns" / "mnt")
            if ns == mine or ns in found:
                continue
            if any(line.split()[4] == mountpoint for line in (proc / "mountinfo").read_text().splitlines()):
                found[ns] = proc.name
        except (OSError, IndexError):
            continue
    return list(found.values())


def freeze(disk, frozen):
    sh("fsfreeze", "-f" if frozen else "-u", disk["mount"])
    disk["frozen"] = frozen


def loops():
    cp = sh("losetup", "-J", "-l", check=False)
    try:
        return json.loads(cp.stdout or "{}").get("loopdevices", [])
    except ValueError:
        return []


def mounted_targets():
    out = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        parts = line.split()
        if len(parts) > 1:
            out.append(parts[1].replace("\\040", " "))
    return out


# --------------------------------------------------------------------------------------------------------------
# leftovers: what teardown must have removed


def leftovers(index=None, state_root=None):
    """What of ours is still on this machine: namespaces and links of network index (None: of every index),
    the processes in them, delayers, and the loop devices and mounts of kf- disks (under state_root, if given).
    [] when clean."""
    pre = f"{PREFIX}{index}-" if index else PREFIX
    found = []
    for ns in netns_names():
        if ns.startswith(pre):
            found.append(f"network namespace {ns}" + (f" (processes {ns_pids(ns)})" if ns_pids(ns) else ""))
    for line in sh("ip", "-o", "link", "show", check=False).stdout.splitlines():
        name = line.split(":", 2)[1].strip().split("@")[0] if line.count(":") >= 2 else ""
        if name.startswith(pre):
            found.append(f"link {name}")
    found += disk_leftovers(state_root)
    return found


def disk_leftovers(state_root=None):
    """Loop devices, mounts and delayer processes of kafka-local (under state_root, if given)."""
    found = []
    for lo in loops():
        back = lo.get("back-file") or ""
        if Path(back.split(" ")[0]).name.startswith("kf-") and (not state_root or back.startswith(str(state_root))):
            # The disk's mount is its image's path without ".img": name who still has it mounted elsewhere.
            held = [f"pid {pid}" for pid in copies_of(back.split(" ")[0].removesuffix(".img"))]
            found.append(f"loop device {lo['name']} ({back})" +
                         (f", still mounted in the namespace of {', '.join(held)}" if held else ""))
    for target in mounted_targets():
        if "/disks/" in target and Path(target).name.startswith("kf-") and (
                not state_root or target.startswith(str(state_root))):
            found.append(f"mount {target}")
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            argv = proc_argv(int(proc.name))
            if "_delay" in argv and any(a.endswith("kafka-local") for a in argv) and (
                    not state_root or str(state_root) in argv):
                found.append(f"delayer process {proc.name}")
    return found
