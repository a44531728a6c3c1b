"""The fault suite's scenarios (kchat_testkit.faults_scenarios) run against fakes: each makes its fault, keeps it
for its row's `hold`, undoes it, and says the same seconds in its notes. No Kafka, no root; the real faults run in
tests/test_faults.py."""
from __future__ import annotations

import random

import pytest

from kchat_testkit import faults
from kchat_testkit.faults_scenarios import SCENARIOS, Fault


class Recording:
    """Stands for the cluster or a worker: records every call made on it, answers None."""

    def __init__(self, name: str, calls: list[str]) -> None:
        self.name, self.calls = name, calls

    def active_controller(self) -> int:
        return 101

    def __getattr__(self, method: str):
        return lambda *args: self.calls.append(f"{self.name}.{method}{args}")


class FakeEnv:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.cluster = Recording("cluster", self.calls)
        self.workers = [Recording("w0", self.calls), Recording("w1", self.calls)]

    async def do(self, fn, *args):
        return fn(*args)

    async def leader(self, room: str) -> int:
        return 2

    async def describe_room(self, room: str) -> str:
        return "p0: leader 2"


@pytest.mark.parametrize("sc", SCENARIOS, ids=lambda sc: sc.name)
async def test_a_scenario_is_made_kept_for_its_hold_and_undone(sc, monkeypatch):
    kept: list[float] = []

    async def keep(self: Fault) -> None:
        kept.append(self.hold)
    monkeypatch.setattr(Fault, "keep", keep)
    env = FakeEnv()
    f = Fault(env, "room", random.Random(1), sc.hold, sc.describe_at)
    await sc.fault(f)

    assert kept == [sc.hold]
    [window] = f.windows
    assert window.t_start <= window.t_in_force <= window.t_lifting <= window.t_heal
    assert len(env.calls) >= 2, env.calls  # made and undone
    assert any(f"{sc.hold:g}s" in note for note in f.notes), f.notes


def test_the_table_is_the_one_source_and_the_suite_still_names_it():
    assert faults.SCENARIOS is SCENARIOS
    assert len({sc.name for sc in SCENARIOS}) == len(SCENARIOS)
    assert [sc.name for sc in SCENARIOS if sc.quick] == ["kill-busy-leader", "isolate-broker",
                                                          "worker-cut-from-brokers"]
    for sc in SCENARIOS:
        assert sc.describe_at is None or 0 < sc.describe_at < sc.hold, sc.name
        if sc.name.endswith("s") and sc.name.rsplit("-", 1)[-1][:-1].isdigit():  # pause-leader-5s
            assert sc.hold == float(sc.name.rsplit("-", 1)[-1][:-1]), sc.name
