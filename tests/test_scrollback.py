"""A room's history from the room index, in-process: the index's rules (exact under replays and after a
crash between its writes) and the pages built from it over an in-memory log. No Kafka.
tests/test_history_index.py checks the same against real Kafka and workers."""
from __future__ import annotations

import pytest

from kchat_faust import roomindex
from kchat_faust.models import ChatMessage, decode_record, event_id, partition_for
from kchat_faust.roomindex import CHUNK, LocalIndex, appended
from kchat_faust.scrollback import IndexBehind, build_page
from tests.support.memlog import MemoryLog
from tests.test_hub import started, until

ROOM = "quiet"
P = partition_for(ROOM, 12)
# a busy room that shares the quiet room's partition
BUSY = next(f"busy{i}" for i in range(1000) if partition_for(f"busy{i}", 12) == P)


def route(log: MemoryLog, index: LocalIndex, partition: int, stop: int | None = None, batch: int = 100) -> None:
    """What route_by_user does for the index: each batch's messages per room, then the partition's progress."""
    records = log.logs[partition][:stop]
    for i in range(0, len(records), batch):
        rooms: dict[str, list[tuple[int, int]]] = {}
        for r in records[i:i + batch]:
            msg = decode_record(r.value, r.partition, r.offset, r.timestamp, "lobby")
            if isinstance(msg, ChatMessage):
                rooms.setdefault(msg.room, []).append((r.offset, r.timestamp))
        for room, messages in rooms.items():
            index.add(room, partition, messages)
        index.progress(partition, records[min(i + batch, len(records)) - 1].offset)


@pytest.fixture
def log() -> MemoryLog:
    return MemoryLog()


@pytest.fixture
async def hub(log):
    hub = await started(log)
    yield hub
    await hub.stop()


def test_appending_is_exact_under_replays_and_a_crash_between_writes():
    table: dict = {}

    def apply(writes):
        table.update(writes)

    apply(appended(table.get, ROOM, list(range(0, 2 * CHUNK + 5))))
    assert table[ROOM] == {"chunks": 3, "n": 2 * CHUNK + 5}
    assert appended(table.get, ROOM, list(range(0, 2 * CHUNK + 5))) == {}  # a replay: nothing
    # A crash after a new chunk was written but before the head: the replay rewrites the same chunk.
    writes = appended(table.get, ROOM, list(range(2 * CHUNK + 5, 3 * CHUNK + 9)))
    chunk3 = roomindex.chunk_key(ROOM, 3)
    assert list(writes)[-1] == ROOM and chunk3 in writes  # chunks first, the head last
    table[roomindex.chunk_key(ROOM, 2)] = writes[roomindex.chunk_key(ROOM, 2)]
    table[chunk3] = writes[chunk3]
    apply(appended(table.get, ROOM, list(range(2 * CHUNK + 5, 3 * CHUNK + 12))))  # batched otherwise
    view = LocalIndex(table, 12).view(ROOM)
    assert view.n == 3 * CHUNK + 12 and view.offsets(0, view.n) == list(range(3 * CHUNK + 12))


def test_positions_by_binary_search():
    table: dict = {}
    offsets = list(range(10, 10 + 7 * (3 * CHUNK), 7))
    table.update(appended(table.get, ROOM, offsets))
    view = LocalIndex(table, 12).view(ROOM)
    for i in (0, 1, CHUNK - 1, CHUNK, 2 * CHUNK + 3, len(offsets) - 1):
        assert view.position(offsets[i]) == i and view.position(offsets[i] + 1) == i + 1
    assert view.position(0) == 0 and view.position(10**9) == len(offsets)


async def test_a_quiet_room_keeps_its_whole_history_in_a_busy_partition(hub, log):
    index = LocalIndex({}, 12)
    for i in range(3):
        log.post(ROOM, text=f"q{i}")
    for i in range(5000):
        log.post(BUSY, text=f"b{i}")
    route(log, index, P)
    read = []
    real = log.read

    async def counting_read(partition, start, stop):
        async for r in real(partition, start, stop):
            read.append(r.offset)
            yield r

    log.read = counting_read
    page = await build_page(hub, index, "lobby", ROOM, P, 50)
    assert [m["text"] for m in page["messages"]] == ["q0", "q1", "q2"]
    assert page["before"] is None and "gap" not in page
    assert len(read) < 10  # three reads of one record, not the 5,000 others
    assert page["last_event_id"] == event_id(P, len(log.logs[P]) - 1)  # resuming from it misses nothing
    nobody = partition_for("nobody-here", 12)
    empty = await build_page(hub, index, "lobby", "nobody-here", nobody, 5)
    assert empty["messages"] == [] and empty["last_event_id"] == event_id(nobody, len(log.logs[nobody]) - 1)


