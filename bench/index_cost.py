#!/usr/bin/env python3
"""What the room index costs per message: CPU of route_by_user's extra work (roomindex.LocalIndex.add and
progress) and the bytes it writes (the RocksDB values and the changelog records Faust writes for them),
next to the room directory's tally (rooms.LocalRooms.tally), which route_by_user already did per batch --
measured in the same run, interleaved, as ratios.

    .venv/bin/python bench/index_cost.py [--messages N] [--rounds R]

Batches as route_by_user sees them: at 300 msg/s a 50 ms batch holds ~15 messages over a few rooms; at a
burst, 1,000. The tables are dicts that count what a RocksDB table would store and its changelog carry
(Faust writes a changelog record per table write: the key and the JSON value).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

from kchat_faust.models import partition_for
from kchat_faust.roomindex import LocalIndex
from kchat_faust.rooms import LocalRooms

PARTITIONS = 12


class Table(dict):
    """A table that counts the changelog bytes its writes would produce."""

    def __init__(self) -> None:
        super().__init__()
        self.changelog_bytes = 0
        self.writes = 0

    def __setitem__(self, key, value) -> None:
        self.changelog_bytes += len(key.encode()) + len(json.dumps(value, separators=(",", ":")).encode())
        self.writes += 1
        super().__setitem__(key, value)

    def stored_bytes(self) -> int:
        return sum(len(k.encode()) + len(json.dumps(v, separators=(",", ":")).encode()) for k, v in self.items())


def batches(messages: int, batch: int, rooms: int) -> list[tuple[str, int, list[tuple[int, int]]]]:
    """(room, partition, [(offset, ts)]) per room per batch, as Router.flush hands them on; offsets per partition."""
    names = [f"room{i}" for i in range(rooms)]
    offsets = {p: 0 for p in range(PARTITIONS)}
    out = []
    for start in range(0, messages, batch):
        per_room: dict[str, list[tuple[int, int]]] = {}
        for i in range(start, min(messages, start + batch)):
            room = names[i % rooms]
            p = partition_for(room, PARTITIONS)
            per_room.setdefault(room, []).append((offsets[p], 1_700_000_000_000 + i))
            offsets[p] += 1
        out += [(room, partition_for(room, PARTITIONS), msgs) for room, msgs in per_room.items()]
    return out


def run_index(work) -> tuple[float, Table]:
    """route_by_user's index work: the room's offsets, then the partition's progress."""
    def apply(index, room, partition, msgs):
        index.add(room, partition, msgs)
        index.progress(partition, msgs[-1][0])
    return timed(work, LocalIndex, apply)


def run_rooms(work) -> tuple[float, Table]:
    """The room directory's tally, the baseline."""
    return timed(work, LocalRooms, lambda rooms, room, partition, msgs: rooms.tally(room, partition, msgs))


def timed(work, local_class, apply) -> tuple[float, Table]:
    """CPU seconds to apply every batch of `work` to a fresh table, and the table."""
    table = Table()
    local = local_class(table, PARTITIONS)
    t0 = time.process_time()
    for room, partition, msgs in work:
        apply(local, room, partition, msgs)
    return time.process_time() - t0, table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    print(f"{args.messages} messages per cell, {args.rounds} interleaved rounds; CPU per message in µs "
          "(median of rounds), bytes per message")
    print(f"{'cell':<28}{'index µs':>10}{'tally µs':>10}{'index/tally':>13}{'stored B':>10}{'changelog B':>13}")
    for name, batch, rooms in (("300 msg/s: 15/batch, 5 rooms", 15, 5), ("burst: 1000/batch, 5 rooms", 1000, 5),
                               ("one quiet room, 1/batch", 1, 1)):
        work = batches(args.messages, batch, rooms)
        index_t, rooms_t = [], []
        for _ in range(args.rounds):  # interleaved: the same machine state for both
            t, table = run_index(work)
            index_t.append(t)
            rooms_t.append(run_rooms(work)[0])
        i_us = statistics.median(index_t) / args.messages * 1e6
        r_us = statistics.median(rooms_t) / args.messages * 1e6
        print(f"{name:<28}{i_us:>10.2f}{r_us:>10.2f}{i_us / r_us:>13.2f}"
              f"{table.stored_bytes() / args.messages:>10.1f}{table.changelog_bytes / args.messages:>13.1f}")


if __name__ == "__main__":
    main()
