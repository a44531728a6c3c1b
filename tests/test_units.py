"""Pure functions: settings, validation, record decoding, SSE framing (no Kafka needed)."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from aiokafka.partitioner import DefaultPartitioner

from kchat_faust.config import ConfigError, Settings, kafka_servers
from kchat_faust.kafka_io import KchatTransport, Publisher
from kchat_faust.metrics import Metrics
from kchat_faust.models import (ValidationError, decode_record, encode, new_message, parse_compat_body,
                                parse_event_id, partition_for)


def test_settings_defaults_follow_the_card():
    s = Settings.from_env({})
    assert (s.partitions, s.replication_factor, s.min_insync_replicas) == (12, 4, 2)
    assert s.bootstrap_servers == "127.0.0.1:9092"


def test_min_isr_defaults_down_to_rf_on_a_one_broker_laptop():
    assert Settings.from_env({"KCHAT_REPLICATION_FACTOR": "1"}).min_insync_replicas == 1


@pytest.mark.parametrize("env,word", [
    ({"KCHAT_REPLICATION_FACTOR": "2", "KCHAT_MIN_INSYNC_REPLICAS": "3"}, "above"),
    ({"KCHAT_PARTITIONS": "twelve"}, "whole number"),
    ({"KCHAT_PARTITIONS": "0"}, "at least 1"),
    ({"KCHAT_BROKER": " , "}, "names no broker"),
    ({"KCHAT_PUBLISH_TIMEOUT": "-1"}, "positive"),
    ({"KCHAT_GROUP_SESSION_TIMEOUT": "3"}, "outside 6..1800"),
    ({"KCHAT_IDEMPOTENCY_RETENTION": "60", "KCHAT_IDEMPOTENCY_WINDOW": "600"}, "below KCHAT_IDEMPOTENCY_WINDOW"),
])
def test_bad_settings_are_refused_with_the_variable_named(env, word):
    with pytest.raises(ConfigError, match=word) as exc:
        Settings.from_env(env)
    assert next(iter(env)) in str(exc.value)


def test_broker_list_forms():
    assert kafka_servers("kafka://a:1,kafka://b:2") == "a:1,b:2"
    assert kafka_servers("kafka://a:1,b") == "a:1,b:9092"


@pytest.mark.parametrize("room,user,text,field", [
    ("bad room", "u", "t", "room"),
    ("r" * 65, "u", "t", "room"),
    ("", "u", "t", "room"),
    ("ok", "", "t", "user"),
    ("ok", "a\tb", "t", "user"),
    ("ok", "u" * 65, "t", "user"),
    ("ok", None, "t", "user"),
    ("ok", "u", "", "text"),
    ("ok", "u", " \n ", "text"),
    ("ok", "u", "x" * 4001, "text"),
    ("ok", "u", "nul\x00", "text"),
    ("ok", "u", "\ud800", "text"),
    ("ok", "u", ["list"], "text"),
])
def test_validation_names_the_bad_field(room, user, text, field):
    with pytest.raises(ValidationError) as exc:
        new_message(room, user, text, 4000)
    assert exc.value.field == field


def test_a_valid_message_keeps_newlines_and_unicode():
    m = new_message("room_1-A", "Zoë 🙂", "two\nlines\tand tab", 4000)
    assert m.text == "two\nlines\tand tab" and len(m.id) == 32
    assert json.loads(encode(m)) == {"id": m.id, "room": "room_1-A", "user": "Zoë 🙂",
                                     "text": "two\nlines\tand tab", "sent_at": m.sent_at}


def test_compat_body_prefix():
    assert parse_compat_body("bob: hi: there") == ("bob", "hi: there")
    assert parse_compat_body("no prefix") == ("anonymous", "no prefix")
    assert parse_compat_body(": empty name") == ("anonymous", ": empty name")


def test_plain_text_records_from_the_console_producer_are_shown_not_dropped():
    m = decode_record(b"dave: typed in kafka-console-producer", 3, 7, 0, "lobby")
    assert (m.room, m.user, m.text, m.id) == ("lobby", "dave", "typed in kafka-console-producer", "3-7")
    assert decode_record(None, 0, 0, 0, "lobby") is None


def test_event_ids_round_trip_and_garbage_is_refused():
    assert parse_event_id("4:120") == (4, 120)
    assert parse_event_id("4:-1") == (4, -1)  # before the first record: from the start
    for bad in ("", "4", "a:b", "4:-2", "-1:3", "1:2:3"):
        with pytest.raises(ValidationError):
            parse_event_id(bad)


def test_rooms_map_to_stable_partitions_like_the_java_client():
    # murmur2 of the key, as Kafka's Java producer partitions: a room never moves.
    assert partition_for("lobby", 12) == partition_for("lobby", 12)
    assert {partition_for(f"room{i}", 12) for i in range(200)} == set(range(12))


def test_the_publisher_puts_a_room_where_aiokafkas_partitioner_would():
    partitioner = DefaultPartitioner()
    counts = {"chatroom": set(range(12))}
    producer = SimpleNamespace(client=SimpleNamespace(cluster=SimpleNamespace(
        partitions_for_topic=lambda topic: counts.get(topic))))
    publisher = Publisher(Settings.from_env({}), Metrics())
    assert publisher.partition_of("chatroom", "lobby") is None  # not connected: the producer chooses
    publisher._producer = producer
    assert publisher.partition_of("elsewhere", "lobby") is None  # no metadata yet: likewise
    for n in (12, 24, 12):  # the topic grew, then a new cluster has it with 12 again
        counts["chatroom"] = set(range(n))
        for room in ("lobby", "ops", *(f"r{i}" for i in range(300))):
            assert publisher.partition_of("chatroom", room) == partitioner(room.encode(), list(range(n)),
                                                                           list(range(n)))


def test_kafka_security_settings_reach_both_kinds_of_client(tmp_path):
    import faust

    ca = tmp_path / "ca.pem"
    ca.write_text("")  # only existence is checked when parsing
    env = {"KCHAT_KAFKA_SECURITY_PROTOCOL": "sasl_plaintext", "KCHAT_KAFKA_SASL_MECHANISM": "scram-sha-256",
           "KCHAT_KAFKA_SASL_USERNAME": "kchat", "KCHAT_KAFKA_SASL_PASSWORD": "s3cret"}
    s = Settings.from_env(env)
    opts = s.aiokafka_options()
    assert (opts["security_protocol"], opts["sasl_mechanism"]) == ("SASL_PLAINTEXT", "SCRAM-SHA-256")
    assert (opts["sasl_plain_username"], opts["sasl_plain_password"]) == ("kchat", "s3cret")
    assert "ssl_context" not in opts
    creds = s.faust_credentials()
    assert isinstance(creds, faust.SASLCredentials) and creds.username == "kchat"
    assert s.summary()["sasl_password"] == "***" and "s3cret" not in repr(s.summary())
    assert Settings.from_env({}).faust_credentials() is None
    assert Settings.from_env({}).aiokafka_options()["security_protocol"] == "PLAINTEXT"


@pytest.mark.parametrize("env,word", [
    ({"KCHAT_KAFKA_SECURITY_PROTOCOL": "TLS"}, "must be one of"),
    ({"KCHAT_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "needs KCHAT_KAFKA_SASL_USERNAME"),
    ({"KCHAT_KAFKA_SASL_MECHANISM": "GSSAPI"}, "must be one of"),
    ({"KCHAT_KAFKA_SSL_CAFILE": "/no/such/ca.pem"}, "not a readable file"),
    ({"KCHAT_LOG_FORMAT": "xml"}, "must be one of"),
])
def test_bad_kafka_security_settings_are_refused(env, word):
    with pytest.raises(ConfigError, match=word):
        Settings.from_env(env)


def test_jwt_secret_is_never_logged():
    assert Settings.from_env({"KCHAT_JWT_SECRET": "topsecret"}).summary()["jwt_secret"] == "***"


def test_rate_limiter_allows_a_burst_then_asks_to_wait():
    from kchat_faust.ratelimit import RateLimiter

    now = [100.0]
    limiter = RateLimiter(rate=2, burst=3, clock=lambda: now[0])
    assert [limiter.retry_after("a") for _ in range(3)] == [0, 0, 0]
    assert limiter.retry_after("a") == 1
    assert limiter.retry_after("b") == 0  # per user
    now[0] += 0.5  # one token back at 2/s
    assert limiter.retry_after("a") == 0 and limiter.retry_after("a") == 1
    assert RateLimiter(rate=0, burst=1).retry_after("x") == 0  # off


def test_a_worker_with_a_bad_setting_stops_with_one_line(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    faust_cli = str(Path(sys.executable).with_name("faust"))
    done = subprocess.run([faust_cli, "-A", "kchat_faust", "worker"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL,
                          env={**os.environ, "KCHAT_REPLICATION_FACTOR": "1", "KCHAT_MIN_INSYNC_REPLICAS": "2"})
    assert done.returncode != 0
    assert done.stderr.strip().splitlines() == [
        "kchat: KCHAT_MIN_INSYNC_REPLICAS=2 is above KCHAT_REPLICATION_FACTOR=1: every acks=all publish would fail"]


async def test_the_counting_consumer_fetches_in_batches():
    from kchat_faust.app import create_app

    app = create_app(Settings())
    from kchat_faust.kafka_io import COUNTING_FETCH_MAX_WAIT_MS, COUNTING_FETCH_MIN_BYTES

    async def nothing(*args) -> None:
        return None

    faust_consumer = app.transport.create_consumer(callback=nothing, on_partitions_revoked=nothing,
                                                   on_partitions_assigned=nothing)
    thread = faust_consumer._new_consumer_thread()
    consumer = thread._create_worker_consumer(app.transport)
    # A consumer that is never started: the values its fetcher would be built with.
    assert (consumer._fetch_min_bytes, consumer._fetch_max_wait_ms) == (COUNTING_FETCH_MIN_BYTES,
                                                                        COUNTING_FETCH_MAX_WAIT_MS)
    assert consumer._group_id == app.conf.id  # still Faust's own group consumer otherwise


async def test_the_producer_flushes_every_queued_changelog_write_before_a_commit():
    from kchat_faust.app import create_app

    app = create_app(Settings())

    producer = app.producer
    assert isinstance(producer, KchatTransport.Producer)
    rounds = []

    class SlowBuffer:
        """Faust's buffer gives up a flush after 0.1 s without progress, still holding messages."""

        size = 3

        async def flush(self) -> None:
            rounds.append(self.size)
            self.size -= 1

    producer.buffer, real = SlowBuffer(), producer.buffer
    try:
        await producer.flush()
    finally:
        producer.buffer = real
    assert rounds == [3, 2, 1, 0]  # until the buffer is empty, then Faust's own call


