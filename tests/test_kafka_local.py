"""scripts/kafka-local and the Kafka fixtures, against real brokers."""

from __future__ import annotations

import asyncio
import json
import socket
import time
import uuid
from collections import defaultdict

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from kchat_testkit.kafka import (PORT_IN_USE, PORT_SPAN, KafkaCluster, create_topic, describe_topic, parse_describe,
                                 run_kafka_local)
from kchat_testkit.procs import free_port_base, jvms_naming, pid_alive

pytestmark = pytest.mark.kafka


# --------------------------------------------------------------------------------------------------------------
# single node: produce and consume through the fixture's broker


async def test_keyed_messages_round_trip_in_order_over_all_partitions(kafka_bootstrap):
    topic = f"roundtrip-{uuid.uuid4().hex[:8]}"
    create_topic(kafka_bootstrap, topic, partitions=12, rf=1)
    keys = [f"user-{i}" for i in range(40)]
    n = 1200
    sent = [(keys[i % len(keys)], f"{keys[i % len(keys)]}:{i // len(keys)}:{uuid.uuid4().hex[:6]}")
            for i in range(n)]

    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        assert await producer.partitions_for(topic) == set(range(12))
        futures = [await producer.send(topic, key=k.encode(), value=v.encode()) for k, v in sent]
        metas = await asyncio.gather(*futures)
    finally:
        await producer.stop()
    sent_partition = {k: set() for k in keys}
    for (k, _v), meta in zip(sent, metas):
        sent_partition[k].add(meta.partition)
    assert all(len(ps) == 1 for ps in sent_partition.values()), "a key went to two partitions"

    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id=None, enable_auto_commit=False,
                                auto_offset_reset="earliest")
    await consumer.start()
    got = []
    try:
        tps = [TopicPartition(topic, p) for p in range(12)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        deadline = time.monotonic() + 60
        while len(got) < n and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=1000)
            for tp, records in batches.items():
                got += [(tp.partition, r.offset, r.key.decode(), r.value.decode()) for r in records]
        await asyncio.sleep(0.5)  # anything beyond n would be a duplicate
        extra = await consumer.getmany(timeout_ms=500)
        got += [(tp.partition, r.offset, r.key.decode(), r.value.decode())
                for tp, records in extra.items() for r in records]
    finally:
        await consumer.stop()

    assert len(got) == n
    assert sorted((k, v) for _p, _o, k, v in got) == sorted(sent)  # exact content, no loss, no duplicate
    per_key = defaultdict(list)
    for p, o, k, v in sorted(got, key=lambda x: (x[0], x[1])):  # partition order = log order
        per_key[k].append(v)
        assert p in sent_partition[k]
    for k in keys:
        assert per_key[k] == [v for kk, v in sent if kk == k], f"order of {k} changed"
    assert {p for p, *_ in got} == set(range(12)), "some partition got no message"


# --------------------------------------------------------------------------------------------------------------
# 4 brokers


def test_cluster4_chatroom_topic_spreads_over_all_brokers(kafka4_cluster):
    status = kafka4_cluster.status()
    assert sorted(status) == [0, 1, 2, 3, 100, 101, 102]
    assert all(s["alive"] and pid_alive(s["pid"]) for s in status.values())
    assert [status[b]["roles"] for b in range(4)] == [["broker"]] * 4
    assert kafka4_cluster.bootstrap.count(",") == 3

    for attempt in range(2):  # the second run must be a no-op
        cp = kafka4_cluster.run("topic", "chatroom", "--partitions", "12", "--replication-factor", "4",
                                "--min-insync-replicas", "2")
        assert cp.returncode == 0
        assert "PartitionCount: 12" in cp.stdout and "ReplicationFactor: 4" in cp.stdout
        assert "min.insync.replicas=2" in cp.stdout
        parts = parse_describe(cp.stdout)
        assert sorted(parts) == list(range(12))
        for p in parts.values():
            assert sorted(p.replicas) == [0, 1, 2, 3]
            assert sorted(p.isr) == [0, 1, 2, 3]
        assert {p.leader for p in parts.values()} == {0, 1, 2, 3}
        assert ("Created topic" in cp.stderr) == (attempt == 0)


