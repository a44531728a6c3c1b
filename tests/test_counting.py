"""The counting rule: at-least-once delivery may replay records; each chatroom offset counts once."""
from __future__ import annotations

import random

from kchat_faust.counting import counted


def apply(state, deliveries):
    for partition, offsets in deliveries:
        new = counted(state, partition, offsets)
        if new is not None:
            state = new
    return state


def test_a_new_message_counts_and_remembers_its_place():
    assert counted(None, 3, [10]) == {"count": 1, "seen": {"3": 10}}
    assert counted({"count": 1, "seen": {"3": 10}}, 5, [2, 7]) == {"count": 3, "seen": {"3": 10, "5": 7}}


def test_a_replayed_record_is_not_counted_again():
    state = counted(None, 3, [8, 10])
    assert counted(state, 3, [10]) is None
    assert counted(state, 3, [8, 9]) is None
    assert counted(state, 3, [9, 10, 12]) == {"count": 3, "seen": {"3": 12}}  # part replay, part new


def test_replays_batched_differently_count_every_offset_once():
    # A user's messages in one partition; the first pass and every replay cut them into batches
    # of their own sizes, and each replay starts again from an older commit.
    rng = random.Random(11)
    offsets = sorted(rng.sample(range(10_000), 400))
    deliveries, done = [], 0
    while done < len(offsets):
        start = max(0, done - rng.randrange(0, 60))  # a crash: back to an older commit
        end = min(len(offsets), done + rng.randrange(1, 80))
        i = start
        while i < end:
            size = rng.randrange(1, 25)
            deliveries.append((4, offsets[i:min(i + size, end)]))
            i += size
        done = end
    assert sum(len(o) for _, o in deliveries) > len(offsets)  # there were replays
    state = apply(None, deliveries)
    assert state == {"count": len(offsets), "seen": {"4": offsets[-1]}}


def test_replays_after_crashes_count_every_offset_once():
    # A user's messages on two partitions; a crash replays everything since the last commit,
    # in the same order per partition (a partition's records reach the user's entry in order).
    rng = random.Random(7)
    messages = {0: list(range(0, 300, 3)), 7: list(range(5, 205, 2))}
    deliveries = []
    position = {p: 0 for p in messages}
    committed = dict(position)
    while any(position[p] < len(messages[p]) for p in messages):
        p = rng.choice([q for q in messages if position[q] < len(messages[q])])
        deliveries.append((p, [messages[p][position[p]]]))
        position[p] += 1
        if rng.random() < 0.05:  # a crash: back to the last commit
            position = dict(committed)
        elif rng.random() < 0.1:
            committed = dict(position)
    assert len(deliveries) > sum(map(len, messages.values()))  # there were replays
    state = apply(None, deliveries)
    assert state["count"] == sum(map(len, messages.values()))
    assert state["seen"] == {str(p): offsets[-1] for p, offsets in messages.items()}


# -- InOrder: every record once at least, in offset order --------------------------------------------
def in_order(committed: dict[int, int]):
    from kchat_faust.inorder import InOrder

    handled = []

    async def handle(partition, offset, timestamp, value):
        handled.append(offset)

    async def read(partition, start, stop):
        for offset in range(start, stop):
            yield type("R", (), {"offset": offset, "timestamp": 0, "value": b"%d" % offset})

    return InOrder("test", handle, read, committed.get), handled


async def test_records_faust_skipped_are_taken_from_the_log_first_and_in_order():
    o, handled = in_order(committed={5: 3})
    for offset in (3, 4, 9, 10):  # Faust dropped 5-8 around a rebalance
        await o.take(5, offset, 0, b"")
    assert handled == [3, 4, 5, 6, 7, 8, 9, 10]
    # The first event after an assignment may skip ahead of the committed offset too.
    o.reset()
    o.committed = {5: 11}.get
    await o.take(5, 14, 0, b"")
    assert handled[-4:] == [11, 12, 13, 14]


async def test_a_replay_is_handed_on_again_and_moves_nothing_back():
    o, handled = in_order(committed={})
    for offset in (0, 1, 2, 1, 2, 3, 4):  # Faust delivers 1-2 again: the rules downstream apply once
        await o.take(0, offset, 0, b"")
    assert handled == [0, 1, 2, 1, 2, 3, 4]  # and no false gap after the replay


async def test_the_router_routes_messages_only():
    from kchat_faust.counting import Router
    from kchat_faust.models import encode, encode_presence, new_message, partition_for

    class Copies:
        async def is_copy(self, offset, timestamp, msg_id):
            return offset == 2

    sent, tallied = [], []

    async def send(user, partition, offsets, rooms):
        sent.append((user, offsets, rooms))

    lobby = partition_for("lobby", 12)
    r = Router(send, lambda p: Copies(), "lobby", 12, lambda room, p, msgs: tallied.append((room, msgs)))
    await r.route(lobby, 0, 0, encode(new_message("lobby", "ann", "hi", 4000)))
    await r.route(lobby, 1, 0, encode_presence("kx", "join", "lobby", "ann", 0))  # a join counts for nothing
    await r.route(lobby, 2, 0, encode(new_message("lobby", "ann", "copy", 4000)))  # a copy: not routed
    await r.route(lobby, 3, 5, b"bob: hello from the console producer")
    await r.route(lobby, 4, 6, encode(new_message("lobby", "ann", "again", 4000)))
    await r.route(lobby + 1, 0, 7, b"cy: a console line of another partition, shown in the lobby")
    assert sent == []  # nothing goes out before the batch ends
    await r.flush()
    # one record per user per batch, with the last post per room: read up to there (not for a line
    # that is not in the room's partition)
    assert sent == [("ann", [0, 4], {"lobby": 4}), ("bob", [3], {"lobby": 3}), ("cy", [0], {})]
    assert tallied == [("lobby", [(0, 0), (3, 5), (4, 6)]), ("lobby", [(0, 7)])]
    await r.flush()
    assert len(sent) == 3  # nothing twice


async def test_a_by_user_record_faust_skipped_is_counted_from_the_log():
    """count_messages takes the chatroom-by-user records in order too: a record Faust drops around a
    rebalance, followed by a later one of the same user, would otherwise never count (its offsets are below
    the highest counted by then)."""
    import orjson

    from kchat_faust.counting import Tally
    from kchat_faust.inorder import InOrder

    records = {0: {"user": "ann", "partition": 3, "offsets": [10, 12]},
               1: {"user": "ann", "partition": 3, "offsets": [15], "rooms": {"dev": 15}},
               2: {"user": "ann", "partition": 3, "offsets": [18, 19], "rooms": {"ops": 18}},
               3: "not ours"}
    log = {o: orjson.dumps(r) for o, r in records.items()}
    table: dict = {}

    async def read(partition, start, stop):
        for offset in range(start, stop):
            yield type("R", (), {"offset": offset, "timestamp": 0, "value": log[offset]})

    tally = Tally(table.get)
    order = InOrder("test", tally.take, read, {1: 0}.get)
    for offset in (0, 2, 3):  # Faust dropped offset 1
        await order.take(1, offset, 0, log[offset])
    changed, posted = tally.drain()
    table.update(changed)
    assert table == {"ann": {"count": 5, "seen": {"3": 19}}}
    assert posted == {"ann": {"dev": 15, "ops": 18}}  # the rooms ann posted in, read up to her post
    for offset in (1, 2):  # and delivers it again after the next rebalance: counted once only
        await order.take(1, offset, 0, log[offset])
    assert tally.drain()[0] == {}
