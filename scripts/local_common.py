"""What scripts/kafka-local and scripts/k8s-local both need: one-line failures, progress lines, commands,
the cache, Kafka's version, ports, environment variables, sysctls and processes.

Python 3 standard library only, like the tools: they run before any virtualenv exists. Each tool runs its
main through main_guard, so that every failure, whatever the tool, is one line on stderr and exit 1.
"""
from __future__ import annotations

import math
import os
import re
import socket
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
POM = REPO / "kafka" / "pom.xml"

# The name progress lines and errors start with: the tool's, set by main_guard; until then the program's.
_prog = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "local"


class Fail(Exception):
    """A failure the command reports as one line (no traceback: the user can act on a sentence, not on a
    stack). exit_code: what the tool then exits with; a subclass may name a code of its own."""

    exit_code = 1


def info(msg: str) -> None:
    """A progress line on stderr: stdout stays for what programs read (a bootstrap list, JSON)."""
    print(f"{_prog}: {msg}", file=sys.stderr, flush=True)


def run(cmd, check=True, capture=True, timeout=120, **kw) -> subprocess.CompletedProcess:
    """Run a command (text, no stdin unless input= is given); raise Fail with one line, the command and the
    last line of its stderr, on a non-zero exit (when check), a timeout or a missing program: the last line
    is where tools put their reason."""
    words = " ".join(map(str, cmd[:4]))
    if "input" not in kw:
        kw.setdefault("stdin", subprocess.DEVNULL)
    try:
        cp = subprocess.run(cmd, capture_output=capture, text=True, timeout=timeout, **kw)
    except subprocess.TimeoutExpired:
        raise Fail(f"{words} did not finish within {timeout:g}s") from None
    except FileNotFoundError:
        raise Fail(f"{cmd[0]} not found") from None
    if check and cp.returncode != 0:
        err = (cp.stderr or cp.stdout or "").strip().splitlines()
        raise Fail(f"{words} failed (exit {cp.returncode}): {err[-1][:300] if err else '(no output)'}")
    return cp


def cache_root() -> Path:
    """$KCHAT_CACHE or ~/.cache/kchat: downloads and builds kept across runs and checkouts."""
    env = os.environ.get("KCHAT_CACHE")
    if not env:
        return Path.home() / ".cache" / "kchat"
    path = Path(env).expanduser()
    if path.exists() and not path.is_dir():
        raise Fail(f"KCHAT_CACHE={env}: expected a directory (or a path to create one at)")
    return path


def kafka_version() -> str:
    """Apache Kafka's version, the <kafka.version> property of kafka/pom.xml: the one place it is pinned (the
    jars, the images and the tests all follow it)."""
    try:
        root = ET.parse(POM).getroot()
    except (OSError, ET.ParseError) as e:
        raise Fail(f"cannot read {POM}: {e}") from None
    for el in root.iter():
        if el.tag.rsplit("}", 1)[-1] == "kafka.version" and el.text and el.text.strip():
            return el.text.strip()
    raise Fail(f"no <kafka.version> property in {POM}")


def project_version() -> str:
    """kchat-faust's own version, pyproject.toml's: the tag of the kchat image."""
    m = re.search(r'^version\s*=\s*"([^"]+)"', (REPO / "pyproject.toml").read_text(), re.M)
    if not m:
        raise Fail(f"no version in {REPO / 'pyproject.toml'}")
    return m.group(1)


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """True if a server could listen on host:port now. SO_REUSEADDR as the JVM's and Go's server sockets use
    it, so that a port in TIME_WAIT counts as free, as it is to them."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
            return True
        except OSError:
            return False


def _env_number(name, default, lo, hi, kind, what):
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        value = None
    if value is not None and not math.isfinite(value):  # nan, inf: no setting means that
        value = None
    if value is None or (lo is not None and value < lo) or (hi is not None and value > hi):
        bounds = (f" from {lo:g}" if lo is not None else "") + (f" to {hi:g}" if hi is not None else "")
        raise Fail(f"{name}={raw}: expected {what}{bounds}")
    return value


def env_int(name: str, default: int, lo: int | None = None, hi: int | None = None) -> int:
    """An integer environment variable; unset or empty: default. A bad value is an error, never a silent
    default: a typo would otherwise run something other than what was asked for."""
    return _env_number(name, default, lo, hi, int, "an integer")


def env_float(name, default, lo=None, hi=None) -> float:
    """A number (seconds, say) from the environment, as env_int."""
    return _env_number(name, default, lo, hi, float, "a number")


def sysctl_path(key: str) -> Path:
    """/proc/sys path of a sysctl key (net.ipv4.ip_forward -> /proc/sys/net/ipv4/ip_forward)."""
    return Path("/proc/sys") / key.replace(".", "/")


def read_sysctl(key: str) -> str | None:
    """A sysctl's value; None when this kernel (or this network namespace) has no such key."""
    try:
        return sysctl_path(key).read_text().strip()
    except OSError:
        return None


def print_leftovers(look, wait: float) -> int:
    """Print what look() (a list of lines) still finds once it stops shrinking, and return the exit code of a
    `leftovers` verb: 1 if anything is left. The kernel lets go of a deleted namespace, a detached loop device
    or an exiting process a moment after `down` returns: only what stays for `wait` seconds counts."""
    deadline = time.monotonic() + wait
    while (found := look()) and time.monotonic() < deadline:
        time.sleep(0.5)
    for line in found:
        print(line)
    return 1 if found else 0


def pid_alive(pid: int) -> bool:
    """True if pid is a live process; a zombie is not (it still has a /proc entry but serves nothing)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def proc_argv(pid: int) -> list[str]:
    """A process's command line, from /proc; [] when it is gone (a zombie has none either)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def main_guard(prog: str, main, argv=None) -> int:
    """Run main(argv) as the tool prog and return its exit code: a Fail becomes `prog: error: <message>` on
    stderr and its exit code (1 unless it names another), Ctrl-C `prog: interrupted` and 130, so that every
    tool's failure is one line."""
    global _prog
    _prog = prog
    try:
        return main(argv) or 0
    except Fail as e:
        print(f"{prog}: error: {e}", file=sys.stderr, flush=True)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr, flush=True)
        return 130
