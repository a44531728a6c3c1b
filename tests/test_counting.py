"""The counting rule: at-least-once delivery may replay records; each chatroom offset counts once."""
from __future__ import annotations

import random

from kchat_faust.counting import counted


def apply(state, deliveries):
    for partition, offset in deliveries:
        new = counted(state, partition, offset)
        if new is not None:
            state = new
    return state


def test_a_new_message_counts_and_remembers_its_place():
    assert counted(None, 3, 10) == {"count": 1, "seen": {"3": 10}}
    assert counted({"count": 1, "seen": {"3": 10}}, 5, 2) == {"count": 2, "seen": {"3": 10, "5": 2}}


def test_a_replayed_record_is_not_counted_again():
    state = counted(None, 3, 10)
    assert counted(state, 3, 10) is None
    assert counted(state, 3, 9) is None


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
        deliveries.append((p, messages[p][position[p]]))
        position[p] += 1
        if rng.random() < 0.05:  # a crash: back to the last commit
            position = dict(committed)
        elif rng.random() < 0.1:
            committed = dict(position)
    assert len(deliveries) > sum(map(len, messages.values()))  # there were replays
    state = apply(None, deliveries)
    assert state["count"] == sum(map(len, messages.values()))
    assert state["seen"] == {str(p): offsets[-1] for p, offsets in messages.items()}


# -- route_by_user's rules -------------------------------------------------------------------------
class NoCopies:
    async def is_copy(self, offset, timestamp, msg_id) -> bool:
        return False


def router(log_records: dict[int, bytes], committed: dict[int, int]):
    from kchat_faust.counting import Router

    sent = []

    async def send(user, partition, offset):
        sent.append((user, partition, offset))

    async def read(partition, start, stop):
        for offset in range(start, stop):
            yield type("R", (), {"offset": offset, "timestamp": 0, "value": log_records[offset]})

    return Router(send, read, lambda p: NoCopies(), committed.get, "lobby"), sent


def value(user: str) -> bytes:
    from kchat_faust.models import encode, new_message

    return encode(new_message("lobby", user, "hi", 4000))


async def test_records_faust_skipped_are_routed_from_the_log_first_and_in_order():
    log = {o: value(f"u{o % 3}") for o in range(20)}
    r, sent = router(log, committed={5: 3})
    await r.take(5, 3, 0, log[3])
    await r.take(5, 4, 0, log[4])
    await r.take(5, 9, 0, log[9])  # Faust dropped 5-8 around a rebalance
    await r.take(5, 10, 0, log[10])
    assert [o for _, _, o in sent] == [3, 4, 5, 6, 7, 8, 9, 10]
    # The first event after an assignment may skip ahead of the committed offset too.
    r.reset()
    r.committed = {5: 11}.get
    await r.take(5, 14, 0, log[14])
    assert [o for _, _, o in sent][-4:] == [11, 12, 13, 14]


async def test_a_replay_is_routed_again_and_moves_nothing_back():
    log = {o: value("ann") for o in range(10)}
    r, sent = router(log, committed={})
    for o in (0, 1, 2, 1, 2, 3):  # Faust delivers 1-2 again: routed again, counted once downstream
        await r.take(0, o, 0, log[o])
    assert [o for _, _, o in sent] == [0, 1, 2, 1, 2, 3]
    await r.take(0, 4, 0, log[4])
    assert sent[-1] == ("ann", 0, 4)  # no false gap after the replay
