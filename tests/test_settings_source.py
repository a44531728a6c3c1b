"""One source per setting, for real: a worker reads KCHAT_* only. Faust's own environment names
(BROKER_URL, APP_DATADIR, BROKER_SESSION_TIMEOUT, ...) would beat the app's arguments inside Faust;
here they are set to values that would break or change the worker, and change nothing."""
from __future__ import annotations

import ast
import asyncio

import httpx
import pytest

from kchat_testkit.chat import post, unique
from kchat_testkit.procs import until_sync

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(300)]

FAUST_NAMES = {"BROKER_URL": "kafka://127.0.0.1:1", "APP_DATADIR": "/nonexistent/faust-data",
               "BROKER_SESSION_TIMEOUT": "10", "BROKER_HEARTBEAT_INTERVAL": "1", "PRODUCER_ACKS": "0"}


def faust_settings(worker, timeout: float = 60.0) -> dict:
    """The worker's 'kchat faust settings' line: what Faust runs with, read back from its settings."""
    line = until_sync(lambda: next((line for line in worker.log_text().splitlines()
                                    if "kchat faust settings: " in line), None),
                      timeout, f"a 'kchat faust settings' line in {worker.log_path}", interval=0.3)
    return ast.literal_eval(line.split("kchat faust settings: ", 1)[1])


async def test_faust_names_change_nothing_and_kchat_names_do(worker_factory):
    plain, tuned = await asyncio.gather(
        asyncio.to_thread(worker_factory, FAUST_NAMES),
        asyncio.to_thread(worker_factory, {**FAUST_NAMES, "BROKER_SESSION_TIMEOUT": "30",
                                           "KCHAT_GROUP_SESSION_TIMEOUT": "10"}))
    try:
        got = faust_settings(plain)
        assert (got["broker_session_timeout"], got["broker_heartbeat_interval"], got["producer_acks"]) == \
            ("20.0", "3.0", "-1")
        assert got["broker"].startswith("[URL('kafka://127.0.0.1:") and ":1'" not in got["broker"]
        assert got["datadir"] == str(plain.workdir / "data")
        got = faust_settings(tuned)
        assert (got["broker_session_timeout"], got["broker_heartbeat_interval"]) == ("10.0", "3.0")
        # The worker the bogus BROKER_URL names could not publish; this one does, through KCHAT_BROKER.
        async with httpx.AsyncClient(timeout=30) as client:
            stored = await post(client, plain.url, "settings", unique("u"), "through KCHAT_BROKER")
            assert stored["offset"] >= 0
        warned = [ln for ln in plain.log_text().splitlines() if "ignores Faust's environment variables" in ln]
        assert len(warned) == 1 and all(name in warned[0] for name in FAUST_NAMES)
        assert not (plain.workdir / "nonexistent").exists()
    finally:
        plain.stop_or_kill()
        tuned.stop_or_kill()