def test_cluster4_kill_and_restart_a_broker(kafka4_cluster):
    kafka4_cluster.run("topic", "chatroom", "--partitions", "12", "--replication-factor", "4",
                       "--min-insync-replicas", "2")
    pid = kafka4_cluster.status()[3]["pid"]
    kafka4_cluster.kill(3)
    assert not pid_alive(pid)
    status = kafka4_cluster.status()
    assert not status[3]["alive"] and all(s["alive"] for n, s in status.items() if n != 3)
    assert kafka4_cluster.run("status", check=False).returncode == 3
    dead = kafka4_cluster.run("status", "--json", check=False)
    assert dead.returncode == 3
    assert [n["id"] for n in json.loads(dead.stdout)["nodes"] if not n["alive"]] == [3]
    # the controller fences broker 3 after broker.session.timeout.ms; ISRs shrink to the other three (each
    # look is a JVM's TopicCommand, which a busy machine runs slowly)
    deadline = time.monotonic() + 180
    while True:
        parts = parse_describe(describe_topic(kafka4_cluster.bootstrap, "chatroom"))
        if all(3 not in p.isr and p.leader != 3 for p in parts.values()):
            break
        assert time.monotonic() < deadline, parts
        time.sleep(1)

    kafka4_cluster.start(3)
    assert kafka4_cluster.status()[3]["alive"]
    deadline = time.monotonic() + 180
    while True:  # leave the session cluster healthy: every replica back in sync
        parts = parse_describe(describe_topic(kafka4_cluster.bootstrap, "chatroom"))
        if all(sorted(p.isr) == [0, 1, 2, 3] for p in parts.values()):
            break
        assert time.monotonic() < deadline, parts
        time.sleep(1)


# --------------------------------------------------------------------------------------------------------------
# CLI behaviours


def test_status_lists_the_single_node_with_a_live_pid(kafka_cluster):
    if kafka_cluster.state_dir is None:
        pytest.skip("external cluster (KCHAT_TEST_BOOTSTRAP)")
    cp = kafka_cluster.run("status")
    lines = cp.stdout.strip().splitlines()
    assert len(lines) == 1
    nid, roles, port, pid, state = lines[0].split()
    assert (nid, roles, state) == ("0", "broker,controller", "alive")
    assert f"127.0.0.1:{port}" == kafka_cluster.bootstrap
    assert pid_alive(int(pid))
    assert (kafka_cluster.state_dir / "pids" / "node-0.pid").read_text().strip() == pid
    assert kafka_cluster.run("bootstrap").stdout.strip() == kafka_cluster.bootstrap


def test_status_json_is_the_state_for_programs(kafka_cluster):
    if kafka_cluster.state_dir is None:
        pytest.skip("external cluster (KCHAT_TEST_BOOTSTRAP)")
    cp = kafka_cluster.run("status", "--json")
    assert cp.returncode == 0
    state = json.loads(cp.stdout)
    recorded = kafka_cluster.info()
    assert state["cluster_id"] == recorded["cluster_id"] and len(state["cluster_id"]) == 22  # base64 of a UUID
    assert (state["mode"], state["bootstrap"]) == ("single", kafka_cluster.bootstrap)
    assert state["state_dir"] == str(kafka_cluster.state_dir.resolve())
    [node] = state["nodes"]
    pid = int((kafka_cluster.state_dir / "pids" / "node-0.pid").read_text())
    port = int(kafka_cluster.bootstrap.rsplit(":", 1)[1])
    assert node == {"id": 0, "roles": ["broker", "controller"], "host": "127.0.0.1", "broker_port": port,
                    "controller_port": port + 1, "pid": pid, "alive": True}
    assert pid_alive(pid)


@pytest.mark.parametrize("which", ["broker", "controller"])
def test_up_refuses_a_taken_port_before_starting_anything(tmp_path, which):
    base = free_port_base(PORT_SPAN)
    taken = base if which == "broker" else base + 1
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", taken))
    blocker.listen()
    try:
        cp = run_kafka_local("up", "--port-base", str(base), state_dir=tmp_path / "state", check=False)
    finally:
        blocker.close()
    assert cp.returncode == PORT_IN_USE
    assert cp.stdout == ""
    err = cp.stderr.strip().splitlines()
    assert len(err) == 1 and str(taken) in err[0] and "in use" in err[0], cp.stderr
    assert "Traceback" not in cp.stderr
    assert not list((tmp_path / "state").glob("pids/*.pid"))
    assert jvms_naming(tmp_path / "state") == []


@pytest.mark.parametrize("args", [["up", "--no-such-flag"], ["frobnicate"], ["kill"], ["topic", "t"]])
def test_usage_errors_exit_non_zero(tmp_path, args):
    cp = run_kafka_local(*args, state_dir=tmp_path, check=False)
    assert cp.returncode == 2
    assert "usage:" in cp.stderr and "Traceback" not in cp.stderr


def test_help_on_every_subcommand():
    for sub in ["fetch", "up", "down", "status", "bootstrap", "kill", "start", "topic", "describe"]:
        cp = run_kafka_local(sub, "--help")
        assert cp.returncode == 0 and f"kafka-local {sub}" in cp.stdout
    assert "--brokers" in run_kafka_local("up", "--help").stdout


def test_commands_without_a_cluster_fail_with_one_line(tmp_path):
    for args in (["bootstrap"], ["status"], ["status", "--json"], ["kill", "0"], ["describe", "x"]):
        cp = run_kafka_local(*args, state_dir=tmp_path, check=False)
        assert cp.returncode == 1, args
        assert cp.stdout == "", args
        assert len(cp.stderr.strip().splitlines()) == 1 and "no Kafka cluster running" in cp.stderr
    cp = run_kafka_local("down", state_dir=tmp_path, check=False)
    assert cp.returncode == 0 and "nothing running" in cp.stderr


