"""Pytest plugin: real Kafka clusters (kchat_testkit.kafka, through scripts/kafka-local), one per session.

Fixtures (session scope):
  kafka_cluster      KafkaCluster: a single combined broker+controller node (node id 0)
  kafka_bootstrap    str: its bootstrap list, e.g. "127.0.0.1:23456"
  kafka4_cluster     KafkaCluster: 3 controllers (ids 100..102) + 4 brokers (ids 0..3)
  kafka4_bootstrap   str: "127.0.0.1:P,127.0.0.1:P+1,127.0.0.1:P+2,127.0.0.1:P+3"
and own_kafka (function scope): a single-node cluster of the test's own.

Environment:
  KCHAT_TEST_BOOTSTRAP   use this (single-node) cluster instead of starting one
  KCHAT_TEST_BOOTSTRAP4  use this 4-broker cluster instead of starting one (then kafka4_cluster.run() cannot
                         kill or start nodes)

Clusters use ports below the usual ephemeral range and never 9092, so a developer's own Kafka does not clash.
Each cluster's state dir (logs: <state>/logs/node-<id>.log) lives under pytest's basetemp.
"""

from __future__ import annotations

import os

import pytest

from kchat_testkit.kafka import KafkaCluster, run_kafka_local


def _session_cluster(tmp_path_factory, name: str, brokers: int, env: str):
    external = os.environ.get(env)
    if external:
        yield KafkaCluster(bootstrap=external, brokers=brokers)
        return
    state = tmp_path_factory.mktemp(name)
    cluster = None
    try:
        cluster = KafkaCluster.start_new(state, brokers=brokers)
        yield cluster
    finally:
        if cluster is not None:
            cluster.down()
        else:  # a failed `up` stops what it started; make sure anyway
            run_kafka_local("down", "--kill", state_dir=state, check=False, timeout=60)


@pytest.fixture(scope="session")
def kafka_cluster(tmp_path_factory):
    yield from _session_cluster(tmp_path_factory, "kafka1-", 1, "KCHAT_TEST_BOOTSTRAP")


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_cluster) -> str:
    return kafka_cluster.bootstrap


@pytest.fixture(scope="session")
def kafka4_cluster(tmp_path_factory):
    yield from _session_cluster(tmp_path_factory, "kafka4-", 4, "KCHAT_TEST_BOOTSTRAP4")


@pytest.fixture(scope="session")
def kafka4_bootstrap(kafka4_cluster) -> str:
    return kafka4_cluster.bootstrap


@pytest.fixture
def own_kafka(tmp_path):
    """A single-node cluster of the test's own, for tests that stop brokers or need their own group."""
    cluster = KafkaCluster.start_new(tmp_path / "kafka")
    yield cluster
    cluster.down()
