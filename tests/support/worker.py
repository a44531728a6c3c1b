"""Pytest fixtures that run real kchat workers (`faust -A kchat_faust worker`) against real Kafka."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FAUST = str(Path(sys.executable).with_name("faust"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Worker:
    """One worker process; start/stop/kill keep its port and data dir, like a pod restart."""

    def __init__(self, bootstrap: str, workdir: Path, env: dict | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / "worker.log"
        self.env = {
            **os.environ,
            "KCHAT_BROKER": "kafka://" + bootstrap,
            "KCHAT_REPLICATION_FACTOR": "1",
            "KCHAT_DATADIR": str(workdir / "data"),
            "KCHAT_ADVERTISED_HOST": "127.0.0.1",
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 90.0) -> "Worker":
        assert self.proc is None or self.proc.poll() is not None, "already running"
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [FAUST, "-A", "kchat_faust", "worker", "-l", "info", "--web-port", str(self.port)],
            cwd=self.workdir, env=self.env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self.wait_ready(timeout)
        return self

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/readyz", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode}; see {self.log_path}")
            if self.ready():
                return
            time.sleep(0.3)
        raise RuntimeError(f"worker not ready within {timeout}s; see {self.log_path}")

    def stop(self, timeout: float = 40.0) -> float:
        """SIGTERM and wait; returns how long the worker took to exit."""
        if self.proc is None or self.proc.poll() is not None:
            return 0.0
        began = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError(f"worker ignored SIGTERM for {timeout}s; see {self.log_path}")
        return time.monotonic() - began

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def restart(self) -> None:
        self.stop()
        self.start()

    def wipe_state(self) -> None:
        """Forget local RocksDB state, as a pod with an emptyDir does when it is rescheduled."""
        shutil.rmtree(self.workdir / "data", ignore_errors=True)


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
        try:
            w.stop()
        except RuntimeError:
            w.kill()


@pytest.fixture(scope="session")
def kchat_worker(worker_factory):
    """The session's main worker: a test that stops or kills it starts it again before it ends."""
    return worker_factory()
