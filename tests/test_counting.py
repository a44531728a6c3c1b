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
