"""The durable idempotency keys' rules (keys.LocalKeys), in-process: kept for the retention by log time,
exact under replays, the first sighting kept. tests/test_idempotency.py checks them on real workers."""
from __future__ import annotations

from kchat_faust.keys import LocalKeys

HOUR = 3_600_000


def test_a_key_is_found_within_the_retention_and_then_deleted():
    table: dict = {}
    keys = LocalKeys(table, retention_ms=HOUR)
    keys.add(3, [("ka", 10, 1_000), ("kb", 11, 2_000)])
    assert keys.get("ka", now_ms=1_000 + HOUR) == (10, 1_000)
    assert keys.get("ka", now_ms=1_001 + HOUR) is None  # past the retention: a new message
    keys.add(3, [("kc", 12, 2_001 + HOUR)])  # the partition's log time moves on: older entries go
    assert set(table) == {"kc"}


def test_a_replayed_batch_or_a_later_copy_keeps_the_first_sighting():
    table: dict = {}
    keys = LocalKeys(table, retention_ms=HOUR)
    keys.add(0, [("ka", 10, 1_000)])
    keys.add(0, [("ka", 10, 1_000)])  # the batch again, after a crash
    keys.add(0, [("ka", 50, 9_000)])  # a copy the window did not catch (the publish path lost a race)
    assert keys.get("ka", now_ms=9_000) == (10, 1_000)


def test_the_ages_are_rebuilt_from_the_table_after_a_rebalance():
    table: dict = {}
    LocalKeys(table, retention_ms=HOUR).add(5, [("ka", 1, 1_000), ("kb", 2, 5_000)])
    keys = LocalKeys(table, retention_ms=HOUR)  # another worker, restored from the changelog
    keys.add(5, [("kc", 3, 1_001 + HOUR)])
    assert set(table) == {"kb", "kc"}
    keys.reset()
    keys.add(7, [("kd", 1, 10 * HOUR)])  # another partition's time deletes nothing of partition 5
    assert set(table) == {"kb", "kc", "kd"}
