"""The Kubernetes deployment (k8s/) and the worker image (Dockerfile).

Every kustomize variant renders and validates against the Kubernetes API schemas (strict); the rendered
objects agree with each other and with the app's configuration contract; the brokers' startup script,
run locally with loopback addresses, yields a configuration that boots a real 4-broker + 3-controller
KRaft cluster, on which the topic Job's own script creates `chatroom`.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import kubernetes_validate
import pytest
from kubernetes_validate.utils import latest_version

from tests.support import k8s as s
from kchat_testkit.kafka import parse_describe
from kchat_testkit.procs import jvms_naming, until_sync

NAMESPACE = "kafka"
CLUSTER_DOMAIN = "cluster.local"
WORKER_PORT = 6066
BROKERS = 4
CONTROLLERS = 3
# The app's topic defaults (KCHAT_PARTITIONS / KCHAT_REPLICATION_FACTOR / KCHAT_MIN_INSYNC_REPLICAS).
PARTITIONS, REPLICATION_FACTOR, MIN_ISR = 12, 4, 2
# Recent Kubernetes versions bundled by kubernetes-validate: the oldest we promise, and the newest.
K8S_VERSIONS = sorted({"1.31.0", latest_version()})


@pytest.fixture(scope="session")
def kustomize() -> str:
    return s.kustomize_bin()


@pytest.fixture(scope="module")
def variants(kustomize) -> dict[str, s.Rendered]:
    return {v: s.build(kustomize, v) for v in s.VARIANTS}


@pytest.fixture(params=s.VARIANTS)
def r(request, variants) -> s.Rendered:
    return variants[request.param]


def broker_dns_names(r: s.Rendered) -> list[str]:
    """host:port of every broker pod, derived from the StatefulSet and its governing Service."""
    sts = r.get("StatefulSet", "kafka")
    port = s.container(sts)["ports"][0]["containerPort"]
    return [f"{sts['metadata']['name']}-{i}.{sts['spec']['serviceName']}.{NAMESPACE}.svc.{CLUSTER_DOMAIN}:{port}"
            for i in range(sts["spec"]["replicas"])]


def nonroot(pod_ctx: dict, ctx: dict) -> bool:
    run_as_non_root = ctx.get("runAsNonRoot", pod_ctx.get("runAsNonRoot"))
    user = ctx.get("runAsUser", pod_ctx.get("runAsUser"))
    return bool(run_as_non_root) and user != 0


# --------------------------------------------------------------------------------------------------------------
# rendering and schema validation


def test_install_kustomize_is_idempotent(kustomize):
    assert s.kustomize_bin() == kustomize
    pinned = re.search(r'version="\$\{KUSTOMIZE_VERSION:-(v[\d.]+)\}"', s.INSTALL_KUSTOMIZE.read_text()).group(1)
    out = subprocess.run([kustomize, "version"], capture_output=True, text=True, check=True).stdout.strip()
    assert out == pinned


def test_variant_renders_the_whole_stack(r):
    kinds = {(o["kind"], o["metadata"]["name"]) for o in r.objects}
    for expected in [("Namespace", NAMESPACE), ("StatefulSet", "kafka"), ("StatefulSet", "kafka-controller"),
                     ("Service", "broker"), ("Service", "kafka-controller"), ("ConfigMap", "broker-config"),
                     ("Pod", "kafka-client"), ("Job", "chatroom-topic"), ("Deployment", "kchat"),
                     ("ConfigMap", "kchat-config"), ("Service", "kchat"), ("Service", "kchat-nodeport"),
                     ("PodDisruptionBudget", "kafka"), ("PodDisruptionBudget", "kchat"),
                     ("NetworkPolicy", "kafka")]:
        assert expected in kinds, f"{r.variant}: {expected} missing"
    for o in r.objects:
        if o["kind"] not in s.CLUSTER_SCOPED_KINDS:
            assert o["metadata"].get("namespace") == NAMESPACE, f"{o['kind']} {o['metadata']['name']}"
    # Kafka 4 has no ZooKeeper: the controller quorum replaces the tutorial's ensemble.
    assert not [o for o in r.objects if "zoo" in o["metadata"]["name"]]


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_object_validates_strictly(r, version):
    errors = []
    for o in r.objects:
        try:
            kubernetes_validate.validate(o, version, strict=True)
        except Exception as e:  # ValidationError, SchemaNotFoundError, ...
            errors.append(f"{o['kind']} {o['metadata']['name']}: {type(e).__name__}: {str(e).splitlines()[0]}")
    assert not errors, f"{r.variant} against Kubernetes {version}:\n" + "\n".join(errors)


# --------------------------------------------------------------------------------------------------------------
# cross references


def test_workload_selectors_match_their_pod_labels(r):
    for o in r.objects:
        if o["kind"] in ("Deployment", "StatefulSet"):
            labels = o["spec"]["template"]["metadata"]["labels"]
            assert s.selects(o["spec"]["selector"], labels), f"{o['kind']} {o['metadata']['name']}"
            # ... and no other workload's pods: selectors must not overlap.
            assert r.pods_selected(o["spec"]["selector"]) == [o], o["metadata"]["name"]


def test_services_select_pods_and_target_declared_ports(r):
    for svc in r.all("Service"):
        owners = r.pods_selected(svc["spec"]["selector"])
        assert owners, f"Service {svc['metadata']['name']} selects no pod"
        for owner in owners:
            c = s.container(owner)
            for port in svc["spec"]["ports"]:
                target = port.get("targetPort", port["port"])
                declared = {p["containerPort"] for p in c.get("ports", [])}
                assert s.named_port(c, target) in declared, (svc["metadata"]["name"], target)


def test_statefulsets_are_governed_by_headless_services(r):
    for sts in r.all("StatefulSet"):
        svc = r.get("Service", sts["spec"]["serviceName"])
        assert svc["spec"].get("clusterIP") == "None"
        # Peers must resolve each other while starting (not ready yet): quorum, replication.
        assert svc["spec"].get("publishNotReadyAddresses") is True
        assert r.pods_selected(svc["spec"]["selector"]) == [sts]


def test_brokers_as_in_the_tutorial(r):
    sts = r.get("StatefulSet", "kafka")
    assert sts["spec"]["serviceName"] == "broker"
    assert sts["spec"]["replicas"] == BROKERS
    assert r.get("Service", "broker")["spec"]["clusterIP"] == "None"
    c = s.container(sts)
    assert [p["containerPort"] for p in c["ports"]] == [9092]
    assert broker_dns_names(r)[0] == "kafka-0.broker.kafka.svc.cluster.local:9092"
    # The seed's chaos test kills pods by this label.
    assert sts["spec"]["template"]["metadata"]["labels"]["app"] == "kafka"
    assert s.pod_spec(sts)["terminationGracePeriodSeconds"] >= 30


def test_controller_quorum_of_three(r):
    sts = r.get("StatefulSet", "kafka-controller")
    assert sts["spec"]["replicas"] == CONTROLLERS
    assert s.env_values(s.container(sts))["KAFKA_ROLE"] == "controller"
    assert s.env_values(s.container(r.get("StatefulSet", "kafka")))["KAFKA_ROLE"] == "broker"


def test_kafka_nodes_have_probes_volumes_and_anti_affinity(r):
    for name in ("kafka", "kafka-controller"):
        sts = r.get("StatefulSet", name)
        c = s.container(sts)
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert s.named_port(c, c[probe]["tcpSocket"]["port"]) == c["ports"][0]["containerPort"], (name, probe)
        claims = {t["metadata"]["name"] for t in sts["spec"]["volumeClaimTemplates"]}
        mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
        assert claims == {"data"} and mounts["data"] == "/var/lib/kafka/data"
        # The start script and templates come from ConfigMap broker-config, mounted where the command runs it.
        volumes = {v["name"]: v for v in s.pod_spec(sts)["volumes"]}
        config_mount = next(m for m in c["volumeMounts"] if volumes.get(m["name"], {}).get("configMap"))
        assert volumes[config_mount["name"]]["configMap"]["name"] == "broker-config"
        assert c["command"][-1] == f"{config_mount['mountPath']}/kafka-start.sh"
        terms = s.pod_spec(sts)["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
        assert terms and all(s.selects(t["podAffinityTerm"]["labelSelector"],
                                       sts["spec"]["template"]["metadata"]["labels"]) for t in terms)


def test_every_container_has_requests_and_limits(r):
    for owner, _labels, spec in r.pod_templates():
        for c in s.all_containers(spec):
            res = c.get("resources", {})
            assert {"cpu", "memory"} <= set(res.get("requests", {})), (owner["metadata"]["name"], c["name"])
            assert "memory" in res.get("limits", {}), (owner["metadata"]["name"], c["name"])


def test_pods_run_as_non_root(r):
    for owner, _labels, spec in r.pod_templates():
        pod_ctx = spec.get("securityContext", {})
        assert pod_ctx.get("runAsNonRoot") is True, owner["metadata"]["name"]
        for c in s.all_containers(spec):
            ctx = c.get("securityContext", {})
            assert ctx.get("allowPrivilegeEscalation") is False, c["name"]
            if c["name"] == "data-owner" and r.variant == "local":
                # The one exception: hands the hostPath directory (root-owned) to the Kafka user, with CHOWN only.
                assert ctx["capabilities"] == {"drop": ["ALL"], "add": ["CHOWN"]}
                assert c["command"][-1] == "chown 1000:1000 /var/lib/kafka/data"
                continue
            assert nonroot(pod_ctx, ctx), (owner["metadata"]["name"], c["name"])
            assert ctx.get("capabilities", {}).get("drop") == ["ALL"], c["name"]


def test_images_are_pinned(r):
    kafka_images = set()
    for owner, _labels, spec in r.pod_templates():
        for c in s.all_containers(spec):
            name, _, tag = c["image"].rpartition(":")
            assert name and tag and tag != "latest" and "/" not in tag, c["image"]
            if name == "apache/kafka":
                kafka_images.add(c["image"])
    assert len(kafka_images) == 1, kafka_images
    assert re.fullmatch(r"apache/kafka:4\.\d+\.\d+", kafka_images.pop())


def test_kafka_client_pod_carries_the_tools(r):
    pod = r.get("Pod", "kafka-client")
    c = s.container(pod)
    assert c["image"] == s.container(r.get("StatefulSet", "kafka"))["image"]
    assert c["workingDir"] == "/opt/kafka"
    assert s.env_values(c)["BOOTSTRAP"].split(",") == broker_dns_names(r)


def test_worker_broker_list_names_every_broker_pod(r):
    broker = r.configmap("kchat-config")["KCHAT_BROKER"]
    assert broker.startswith("kafka://")
    assert broker[len("kafka://"):].split(",") == broker_dns_names(r)


def test_worker_configuration_contract(r):
    cfg = r.configmap("kchat-config")
    # The app's own parser accepts the ConfigMap, and reads what the cluster needs from it.
    from kchat_faust.config import Settings

    settings = Settings.from_env(cfg)
    assert (settings.partitions, settings.replication_factor, settings.min_insync_replicas) == (
        PARTITIONS, REPLICATION_FACTOR, MIN_ISR)
    assert settings.datadir == "/var/lib/kchat"
    assert settings.log_format == "json"
    config_source = (s.REPO / "kchat_faust" / "config.py").read_text()
    assert all(f'"{key}"' in config_source for key in cfg), "a ConfigMap key the app never reads"
    assert MIN_ISR <= REPLICATION_FACTOR <= r.get("StatefulSet", "kafka")["spec"]["replicas"]


def test_topic_job_creates_chatroom_as_the_app_expects(r):
    job = r.get("Job", "chatroom-topic")
    c = s.container(job)
    env = s.env_values(c)
    cfg = r.configmap("kchat-config")
    assert env["TOPIC"] == "chatroom"
    assert env["PARTITIONS"] == cfg["KCHAT_PARTITIONS"] == str(PARTITIONS)
    assert env["REPLICATION_FACTOR"] == cfg["KCHAT_REPLICATION_FACTOR"] == str(REPLICATION_FACTOR)
    assert env["MIN_INSYNC_REPLICAS"] == cfg["KCHAT_MIN_INSYNC_REPLICAS"] == str(MIN_ISR)
    assert env["BOOTSTRAP"].split(",") == broker_dns_names(r)
    assert env["KAFKA_TOPICS"] == "/opt/kafka/bin/kafka-topics.sh"
    assert c["command"] == ["/bin/bash", "-c"]
    script = c["args"][0]
    assert "--if-not-exists" in script and "until " in script
    assert job["spec"]["template"]["spec"]["restartPolicy"] in ("OnFailure", "Never")


def test_scripts_survive_the_kubelet_variable_expansion(r):
    """The kubelet expands $(VAR) and $$ in command/args: the inline shell must come through unchanged."""
    for owner, _labels, spec in r.pod_templates():
        for c in s.all_containers(spec):
            env = {e["name"]: e.get("value", "") for e in c.get("env", [])}
            for arg in c.get("command", []) + c.get("args", []):
                assert s.kubernetes_expand(arg, env) == arg, (owner["metadata"]["name"], c["name"])


def test_worker_deployment(r):
    dep = r.get("Deployment", "kchat")
    assert dep["spec"]["replicas"] == 2
    spec = s.pod_spec(dep)
    c = s.container(dep)
    assert c["command"] == ["faust", "-A", "kchat_faust", "worker", "-l", "info", "--web-port", str(WORKER_PORT)]
    assert [p["containerPort"] for p in c["ports"]] == [WORKER_PORT]
    assert {e["configMapRef"]["name"] for e in c["envFrom"]} == {"kchat-config"}
    probes = {p: (c[p]["httpGet"]["path"], s.named_port(c, c[p]["httpGet"]["port"]))
              for p in ("readinessProbe", "livenessProbe", "startupProbe")}
    assert probes["readinessProbe"] == ("/readyz", WORKER_PORT)
    assert probes["livenessProbe"] == ("/healthz", WORKER_PORT)
    assert probes["startupProbe"][1] == WORKER_PORT
    # RocksDB state on an emptyDir at KCHAT_DATADIR (rebuilt from the changelog after a restart).
    volumes = {v["name"]: v for v in spec["volumes"]}
    datadir = r.configmap("kchat-config")["KCHAT_DATADIR"]
    mount = next(m for m in c["volumeMounts"] if m["mountPath"] == datadir)
    assert "emptyDir" in volumes[mount["name"]]
    # Time to flush on stop, after the preStop pause.
    assert spec["terminationGracePeriodSeconds"] >= 30
    assert c["lifecycle"]["preStop"]
    # Workers reach each other (GET /stats/users) at their pod IP.
    ref = next(e for e in c["env"] if e["name"] == "KCHAT_ADVERTISED_HOST")
    assert ref["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"


def test_probe_paths_and_seed_routes_exist_in_the_app():
    sources = list((s.REPO / "kchat_faust").glob("*.py"))
    if not sources:
        pytest.skip("kchat_faust/ has no sources yet")
    text = "\n".join(p.read_text() for p in sources)
    for route in ('"/readyz"', '"/healthz"', '"/api/topics/{topic}"', '"/sse/connect"', '"/api/rooms/'):
        assert route in text, route
    assert "KCHAT_ADVERTISED_HOST" in text


def test_nodeports_keep_the_tutorials_ports(r):
    svc = r.get("Service", "kchat-nodeport")
    assert svc["spec"]["type"] == "NodePort"
    c = s.container(r.get("Deployment", "kchat"))
    ports = {p["nodePort"]: s.named_port(c, p["targetPort"]) for p in svc["spec"]["ports"]}
    assert ports == {30192: WORKER_PORT, 30292: WORKER_PORT, 30066: WORKER_PORT}
    inside = r.get("Service", "kchat")
    assert inside["spec"].get("type", "ClusterIP") == "ClusterIP"
    assert [s.named_port(c, p["targetPort"]) for p in inside["spec"]["ports"]] == [WORKER_PORT]


def test_disruption_budgets_select_their_workloads(r):
    budgets = {p["metadata"]["name"]: p for p in r.all("PodDisruptionBudget")}
    assert set(budgets) == {"kafka", "kafka-controller", "kchat"}
    for name, pdb in budgets.items():
        assert r.pods_selected(pdb["spec"]["selector"]) == [
            next(o for o in r.objects if o["kind"] in ("StatefulSet", "Deployment") and o["metadata"]["name"] == name)]
    assert budgets["kafka"]["spec"]["maxUnavailable"] == 1, "one broker down at a time"
    assert budgets["kafka-controller"]["spec"]["maxUnavailable"] == 1
    assert budgets["kchat"]["spec"]["minAvailable"] == 1


def test_network_policy_admits_only_the_kafka_users(r):
    policies = r.all("NetworkPolicy")
    guarded = {o["metadata"]["name"] for p in policies for o in r.pods_selected(p["spec"]["podSelector"])}
    assert guarded == {"kafka", "kafka-controller"}
    admitted = set()
    for p in policies:
        assert "Ingress" in p["spec"]["policyTypes"]
        for rule in p["spec"]["ingress"]:
            for peer in rule["from"]:
                assert set(peer) == {"podSelector"}, "only pods of this namespace"
                admitted |= {(o["kind"], o["metadata"]["name"]) for o in r.pods_selected(peer["podSelector"])}
            allowed_ports = {port["port"] for port in rule["ports"]}
            for name in guarded:
                for port in s.container(r.get("StatefulSet", name))["ports"]:
                    assert port["containerPort"] in allowed_ports
    assert admitted == {("StatefulSet", "kafka"), ("StatefulSet", "kafka-controller"), ("Pod", "kafka-client"),
                        ("Job", "chatroom-topic"), ("Deployment", "kchat")}


def test_local_variant_uses_retained_host_paths(variants):
    r = variants["local"]
    pvs = r.all("PersistentVolume")
    assert len(pvs) == BROKERS + CONTROLLERS
    expected_claims = {}
    for sts in r.all("StatefulSet"):
        tpl = sts["spec"]["volumeClaimTemplates"][0]
        for i in range(sts["spec"]["replicas"]):
            expected_claims[f"{tpl['metadata']['name']}-{sts['metadata']['name']}-{i}"] = tpl["spec"]
    claimed = {}
    for pv in pvs:
        spec = pv["spec"]
        assert spec["persistentVolumeReclaimPolicy"] == "Retain"
        assert spec["hostPath"]["path"].startswith("/data/kafka/")
        assert spec["claimRef"]["namespace"] == NAMESPACE
        claim = expected_claims[spec["claimRef"]["name"]]
        assert spec["storageClassName"] == claim["storageClassName"]
        assert spec["accessModes"] == claim["accessModes"]
        assert parse_quantity(spec["capacity"]["storage"]) >= parse_quantity(claim["resources"]["requests"]["storage"])
        claimed[spec["claimRef"]["name"]] = spec["hostPath"]["path"]
    assert set(claimed) == set(expected_claims)
    assert len(set(claimed.values())) == len(claimed), "two volumes share a directory"
    sc = r.get("StorageClass", "kafka-local")
    assert sc["provisioner"] == "kubernetes.io/no-provisioner"
    # Brokers' data directories as in the tutorial.
    assert claimed["data-kafka-0"] == "/data/kafka/broker/0"


def test_default_variant_relies_on_dynamic_provisioning(variants):
    r = variants["default"]
    assert not r.all("PersistentVolume") and not r.all("StorageClass")
    for sts in r.all("StatefulSet"):
        for tpl in sts["spec"]["volumeClaimTemplates"]:
            assert "storageClassName" not in tpl["spec"], "the cluster's default StorageClass provisions"


def parse_quantity(q: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9}
    m = re.fullmatch(r"(\d+)([A-Za-z]*)", q)
    return int(m.group(1)) * units.get(m.group(2), 1)


# --------------------------------------------------------------------------------------------------------------
# the brokers' startup script


@pytest.fixture(scope="module")
def broker_config(variants, tmp_path_factory) -> Path:
    """ConfigMap broker-config's files, as the pods mount them."""
    return s.write_configmap(variants["default"].configmap("broker-config"), tmp_path_factory.mktemp("broker-config"))