# Faust's own names for the settings kchat sets from KCHAT_* (faust.Settings reads them from the environment and
# lets them beat the constructor's arguments unless the app is built with an environment of its own).
FAUST_NAMES = {"BROKER_URL": "kafka://elsewhere:1", "APP_DATADIR": "/nowhere", "TOPIC_PARTITIONS": "3",
               "TOPIC_REPLICATION_FACTOR": "3", "BROKER_SESSION_TIMEOUT": "10", "BROKER_HEARTBEAT_INTERVAL": "1",
               "PRODUCER_ACKS": "1", "APP_ENV_PREFIX": "X"}


def test_faust_environment_names_change_no_setting(monkeypatch):
    from kchat_faust.app import create_app, faust_names_set

    for name, value in FAUST_NAMES.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("X_BROKER_SESSION_TIMEOUT", "11")  # what APP_ENV_PREFIX would have pointed at
    app = create_app(Settings.from_env())
    conf = app.conf
    assert (str(conf.broker[0]), str(conf.datadir), conf.topic_partitions, conf.topic_replication_factor,
            conf.producer_acks) == ("kafka://127.0.0.1:9092", "kchat-data", 12, 4, -1)
    assert (conf.broker_session_timeout, conf.broker_heartbeat_interval) == (20.0, 3.0)
    assert faust_names_set() == sorted(FAUST_NAMES)  # named in the startup warning


