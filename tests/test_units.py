"""Pure functions: settings, validation, record decoding, SSE framing (no Kafka needed)."""
from __future__ import annotations

import json

import pytest

from kchat_faust.config import ConfigError, Settings, kafka_servers
from kchat_faust.fanout import sse_frame
from kchat_faust.kafka_io import partition_for
from kchat_faust.models import (ValidationError, decode_record, new_message, parse_compat_body,
                                parse_event_id)


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
    assert json.loads(m.dumps())["user"] == "Zoë 🙂"
    assert "__faust" not in json.loads(m.dumps())


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
    for bad in ("", "4", "a:b", "4:-1", "1:2:3"):
        with pytest.raises(ValidationError):
            parse_event_id(bad)


def test_sse_frame_cannot_be_broken_by_newlines():
    frame = sse_frame("test", "a\ndata: x\r\nid: 9", "1:2").decode()
    assert frame == "id: 1:2\nevent: test\ndata: a\ndata: data: x\ndata: id: 9\n\n"
    # U+2028 is no SSE line break: it must stay inside its data line
    assert sse_frame("message", '{"t":"a\u2028b"}', "0:1").decode().count("data:") == 1


def test_rooms_map_to_stable_partitions_like_the_java_client():
    # murmur2 of the key, as Kafka's Java producer partitions: a room never moves.
    assert partition_for("lobby", 12) == partition_for("lobby", 12)
    assert {partition_for(f"room{i}", 12) for i in range(200)} == set(range(12))
