"""The fault suite's checker (kchat_testkit.history) on made-up histories: a clean one passes, and each kind
of damage is found and counted (no Kafka)."""
from __future__ import annotations

import pytest

from kchat_testkit.history import Attempt, History, LogRecord, Op, Window, check, classify
from kchat_testkit.sse import Connect, Event, Subscriber

ROOM, PARTITION = "room-a", 5
USERS = ("u0", "u1")


def made_up(outcomes: list[str]) -> History:
    """Ops with these outcomes (ok / failed / unknown / unknown-stored); the log holds the ok and the
    unknown-stored ones in order; two subscribers (one open stream each) got exactly the log; counts exact."""
    ops, log, offset = [], [], 100
    for i, outcome in enumerate(outcomes):
        key = f"run-{i:06d}"
        op = Op(key, ROOM, USERS[i % 2], f"{key} xxxx")
        t = float(i)
        if outcome == "ok":
            op.attempts.append(Attempt("http://w0", t, t + 0.1, 201, "ok", PARTITION, offset, f"id{i}"))
        elif outcome == "failed":
            op.attempts.append(Attempt("http://w0", t, t + 0.1, 400, "failed", error="bad"))
        else:  # unknown, retried once, still unknown
            op.attempts.append(Attempt("http://w0", t, t + 5, 503, "unknown"))
            op.attempts.append(Attempt("http://w1", t + 6, t + 11, None, "unknown", error="ReadTimeout"))
        if outcome in ("ok", "unknown-stored"):
            log.append(LogRecord(PARTITION, offset, ROOM, op.user, op.text, f"id{i}"))
            offset += 1
        ops.append(op)
    subs = []
    for name in ("a@w0", "b@w1"):
        s = Subscriber("http://w", ROOM, name=name)
        s.connects.append(Connect(0.0, "http://w", None, 200))
        s.events = [Event(r.offset + 0.5, f"{r.partition}:{r.offset}", r.partition, r.offset, r.user, r.text)
                    for r in log]
        subs.append(s)
    want = {u: sum(1 for r in log if r.user == u) for u in USERS}
    return History(ops, subs, log, {"http://w0": dict(want), "http://w1": dict(want)},
                   [Window("fault", 2.0, 4.0)], busy_room=ROOM)


def test_a_clean_history_passes_and_is_counted():
    h = made_up(["ok", "ok", "unknown", "ok", "unknown-stored", "failed", "ok"])
    v = check(h)
    assert v.ok, v.problems
    assert (v.posts, v.acknowledged, v.failed, v.unknown, v.unknown_stored, v.retried) == (7, 4, 1, 2, 1, 2)
    assert (v.lost, v.duplicated, v.reordered, v.gaps, v.inconsistent, v.count_errors) == (0, 0, 0, 0, 0, 0)
    # acks at 0.1, 1.1, 3.1, 6.1 within the posts' window 0..6: the longest stretch without one is 3.0 s
    assert v.longest_ack_gap == pytest.approx(3.0)
    assert v.recovery["fault"] == pytest.approx(6.1 - 4.0)  # the first post sent after healing: #6 at 6.0


def test_outcomes_from_status():
    assert [classify(s) for s in (200, 201, 400, 404, 413, 429, 500, 503, None)] == \
        ["ok", "ok", "failed", "failed", "failed", "failed", "unknown", "unknown", "unknown"]


def test_log_copies_that_readers_drop_are_not_duplicates():
    h = made_up(["ok", "ok"])
    first = h.log[0]
    h.log.append(LogRecord(PARTITION, 102, ROOM, first.user, first.text, "id0"))  # a second copy of key 0
    v = check(h)
    assert v.ok, v.problems
    assert v.log_copies == 1 and v.duplicated == 0