async def test_paging_back_with_before_yields_every_message_once_in_log_order(hub, log):
    index = LocalIndex({}, 12)
    for i in range(3 * CHUNK + 17):
        log.post(ROOM if i % 3 else BUSY, text=f"m{i}")
    route(log, index, P, stop=len(log.logs[P]) - 20)  # the last records not indexed yet
    expected = [r.offset for r in log.logs[P] if decode_record(r.value, P, r.offset, r.timestamp, "lobby").room == ROOM]
    got, before = [], None
    while True:
        page = await build_page(hub, index, "lobby", ROOM, P, 37, before=before)
        got = [m["offset"] for m in page["messages"]] + got
        if page["before"] is None:
            break
        before = int(page["before"].split(":")[1])
    assert got == expected


async def test_since_starts_at_the_first_message_at_or_after_the_time(hub, log):
    index = LocalIndex({}, 12)
    t = log.clock_ms + 1_000_000  # the log's timestamps never go back
    early = [log.post(ROOM, text=f"e{i}", timestamp=t + i) for i in range(5)]
    log.post(BUSY, timestamp=t + 1_000_000)
    late = [log.post(ROOM, text=f"l{i}", timestamp=t + 2_000_000 + i) for i in range(5)]
    route(log, index, P)
    page = await build_page(hub, index, "lobby", ROOM, P, 3, since_ms=t + 1_000_000)
    assert [m["offset"] for m in page["messages"]] == [r.offset for r in late[:3]]
    assert page["last_event_id"] == event_id(P, late[2].offset)  # more follow: resume after the page
    page = await build_page(hub, index, "lobby", ROOM, P, 50, since_ms=0)
    assert len(page["messages"]) == 10 and page["messages"][0]["offset"] == early[0].offset


async def test_history_says_how_much_the_log_lost(hub, log):
    index = LocalIndex({}, 12)
    mine = [log.post(ROOM, text=f"m{i}") for i in range(10)]
    route(log, index, P)
    log.delete_before(P, mine[4].offset)
    page = await build_page(hub, index, "lobby", ROOM, P, 50)
    assert [m["offset"] for m in page["messages"]] == [r.offset for r in mine[4:]]
    assert page["before"] is None
    assert page["gap"] == {"missing": 4, "first_event_id": event_id(P, mine[4].offset)}


async def test_a_backlog_the_index_has_not_reached_is_refused_not_scanned(hub, log, monkeypatch):
    monkeypatch.setattr("kchat_faust.scrollback.MAX_TAIL_SCAN", 100)
    index = LocalIndex({}, 12)
    for i in range(150):
        log.post(BUSY)
    with pytest.raises(IndexBehind):
        await build_page(hub, index, "lobby", ROOM, P, 50)
    route(log, index, P)
    assert (await build_page(hub, index, "lobby", ROOM, P, 50))["messages"] == []


async def test_a_stream_resuming_below_the_log_start_gets_gap_first(hub, log):
    from tests.test_hub import Client

    for i in range(10):
        log.post(ROOM, text=f"m{i}")
    log.delete_before(P, 6)
    client = Client(hub, room=ROOM, after=2)
    await until(lambda: len(client.transport.event_ids()) == 5)
    assert client.transport.event_ids() == [event_id(P, o) for o in (5, 6, 7, 8, 9)]
    assert client.transport.data.startswith(
        f'id: {P}:5\nevent: gap\ndata: {{"missing_after_event_id":"{P}:2","first_event_id":"{P}:6"}}\n\n'.encode())
    client.task.cancel()


async def test_the_latest_page_without_the_index_reads_back_the_logs_end(hub, log, monkeypatch):
    from kchat_faust.scrollback import latest_from_log

    monkeypatch.setattr("kchat_faust.scrollback.MAX_TAIL_SCAN", 100)
    mine = [log.post(ROOM, text=f"m{i}") for i in range(5)]
    for i in range(150):
        log.post(BUSY)
    late = [log.post(ROOM, text=f"l{i}") for i in range(3)]
    page = await latest_from_log(hub, "lobby", ROOM, P, 2)
    assert [m["offset"] for m in page["messages"]] == [r.offset for r in late[1:]]
    assert page["before"] == event_id(P, late[1].offset) and page["partial"] is True
    page = await latest_from_log(hub, "lobby", ROOM, P, 50)  # the read stopped short of the room's start
    assert [m["offset"] for m in page["messages"]] == [r.offset for r in late]
    end = len(log.logs[P])
    assert page["before"] == event_id(P, end - 100) and mine[-1].offset < end - 100
    # ... and paging on from there through the index finds the rest, once.
    index = LocalIndex({}, 12)
    route(log, index, P)
    rest = await build_page(hub, index, "lobby", ROOM, P, 50, before=end - 100)
    assert [m["offset"] for m in rest["messages"]] == [r.offset for r in mine] and rest["before"] is None
