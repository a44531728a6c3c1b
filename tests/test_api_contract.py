"""The HTTP contract: OpenAPI fuzzing, limits and optional authentication, on live workers."""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import jwt
import pytest

from kchat_faust.models import partition_for
from kchat_testkit.chat import index_page, post, unique
from kchat_testkit.procs import until
from kchat_testkit.sse import Subscriber
from kchat_testkit.worker import Worker

pytestmark = pytest.mark.kafka
SCHEMATHESIS = str(Path(sys.executable).with_name("schemathesis"))
SECRET = "test-secret-of-at-least-32-bytes-length!"


def test_openapi_fuzzing_finds_no_5xx_and_every_response_conforms(kchat_worker):
    spec = httpx.get(f"{kchat_worker.url}/openapi.json").json()
    assert spec["openapi"].startswith("3.") and "/api/rooms/{room}/messages" in spec["paths"]
    done = subprocess.run(
        [SCHEMATHESIS, "run", f"{kchat_worker.url}/openapi.json",
         "--checks", "not_a_server_error,status_code_conformance,content_type_conformance,"
                     "response_schema_conformance,response_headers_conformance",
         # endless event streams cannot be fuzzed: they are tested on their own
         "--exclude-path-regex", "(/events$|^/sse/connect$)",
         "--max-examples", "15", "--seed", "20261125", "--request-timeout", "15",
         "--phases", "examples,coverage,fuzzing", "--max-time", "100"],
        capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert "passed" in done.stdout.lower()


@pytest.fixture(scope="module")
def limited_worker(worker_factory):
    w = worker_factory(env={"KCHAT_MAX_STREAMS": "2"})
    yield w
    w.stop()


async def test_event_streams_are_capped_per_worker(limited_worker):
    room = unique("cap")
    first = await Subscriber(limited_worker.url, room).start()
    second = await Subscriber(limited_worker.url, room).start()
    async with httpx.AsyncClient(timeout=20) as client:
        r = await client.get(f"{limited_worker.url}/api/rooms/{room}/events")
        assert r.status_code == 503 and r.headers["Retry-After"] and "maximum of 2" in r.json()["error"]
        await first.stop()

        async def third_stream() -> Subscriber | None:
            try:
                return await Subscriber(limited_worker.url, room).start()
            except AssertionError:  # 503 until the server has seen the disconnect
                return None

        # the slot frees as soon as the server sees the disconnect; a stalled machine may take a while
        third = await until(third_stream, 60, "a third stream once the first is closed", interval=0.1)
        await post(client, limited_worker.url, room, "capped", "still flowing")
        assert [m["text"] for m in await third.wait_for(1)] == ["still flowing"]
    await second.stop()
    await third.stop()


@pytest.fixture(scope="module")
def auth_worker(worker_factory):
    w = worker_factory(env={"KCHAT_JWT_SECRET": SECRET})
    yield w
    w.stop()


def token(sub: str, secret: str = SECRET, **claims) -> str:
    return jwt.encode({"sub": sub, **claims}, secret, algorithm="HS256")


async def test_with_a_jwt_secret_workers_answer_each_other(own_kafka, tmp_path):
    # A group of its own: every worker has the secret, and asks the others with a token of its own.
    workers = [Worker(own_kafka.bootstrap, tmp_path / name, env={"KCHAT_JWT_SECRET": SECRET}) for name in "ab"]
    try:
        await asyncio.gather(*(asyncio.to_thread(w.start, 240.0) for w in workers))
        rooms = {partition_for(f"auth{i}", 12): f"auth{i}" for i in range(200)}  # a room in every partition
        alice = {"Authorization": f"Bearer {token('alice')}"}
        async with httpx.AsyncClient(timeout=30) as client:
            for room in rooms.values():
                r = await client.post(f"{workers[0].url}/api/rooms/{room}/messages",
                                      json={"user": "alice", "text": f"in {room}"}, headers=alice)
                assert r.status_code == 201, r.text
            for w in workers:
                for room in rooms.values():
                    # a page from the index's holder, whichever worker that is
                    body = await index_page(client, w.url, room, 120, headers=alice)
                    assert [m["text"] for m in body["messages"]] == [f"in {room}"]
                    r = await client.get(f"{w.url}/api/rooms/{room}/presence", headers=alice)
                    assert r.status_code == 200, r.text
    finally:
        for w in workers:
            w.stop_or_kill()


async def test_with_a_jwt_secret_a_signed_post_is_stored_and_streamed(auth_worker):
    # The refusals (401, 403) are tested in-process: tests/test_views.py.
    base, room = auth_worker.url, unique("auth")
    alice = {"Authorization": f"Bearer {token('alice')}"}
    async with httpx.AsyncClient(timeout=20) as client:
        r = await client.post(f"{base}/api/rooms/{room}/messages", json={"user": "alice", "text": "signed"},
                              headers=alice)
        assert r.status_code == 201
        r = await client.post(f"{base}/api/topics/chatroom", content=b"alice: via the seed endpoint",
                              headers={**alice, "Content-Type": "text/plain"})
        assert r.status_code == 200

        history = await client.get(f"{base}/api/rooms/{room}/messages", headers=alice)
        assert [m["text"] for m in history.json()["messages"]] == ["signed"]

        # EventSource cannot send headers: the token may come as ?access_token=
        url = f"{base}/api/rooms/{room}/events"
        async with client.stream("GET", url, params={"access_token": token("carol")}) as stream:
            assert stream.status_code == 200
            await client.post(f"{base}/api/rooms/{room}/messages", json={"user": "alice", "text": "live"},
                              headers=alice)
            buf = ""
            async for chunk in stream.aiter_text():
                buf += chunk
                if '"text":"live"' in buf:
                    break
    assert '"user":"alice"' in buf


def test_the_cli_passes_its_token(auth_worker):
    cli = str(Path(sys.executable).with_name("kchat-cli"))
    room = unique("clitoken")

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([cli, "--url", auth_worker.url, *args], capture_output=True, text=True,
                              timeout=60, stdin=subprocess.DEVNULL)

    ok = run("--token", token("dora"), "send", "--json", "--user", "dora", "--room", room, "first")
    assert ok.returncode == 0, ok.stderr
    first = json.loads(ok.stdout)
    assert run("--token", token("dora"), "send", "--user", "dora", "--room", room, "hello").returncode == 0
    refused = run("send", "--user", "dora", "--room", room, "no token")
    assert refused.returncode == 4 and len(refused.stderr.strip().splitlines()) == 1
    assert "token" in refused.stderr
    spoof = run("--token", token("eve"), "send", "--user", "dora", "--room", room, "spoof")
    assert spoof.returncode == 4 and "eve" in spoof.stderr
    listened = run("--token", token("dora"), "listen", "--room", room, "--since", first["event_id"],
                   "--count", "1", "--json")
    assert listened.returncode == 0 and '"hello"' in listened.stdout