def pod_env(sts: dict, pod: str) -> dict[str, str]:
    """The env a pod of sts gets: literal values, plus the downward-API fields the script reads."""
    return s.env_values(s.container(sts)) | {"KAFKA_POD_NAME": pod, "KAFKA_NAMESPACE": NAMESPACE}


def test_start_script_fills_in_each_pods_identity(variants, broker_config, tmp_path):
    r = variants["default"]
    controllers = r.get("StatefulSet", "kafka-controller")
    ctl_port = s.container(controllers)["ports"][0]["containerPort"]
    voters = [f"{100 + i}@kafka-controller-{i}.{controllers['spec']['serviceName']}.{NAMESPACE}.svc."
              f"{CLUSTER_DOMAIN}:{ctl_port}" for i in range(CONTROLLERS)]
    brokers = r.get("StatefulSet", "kafka")
    for i, dns in enumerate(broker_dns_names(r)):
        p = s.render_node_properties(broker_config, tmp_path / f"kafka-{i}.properties", pod_env(brokers, f"kafka-{i}"))
        assert p["process.roles"] == "broker"
        assert p["node.id"] == str(i)
        assert p["advertised.listeners"] == f"PLAINTEXT://{dns}"
        assert p["listeners"] == "PLAINTEXT://:9092"
        assert p["controller.quorum.voters"].split(",") == voters
        assert p["log.dirs"].startswith("/var/lib/kafka/data/")
        assert p["auto.create.topics.enable"] == "false"
        assert p["log.retention.hours"] == "-1"
        assert p["min.insync.replicas"] == str(MIN_ISR)
    for i in range(CONTROLLERS):
        p = s.render_node_properties(broker_config, tmp_path / f"ctl-{i}.properties",
                                     pod_env(controllers, f"kafka-controller-{i}"))
        assert p["process.roles"] == "controller"
        assert p["node.id"] == str(100 + i)
        assert p["listeners"] == f"CONTROLLER://:{ctl_port}"
        assert p["controller.quorum.voters"].split(",") == voters
        assert voters[i].endswith(p["advertised.listeners"].split("://", 1)[1])