def test_up_down_up_cycle_leaves_no_jvm(tmp_path):
    state = tmp_path / "cycle"
    cluster = KafkaCluster.start_new(state)
    try:
        pids = [int(p.read_text()) for p in (state / "pids").glob("*.pid")]
        assert len(pids) == 1 and all(pid_alive(p) for p in pids)
        assert jvms_naming(state) == pids
        again = run_kafka_local("up", "--port-base", str(cluster.port_base + 100), state_dir=state, check=False)
        assert again.returncode == 1 and "already running" in again.stderr

        run_kafka_local("down", state_dir=state)
        assert not any(pid_alive(p) for p in pids)
        assert jvms_naming(state) == []
        assert not list((state / "pids").glob("*.pid"))
        assert run_kafka_local("bootstrap", state_dir=state, check=False).returncode == 1
        down_again = run_kafka_local("down", state_dir=state, check=False)
        assert down_again.returncode == 0 and "nothing running" in down_again.stderr

        cluster = KafkaCluster.start_new(state)
        described = create_topic(cluster.bootstrap, "after-cycle", partitions=3, rf=1)
        assert "PartitionCount: 3" in described
        # fresh storage: the topic of the first life is gone, the new one is all there is
        assert parse_describe(describe_topic(cluster.bootstrap, "after-cycle")).keys() == {0, 1, 2}
    finally:
        run_kafka_local("down", state_dir=state, check=False)
    assert jvms_naming(state) == []


def test_up_timeout_names_the_node_and_its_log_and_stops_it(tmp_path):
    state = tmp_path / "slow"
    cp = run_kafka_local("up", "--port-base", str(free_port_base(PORT_SPAN)), "--timeout", "0.5", state_dir=state,
                         check=False)
    assert cp.returncode == 1
    last = cp.stderr.strip().splitlines()[-1]
    assert "node 0" in last and "not serving after" in last and str(state / "logs" / "node-0.log") in last, last
    assert "Traceback" not in cp.stderr
    assert jvms_naming(state) == []
    assert not list((state / "pids").glob("*.pid"))


@pytest.mark.parametrize("name, value, expected", [
    ("KCHAT_KAFKA_PORT", "abc", "an integer"),
    ("KCHAT_KAFKA_PORT", "70000", "from 1 to 65535"),
    ("KCHAT_KAFKA_STATE", "{file}", "a directory"),
    ("KCHAT_CACHE", "{file}", "a directory"),
    ("KCHAT_KAFKA_JVM_OPTS", "-Xss1m Xmx1g", "JVM options"),
    ("KCHAT_KAFKA_CDS", "maybe", "1 or 0"),
    ("JAVA_HOME", "{tmp}/no-jdk", "bin/java"),
])
def test_a_bad_environment_value_is_one_line_naming_it_and_starts_nothing(tmp_path, monkeypatch, name, value,
                                                                           expected):
    (tmp_path / "a-file").write_text("not a directory\n")
    value = value.format(file=tmp_path / "a-file", tmp=tmp_path)
    monkeypatch.setenv(name, value)
    if name != "KCHAT_KAFKA_STATE":
        monkeypatch.setenv("KCHAT_KAFKA_STATE", str(tmp_path / "state"))
    port_base = [] if name == "KCHAT_KAFKA_PORT" else ["--port-base", str(free_port_base(PORT_SPAN))]
    cp = run_kafka_local("up", *port_base, "--timeout", "30", check=False)
    assert cp.returncode == 1, cp.stderr
    assert cp.stdout == "" and "Traceback" not in cp.stderr
    [line] = cp.stderr.strip().splitlines()
    assert line.startswith(f"kafka-local: error: {name}={value}: expected") and expected in line, line
    assert jvms_naming(tmp_path / "state") == []
    if name.startswith("KCHAT_"):  # kafka-local's own settings are checked before any command does anything
        assert not (tmp_path / "state").exists()


def test_kchat_kafka_port_sets_the_port_base(tmp_path, monkeypatch):
    base = free_port_base(PORT_SPAN)
    monkeypatch.setenv("KCHAT_KAFKA_PORT", str(base))
    state = tmp_path / "env-port"
    try:
        up = run_kafka_local("up", state_dir=state)
        assert up.stdout.strip().splitlines()[-1] == f"127.0.0.1:{base}"
        nodes = json.loads(run_kafka_local("status", "--json", state_dir=state).stdout)["nodes"]
        assert [(n["broker_port"], n["controller_port"]) for n in nodes] == [(base, base + 1)]
    finally:
        run_kafka_local("down", state_dir=state, check=False)
    assert jvms_naming(state) == []
