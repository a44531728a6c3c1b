"""kchat-cli run as a user runs it: a subprocess (or a pseudo-terminal) against a real worker and Kafka."""
from __future__ import annotations

import asyncio
import http.server
import io
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pexpect
import pytest
from click.testing import CliRunner

from kchat_cli.main import cli
from kchat_faust.models import partition_for
from kchat_testkit.chat import unique
from kchat_testkit.procs import free_port

_SCRIPT = Path(sys.executable).with_name("kchat-cli")
KCHAT = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "kchat_cli"]
# A pseudo-terminal under pexpect answers no cursor-position requests; without this
# prompt_toolkit waits for them and then prints a warning into the screen.
TTY_ENV = {**os.environ, "PROMPT_TOOLKIT_NO_CPR": "1", "TERM": "xterm"}
kafka = pytest.mark.kafka


def kchat(url: str, *args: str, input: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*KCHAT, "--url", url, *args], input=input, capture_output=True,
                          text=True, timeout=timeout)


def send_json(url: str, room: str, user: str, text: str) -> dict:
    r = kchat(url, "send", "--user", user, "--room", room, "--json", text)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def send_lines(url: str, room: str, user: str, lines: list[str]) -> subprocess.CompletedProcess:
    r = kchat(url, "send", "--user", user, "--room", room, input="".join(f"{x}\n" for x in lines))
    assert r.returncode == 0, r.stderr
    return r


def one_error_line(r: subprocess.CompletedProcess) -> str:
    """The CLI's contract for failures: no traceback, one line on stderr, nothing on stdout."""
    assert "Traceback" not in r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert r.stdout == ""
    assert lines[0].startswith("kchat-cli: ")
    return lines[0]


