"""scripts/k8s-local without a cluster: its table of components, the configuration filled from its templates,
`status --json`, and bad environment values (one line naming the variable, exit 1). The real cluster is
tests/test_k8s_local.py."""
from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"
K8S_LOCAL = SCRIPTS / "k8s-local"
sys.path.insert(0, str(SCRIPTS))

import k8s_local_components as components  # noqa: E402
import k8s_local_config as config  # noqa: E402
import k8s_local_layout as layout  # noqa: E402
import k8s_local_net as net  # noqa: E402
import k8s_local_procs as procs  # noqa: E402
import local_common  # noqa: E402
from local_common import Fail  # noqa: E402


def k8s_local(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    # PATH leads nowhere: should a check regress, `up` fails at its first command instead of building a cluster.
    return subprocess.run([sys.executable, str(K8S_LOCAL), *args], capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL, env={**os.environ, "PATH": "/nonexistent", **(env or {})})


# -- the table of components -----------------------------------------------------------------------------------


def test_each_component_runs_its_own_executable_with_a_path_down_recognises():
    """`down` finds a component whose pid file is lost by its executable's name and a path under our state or
    run directory on its command line: every command of the table must have both."""
    assert len(set(components.NAMES)) == len(components.NAMES)
    for c in components.COMPONENTS:
        argv = [str(a) for a in c.command()]
        assert Path(argv[0]).name == c.name, argv[0]
        assert c.name in procs.EXES
        assert procs.ours(argv), f"{c.name}: {' '.join(argv)}"


def test_awaited_components_say_what_they_wait_for_and_how_long():
    for c in components.COMPONENTS:
        if c.ready:
            assert c.what and (c.timeout > 0), c.name
        else:
            assert not (c.at_end or c.after or c.announce), f"{c.name}: nothing is awaited"


def test_down_stops_the_kubelet_first_then_the_others_in_reverse():
    order = [c.name for c in components.stop_order()]
    assert order[0] == "kubelet"
    assert order[1:] == [n for n in reversed(components.NAMES) if n != "kubelet"]


def test_the_ports_up_checks_are_those_the_configuration_gives_the_components():
    ports = {c.name: set(c.ports) for c in components.COMPONENTS}
    kubelet = yaml.safe_load(config.fill("kubelet.yaml"))
    proxy = yaml.safe_load(config.fill("kube-proxy.yaml"))
    assert kubelet["healthzPort"] in ports["kubelet"]
    assert {int(proxy[k].rsplit(":", 1)[1]) for k in ("metricsBindAddress", "healthzBindAddress")} == ports["kube-proxy"]
    assert "ready 127.0.0.1:8181" in config.fill("Corefile") and ports["coredns"] == {8181}
    assert set(layout.ETCD_PORTS) == ports["etcd"]
    every = [p for c in components.COMPONENTS for p in c.ports]
    assert len(every) == len(set(every))


def test_status_asks_for_the_node_only_when_every_component_runs(monkeypatch):
    asked = []
    monkeypatch.setattr(components, "node_ready", lambda: asked.append(1) or True)
    st = components.status(lambda name: None if name == "kube-proxy" else 4242)
    assert not asked and st["node"]["ready"] is None
    assert [c["state"] for c in st["components"]].count("down") == 1
    assert "kube-proxy               -        down" in components.status_lines(st)
    st = components.status(lambda name: 4242)
    assert asked and st["node"] == {"name": layout.NODE_NAME, "ready": True}
    assert components.status_lines(st)[-1].split() == ["node", layout.NODE_NAME, "Ready"]


def test_status_json_says_what_status_says_with_the_same_exit_code():
    human, machine = k8s_local("status"), k8s_local("status", "--json")
    assert machine.returncode == human.returncode and human.returncode in (0, 3)
    st = json.loads(machine.stdout)
    assert [c["name"] for c in st["components"]] == components.NAMES
    rows = [line.split() for line in human.stdout.splitlines()]
    for row, c in zip(rows, st["components"]):
        assert row == [c["name"], str(c["pid"] or "-"), c["state"]]
    assert (st["node"]["ready"] is None) == (len(rows) == len(components.NAMES))


# -- configuration from the templates ---------------------------------------------------------------------------


def test_every_template_fills_completely_and_parses():
    kubelet = yaml.safe_load(config.fill("kubelet.yaml"))
    assert kubelet["address"] == layout.NODE_IP and kubelet["clusterDNS"] == [layout.NODE_IP]
    assert kubelet["containerRuntimeEndpoint"] == f"unix://{layout.CONTAINERD_SOCK}"
    assert kubelet["failSwapOn"] is False and kubelet["evictionHard"]["memory.available"] == "200Mi"
    assert yaml.safe_load(config.fill("kube-proxy.yaml"))["clusterCIDR"] == layout.POD_CIDR
    cni = json.loads(config.fill("10-kchat.conflist"))
    ipam = cni["plugins"][0]["ipam"]["ranges"][0][0]
    subnet = ipaddress.ip_network(ipam["subnet"])
    assert subnet.subnet_of(ipaddress.ip_network(layout.POD_CIDR))
    assert ipaddress.ip_address(ipam["gateway"]) in subnet
    assert cni["plugins"][0]["bridge"] == layout.BRIDGE
    kc = json.loads(config.fill("kubeconfig.json", token="t0k", ca_data="Q0E="))
    assert kc["users"][0]["user"]["token"] == "t0k"
    assert kc["clusters"][0]["cluster"]["server"] == f"https://{layout.NODE_IP}:{layout.API_PORT}"
    corefile = [line.split() for line in config.fill("Corefile").splitlines() if not line.startswith("#")]
    assert ["bind", layout.NODE_IP] in corefile and not any(w and w[0] == "forward" for w in corefile)
    for template in config.CONFIG_FILES:
        assert "$" not in config.fill(template), template


def test_coredns_rbac_binds_the_user_of_corednss_token():
    items = yaml.safe_load(config.fill("coredns-rbac.yaml"))["items"]
    binding = next(i for i in items if i["kind"] == "ClusterRoleBinding")
    assert binding["subjects"][0]["name"] == config.IDENTITIES["coredns"][0]
    tokens = config.token_lines({name: f"tok-{name}" for name in config.IDENTITIES})
    assert f"tok-coredns,{binding['subjects'][0]['name']},{binding['subjects'][0]['name']}" in tokens
    assert 'tok-admin,kchat-admin,kchat-admin,"system:masters"' in tokens


def test_guard_rules_name_every_uplink():
    rules = net.guard_rules(["eth0", "wlan0"])
    assert rules.count('oifname { "eth0", "wlan0" }') == 3
    assert f"ip saddr {{ {layout.POD_CIDR}, {layout.SERVICE_CIDR} }}" in rules


def test_a_template_value_left_out_is_a_failure_naming_the_template():
    with pytest.raises(Fail, match="kubeconfig.json"):
        config.fill("kubeconfig.json", ca_data="x")


def test_every_template_is_used():
    sources = "\n".join(p.read_text() for p in SCRIPTS.glob("k8s_local_*.py"))
    for template in config.TEMPLATES.iterdir():
        assert f'"{template.name}"' in sources, f"{template.name} is filled by nothing"


# -- the environment ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["abc", "0", "nan", "-5"])
def test_a_bad_k8s_local_timeout_is_one_line_and_exit_1(value):
    up = k8s_local("up", env={"K8S_LOCAL_TIMEOUT": value})
    assert up.returncode == 1, up.stderr
    assert up.stderr == f"k8s-local: error: K8S_LOCAL_TIMEOUT={value}: expected a number from 1\n"


def test_an_unknown_k8s_local_fail_at_is_one_line_and_exit_1():
    up = k8s_local("up", env={"K8S_LOCAL_FAIL_AT": "kubelt"})
    assert up.returncode == 1 and up.stderr.count("\n") == 1, up.stderr
    assert "K8S_LOCAL_FAIL_AT=kubelt: expected one of etcd, kube-apiserver" in up.stderr


def test_a_kchat_cache_that_cannot_be_a_directory_is_one_line_and_exit_1(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    install = k8s_local("install", env={"KCHAT_CACHE": str(blocker)})
    assert install.returncode == 1 and install.stderr.count("\n") == 1, install.stderr
    assert f"KCHAT_CACHE={blocker}: expected a directory" in install.stderr


def test_env_numbers(monkeypatch):
    monkeypatch.delenv("X_T", raising=False)
    assert local_common.env_float("X_T", 180.0, lo=1) == 180.0
    monkeypatch.setenv("X_T", "")
    assert local_common.env_int("X_T", 7) == 7
    monkeypatch.setenv("X_T", "2.5")
    assert local_common.env_float("X_T", 1.0, lo=1, hi=3) == 2.5
    with pytest.raises(Fail, match=r"^X_T=2\.5: expected an integer$"):
        local_common.env_int("X_T", 1)
    monkeypatch.setenv("X_T", "4")
    with pytest.raises(Fail, match=r"^X_T=4: expected a number from 1 to 3$"):
        local_common.env_float("X_T", 1.0, lo=1, hi=3)


def test_main_guard_turns_a_failure_into_one_line_and_exit_1(capsys):
    def fails(argv):
        raise Fail(f"bad {argv[0]}")

    assert local_common.main_guard("k8s-local", fails, ["thing"]) == 1
    assert capsys.readouterr().err == "k8s-local: error: bad thing\n"
    assert local_common.main_guard("k8s-local", lambda argv: 3, []) == 3
