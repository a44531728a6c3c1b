"""A real kchat worker process (`faust -A kchat_faust worker`) against real Kafka: start, stop, kill, restart."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from .procs import free_port

FAUST = str(Path(sys.executable).with_name("faust"))


class Worker:
    """One worker process; start/stop/kill keep its port and data dir, like a pod restart.

    net=(namespace, address) runs it in that network namespace (KafkaCluster.host()), reached at that address
    by this machine and by the other workers."""

    def __init__(self, bootstrap: str, workdir: Path, env: dict | None = None,
                 net: tuple[str, str] | None = None, faust: str = FAUST) -> None:
        self.net, self.faust = net, faust
        self.host = net[1] if net else "127.0.0.1"
        self.port = 6066 if net else free_port()  # a namespace has its ports to itself
        self.url = f"http://{self.host}:{self.port}"
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / "worker.log"
        self.env = {
            **os.environ,
            "KCHAT_BROKER": "kafka://" + bootstrap,
            "KCHAT_REPLICATION_FACTOR": "1",
            "KCHAT_DATADIR": str(workdir / "data"),
            "KCHAT_ADVERTISED_HOST": self.host,
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        self.proc: subprocess.Popen | None = None

    def command(self) -> list[str]:
        cmd = [self.faust, "-A", "kchat_faust", "worker", "-l", "info", "--web-port", str(self.port)]
        return (["nsenter", f"--net=/run/netns/{self.net[0]}"] + cmd) if self.net else cmd

    def start(self, timeout: float = 90.0) -> "Worker":
        assert self.proc is None or self.proc.poll() is not None, "already running"
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.command(), cwd=self.workdir, env=self.env, stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        self.wait_ready(timeout)
        return self

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def ready(self) -> bool:
        return self.readyz() == 200

    def readyz(self) -> int | None:
        """GET /readyz's status; None if the worker did not answer."""
        try:
            with urllib.request.urlopen(self.url + "/readyz", timeout=2) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code
        except OSError:
            return None

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
        if not self.running():
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

    def stop_or_kill(self) -> None:
        """Stop it; SIGKILL if it will not stop (cleanup paths must never leave a worker behind)."""
        try:
            self.stop()
        except RuntimeError:
            self.kill()

    def kill(self) -> None:
        if self.running():
            self.proc.kill()
            self.proc.wait()

    def pause(self) -> None:
        if self.running():
            self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.running():
            self.proc.send_signal(signal.SIGCONT)

    def restart(self) -> None:
        self.stop()
        self.start()

    def wipe_state(self) -> None:
        """Forget local RocksDB state, as a pod with an emptyDir does when it is rescheduled."""
        shutil.rmtree(self.workdir / "data", ignore_errors=True)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""
