"""Ports, processes, CPU and waiting for a condition: the small helpers the tests and the bench both need, each once."""
from __future__ import annotations

import asyncio
import inspect
import os
import random
import resource
import socket
import time
from collections.abc import Callable
from pathlib import Path

# Kafka clusters and workers take ports below Linux's default ephemeral range (32768-60999), so that the
# clients' own outgoing connections never take a port a node is about to listen on.
PORT_RANGE = (20000, 32000)
CLK = os.sysconf("SC_CLK_TCK")


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the JVM's server sockets do
    try:
        s.bind((host, port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def free_ports(count: int = 1) -> list[int]:
    """Ports free on 127.0.0.1 right now (held open together, so they are distinct)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port() -> int:
    return free_ports(1)[0]


def free_port_base(span: int, avoid: set[int] = frozenset()) -> int:
    """A base port b such that b..b+span-1 are all free on 127.0.0.1 right now."""
    rng = random.Random()
    for _ in range(500):
        base = rng.randrange(PORT_RANGE[0], PORT_RANGE[1] - span)
        ports = range(base, base + span)
        if not avoid.intersection(ports) and all(port_free(p) for p in ports):
            return base
    raise RuntimeError(f"no {span} free ports in a row found in {PORT_RANGE}")


def pid_alive(pid: int) -> bool:
    """True if pid runs and is not a zombie (a zombie keeps its /proc entry but serves nothing)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def proc_state(pid: int) -> str:
    """The one-letter state of a process (R, S, D, T for stopped, Z ...), '' if it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


def proc_cpu(pid: int | None) -> float:
    """CPU seconds (user + system) another process has used; 0 if none is watched."""
    if not pid:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK


def proc_rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_seconds() -> float:
    """CPU seconds this process has used."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def quiesce(pid: int, limit: float = 30.0, below: float = 0.10) -> float:
    """Wait until the process uses < `below` of a core over half a second (at most `limit` s); returns the wait."""
    began = time.monotonic()
    while time.monotonic() - began < limit:
        c0 = proc_cpu(pid)
        time.sleep(0.5)
        if (proc_cpu(pid) - c0) / 0.5 < below:
            break
    return time.monotonic() - began


def _given_up(what: str | Callable[[], str], timeout: float) -> str:
    return f"{what() if callable(what) else what}: not within {timeout:g}s"


async def until(check, timeout: float, what: str | Callable[[], str], interval: float = 0.2):
    """Poll check() (a plain function or a coroutine function) until it returns something true, and return that;
    fail the test with `what` (or what a function gives, asked only then: what was seen last) at the timeout.

    The timeout is a bound for a stalled machine, not a speed requirement: give it generous seconds."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if inspect.isawaitable(got):
            got = await got
        if got:
            return got
        assert time.monotonic() < deadline, _given_up(what, timeout)
        await asyncio.sleep(interval)


def until_sync(check, timeout: float, what: str | Callable[[], str], interval: float = 0.2,
               sleep: Callable[[float], object] = time.sleep):
    """until() for code without an event loop. `sleep` waits between looks (a browser page's own wait, so that
    its events are served meanwhile)."""
    deadline = time.monotonic() + timeout
    while not (got := check()):
        assert time.monotonic() < deadline, _given_up(what, timeout)
        sleep(interval)
    return got


def raise_nofile() -> int:
    """Raise the open-file limit to its hard limit (thousands of SSE streams need as many descriptors)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def jvms_naming(path: Path) -> list[int]:
    """pids of live kafka.Kafka processes whose command line names path (like `pgrep -f <path>`)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"kafka.Kafka" in argv and any(str(path).encode() in a for a in argv) and pid_alive(int(proc.name)):
            found.append(int(proc.name))
    return found
