"""The README's main job: the three functions on embedded defaults, start to verdict.

Starts the local IMS emulator and ``create``, ``check`` and ``notify`` (functions-framework,
the documented command, SQLite state in ./var/), submits the seed document's first example
request, shows idempotency, a 400 and a 401, calls ``check`` as a scheduler would until IMS has
a verdict, and ends by showing the message each channel got: one channel per format, written to
a local file sink (var/demo-messages.jsonl) instead of being sent. Everything it starts is
stopped at the end.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
# The seed document's first example, verbatim: a full-ECS image from an ECS, with tags.
SEED_REQUEST = b"""{
       "name": "instance_whole_image",
       "description": "creating an image from an ECS",
       "instance_id": "877a2cda-ba63-4e1e-b95f-e67e48b6129a",
       "tags": [
           "aaa.111",
           "bbb.333",
           "ccc.444"
       ]
}"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until_serving(url: str, process: subprocess.Popen[bytes], name: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{name} exited with {process.returncode} before serving")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise SystemExit(f"{name} did not start serving {url} within 30 s")


def show(title: str, response: httpx.Response) -> dict[str, Any]:
    body: dict[str, Any] = response.json()
    print(f"\n--- {title}: HTTP {response.status_code}")
    for header in ("Location", "Idempotent-Replayed", "Retry-After"):
        if header in response.headers:
            print(f"{header}: {response.headers[header]}")
    print(json.dumps(body, indent=2, ensure_ascii=False))
    return body


def serve(
    target: str, port: int, env: dict[str, str], processes: list[subprocess.Popen[bytes]]
) -> str:
    """Start one function with the documented command; return its URL once it answers."""
    process = subprocess.Popen(
        [
            str(VENV_BIN / "functions-framework"),
            "--source",
            "functions/main.py",
            "--target",
            target,
            "--port",
            str(port),
        ],
        env={**env, "WHOLEIMAGE_LOG_LEVEL": "WARNING"},
        cwd=ROOT,
    )
    processes.append(process)
    url = f"http://127.0.0.1:{port}/"
    wait_until_serving(url, process, f"the {target} function")
    return url


def demo_channels(sink: Path) -> str:
    """One channel per format, all written to a local file sink instead of being sent."""
    secret = "whsec_" + base64.b64encode(b"demo-standard-webhooks-key-32by").decode()
    formats = [
        "teams",
        "discord",
        "googlechat",
        "mattermost",
        "rocketchat",
        "feishu",
        "dingtalk",
        "wecom",
    ]
    channels: list[dict[str, object]] = [
        {"name": name, "format": name, "url": f"file:{sink}"} for name in formats
    ]
    channels.append(
        {"name": "webhook", "format": "standard", "url": f"file:{sink}", "secret": secret}
    )
    channels.append({"name": "oncall", "format": "slack", "url": f"file:{sink}", "on": "failures"})
    return json.dumps(channels)


def main() -> int:
    state_dir = ROOT / "var"
    state_dir.mkdir(exist_ok=True)
    database = state_dir / "demo.db"
    sink = state_dir / "demo-messages.jsonl"
    for leftover in [*state_dir.glob("demo.db*"), sink]:
        leftover.unlink(missing_ok=True)
    api_token = secrets.token_urlsafe(24)
    ims_port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": f"{ROOT / 'functions'}{os.pathsep}{ROOT / 'tools'}",
        "WHOLEIMAGE_IMS_ENDPOINT": f"http://127.0.0.1:{ims_port}",
        "WHOLEIMAGE_PROJECT_ID": "0123456789abcdef0123456789abcdef",
        "HUAWEICLOUD_SDK_AK": "EMULATORAK",
        "HUAWEICLOUD_SDK_SK": "emulator-secret-key",
        "WHOLEIMAGE_STATE_URL": f"sqlite:///{database}",
        "WHOLEIMAGE_API_TOKEN": api_token,
        # A fast schedule for the demo; the defaults are 15 s .. 300 s.
        "WHOLEIMAGE_POLL_MIN_INTERVAL": "1",
        "WHOLEIMAGE_POLL_MAX_INTERVAL": "2",
        # The default channel: Slack format, written to the local sink.
        "WHOLEIMAGE_WEBHOOK_URL": f"file:{sink}",
        "WHOLEIMAGE_WEBHOOK_FORMAT": "slack",
        "WHOLEIMAGE_CHANNELS": demo_channels(sink),
    }
    processes: list[subprocess.Popen[bytes]] = []
    try:
        emulator = subprocess.Popen(
            [
                str(VENV_BIN / "python"),
                "-m",
                "ims_emulator",
                "--port",
                str(ims_port),
                "--job-seconds",
                "6",
            ],
            env=env,
            cwd=ROOT,
        )
        processes.append(emulator)
        wait_until_serving(
            f"http://127.0.0.1:{ims_port}/_emulator/health", emulator, "the IMS emulator"
        )
        create_url = serve("create", free_port(), env, processes)
        check_url = serve("check", free_port(), env, processes)
        notify_url = serve("notify", free_port(), env, processes)
        auth = {"Authorization": f"Bearer {api_token}"}
        headers = {
            **auth,
            "Content-Type": "application/json",
            "Idempotency-Key": "demo-nightly-001",
        }

        print(f"\n=== POST {create_url} with the seed document's first example request")
        print(SEED_REQUEST.decode())
        created = show(
            "create answered", httpx.post(create_url, content=SEED_REQUEST, headers=headers)
        )
        show(
            "the same request again (same Idempotency-Key): no second IMS job",
            httpx.post(create_url, content=SEED_REQUEST, headers=headers),
        )
        show(
            "a bad body: every failing field, nothing submitted",
            httpx.post(
                create_url,
                json={
                    "name": " nightly<1>",
                    "instance_id": "web01",
                    "tags": ["a.1"],
                    "image_tags": [{"key": "a", "value": "1"}],
                },
                headers=auth,
            ),
        )
        show(
            "no bearer token: refused",
            httpx.post(
                create_url, content=SEED_REQUEST, headers={"Content-Type": "application/json"}
            ),
        )

        print(
            f"\n=== the scheduler calls {check_url} until IMS has a verdict (the emulator takes 6 s)"
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            tick = httpx.post(
                check_url, headers={**auth, "X-CloudScheduler-JobName": "demo"}, timeout=60
            ).json()
            job = httpx.get(create_url, params={"job_id": created["job_id"]}, headers=auth).json()
            print(
                f"tick: polled {tick['polled']}, ended {tick['ended']} -> job {job['status']}"
                f" ({(job['process_percent'] or 0) * 100:.0f} %)"
            )
            if job["status"] in ("SUCCESS", "FAIL", "TIMED_OUT"):
                break
            time.sleep(1.5)
        show(
            "GET the tracked job",
            httpx.get(create_url, params={"job_id": created["job_id"]}, headers=auth),
        )
        show(
            "notify: the outbox (check delivered the verdict inline)",
            httpx.get(notify_url, headers=auth),
        )

        print(f"\n=== what each channel got (written to {sink} instead of being sent)")
        for line in sink.read_text("utf-8").splitlines():
            entry = json.loads(line)
            print(f"\n--- channel {entry['channel']} ({entry['format']}):")
            print(json.dumps(entry["message"], indent=2, ensure_ascii=False))
        print(f"\n--- the state is in {database}")
        return 0
    finally:
        for process in reversed(processes):
            process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()


if __name__ == "__main__":
    sys.exit(main())
