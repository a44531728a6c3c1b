"""scripts/local_common.py, what kafka-local and k8s-local share: settings from the environment, commands,
processes, ports and the one-line failures of main_guard. No Kafka."""

from __future__ import annotations

import importlib.util
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# scripts/ is no package: the tools import this module as a file beside them, and so does this test
_spec = importlib.util.spec_from_file_location("local_common", REPO / "scripts" / "local_common.py")
lc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(lc)


@pytest.mark.parametrize("raw, expected", [(None, 7), ("", 7), ("  ", 7), ("12", 12), (" 3 ", 3), ("-2", -2)])
def test_env_int_reads_a_value_or_gives_the_default_when_unset_or_empty(monkeypatch, raw, expected):
    if raw is None:
        monkeypatch.delenv("LC_TEST", raising=False)
    else:
        monkeypatch.setenv("LC_TEST", raw)
    assert lc.env_int("LC_TEST", 7) == expected


@pytest.mark.parametrize("raw, message", [
    ("abc", "LC_TEST=abc: expected an integer from 1 to 10"),
    ("1.5", "LC_TEST=1.5: expected an integer from 1 to 10"),
    ("0", "LC_TEST=0: expected an integer from 1 to 10"),
    ("11", "LC_TEST=11: expected an integer from 1 to 10"),
])
def test_env_int_refuses_a_bad_value_naming_the_variable(monkeypatch, raw, message):
    monkeypatch.setenv("LC_TEST", raw)
    with pytest.raises(lc.Fail) as e:
        lc.env_int("LC_TEST", 5, lo=1, hi=10)
    assert str(e.value) == message


def test_env_float_takes_fractions_and_refuses_what_is_no_finite_number(monkeypatch):
    monkeypatch.setenv("LC_TEST", "2.5")
    assert lc.env_float("LC_TEST", 1.0, lo=0) == 2.5
    for raw in ("nan", "inf", "soon", "-1"):
        monkeypatch.setenv("LC_TEST", raw)
        with pytest.raises(lc.Fail, match=rf"^LC_TEST={raw}: expected a number from 0$"):
            lc.env_float("LC_TEST", 1.0, lo=0)


def test_run_fails_with_the_command_and_the_last_line_of_its_stderr():
    script = "import sys; print('noise', file=sys.stderr); print('the reason', file=sys.stderr); sys.exit(3)"
    with pytest.raises(lc.Fail) as e:
        lc.run([sys.executable, "-c", script])
    assert str(e.value) == f"{sys.executable} -c {script} failed (exit 3): the reason"
    assert lc.run([sys.executable, "-c", script], check=False).returncode == 3
    assert lc.run([sys.executable, "-c", "print('out')"]).stdout == "out\n"


def test_run_fails_in_one_line_on_a_timeout_and_on_a_missing_program():
    with pytest.raises(lc.Fail, match=r"did not finish within 0.5s$"):
        lc.run([sys.executable, "-c", "import time; time.sleep(30)"], timeout=0.5)
    with pytest.raises(lc.Fail, match=r"^no-such-program-here not found$"):
        lc.run(["no-such-program-here"])


def test_cache_root_is_kchat_cache_or_the_home_cache_and_never_a_file(monkeypatch, tmp_path):
    monkeypatch.setenv("KCHAT_CACHE", str(tmp_path / "c"))
    assert lc.cache_root() == tmp_path / "c"
    monkeypatch.setenv("KCHAT_CACHE", "")
    assert lc.cache_root() == Path.home() / ".cache" / "kchat"
    (tmp_path / "f").write_text("")
    monkeypatch.setenv("KCHAT_CACHE", str(tmp_path / "f"))
    with pytest.raises(lc.Fail, match=r"^KCHAT_CACHE=.*/f: expected a directory"):
        lc.cache_root()


def test_kafka_version_is_the_pom_property():
    pinned = re.search(r"<kafka\.version>\s*([^<\s]+)\s*</kafka\.version>", (REPO / "kafka" / "pom.xml").read_text())
    assert lc.kafka_version() == pinned.group(1)


def test_port_free_sees_a_listener():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert not lc.port_free(port)
    assert lc.port_free(port)


def test_processes_from_proc():
    argv = [sys.executable, "-c", "import time; time.sleep(30)", "an argument"]
    child = subprocess.Popen(argv)
    try:
        assert lc.pid_alive(child.pid) and lc.proc_argv(child.pid) == argv
    finally:
        child.kill()
        child.wait()  # reaped: its pid names nothing now
    assert not lc.pid_alive(child.pid) and lc.proc_argv(child.pid) == []
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    os.waitid(os.P_PID, zombie.pid, os.WEXITED | os.WNOWAIT)  # exited, not reaped: a zombie
    try:
        assert not lc.pid_alive(zombie.pid)
    finally:
        zombie.wait()


def test_sysctls_from_proc_sys():
    assert lc.sysctl_path("net.ipv4.ip_forward") == Path("/proc/sys/net/ipv4/ip_forward")
    assert lc.read_sysctl("kernel.ostype") == "Linux"
    assert lc.read_sysctl("kernel.no_such_key") is None


def test_main_guard_turns_failures_into_one_line_and_an_exit_code(capsys):
    class Taken(lc.Fail):
        exit_code = 4

    def fails(argv):
        raise lc.Fail(f"bad {argv[0]}")

    def taken(argv):
        raise Taken("port 9092 already in use")

    def interrupted(argv):
        raise KeyboardInterrupt

    assert lc.main_guard("tool", lambda argv: 3, ["x"]) == 3
    assert lc.main_guard("tool", lambda argv: None) == 0
    assert lc.main_guard("tool", fails, ["thing"]) == 1
    assert capsys.readouterr().err == "tool: error: bad thing\n"
    assert lc.main_guard("tool", taken) == 4
    assert capsys.readouterr().err == "tool: error: port 9092 already in use\n"
    assert lc.main_guard("tool", interrupted) == 130
    assert capsys.readouterr().err == "tool: interrupted\n"
    lc.info("progress")  # progress lines carry the tool's name from then on
    assert capsys.readouterr().err == "tool: progress\n"


def test_print_leftovers_waits_for_what_goes_and_reports_what_stays(capsys):
    going = iter([["namespace kf-1", "loop0"], ["loop0"], []])
    assert lc.print_leftovers(lambda: next(going), wait=5) == 0  # all gone within the wait: nothing printed
    assert capsys.readouterr().out == ""
    assert lc.print_leftovers(lambda: ["loop0"], wait=0.6) == 1
    assert capsys.readouterr().out == "loop0\n"
