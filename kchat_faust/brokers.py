"""Whether this worker can reach the brokers, and what an outage costs the log.

aiokafka logs every failed retry of every client: with the brokers gone, a worker's four
clients wrote ~1,300 lines in 10 seconds. An operator needs three things instead: one line
when the trouble starts, a summary while it lasts, one line when it ends. LogGate sits on
aiokafka's loggers and turns their connection errors into exactly that; BrokerWatch probes
the brokers every second (a metadata request), tells /readyz, and closes the episode.
"""
from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import Counter
from typing import Awaitable, Callable

import mode

log = logging.getLogger("kchat.kafka")

# aiokafka's messages for a broker it cannot reach or that stopped answering, by kind.
_KINDS = [
    ("connect", re.compile(r"Unable connect to node|Connect call failed|Connection at .* closed")),
    ("metadata", re.compile(r"Unable to (update|request) metadata")),
    ("fetch", re.compile(r"Failed fetch messages")),
    ("group", re.compile(r"coordinator|heartbeat|leavegroup|joingroup|syncgroup|offsetcommit", re.I)),
    ("produce", re.compile(r"produce|Produce")),
]
_CONNECTION = re.compile(r"NodeNotReady|KafkaConnection|Connect call failed|Connection at|Unable connect|"
                         r"Heartbeat failed.*coordinator|Unable to (bootstrap|connect)|"
                         r"Unable to (update|request) metadata|RequestTimedOut|KafkaTimeout|"
                         r"NotCoordinator|CoordinatorNotAvailable|CoordinatorLoadInProgress|"
                         r"NotLeaderForPartition|NotLeaderOrFollower|LeaderNotAvailable|"
                         r"Marking the coordinator dead|Errno 111|Errno 113|timed out")


def kind_of(message: str) -> str:
    for kind, pattern in _KINDS:
        if pattern.search(message):
            return kind
    return "other"


class LogGate(logging.Filter):
    """A filter for aiokafka's loggers: connection trouble is counted, not printed.

    Anything else aiokafka says (authentication failures, unknown topics, bugs) passes.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic, quiet: float = 5.0,
                 summary_every: float = 10.0) -> None:
        super().__init__()
        self.clock, self.quiet, self.summary_every = clock, quiet, summary_every
        self.started: float | None = None  # when the current episode began
        self.last_error = 0.0
        self.last_summary = 0.0
        self.counts: Counter[str] = Counter()
        self.first = ""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        message = record.getMessage()
        if not _CONNECTION.search(message):
            return True
        now = self.clock()
        if self.started is None:
            self.started = self.last_summary = now
            self.counts.clear()
            self.first = message.splitlines()[0][:300]
            log.warning("kafka: cannot reach a broker (%s); a summary follows every %gs until it answers",
                        self.first, self.summary_every)
        self.last_error = now
        self.counts[kind_of(message)] += 1
        return False

    def _tally(self) -> str:
        return ", ".join(f"{n} {kind}" for kind, n in self.counts.most_common())

    def tick(self, reachable: bool) -> None:
        """Called every second or so: a summary while the trouble lasts, one line when it ends."""
        if self.started is None:
            return
        now = self.clock()
        if reachable and now - self.last_error >= self.quiet:
            log.warning("kafka: brokers answer again; the trouble lasted %.0fs (%d client errors: %s)",
                        self.last_error - self.started, sum(self.counts.values()), self._tally())
            self.started = None
        elif now - self.last_summary >= self.summary_every and (
                not reachable or self.last_error > self.last_summary):
            self.last_summary = now
            log.warning("kafka: %s for %.0fs (%d client errors so far: %s)",
                        "some brokers unreachable" if reachable else "no broker reachable",
                        now - self.started, sum(self.counts.values()), self._tally())

    def closing(self) -> None:
        if self.started is not None:
            log.warning("kafka: stopping with brokers unreachable for %.0fs (%d client errors: %s)",
                        self.clock() - self.started, sum(self.counts.values()), self._tally())

    def install(self) -> None:
        for name in _aiokafka_loggers():
            logging.getLogger(name).addFilter(self)

    def uninstall(self) -> None:
        for name in _aiokafka_loggers():
            logging.getLogger(name).removeFilter(self)


def _aiokafka_loggers() -> list[str]:
    # A logger's filters see only its own records, not its children's: every aiokafka module logs
    # through its own logger, so each gets the filter.
    import aiokafka  # noqa: F401  (its modules' loggers exist once it is imported)

    return sorted(name for name in logging.root.manager.loggerDict
                  if name == "aiokafka" or name.startswith("aiokafka."))


class BrokerWatch(mode.Service):
    """Probes the brokers every `interval` seconds; `reachable` turns false after `grace`
    seconds without an answer, and true again at the first one."""

    def __init__(self, probe: Callable[[], Awaitable[None]], *, interval: float = 1.0, grace: float = 3.0,
                 gate: LogGate | None = None, clock: Callable[[], float] = time.monotonic,
                 close: Callable[[], Awaitable[None]] | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.probe, self.interval, self.grace, self.clock, self._close = probe, interval, grace, clock, close
        self.gate = gate if gate is not None else LogGate(clock=clock)
        self.last_answer: float | None = None
        self.started_at = clock()

    @property
    def reachable(self) -> bool:
        if self.last_answer is None:
            return False
        return self.clock() - self.last_answer < self.grace

    async def on_start(self) -> None:
        # Installed for good: the clients keep retrying while the worker stops, after this service.
        self.gate.install()

    async def on_stop(self) -> None:
        self.gate.closing()
        if self._close is not None:
            await self._close()

    async def wait_until_reachable(self, timeout: float, refused: tuple[type[Exception], ...] = ()) -> bool:
        """Before the worker starts its Kafka clients: probe until a broker answers, at most `timeout`
        seconds. Faust's clients give up for good when no broker answers as they start (a worker
        started before its brokers exited and was restarted, over and over, with a growing back-off).
        A `refused` error from the probe (wrong credentials, an untrusted certificate) is raised."""
        self.gate.install()
        deadline = self.clock() + timeout
        while True:
            try:
                await self.probe()
            except refused:
                raise
            except Exception:  # noqa: BLE001 (not reachable yet)
                pass
            else:
                self.last_answer = self.clock()
            self.gate.tick(self.reachable)
            if self.reachable:
                return True
            if self.clock() >= deadline:
                return False
            await asyncio.sleep(self.interval)

    async def check(self) -> None:
        try:
            await self.probe()
        except Exception:  # any failure to answer is "not reachable"; the gate counted its lines
            pass
        else:
            self.last_answer = self.clock()
        self.gate.tick(self.reachable)

    @mode.Service.task
    async def _watch(self) -> None:
        while not self.should_stop:
            await self.check()
            await self.sleep(self.interval)
