"""The host's network for scripts/k8s-local: the node address on lo, the sysctls, the guard table, and taking
all of it down again (also the bridge, the veths, the KUBE-*/CNI-* rules the kubelet and kube-proxy write)."""
from __future__ import annotations

import json
import re

import k8s_local_layout as L
from k8s_local_config import fill
from local_common import read_sysctl, run, sysctl_path

# Sysctls `up` sets, and those the kubelet sets itself (its kernel tunables; kube-proxy's conntrack ones are
# left alone by its configuration): `down` puts back the values `up` found.
SYSCTLS = {"net.ipv4.ip_forward": "1", "net.bridge.bridge-nf-call-iptables": "1",
           "net.bridge.bridge-nf-call-ip6tables": "1", "net.ipv4.conf.all.route_localnet": "1"}
KUBELET_SYSCTLS = ["vm.overcommit_memory", "vm.panic_on_oom", "kernel.panic", "kernel.panic_on_oops",
                   "kernel.keys.root_maxkeys", "kernel.keys.root_maxbytes"]
SAVED_SYSCTLS = L.STATE / "sysctl-before.json"
SAVED_NFT_TABLES = L.STATE / "nft-tables-before.json"
CHAIN_OURS = re.compile(r"(KUBE|CNI)-")


def uplinks():
    """Interfaces that carry a default route (eth0 here)."""
    out = run(["ip", "-j", "route", "show", "default"], check=False).stdout or "[]"
    return sorted({r["dev"] for r in json.loads(out) if r.get("dev")})


def guard_rules(links):
    """Drop (and log) what is forwarded out of the uplinks, and what leaves through them from a pod or
    service address."""
    return fill("guard.nft", devs="{ " + ", ".join(f'"{d}"' for d in links) + " }",
                ranges=f"{{ {L.POD_CIDR}, {L.SERVICE_CIDR} }}")


def sysctl_values():
    return {k: v for k in [*SYSCTLS, *KUBELET_SYSCTLS] if (v := read_sysctl(k)) is not None}


def nft_tables():
    out = run(["nft", "list", "tables"], check=False).stdout
    return {line.split(None, 1)[1] for line in out.splitlines() if line.startswith("table ")}


def node_address_present():
    return f'"{L.NODE_IP}"' in run(["ip", "-j", "addr", "show", "dev", "lo"], check=False).stdout


def links():
    return json.loads(run(["ip", "-j", "link", "show"], check=False).stdout or "[]")


def up():
    """Remember what `down` puts back, then the sysctls, the node address and the guard."""
    SAVED_NFT_TABLES.write_text(json.dumps(sorted(nft_tables())) + "\n")
    if not SAVED_SYSCTLS.exists():
        SAVED_SYSCTLS.write_text(json.dumps(sysctl_values()) + "\n")
    for key, value in SYSCTLS.items():
        sysctl_path(key).write_text(value)
    if not node_address_present():
        run(["ip", "addr", "add", f"{L.NODE_IP}/32", "dev", "lo"])
    run(["nft", "delete", "table", "inet", L.GUARD_TABLE], check=False)
    run(["nft", "-f", "-"], input=guard_rules(uplinks() or ["eth0"]))


def iptables_ours(binary):
    """(table, rules to delete, chains to delete) for the KUBE-* and CNI-* chains in binary's tables and the
    rules of other chains that jump to them."""
    out = []
    for table in ("filter", "nat", "mangle"):
        cp = run([binary, "-w", "5", "-t", table, "-S"], check=False)
        if cp.returncode != 0:
            continue
        rules, chains = [], []
        for line in cp.stdout.splitlines():
            words = line.split()
            if line.startswith("-N ") and CHAIN_OURS.match(words[1]):
                chains.append(words[1])
            elif line.startswith("-A ") and not CHAIN_OURS.match(words[1]):
                if "-j" in words and CHAIN_OURS.match(words[words.index("-j") + 1]):
                    rules.append(words[1:])
        out.append((table, rules, chains))
    return out


def leftovers():
    """One line per trace of the cluster in the host's network and sysctls."""
    found = [f"link {ln['ifname']}" for ln in links() if ln["ifname"] == L.BRIDGE or ln.get("master") == L.BRIDGE]
    if node_address_present():
        found.append(f"address {L.NODE_IP} on lo")
    if f"inet {L.GUARD_TABLE}" in nft_tables():
        found.append(f"nft table inet {L.GUARD_TABLE}")
    for binary in ("iptables", "ip6tables"):
        for table, rules, chains in iptables_ours(binary):
            found += [f"{binary} -t {table} rule {' '.join(r)}" for r in rules]
            found += [f"{binary} -t {table} chain {c}" for c in chains]
    if SAVED_SYSCTLS.exists():
        now = sysctl_values()
        found += [f"sysctl {k}={now.get(k)} (was {v})" for k, v in json.loads(SAVED_SYSCTLS.read_text()).items()
                  if now.get(k) != v]
    return found


def remove_rules():
    """kube-proxy's rules (after its own --cleanup), the kubelet's chains, CNI's; the iptables-nft tables that
    `up` brought into being and that are empty again; the guard."""
    for binary in ("iptables", "ip6tables"):
        for table, rules, chains in iptables_ours(binary):
            for rule in rules:
                run([binary, "-w", "5", "-t", table, "-D", *rule], check=False)
            for chain in chains:
                run([binary, "-w", "5", "-t", table, "-F", chain], check=False)
            for chain in chains:
                run([binary, "-w", "5", "-t", table, "-X", chain], check=False)
    if SAVED_NFT_TABLES.exists():
        had = set(json.loads(SAVED_NFT_TABLES.read_text()))
        for table in sorted(nft_tables() - had):
            if table.split()[0] in ("ip", "ip6") and table.split()[1] in ("filter", "nat", "mangle"):
                listing = run(["nft", "list", "table", *table.split()], check=False).stdout
                if not re.search(r"^\s+(?!type |policy )\S", "\n".join(
                        ln for ln in listing.splitlines() if not re.match(r"\s*(table|chain|}|$)", ln)), re.M):
                    run(["nft", "delete", "table", *table.split()], check=False)
    run(["nft", "delete", "table", "inet", L.GUARD_TABLE], check=False)


def remove_links_and_address():
    """Veths left on the bridge, the bridge, the node address."""
    found = links()
    for link in found:
        if link.get("master") == L.BRIDGE:
            run(["ip", "link", "del", link["ifname"]], check=False)
    if any(ln["ifname"] == L.BRIDGE for ln in found):
        run(["ip", "link", "del", L.BRIDGE], check=False)
    run(["ip", "addr", "del", f"{L.NODE_IP}/32", "dev", "lo"], check=False)


def restore_sysctls():
    """The sysctls back to what `up` found."""
    if SAVED_SYSCTLS.exists():
        for key, value in json.loads(SAVED_SYSCTLS.read_text()).items():
            try:
                sysctl_path(key).write_text(value)
            except OSError:
                pass
