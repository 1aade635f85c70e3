"""``check`` served as FunctionGraph runs an event function from the image: a real
functions-framework process, ``POST /init`` then ``POST /invoke`` with a timer event
(docs/platforms.md §4)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import pytest

from ims_emulator import EmulatorConfig, ImsEmulator
from tests.functional.test_check import a_minute_ago, job_queries, settings_for, submit, wired
from tests.system.test_served import function_env, serve
from wholeimage.bootstrap import open_store

TIMER_EVENT = {
    "version": "v1.0",
    "time": "2026-12-02T09:27:00+08:00",
    "trigger_type": "TIMER",
    "trigger_name": "wholeimage-check",
    "user_event": "",
}
HEADERS = {"Content-Type": "application/json", "X-Cff-Request-Id": "0b0c6b0e-1f6e-4a57-9d6b"}


@pytest.fixture
def ims() -> Iterator[ImsEmulator]:
    with ImsEmulator(EmulatorConfig(job_seconds=60)) as emulator:
        yield emulator


def test_init_ticks_nothing_and_invoke_ticks_in_functiongraphs_structure(ims, tmp_path):
    env = function_env(
        ims, tmp_path, WHOLEIMAGE_POLL_MIN_INTERVAL="0", WHOLEIMAGE_POLL_MAX_INTERVAL="0"
    )
    served = serve("check", env, tmp_path / "check.log")
    store = open_store(env["WHOLEIMAGE_STATE_URL"])
    try:
        with wired(settings_for(ims), store) as deps:
            jobs = submit(deps, 2, now=a_minute_ago)

        started = time.monotonic()
        init = httpx.post(served.url + "init", headers=HEADERS, timeout=10)
        init_seconds = time.monotonic() - started
        assert init.status_code == 200, served.log()
        assert init.json() == {"initialized": True}
        assert init_seconds < 1.0
        assert job_queries(ims) == {}

        invoke = httpx.post(
            served.url + "invoke", content=json.dumps(TIMER_EVENT), headers=HEADERS, timeout=30
        )
        assert invoke.status_code == 200, served.log()
        wrapped = invoke.json()
        assert set(wrapped) == {"statusCode", "headers", "body", "isBase64Encoded"}
        assert (wrapped["statusCode"], wrapped["isBase64Encoded"]) == (200, False)
        assert json.loads(wrapped["body"])["polled"] == 2
        assert job_queries(ims) == {job.ims_job_id: 1 for job in jobs}
    finally:
        served.process.terminate()
        served.process.wait(timeout=10)
        store.close()
    assert '"trigger": "functiongraph-timer"' in served.log()