class Lines:
    """Collects a subprocess's stdout lines as they come, so a test can wait for some."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc, self.lines = proc, []
        self._cond = threading.Condition()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()

    def wait_for(self, n: int, timeout: float = 120) -> list[str]:
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.lines) >= n, timeout):
                raise AssertionError(f"got {len(self.lines)} of {n} lines: {self.lines[-5:]}")
            return list(self.lines)


def start_listen(url: str, room: str, since: str, count: int, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([*KCHAT, "--url", url, "listen", "--room", room, "--since", since,
                             "--count", str(count), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def spawn_chat(url: str, user: str, room: str) -> tuple[pexpect.spawn, io.StringIO]:
    screen = io.StringIO()
    p = pexpect.spawn(KCHAT[0], [*KCHAT[1:], "--url", url, "chat", "--user", user, "--room", room],
                      env=TTY_ENV, encoding="utf-8", timeout=120, dimensions=(40, 120))
    p.logfile_read = screen
    p.expect("/quit or Ctrl-D to leave")
    p.expect(f"{user}:")  # the prompt is drawn: the event stream is being opened
    return p, screen


# -- send and listen --------------------------------------------------------------------
@kafka
def test_send_reports_where_it_was_stored_and_listen_delivers_it(kchat_worker):
    url, room = kchat_worker.url, unique("cli-rt")
    # Resuming after a marker makes listen see exactly what follows, however late it connects.
    marker = send_json(url, room, "alice", "marker")
    listener = start_listen(url, room, marker["event_id"], 3, "--json")

    r = kchat(url, "send", "--user", "alice", "--room", room, "hello", "world")
    assert r.returncode == 0, r.stderr
    receipt = dict(kv.split("=", 1) for kv in r.stdout.strip().removeprefix("sent: ").split())
    assert receipt["room"] == room
    assert int(receipt["partition"]) == marker["partition"]
    assert int(receipt["offset"]) > marker["offset"]
    second = send_json(url, room, "bob", "second")
    third = send_json(url, room, "alice", "caf\u00e9 \u2615")

    out, err = listener.communicate(timeout=120)
    assert listener.returncode == 0, err
    got = [json.loads(line) for line in out.splitlines()]
    assert [(m["user"], m["text"]) for m in got] == [
        ("alice", "hello world"), ("bob", "second"), ("alice", "caf\u00e9 \u2615")]
    assert got[0]["id"] == receipt["id"] and got[0]["event_id"] == receipt["event_id"]
    assert got[1:] == [second, third]

    # Plain output: local time, user, text; --since replays the same messages.
    r = kchat(url, "listen", "--room", room, "--since", marker["event_id"], "--count", "3")
    assert r.returncode == 0, r.stderr
    assert re.fullmatch(r"\d\d:\d\d:\d\d alice: hello world\n"
                        r"\d\d:\d\d:\d\d bob: second\n"
                        r"\d\d:\d\d:\d\d alice: caf\u00e9 \u2615\n", r.stdout), r.stdout


class DroppingProxy:
    """A TCP proxy to a worker that swallows the answer to the first `drop` POSTs: the worker has
    stored the message, the client sees the connection close -- an unknown outcome."""

    def __init__(self, target_port: int, drop: int = 1) -> None:
        self.target_port, self.drop = target_port, drop
        self.keys: list[str] = []
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()

        async def serve() -> None:
            self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)
            self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
            ready.set()

        threading.Thread(target=lambda: (self.loop.run_until_complete(serve()), self.loop.run_forever()),
                         daemon=True).start()
        assert ready.wait(60), "the proxy's event loop did not start"

    async def _client(self, reader, writer) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(re.search(rb"content-length: *(\d+)", head, re.I).group(1)) if b"ontent-" in head else 0
        body = await reader.readexactly(length)
        key = re.search(rb"idempotency-key: *(\S+)", head, re.I)
        self.keys.append(key.group(1).decode() if key else "")
        up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        up_w.write(head + body)
        answer = await up_r.read(65536)  # one small response
        up_w.close()
        if head.startswith(b"POST") and self.drop > 0:
            self.drop -= 1
        else:
            writer.write(answer)
            await writer.drain()
        writer.close()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)


@kafka
def test_send_retries_an_unknown_outcome_with_its_key_and_stores_it_once(kchat_worker):
    room, user = unique("unknown"), unique("ann")
    proxy = DroppingProxy(kchat_worker.port, drop=1)
    try:
        r = kchat(proxy.url, "send", "--user", user, "--room", room, "--json", "only once")
    finally:
        proxy.close()
    assert r.returncode == 0, r.stderr
    stored = json.loads(r.stdout)
    assert len(proxy.keys) == 2 and proxy.keys[0] == proxy.keys[1] != ""  # the same key, twice
    got = kchat(kchat_worker.url, "listen", "--room", room, "--since", f"{stored['partition']}:-1",
                "--count", "1", "--json")
    assert [json.loads(line)["offset"] for line in got.stdout.splitlines()] == [stored["offset"]]
    texts = [m["text"] for m in httpx.get(f"{kchat_worker.url}/api/rooms/{room}/messages").json()["messages"]]
    assert texts == ["only once"]


def test_send_gives_up_on_an_unknown_outcome_naming_its_key():
    class Busy(http.server.BaseHTTPRequestHandler):
        keys: list[str] = []

        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            Busy.keys.append(self.headers["Idempotency-Key"])
            body = b'{"error": "the brokers did not acknowledge within 10s"}'
            self.send_response(503)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Busy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        r = kchat(f"http://127.0.0.1:{server.server_port}", "send", "--user", "a", "--key", "my-key-1", "hi")
    finally:
        server.shutdown()
    assert r.returncode == 5
    line = one_error_line(r)
    assert "not confirmed after 5 attempts" in line and "my-key-1" in line
    assert Busy.keys == ["my-key-1"] * 5


@kafka
def test_piped_lines_each_arrive_once_in_order(kchat_worker):
    url, room = kchat_worker.url, unique("cli-pipe")
    marker = send_json(url, room, "piper", "marker")
    lines = [f"line {i:03d}" for i in range(200)]
    listener = start_listen(url, room, marker["event_id"], len(lines), "--json")

    r = send_lines(url, room, "piper", lines[:100] + ["", "   "] + lines[100:])
    assert r.stderr.splitlines() == ["kchat-cli: line 101: empty, skipped",
                                     "kchat-cli: line 102: empty, skipped"]
    assert len(r.stdout.splitlines()) == len(lines)
    assert all(x.startswith(f"sent: room={room} ") for x in r.stdout.splitlines())

    out, err = listener.communicate(timeout=120)
    assert listener.returncode == 0, err
    got = [json.loads(x) for x in out.splitlines()]
    assert [m["text"] for m in got] == lines
    assert len({m["id"] for m in got}) == len(lines)
    offsets = [m["offset"] for m in got]
    assert offsets == sorted(offsets)


@kafka
def test_a_failing_line_is_reported_with_its_number_and_the_rest_are_sent(kchat_worker):
    url, room = kchat_worker.url, unique("cli-bad-line")
    marker = send_json(url, room, "piper", "marker")
    r = kchat(url, "send", "--user", "piper", "--room", room, "-",
              input="first\n" + "x" * 4001 + "\nthird\n")
    assert r.returncode == 4
    assert "Traceback" not in r.stderr
    err = r.stderr.splitlines()
    assert len(err) == 2, r.stderr
    assert err[0].startswith("kchat-cli: line 2: the server refused the request: text")
    assert err[1] == "kchat-cli: 1 line(s) could not be sent"
    assert len(r.stdout.splitlines()) == 2
    r = kchat(url, "listen", "--room", room, "--since", marker["event_id"], "--count", "2", "--json")
    assert [json.loads(x)["text"] for x in r.stdout.splitlines()] == ["first", "third"]


@kafka
def test_listen_and_chat_carry_on_across_a_worker_restart(kchat_worker):
    url, room = kchat_worker.url, unique("cli-restart")
    marker = send_json(url, room, "sender", "marker")
    batches = [[f"{when} {i}" for i in range(10)] for when in ("before", "during", "after")]
    expected = [text for batch in batches for text in batch]
    listener = start_listen(url, room, marker["event_id"], len(expected), "--json")
    lines = Lines(listener)
    chat, screen = spawn_chat(url, "watcher", room)
    try:
        send_lines(url, room, "sender", batches[0])
        lines.wait_for(10)  # both clients are connected before the worker goes away
        chat.expect(r"\(received: 10\)")

        kchat_worker.stop()
        down = kchat(url, "send", "--user", "sender", "--room", room, "lost?")
        assert down.returncode == 3
        assert "cannot reach" in one_error_line(down)
        chat.expect("reconnecting…")
        kchat_worker.start()
        send_lines(url, room, "sender", batches[1])  # while the clients are still backing off
        lines.wait_for(20, timeout=120)
        send_lines(url, room, "sender", batches[2])

        listener.wait(timeout=120)
        assert listener.returncode == 0
        assert [json.loads(x)["text"] for x in lines.wait_for(len(expected))] == expected
        assert "reconnecting in" in listener.stderr.read()

        chat.expect(r"\(received: 30\)", timeout=120)
        shown = re.findall(r"sender: ((?:before|during|after) \d)  \(received: (\d+)\)", screen.getvalue())
        assert shown == [(text, str(n)) for n, text in enumerate(expected, start=1)]
        assert "reconnected" in screen.getvalue()
    finally:
        if kchat_worker.proc.poll() is not None:  # the session's other tests need it
            kchat_worker.start()
        listener.kill()
        chat.close(force=True)


# -- chat ----------------------------------------------------------------------------------
@kafka
def test_chat_between_two_terminals(kchat_worker):
    url, room = kchat_worker.url, unique("cli-chat")
    # History makes both clients resume from the same point: no message can slip between
    # their joining and their streams opening.
    send_json(url, room, "carol", "earlier message")
    a, screen_a = spawn_chat(url, "A", room)
    b, screen_b = spawn_chat(url, "B", room)
    try:
        a.expect("-- B joined --")  # presence: B's stream names B
        assert "carol: earlier message" in screen_a.getvalue()
        a.sendline("hello from A")
        b.expect(r"A: hello from A  \(received: 1\)")
        a.sendline("again from A")
        b.expect(r"A: again from A  \(received: 2\)")
        b.sendline("hi from B")
        # A's count starts at 1: its own two messages were not echoed back to it.
        a.expect(r"B: hi from B  \(received: (\d+)\)")
        assert a.match.group(1) == "1"
        assert "(received" not in screen_a.getvalue().split("B: hi from B")[0]

        # A message arriving mid-typing is printed above the prompt; the half-typed line survives.
        a.send("half typed")
        a.expect("half typed")
        b.sendline("interruption")
        a.expect(r"B: interruption  \(received: 2\)")
        a.sendline(" and finished")
        b.expect(r"A: half typed and finished  \(received: 3\)")

        b.sendeof()
        b.expect(pexpect.EOF)
        a.expect("-- B left --")
        a.sendline("/quit")
        a.expect(pexpect.EOF)
        a.wait(), b.wait()
        assert (a.exitstatus, b.exitstatus) == (0, 0)
    finally:
        a.close(force=True)
        b.close(force=True)
    # Each marked read what it showed: nothing unread, read up to the last message at least.
    last = httpx.get(f"{url}/api/rooms/{room}/messages", params={"limit": 1}).json()["messages"][-1]
    for user in ("A", "B"):
        mine = {r["room"]: r for r in httpx.get(f"{url}/api/users/{user}/unread").json()["rooms"]}
        assert mine[room]["unread"] == 0, mine
        assert int(mine[room]["last_read"].split(":")[1]) >= last["offset"], (mine, last)


@kafka
def test_who_and_rooms_show_the_people_and_the_activity(kchat_worker):
    url, room, zed = kchat_worker.url, unique("who"), unique("zed")
    listener = start_listen(url, room, f"{partition_for(room, 12)}:-1", 1000, "--user", zed)
    try:
        deadline = time.monotonic() + 90  # presence goes through Kafka; each look is a CLI process
        while (who := kchat(url, "who", "--room", room)).stdout.strip() != f"{zed}  (1 session)":
            assert time.monotonic() < deadline, who.stdout + who.stderr
            time.sleep(0.5)
        send_lines(url, room, "ann", ["one", "two", "three"])
        # "last minute" keeps a message for 60 to 120 s: looking for at most 45 s sees it there however slow
        deadline = time.monotonic() + 45
        while True:
            rooms = kchat(url, "rooms")
            assert rooms.returncode == 0, rooms.stderr
            line = next((row.split() for row in rooms.stdout.splitlines() if row.startswith(room + " ")), None)
            if line and line[1:5] == ["3", "3", "3", "1"]:  # last minute, 10 minutes, hour, online
                break
            assert time.monotonic() < deadline, rooms.stdout
            time.sleep(0.5)
        assert rooms.stdout.splitlines()[0].split()[:2] == ["ROOM", "LAST"]
        # Trending: at most ten rooms, the busiest of the last 10 minutes first (other tests' rooms on
        # this shared worker may be busier than this one).
        trending = kchat(url, "rooms", "--trending").stdout.splitlines()[1:]
        busiest = [int(row.split()[2]) for row in trending]
        assert 1 <= len(busiest) <= 10 and busiest == sorted(busiest, reverse=True), trending
    finally:
        listener.kill()
        listener.wait()
    empty = kchat(url, "who", "--room", unique("nobody"))
    assert empty.returncode == 0 and empty.stdout.strip() == "nobody is here"


@kafka
def test_rooms_with_a_user_shows_what_they_have_not_read(kchat_worker):
    url, room, quiet = kchat_worker.url, unique("unread"), unique("quiet")
    reader = unique("reader")
    first = send_json(url, room, "ann", "one")
    send_lines(url, room, "ann", ["two", "three"])
    seen = send_json(url, quiet, "ann", "only")
    for r, event in ((room, first), (quiet, seen)):
        put = httpx.put(f"{url}/api/rooms/{r}/read", json={"user": reader, "event_id": event["event_id"]})
        assert put.status_code == 204, put.text
    listed = kchat(url, "rooms", "--user", reader)
    assert listed.returncode == 0, listed.stderr
    head, *rows = listed.stdout.splitlines()
    assert "UNREAD" in head.split()
    unread = {row.split()[0]: row.split()[5] for row in rows}  # ROOM, 4 activity columns, UNREAD
    assert (unread[room], unread[quiet]) == ("2", "0"), listed.stdout
    assert all(v == "-" for r, v in unread.items() if r not in (room, quiet)), listed.stdout  # never read there
    plain = kchat(url, "rooms")
    assert "UNREAD" not in plain.stdout.splitlines()[0]


# -- stats ----------------------------------------------------------------------------------
@kafka
def test_stats_table_lists_senders_busiest_first(kchat_worker):
    url = kchat_worker.url
    busy, quiet = unique("busy"), unique("quiet")
    send_lines(url, unique("cli-stats"), busy, ["one", "two", "three"])
    send_json(url, unique("cli-stats"), quiet, "just one")

    deadline = time.monotonic() + 120
    while True:  # counts are updated by a stream processor, a moment after the send
        r = kchat(url, "stats")
        assert r.returncode == 0, r.stderr
        # user names may contain spaces (other tests post some): the count is the last column
        rows = dict(row.rsplit(None, 1) for row in r.stdout.splitlines()[1:])
        if rows.get(busy) == "3" and rows.get(quiet) == "1" or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert r.stdout.splitlines()[0].split() == ["USER", "MESSAGES"]
    assert rows.get(busy) == "3" and rows.get(quiet) == "1", r.stdout
    names = [row.rsplit(None, 1)[0] for row in r.stdout.splitlines()[1:]]
    counts = [int(row.rsplit(None, 1)[1]) for row in r.stdout.splitlines()[1:]]
    assert counts == sorted(counts, reverse=True)
    assert names.index(busy) < names.index(quiet)

    r = kchat(url, "stats", "--user", busy)
    assert r.returncode == 0 and r.stdout.splitlines()[1].split() == [busy, "3"]
    r = kchat(url, "stats", "--top", "1")
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 2


# -- failures ------------------------------------------------------------------------------
def closed_port_url() -> str:
    return f"http://127.0.0.1:{free_port()}"


@pytest.mark.parametrize("args", [["send", "--user", "a", "hi"], ["listen"], ["stats"]],
                         ids=lambda a: a[0])
def test_unreachable_worker_is_one_line_and_exit_3(args):
    url = closed_port_url()
    r = kchat(url, *args)
    assert r.returncode == 3
    assert one_error_line(r) == (f"kchat-cli: cannot reach {url} (connection refused) — is the "
                                 "worker running? set --url or KCHAT_URL")


def test_unreachable_worker_in_chat_ends_before_the_prompt():
    url = closed_port_url()
    p = pexpect.spawn(KCHAT[0], [*KCHAT[1:], "--url", url, "chat", "--user", "a"],
                      env=TTY_ENV, encoding="utf-8", timeout=120)
    out = p.read()
    p.wait()
    assert p.exitstatus == 3
    assert out.strip() == f"kchat-cli: cannot reach {url} (connection refused) — is the " \
                          "worker running? set --url or KCHAT_URL"


def test_silent_server_times_out_with_one_line():
    with socket.socket() as s:  # accepts connections (backlog) but never answers
        s.bind(("127.0.0.1", 0))
        s.listen()
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
        began = time.monotonic()
        r = kchat(url, "--timeout", "0.5", "stats")
    assert r.returncode == 3
    assert "no answer from" in one_error_line(r) and "within 0.5s" in r.stderr
    # it gave up rather than hang (subprocess.run would raise after 120 s); the rest is slack for the CLI's
    # start-up on a stalled machine
    assert time.monotonic() - began < 60


@kafka
@pytest.mark.parametrize("args", [["send", "--user", "a", "hi"], ["listen"]], ids=lambda a: a[0])
def test_server_refusal_is_one_line_and_exit_4(kchat_worker, args):
    r = kchat(kchat_worker.url, *args, "--room", "bad room!")
    assert r.returncode == 4
    assert one_error_line(r).startswith(
        "kchat-cli: the server refused the request: room: must be 1-64 characters")


@kafka
def test_history_pages_back_and_listen_starts_at_a_time(kchat_worker):
    room, user = unique("hist"), unique("fay")
    sent = [send_json(kchat_worker.url, room, user, f"h{i}") for i in range(5)]
    r = kchat(kchat_worker.url, "history", "--room", room, "-n", "2")
    assert r.returncode == 0, r.stderr
    assert [line.split(": ", 1)[1] for line in r.stdout.splitlines()] == ["h3", "h4"]
    assert r.stderr.strip() == f"kchat-cli: older: kchat-cli history --room {room} --before {sent[3]['event_id']}"
    r = kchat(kchat_worker.url, "history", "--room", room, "-n", "5", "--before", sent[3]["event_id"], "--json")
    assert [json.loads(line)["id"] for line in r.stdout.splitlines()] == [m["id"] for m in sent[:3]]
    assert r.stderr.strip() == f"kchat-cli: that is the start of {room}"
    # --since TIME: from the first message at or after it. Kafka's timestamp of a message is at or after its
    # sent_at (set just before the send, same clock); the one before was acknowledged before it was made.
    r = kchat(kchat_worker.url, "history", "--room", room, "--since", sent[2]["sent_at"], "--json")
    assert [json.loads(line)["id"] for line in r.stdout.splitlines()] == [m["id"] for m in sent[2:]]
    listen = start_listen(kchat_worker.url, room, sent[2]["sent_at"], 2, "--json")
    out, err = listen.communicate(timeout=120)
    assert listen.returncode == 0, err
    assert [json.loads(line)["id"] for line in out.splitlines()] == [m["id"] for m in sent[2:4]]
    r = kchat(kchat_worker.url, "history", "--room", room, "--since", "yesterday")
    assert r.returncode == 4 and "since" in one_error_line(r)


@kafka
def test_too_long_text_is_refused_by_the_server(kchat_worker):
    r = kchat(kchat_worker.url, "send", "--user", "a", "x" * 4001)
    assert r.returncode == 4
    assert "(HTTP 4" in one_error_line(r)


@pytest.mark.parametrize("text", ["", "   "])
def test_empty_message_is_refused_without_a_request(text):
    # A closed port: had a request been made, the error would say "cannot reach".
    r = kchat(closed_port_url(), "send", "--user", "a", text)
    assert r.returncode == 2
    assert one_error_line(r) == ("kchat-cli: refusing to send an empty message; give some TEXT "
                                 "(see 'kchat-cli send --help')")


@pytest.mark.parametrize("args, complaint", [
    (["send", "hi"], "Missing option '--user'"),
    (["--url", "ftp://x", "stats"], "is not an http(s) URL"),
    (["--timeout", "-1", "stats"], "--timeout"),
    (["listen", "--count", "0"], "--count"),
    (["nosuch"], "No such command 'nosuch'"),
])
def test_bad_arguments_are_one_line_and_exit_2(args, complaint):
    result = CliRunner().invoke(cli, args, prog_name="kchat-cli")
    assert result.exit_code == 2
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1 and complaint in result.stderr, result.stderr


def test_help_version_and_completion():
    runner = CliRunner()
    for command in ([], ["send"], ["listen"], ["chat"], ["stats"]):
        result = runner.invoke(cli, [*command, "--help"], prog_name="kchat-cli")
        assert result.exit_code == 0 and result.stdout.startswith("Usage: kchat-cli"), command
    result = runner.invoke(cli, ["--version"], prog_name="kchat-cli")
    assert result.exit_code == 0 and re.fullmatch(r"kchat-cli, version \S+\n", result.stdout)
    r = subprocess.run(KCHAT, env={**os.environ, "_KCHAT_CLI_COMPLETE": "bash_source"},
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "_kchat_cli_completion" in r.stdout