def test_topic_defaults_are_set_where_kraft_applies_them(broker_config):
    """The controllers create topics in KRaft: a broker's num.partitions / default.replication.factor only earn a
    start-up warning from Kafka 4.3 (seen in the pods' logs by k8s/tests) and are ignored from 5.0 on."""
    broker = s.read_properties(broker_config / "broker.properties")
    controller = s.read_properties(broker_config / "controller.properties")
    for key in ("num.partitions", "default.replication.factor"):
        assert key not in broker and key in controller, key
    assert int(controller["default.replication.factor"]) <= BROKERS


def test_brokers_wait_for_the_controllers_as_long_as_the_startup_probe(variants, broker_config):
    """A broker that cannot register within initial.broker.registration.timeout.ms exits ("fatal error while
    waiting for the controller to acknowledge that we are caught up"): seen on the real cluster (k8s/tests saves
    the previous logs of restarted pods) while the controllers took two minutes to start on a busy node."""
    broker = s.read_properties(broker_config / "broker.properties")
    probe = s.container(variants["default"].get("StatefulSet", "kafka"))["startupProbe"]
    budget_ms = probe["periodSeconds"] * probe["failureThreshold"] * 1000
    assert int(broker.get("initial.broker.registration.timeout.ms", 60000)) >= budget_ms


