"""An outage in the log: one line when it starts, a summary while it lasts, one when it ends."""
from __future__ import annotations

import logging

import pytest

from kchat_faust.brokers import BrokerWatch, LogGate


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def gate(clock):
    gate = LogGate(clock=clock, quiet=5.0, summary_every=10.0)
    gate.install()
    yield gate
    gate.uninstall()


def kchat_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "kchat.kafka"]


def aiokafka_noise(n: int) -> None:
    client, fetcher = logging.getLogger("aiokafka"), logging.getLogger("aiokafka.consumer.fetcher")
    for i in range(n):
        client.error("Unable connect to node with id %s: [Errno 111] Connect call failed ('127.0.0.1', 9092)", 0)
        client.error("Unable to update metadata from [%s]", 0)
        fetcher.error("Failed fetch messages from 0: NodeNotReadyError: Attempt to send a request to node "
                      "which is not ready (node id 0).")


def test_an_outage_is_one_line_then_a_summary_every_ten_seconds_then_one_line(gate, clock, caplog):
    caplog.set_level(logging.INFO)
    for second in range(30):  # 30 s of brokers gone: ~130 aiokafka lines a second
        aiokafka_noise(43)
        gate.tick(reachable=False)
        clock.now += 1
    lines = kchat_lines(caplog)
    assert len(lines) == 1 + 2, lines  # the start, then a summary at 10 s and at 20 s
    assert lines[0].startswith("kafka: cannot reach a broker (Unable connect to node with id 0")
    assert "no broker reachable for 10s" in lines[1] and "1419 client errors" in lines[1]  # 11 s of 129 lines
    assert not [r for r in caplog.records if r.name.startswith("aiokafka")]  # none got through
    # The brokers are back: the errors of the last 10 s are summed up once more, and after 5 s
    # of quiet one line closes the episode with the whole tally.
    for second in range(20):
        gate.tick(reachable=True)
        clock.now += 1
    lines = kchat_lines(caplog)
    assert len(lines) == 5, lines
    assert "for 30s" in lines[3]
    assert lines[4].startswith("kafka: brokers answer again; the trouble lasted 29s (3870 client errors:")
    assert "1290 connect" in lines[4] and "1290 metadata" in lines[4] and "1290 fetch" in lines[4]
    # A new outage is a new episode.
    aiokafka_noise(1)
    assert kchat_lines(caplog)[-1].startswith("kafka: cannot reach a broker")


def test_other_aiokafka_errors_are_not_swallowed(gate, caplog):
    caplog.set_level(logging.INFO)
    logging.getLogger("aiokafka").error("Topic chatroom not found in cluster metadata")
    logging.getLogger("aiokafka.consumer.group_coordinator").error(
        "SASL authentication failed: SaslAuthenticationFailedError")
    assert [r.getMessage() for r in caplog.records if r.name.startswith("aiokafka")] == [
        "Topic chatroom not found in cluster metadata", "SASL authentication failed: SaslAuthenticationFailedError"]
    assert kchat_lines(caplog) == []


def test_some_brokers_down_is_said_so_while_the_others_answer(gate, clock, caplog):
    caplog.set_level(logging.INFO)
    for second in range(12):
        aiokafka_noise(2)
        gate.tick(reachable=True)  # another broker answers the probe
        clock.now += 1
    assert "some brokers unreachable for 10s" in kchat_lines(caplog)[1]


async def test_readiness_follows_the_probe_with_a_grace_period(clock):
    answers = []

    async def probe() -> None:
        if not answers or not answers[-1]:
            raise OSError("no broker")

    watch = BrokerWatch(probe, grace=3.0, clock=clock)
    assert not watch.reachable  # nobody has answered yet
    answers.append(True)
    await watch.check()
    assert watch.reachable
    answers.append(False)
    for _ in range(2):
        clock.now += 1
        await watch.check()
        assert watch.reachable  # a few seconds of silence are not an outage yet
    clock.now += 1
    await watch.check()
    assert not watch.reachable
    answers.append(True)
    await watch.check()
    assert watch.reachable