async def test_kchat_group_session_timeout_is_what_faust_runs_with(monkeypatch):
    from kchat_faust.app import create_app

    monkeypatch.setenv("BROKER_SESSION_TIMEOUT", "30")
    monkeypatch.setenv("KCHAT_GROUP_SESSION_TIMEOUT", "10")
    app = create_app(Settings.from_env())
    assert (app.conf.broker_session_timeout, app.conf.broker_heartbeat_interval) == (10.0, 3.0)

    async def nothing(*args) -> None:
        return None

    # What the group's consumer is built with (never started): aiokafka sends it in its JoinGroup.
    thread = app.transport.create_consumer(callback=nothing, on_partitions_revoked=nothing,
                                           on_partitions_assigned=nothing)._new_consumer_thread()
    consumer = thread._create_worker_consumer(app.transport)
    assert (consumer._session_timeout_ms, consumer._heartbeat_interval_ms) == (10000, 3000)


@pytest.mark.parametrize("raw, ms", [
    ("0", 0), ("1733324400123", 1733324400123),
    ("2026-12-04T15:00:00Z", 1796396400000), ("2026-12-04T15:00:00.250z", 1796396400250),
    ("2026-12-04T16:00:00+01:00", 1796396400000),
])
def test_since_takes_epoch_milliseconds_or_rfc3339(raw, ms):
    from kchat_faust.models import parse_time

    assert parse_time(raw) == ms


@pytest.mark.parametrize("raw", ["", "yesterday", "2026-12-04", "2026-12-04T15:00:00", "-5", "1e12",
                                 "12345678901234567"])
def test_a_since_that_is_no_time_is_refused_naming_the_parameter(raw):
    from kchat_faust.models import parse_time

    with pytest.raises(ValidationError) as exc:
        parse_time(raw)
    assert exc.value.field == "since"