def test_start_script_refuses_what_it_cannot_fill(broker_config, tmp_path):
    base = {"PATH": "/usr/bin:/bin", "KAFKA_RENDER_ONLY": "true", "KAFKA_PROPERTIES_OUT": str(tmp_path / "x")}
    for env, message in [({"KAFKA_POD_NAME": "kafka-0"}, "KAFKA_ROLE"),
                         ({"KAFKA_ROLE": "broker", "KAFKA_POD_NAME": "kafka"}, "ordinal"),
                         ({"KAFKA_ROLE": "zookeeper", "KAFKA_POD_NAME": "kafka-0"}, "KAFKA_ROLE")]:
        proc = subprocess.run(["bash", str(broker_config / "kafka-start.sh")], env={**base, **env},
                              capture_output=True, text=True, timeout=30)
        assert proc.returncode != 0 and message in proc.stderr, (env, proc.stderr)
    # Not render-only: formatting needs the cluster id from the ConfigMap.
    proc = subprocess.run(["bash", str(broker_config / "kafka-start.sh")],
                          env={"PATH": "/usr/bin:/bin", "KAFKA_ROLE": "broker", "KAFKA_POD_NAME": "kafka-0",
                               "KAFKA_PROPERTIES_OUT": str(tmp_path / "y")}, capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode != 0 and "KAFKA_CLUSTER_ID" in proc.stderr


def kafka_lib() -> str:
    if not s.KAFKA_LOCAL.exists():
        pytest.skip("scripts/kafka-local is not there yet")
    out = subprocess.run([str(s.KAFKA_LOCAL), "fetch"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]


def fake_kafka_home(home: Path, lib: str) -> Path:
    """A KAFKA_HOME whose bin/ scripts run the Maven jars, as the image's /opt/kafka/bin scripts do."""
    jvm = f"-Xmx256m -XX:+UseSerialGC -Dlog4j2.configurationFile={s.LOG4J_CONFIG}"
    scripts = {"kafka-storage.sh": f"exec java {jvm} -Dkchat.log.level=WARN -cp '{lib}/*' kafka.tools.StorageTool",
               "kafka-server-start.sh": f"exec java {jvm} -cp '{lib}/*' kafka.Kafka"}
    (home / "bin").mkdir(parents=True)
    for name, line in scripts.items():
        (home / "bin" / name).write_text(f'#!/usr/bin/env bash\n{line} "$@"\n')
        (home / "bin" / name).chmod(0o755)
    return home


def wait_for_line(path: Path, needle: str, proc: subprocess.Popen, timeout: float) -> None:
    def logged() -> bool:
        if needle in path.read_text(errors="replace"):
            return True
        assert proc.poll() is None, f"exited {proc.returncode}:\n{path.read_text()[-3000:]}"
        return False
    until_sync(logged, timeout, lambda: f"{needle!r} in {path.name} (its end:\n{path.read_text()[-3000:]}\n)")


@pytest.mark.kafka
@pytest.mark.timeout(150)
def test_start_script_formats_on_first_start_only_and_execs_kafka(variants, broker_config, tmp_path):
    """The pod's whole start path (render, format with the ConfigMap's cluster id, exec Kafka) with a
    one-controller quorum on loopback; the second start reuses the volume without formatting."""
    lib = kafka_lib()
    cluster_id = variants["default"].configmap("broker-config")["cluster.id"]
    [port] = s.free_ports(1)
    data = tmp_path / "volume" / "kraft"  # does not exist yet: the format creates it
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", str(tmp_path)),
           "KAFKA_ROLE": "controller", "KAFKA_POD_NAME": "kafka-controller-0", "KAFKA_CLUSTER_ID": cluster_id,
           "KAFKA_LISTEN_HOST": "127.0.0.1", "KAFKA_ADVERTISED_HOST": "127.0.0.1", "KAFKA_PORT": str(port),
           "KAFKA_QUORUM_VOTERS": f"100@127.0.0.1:{port}", "KAFKA_LOG_DIRS": str(data),
           "KAFKA_PROPERTIES_OUT": str(tmp_path / "run" / "server.properties"),
           "KAFKA_HOME": str(fake_kafka_home(tmp_path / "kafka-home", lib))}
    if "JAVA_HOME" in os.environ:
        env["JAVA_HOME"] = os.environ["JAVA_HOME"]
    for start in (1, 2):
        log = tmp_path / f"start-{start}.log"
        with open(log, "w") as out:
            proc = subprocess.Popen(["bash", str(broker_config / "kafka-start.sh")], env=env, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_for_line(log, "Kafka Server started", proc, timeout=90)
            # exec: the script's process is now Kafka itself.
            cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")
            assert b"kafka.Kafka" in cmdline
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        text = log.read_text()
        assert ("formatting" in text) == (start == 1), text[:2000]
        meta = s.read_properties(data / "meta.properties")
        assert meta["cluster.id"] == cluster_id and meta["node.id"] == "100"


def test_cluster_id_is_a_kafka_uuid(variants):
    cluster_id = variants["default"].configmap("broker-config")["cluster.id"]
    assert re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_-]{21}", cluster_id)


# --------------------------------------------------------------------------------------------------------------
# the configuration boots a real KRaft cluster; the topic Job creates chatroom on it


@pytest.mark.kafka
@pytest.mark.cluster4
@pytest.mark.timeout(600)
def test_broker_config_boots_a_cluster_and_the_topic_job_creates_chatroom(variants, broker_config, tmp_path):
    r = variants["local"]
    lib = kafka_lib()
    assert " " not in lib + str(tmp_path), "KAFKA_TOPICS is split on blanks"

    # The ConfigMap's script, once per pod, with loopback addresses for the pods' DNS names.
    ports = s.free_ports(BROKERS + CONTROLLERS)
    broker_ports, ctl_ports = ports[:BROKERS], ports[BROKERS:]
    voters = ",".join(f"{100 + i}@127.0.0.1:{p}" for i, p in enumerate(ctl_ports))
    props_dir = tmp_path / "props"
    for sts, pod_ports in ((r.get("StatefulSet", "kafka"), broker_ports),
                           (r.get("StatefulSet", "kafka-controller"), ctl_ports)):
        for i, port in enumerate(pod_ports):
            pod = f"{sts['metadata']['name']}-{i}"
            env = pod_env(sts, pod) | {
                "KAFKA_LISTEN_HOST": "127.0.0.1", "KAFKA_ADVERTISED_HOST": "127.0.0.1", "KAFKA_PORT": str(port),
                "KAFKA_QUORUM_VOTERS": voters, "KAFKA_LOG_DIRS": str(tmp_path / "data" / pod)}
            s.render_node_properties(broker_config, props_dir / f"{pod}.properties", env)
    bootstrap = ",".join(f"127.0.0.1:{p}" for p in broker_ports)

    # The topic Job's own script; started before the brokers, as in the cluster (its wait loop).
    job = s.container(r.get("Job", "chatroom-topic"))
    script = job["args"][0]
    job_env = s.env_values(job) | {
        "PATH": os.environ["PATH"], "TMPDIR": str(tmp_path), "BOOTSTRAP": bootstrap, "WAIT_SECONDS": "420",
        "KAFKA_TOPICS": f"java -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 "
                        f"-Dlog4j2.configurationFile={s.LOG4J_CONFIG} -Dkchat.log.level=WARN "
                        f"-Dkchat.log.target=SYSTEM_ERR -cp {lib}/* org.apache.kafka.tools.TopicCommand"}
    for var in ("JAVA_HOME", "HOME"):
        if var in os.environ:
            job_env[var] = os.environ[var]

    def run_job() -> subprocess.Popen:
        return subprocess.Popen([*job["command"], script], env=job_env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)

    state = tmp_path / "state"
    kafka_local = [str(s.KAFKA_LOCAL), "--state-dir", str(state)]
    early_job = run_job()
    try:
        t0 = time.monotonic()
        up = subprocess.run([*kafka_local, "up", "--props-dir", str(props_dir),
                             "--set", "log.cleaner.dedupe.buffer.size=2097152"],
                            capture_output=True, text=True, timeout=180)
        assert up.returncode == 0, up.stderr[-3000:]
        assert up.stdout.strip().splitlines()[-1] == bootstrap
        print(f"cluster up in {time.monotonic() - t0:.1f}s")

        # The Job's wait is counted in wall-clock seconds (bash's SECONDS): far longer than `up` may
        # take, so that a slow or stalled machine (the JVMs once took 3 minutes of wall time to boot
        # here) fails `up`, not the Job.
        out, _ = early_job.communicate(timeout=450)
        assert early_job.returncode == 0, out[-3000:]
        # Nothing else creates topics here. On a loaded machine an attempt may create the topic and
        # still time out on the client's side; the next one then finds it (--if-not-exists) and says
        # nothing: "Created" is printed only when the creating attempt also saw its answer.
        assert "Created topic chatroom." in out or "Attempt 1 failed" in out, out[-3000:]
        assert "Topic chatroom is ready" in out

        # Independent check: 12 partitions, 4 replicas each on brokers 0-3, and (soon, on a loaded machine)
        # every replica in sync. (KRaft's placement does not promise leaders on every broker.)
        deadline = time.monotonic() + 60
        while True:
            described = subprocess.run([*kafka_local, "describe", "chatroom"], capture_output=True, text=True,
                                       timeout=120)
            assert described.returncode == 0, described.stderr
            partitions = parse_describe(described.stdout)
            in_sync = all(sorted(p.isr) == list(range(BROKERS)) for p in partitions.values())
            if in_sync or time.monotonic() > deadline:
                break
            time.sleep(2)
        assert re.search(r"PartitionCount:\s*12\s+ReplicationFactor:\s*4\b", described.stdout), described.stdout
        assert re.search(r"Configs:.*\bmin\.insync\.replicas=2\b", described.stdout), described.stdout
        assert sorted(partitions) == list(range(PARTITIONS))
        for p in partitions.values():
            assert sorted(p.replicas) == list(range(BROKERS))
        assert in_sync, described.stdout

        # Run again (a re-applied Job): nothing created, still succeeds.
        again = run_job()
        out, _ = again.communicate(timeout=120)
        assert again.returncode == 0, out[-3000:]
        assert "Created topic" not in out and "Topic chatroom is ready" in out

        # A chatroom of another shape is reported, not accepted.
        job_env["PARTITIONS"] = "6"
        mismatch = run_job()
        out, _ = mismatch.communicate(timeout=120)
        assert mismatch.returncode != 0
        assert "has 12 partitions and RF 4, expected 6 and 4" in out
    finally:
        if early_job.poll() is None:
            early_job.kill()
            early_job.wait()
        subprocess.run([*kafka_local, "down", "--timeout", "20"], capture_output=True, timeout=120)
        for pid in jvms_naming(state):  # last resort after `kafka-local down`
            os.kill(pid, signal.SIGKILL)


# --------------------------------------------------------------------------------------------------------------
# the worker image


@pytest.fixture(scope="module")
def dockerfile():
    return s.dockerfile_stages((s.REPO / "Dockerfile").read_text())


def test_dockerfile_is_multi_stage_on_slim_python(dockerfile):
    global_args, stages = dockerfile
    assert len(stages) >= 2
    for stage in stages:
        name, _, tag = stage.base.rpartition(":")
        assert name == "python" and tag.startswith("3.11") and "slim" in tag, stage.base
        assert tag != "latest"
    final = stages[-1]
    copies = final.args("COPY")
    assert any(c.startswith(f"--from={stages[0].name} ") for c in copies), copies
    # The package is installed from pyproject.toml in the builder stage.
    assert any(re.search(r"\bpip install (\S+ )*\.(\s|$)", a) for a in stages[0].args("RUN"))
    assert any("pyproject.toml" in c for c in stages[0].args("COPY"))


def test_dockerfile_final_stage_is_non_root_without_build_tools(dockerfile):
    _args, stages = dockerfile
    final = stages[-1]
    users = final.args("USER")
    assert users, "the final stage names a user"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    runs = " ".join(final.args("RUN"))
    for tool in ("gcc", "g++", "build-essential", "make ", "clang", "apt-get install"):
        assert tool not in runs, tool
    assert final.args("EXPOSE") == [str(WORKER_PORT)]
    cmd = final.args("CMD")[-1]
    assert cmd == f'["faust", "-A", "kchat_faust", "worker", "-l", "info", "--web-port", "{WORKER_PORT}"]'
    # The worker's user owns the state directory the app defaults to in the image.
    env = " ".join(final.args("ENV"))
    assert "KCHAT_DATADIR=/var/lib/kchat" in env


def test_dockerignore_keeps_the_build_inputs():
    patterns = [ln.strip() for ln in (s.REPO / ".dockerignore").read_text().splitlines()
                if ln.strip() and not ln.startswith("#")]
    for excluded in (".git", ".venv", "tests", ".kafka-local"):
        assert excluded in patterns
    copied = set()
    for _instr, args in s.dockerfile_instructions((s.REPO / "Dockerfile").read_text()):
        if _instr == "COPY" and "--from" not in args:
            copied |= set(args.split()[:-1])
    assert copied >= {"pyproject.toml", "README.md", "kchat_faust", "cli"}
    for path in copied:
        assert not any(path == p or path.startswith(p.rstrip("/") + "/") or p in ("*", "*.md", "*.toml")
                       for p in patterns), path


def test_readme_walks_the_tutorials_path():
    text = (s.K8S / "README.md").read_text()
    for needle in ("kubectl apply -k k8s/overlays/local", "kubectl apply -k k8s/overlays/default",
                   "kubectl exec -n kafka kafka-client", "30192", "30292", "ZooKeeper", "kchat-cli",
                   "docker build"):
        assert needle in text, needle
