"""What scripts/k8s-local (and scripts/kafka-local) share: one-line failures, running commands, the cache, the
environment, /proc. Python 3 standard library only: the tools run before any virtualenv."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


class Fail(Exception):
    """A failure the command reports as one line on stderr (exit 1)."""


def info(msg: str) -> None:
    """A progress line on stderr, prefixed with the tool's name."""
    print(f"{Path(sys.argv[0]).name}: {msg}", file=sys.stderr, flush=True)


def run(cmd, check=True, capture=True, timeout=120, **kw) -> subprocess.CompletedProcess:
    """subprocess.run with text output and no stdin; Fail with one line on a non-zero exit (when check), a
    timeout or a missing program."""
    if "input" not in kw:
        kw.setdefault("stdin", subprocess.DEVNULL)
    try:
        cp = subprocess.run(cmd, capture_output=capture, text=True, timeout=timeout, **kw)
    except subprocess.TimeoutExpired:
        raise Fail(f"{' '.join(map(str, cmd[:3]))} did not finish within {timeout}s")
    except FileNotFoundError:
        raise Fail(f"{cmd[0]} not found (not installed?)")
    if check and cp.returncode != 0:
        err = (cp.stderr or cp.stdout or "").strip().splitlines()
        raise Fail(f"{' '.join(map(str, cmd[:4]))} failed (exit {cp.returncode}): {err[-1][:300] if err else ''}")
    return cp


def cache_root() -> Path:
    env = os.environ.get("KCHAT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "kchat"


def kafka_version() -> str:
    """Apache Kafka's version: the <kafka.version> property of kafka/pom.xml."""
    pom = REPO / "kafka" / "pom.xml"
    try:
        root = ET.parse(pom).getroot()
    except (OSError, ET.ParseError) as e:
        raise Fail(f"cannot read {pom}: {e}")
    for el in root.iter():
        if el.tag.rsplit("}", 1)[-1] == "kafka.version" and el.text and el.text.strip():
            return el.text.strip()
    raise Fail(f"no <kafka.version> property in {pom}")


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers bind theirs
        try:
            s.bind((host, port))
            return True
        except OSError:
            return False


def _env_number(name, default, lo, hi, kind, what):
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    bounds = f"{what} from {lo}" if lo is not None else what
    bounds += f" to {hi}" if hi is not None else ""
    try:
        value = kind(raw)
    except ValueError:
        raise Fail(f"{name}={raw}: expected {bounds}")
    if value != value or (lo is not None and value < lo) or (hi is not None and value > hi):  # NaN too
        raise Fail(f"{name}={raw}: expected {bounds}")
    return value


def env_int(name, default, lo=None, hi=None) -> int:
    """An integer from the environment; unset or empty gives default; a bad value raises Fail naming it."""
    return _env_number(name, default, lo, hi, int, "an integer")


def env_float(name, default, lo=None, hi=None) -> float:
    """A number from the environment; unset or empty gives default; a bad value raises Fail naming it."""
    return _env_number(name, default, lo, hi, float, "a number")


def sysctl_path(key) -> Path:
    return Path("/proc/sys") / key.replace(".", "/")


def read_sysctl(key) -> str | None:
    """The sysctl's value, None where this kernel has no such key."""
    try:
        return sysctl_path(key).read_text().strip()
    except OSError:
        return None


def proc_argv(pid) -> list[str]:
    """The command line of a live process; [] when it is gone (or a zombie)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return []
    if state in ("Z", "X"):
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def main_guard(prog: str, main, argv=None) -> int:
    """main(argv)'s exit code; a Fail is one line `prog: error: <message>` and exit 1, Ctrl-C exit 130."""
    try:
        return main(argv) or 0
    except Fail as e:
        print(f"{prog}: error: {e}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
