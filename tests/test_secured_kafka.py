"""Workers against a secured Kafka for real: SASL_SSL listeners with SCRAM-SHA-512 (scripts/kafka-local up
--security sasl_ssl: 3 controllers + 2 brokers, certificates made with openssl, brokers replicating over
SASL_SSL too), the workers configured only through the documented KCHAT_KAFKA_* settings; a wrong password or
a CA that did not sign the brokers' certificates stops a worker with one last line naming the setting."""
from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from kchat_testkit.chat import post, unique, wait_counts
from kchat_testkit.kafka import KafkaCluster
from kchat_testkit.sse import Subscriber
from kchat_testkit.worker import Worker

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    state = tmp_path_factory.mktemp("secured")
    cluster = KafkaCluster.start_new(state / "kafka", brokers=2, extra=("--security", "sasl_ssl"))
    try:
        cluster.create_topic("chatroom", 12, 2, min_isr=1)
        yield cluster, state
    finally:
        cluster.down()


def secured_env(sec: dict, **override) -> dict:
    env = {"KCHAT_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KCHAT_KAFKA_SASL_MECHANISM": sec["mechanism"],
           "KCHAT_KAFKA_SASL_USERNAME": "kchat", "KCHAT_KAFKA_SASL_PASSWORD": sec["users"]["kchat"],
           "KCHAT_KAFKA_SSL_CAFILE": sec["cafile"], "KCHAT_REPLICATION_FACTOR": "2", "KCHAT_MIN_INSYNC_REPLICAS": "1"}
    return {**env, **override}


async def test_two_workers_publish_and_stream_through_sasl_ssl(secured):
    cluster, state = secured
    sec = cluster.security()
    assert sec["protocol"] == "SASL_SSL" and sec["mechanism"] == "SCRAM-SHA-512"
    assert "SASL_SSL://" in (cluster.state_dir / "nodes" / "node-0.properties").read_text()
    workers = [Worker(cluster.bootstrap, state / f"w{i}", secured_env(sec)) for i in range(2)]
    room, users = unique("tls"), [unique("tls-a"), unique("tls-b")]
    subs: list[Subscriber] = []
    try:
        await asyncio.gather(*(asyncio.to_thread(w.start, 180) for w in workers))
        subs = [await Subscriber(w.url, room).start() for w in workers]
        async with httpx.AsyncClient(timeout=30) as client:
            sent = [await post(client, workers[i % 2].url, room, users[i % 2], f"secret {i}") for i in range(20)]
            for s in subs:
                got = await s.wait_for(20, timeout=60)
                assert [m["text"] for m in got] == [m["text"] for m in sent]
                assert [m["offset"] for m in got] == [m["offset"] for m in sent]
            for w in workers:
                assert await wait_counts(client, w.url, {u: 10 for u in users}, timeout=60) == {u: 10 for u in users}
    finally:
        for s in subs:
            await s.stop()
        for w in workers:
            w.stop_or_kill()
    config_line = next(ln for ln in workers[0].log_text().splitlines() if "kchat worker config" in ln)
    assert sec["users"]["kchat"] not in config_line and "SASL_SSL" in config_line  # the password is masked


def run_until_exit(worker: Worker, timeout: float) -> tuple[int | None, str]:
    """Start the worker's process and wait for it to exit by itself; (exit code or None if it did not, log)."""
    log = open(worker.log_path, "ab")
    proc = subprocess.Popen(worker.command(), cwd=worker.workdir, env=worker.env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    try:
        return proc.wait(timeout), worker.log_text()
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return None, worker.log_text()


def other_ca(tmp: Path) -> str:
    """A CA certificate that did not sign the brokers' certificates."""
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=other",
                    "-keyout", str(tmp / "other.key"), "-out", str(tmp / "other.pem")], check=True,
                   capture_output=True)
    return str(tmp / "other.pem")


def test_a_wrong_password_stops_the_worker_with_one_line_naming_the_setting(secured, tmp_path):
    cluster, _state = secured
    worker = Worker(cluster.bootstrap, tmp_path / "w", secured_env(cluster.security(),
                                                                   KCHAT_KAFKA_SASL_PASSWORD="not-the-password"))
    began = time.monotonic()
    code, log = run_until_exit(worker, 90)
    assert code not in (None, 0), f"still running after {time.monotonic() - began:.0f}s; last lines: {log[-1500:]}"
    assert "KCHAT_KAFKA_SASL_PASSWORD" in log.strip().splitlines()[-1], log[-1500:]


def test_an_untrusted_certificate_stops_the_worker_with_one_line_naming_the_setting(secured, tmp_path):
    cluster, _state = secured
    worker = Worker(cluster.bootstrap, tmp_path / "w", secured_env(cluster.security(),
                                                                   KCHAT_KAFKA_SSL_CAFILE=other_ca(tmp_path)))
    began = time.monotonic()
    code, log = run_until_exit(worker, 90)
    assert code not in (None, 0), f"still running after {time.monotonic() - began:.0f}s; last lines: {log[-1500:]}"
    assert "KCHAT_KAFKA_SSL_CAFILE" in log.strip().splitlines()[-1], log[-1500:]
