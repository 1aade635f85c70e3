"""The README's main job: run ``create`` on embedded defaults and show what it does.

Starts the local IMS emulator and the ``create`` function (functions-framework, the documented
command, SQLite state in ./var/), then submits the seed document's first example request,
reads the job back, repeats the request to show idempotency, and sends a bad body to show the
400. Everything it starts is stopped at the end.
"""

from __future__ import annotations

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


def main() -> int:
    state_dir = ROOT / "var"
    state_dir.mkdir(exist_ok=True)
    database = state_dir / "demo.db"
    for leftover in state_dir.glob("demo.db*"):
        leftover.unlink()
    api_token = secrets.token_urlsafe(24)
    ims_port, function_port = free_port(), free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT / "functions"),
        "WHOLEIMAGE_IMS_ENDPOINT": f"http://127.0.0.1:{ims_port}",
        "WHOLEIMAGE_PROJECT_ID": "0123456789abcdef0123456789abcdef",
        "HUAWEICLOUD_SDK_AK": "EMULATORAK",
        "HUAWEICLOUD_SDK_SK": "emulator-secret-key",
        "WHOLEIMAGE_STATE_URL": f"sqlite:///{database}",
        "WHOLEIMAGE_API_TOKEN": api_token,
    }
    processes: list[subprocess.Popen[bytes]] = []
    try:
        emulator = subprocess.Popen(
            [
                str(VENV_BIN / "python"),
                "-m",
                "wholeimage.emulator",
                "--port",
                str(ims_port),
                "--job-seconds",
                "20",
            ],
            env=env,
            cwd=ROOT,
        )
        processes.append(emulator)
        function = subprocess.Popen(
            [
                str(VENV_BIN / "functions-framework"),
                "--source",
                "functions/main.py",
                "--target",
                "create",
                "--port",
                str(function_port),
            ],
            env=env,
            cwd=ROOT,
        )
        processes.append(function)
        url = f"http://127.0.0.1:{function_port}/"
        wait_until_serving(
            f"http://127.0.0.1:{ims_port}/_emulator/jobs", emulator, "the IMS emulator"
        )
        wait_until_serving(url, function, "the create function")
        auth = {"Authorization": f"Bearer {api_token}"}
        headers = {
            **auth,
            "Content-Type": "application/json",
            "Idempotency-Key": "demo-nightly-001",
        }

        print(f"\n=== POST {url} with the seed document's first example request")
        print(SEED_REQUEST.decode())
        created = show("create answered", httpx.post(url, content=SEED_REQUEST, headers=headers))
        show(
            "the same request again (same Idempotency-Key): no second IMS job",
            httpx.post(url, content=SEED_REQUEST, headers=headers),
        )
        show(
            "GET the tracked job",
            httpx.get(url, params={"job_id": created["job_id"]}, headers=auth),
        )
        show(
            "a bad body: every failing field, nothing submitted",
            httpx.post(
                url,
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
            httpx.post(url, content=SEED_REQUEST, headers={"Content-Type": "application/json"}),
        )
        ims_jobs = httpx.get(f"http://127.0.0.1:{ims_port}/_emulator/jobs").json()
        print(f"\n--- the IMS emulator holds {len(ims_jobs)} job(s); the state is in {database}")
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
