"""Pytest fixtures that run real kchat workers (kchat_testkit.worker.Worker) against real Kafka."""
from __future__ import annotations

import pytest

from kchat_testkit.worker import Worker


@pytest.fixture(scope="session")
def worker_factory(kafka_bootstrap, tmp_path_factory):
    """Start extra workers in the same group; they are stopped at the end of the session."""
    started: list[Worker] = []

    def make(env: dict | None = None, bootstrap: str | None = None, start: bool = True) -> Worker:
        w = Worker(bootstrap or kafka_bootstrap, tmp_path_factory.mktemp("worker"), env)
        started.append(w)
        return w.start() if start else w

    yield make
    for w in started:
        w.stop_or_kill()


@pytest.fixture(scope="session")
def kchat_worker(worker_factory):
    """The session's main worker: a test that stops or kills it starts it again before it ends."""
    return worker_factory()