@pytest.mark.parametrize("damage, field, words", [
    ("acked_not_in_log", "lost", "not in the log (lost)"),
    ("not_delivered", "lost", "acknowledged messages never delivered"),
    ("stored_unknown_not_delivered", "gaps", "a gap"),
    ("ack_names_another_place", "inconsistent", "another message at"),
    ("event_differs_from_log", "inconsistent", "does not hold at their place"),
    ("delivered_twice", "duplicated", "more than once"),
    ("copy_delivered", "duplicated", "more than once"),
    ("acked_at_two_places", "duplicated", "acknowledged twice at different places"),
    ("reordered", "reordered", "out of the log's order"),
    ("failed_but_stored", "failed_seen", "definitely failed but stored"),
    ("count_high", "count_errors", "!= messages in the log"),
    ("count_missing", "count_errors", "did not answer"),
    ("foreign_record", "inconsistent", "no post of it wrote"),
    ("malformed_event", "inconsistent", "malformed"),
])
def test_each_kind_of_damage_is_found(damage, field, words):
    h = made_up(["ok", "ok", "unknown-stored", "ok", "failed", "ok"])
    a, b = h.subscribers
    if damage == "acked_not_in_log":
        gone = h.log.pop(1)
        for s in h.subscribers:
            s.events = [e for e in s.events if e.offset != gone.offset]
    elif damage == "not_delivered":
        del a.events[1]
    elif damage == "stored_unknown_not_delivered":
        del b.events[2]  # the unknown-but-stored one
    elif damage == "ack_names_another_place":
        h.ops[0].attempts[0].offset = h.log[1].offset
        h.ops[1].attempts[0].offset = h.log[0].offset
    elif damage == "event_differs_from_log":
        e = a.events[0]
        a.events[0] = Event(e.t, e.id, e.partition, e.offset, e.user, "run-000000 something else")
    elif damage == "delivered_twice":
        a.events.append(a.events[-1])
    elif damage == "copy_delivered":
        r = h.log[0]
        copy = LogRecord(PARTITION, 200, ROOM, r.user, r.text, r.id)
        h.log.append(copy)
        a.events.append(Event(9.0, "5:200", PARTITION, 200, r.user, r.text))
    elif damage == "acked_at_two_places":
        r = h.log[0]
        h.log.append(LogRecord(PARTITION, 200, ROOM, r.user, r.text, r.id))
        h.ops[0].attempts.append(Attempt("http://w1", 9.0, 9.1, 201, "ok", PARTITION, 200))
        for s in h.subscribers:
            s.events.append(Event(9.0, "5:200", PARTITION, 200, r.user, r.text))
    elif damage == "reordered":
        a.events[1], a.events[2] = a.events[2], a.events[1]
    elif damage == "failed_but_stored":
        op = h.ops[4]
        h.log.append(LogRecord(PARTITION, 200, ROOM, op.user, op.text, "idx"))
        for s in h.subscribers:
            s.events.append(Event(9.0, "5:200", PARTITION, 200, op.user, op.text))
        h.counts = {w: {u: c + (u == op.user) for u, c in seen.items()} for w, seen in h.counts.items()}
    elif damage == "count_high":
        h.counts["http://w1"]["u0"] += 1
    elif damage == "count_missing":
        h.counts["http://w1"] = None
    elif damage == "foreign_record":
        h.log.append(LogRecord(PARTITION, 200, ROOM, "u0", "somebody-else's text", "idy"))
    elif damage == "malformed_event":
        a.problems.append("event without a valid id")
    v = check(h)
    assert not v.ok
    assert getattr(v, field) >= 1, (field, v)
    assert any(words in p for p in v.problems), v.problems


def test_one_message_missing_everywhere_is_one_lost():
    h = made_up(["ok", "ok", "ok"])
    for s in h.subscribers:
        del s.events[1]
    v = check(h)
    assert v.lost == 1 and len(v.problems) == 2  # one line per subscriber, one lost message


def test_a_subscriber_is_held_only_to_what_its_streams_covered():
    h = made_up(["ok", "ok", "ok", "ok"])
    a = h.subscribers[0]
    a.connects[-1].t_end, a.connects[-1].error = 2.5, "ReadTimeout"  # its last stream broke and never came back
    del a.events[2:]
    assert check(h).ok
    a.connects.append(Connect(3.0, "http://w", a.events[-1].id, 200))  # it came back: now it owes the rest
    v = check(h)
    assert v.lost == 2 and not v.ok


def test_counts_follow_what_readers_show_a_copy_delivered_counts():
    h = made_up(["ok", "ok"])
    r = h.log[0]
    h.log.append(LogRecord(PARTITION, 102, ROOM, r.user, r.text, r.id))
    h.subscribers[0].events.append(Event(9.0, "5:102", PARTITION, 102, r.user, r.text))
    want = {u: c + (u == r.user) for u, c in h.counts["http://w0"].items()}
    h.counts = {w: dict(want) for w in h.counts}
    v = check(h)
    assert v.duplicated == 1 and v.count_errors == 0  # one fault (the copy), reported once
