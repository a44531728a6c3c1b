"""Idempotent publish, the readers' side: a keyed record is a copy when the previous record with its id
in the partition is at most one window older; every reader drops the same copies."""
from __future__ import annotations

import asyncio

import pytest

from kchat_faust.copies import CopyIndex
from kchat_faust.models import keyed_id, partition_for
from kchat_faust.roomindex import LocalIndex
from kchat_faust.scrollback import build_page
from tests.support.memlog import MemoryLog
from tests.test_hub import ROOM, Client, ids, started, until

W = 10_000  # ms
P = partition_for(ROOM, 12)


def index() -> CopyIndex:
    i = CopyIndex(W)
    i.start(0, 0, horizon_ts=0)
    return i


def test_a_second_sighting_within_the_window_is_a_copy_and_after_it_is_a_new_message():
    i = index()
    assert i.observe(0, 0, 100_000, "ka") is False
    assert i.observe(0, 1, 100_000 + W, "ka") is True  # exactly one window later: still a copy
    assert i.observe(0, 2, 100_000 + 3 * W, "ka") is False  # more than a window after the last: new
    assert i.observe(0, 3, 100_000 + 3 * W + 1, None) is False  # unkeyed records are never copies


def test_copies_chain_from_the_latest_sighting():
    i = index()
    # Each within a window of the one before; the last is more than a window after the first.
    assert [i.observe(0, n, 100_000 + n * W // 2, "ka") for n in range(4)] == [False, True, True, True]
    assert i.chain_start(0, 3, "ka") == (0, 100_000)  # all copies of the first


def test_judging_an_observed_record_again_gives_the_same_answer():
    i = index()
    for n, ts in enumerate([100_000, 100_500, 115_000]):
        i.observe(0, n, ts, "ka")
    assert [i.is_copy(0, n, ts, "ka") for n, ts in enumerate([100_000, 100_500, 115_000])] == [False, True, False]
    assert i.is_copy(0, 3, 115_001, "ka") is None  # not observed yet


def test_what_the_index_has_not_seen_it_does_not_judge():
    i = CopyIndex(W)
    i.start(0, 50, horizon_ts=100_000)
    i.observe(0, 50, 100_000, "ka")
    assert i.is_copy(0, 49, 99_000, "ka") is None  # before coverage
    assert i.is_copy(0, 50, 100_000, "ka") is None  # its window reaches before the horizon
    i.observe(0, 51, 100_000 + W + 1, "kb")
    assert i.is_copy(0, 51, 100_000 + W + 1, "kb") is False


def test_the_index_forgets_after_two_windows_and_stays_bounded():
    i = CopyIndex(W, max_ids=100)
    i.start(0, 0, horizon_ts=0)
    for n in range(1000):
        i.observe(0, n, 100_000 + n * 100, f"k{n}")
    assert len(i.partitions[0].order) <= 100
    assert i.is_copy(0, 0, 100_000, "k0") is None  # forgotten: no longer judged


def test_original_answers_a_retry_only_within_the_window():
    i = index()
    i.observe(0, 7, 100_000, "ka")
    assert i.original(0, "ka", 100_000 + W) == (7, 100_000)
    assert i.original(0, "ka", 100_000 + W + 1) is None
    assert i.original(0, "kb", 100_000) is None


# -- the hub drops them everywhere ----------------------------------------------------------------
@pytest.fixture
def log() -> MemoryLog:
    return MemoryLog()


@pytest.fixture
async def hub(log):
    hub = await started(log, subscriber_buffer=1000, idempotency_window=W / 1000)
    yield hub
    await hub.stop()


async def test_live_subscribers_get_a_keyed_message_once(hub, log):
    client = await Client(hub).parked()
    first = log.post(ROOM, key="key-1")
    copy = log.post(ROOM, key="key-1")
    other = log.post(ROOM, key="key-2")
    await until(lambda: len(client.transport.event_ids()) == 2)
    await asyncio.sleep(0.1)
    assert client.transport.event_ids() == ids(first.offset, other.offset)
    assert copy.offset > first.offset
    assert hub.metrics.registry.get_sample_value("kchat_copies_dropped_total") == 1


async def test_resume_and_history_drop_the_same_copies(hub, log):
    first = log.post(ROOM, text="once", key="k")
    log.post(ROOM, text="once", key="k")
    after = log.post(ROOM, text="after")
    await until(lambda: hub.positions[P] == after.offset + 1)
    # An index that has not been told of them yet: the page reads them from the log, dropping the copy.
    page = await build_page(hub, LocalIndex({}, 12), "lobby", ROOM, P, 10)
    assert [m["offset"] for m in page["messages"]] == [first.offset, after.offset]
    client = Client(hub, after=-1)
    await until(lambda: len(client.transport.event_ids()) == 2)
    await client.parked()
    assert client.transport.event_ids() == ids(first.offset, after.offset)


async def test_a_copy_is_judged_from_the_log_where_the_hub_has_not_seen_the_window():
    log = MemoryLog()
    first = log.post(ROOM, key="k")  # before the hub started, and older than the window it reads back
    copy = log.post(ROOM, key="k", timestamp=first.timestamp + W - 1)
    later = log.post(ROOM, text="later", timestamp=first.timestamp + W)
    hub = await started(log, subscriber_buffer=1000, idempotency_window=W / 1000)
    try:
        hub.copies.partitions[P].covered_from = later.offset  # as if its read-back began after them
        client = Client(hub, after=-1)
        await until(lambda: len(client.transport.event_ids()) == 2)
        assert client.transport.event_ids() == ids(first.offset, later.offset)
        judge = hub.judge(P)
        assert [await judge.is_copy(r.offset, r.timestamp, rid) for r, rid in
                [(first, keyed_id(ROOM, "ann", "k")), (copy, keyed_id(ROOM, "ann", "k")), (later, None)]] == [
            False, True, False]
        assert copy.offset == first.offset + 1
    finally:
        await hub.stop()


async def test_a_retry_is_answered_with_the_stored_original(hub, log):
    first = log.post(ROOM, text="hello", key="k")
    msg_id = keyed_id(ROOM, "ann", "k")
    await until(lambda: hub.positions[P] > first.offset)
    stored = await hub.stored(ROOM, msg_id)
    assert (stored["offset"], stored["id"], stored["text"]) == (first.offset, msg_id, "hello")
    assert await hub.stored(ROOM, keyed_id(ROOM, "ann", "other")) is None
    # A copy made anyway (the retry raced the first attempt): the answer names the original.
    copy = log.post(ROOM, text="hello", key="k")
    original = await hub.original_of(ROOM, P, copy.offset, msg_id, timeout=5)
    assert original["offset"] == first.offset
    assert await hub.original_of(ROOM, P, first.offset, msg_id, timeout=5) is None  # it is the original


async def test_the_hub_reads_one_window_back_at_start_to_judge_the_first_live_records():
    log = MemoryLog()
    first = log.post(ROOM, key="k")  # stored before this worker started
    hub = await started(log, subscriber_buffer=1000, idempotency_window=W / 1000)
    try:
        client = await Client(hub).parked()
        log.post(ROOM, key="k")  # the retry's copy arrives live
        fresh = log.post(ROOM, key="k2")
        await until(lambda: client.transport.event_ids())
        await asyncio.sleep(0.1)
        assert client.transport.event_ids() == ids(fresh.offset)
        assert (await hub.stored(ROOM, keyed_id(ROOM, "ann", "k")))["offset"] == first.offset
    finally:
        await hub.stop()
