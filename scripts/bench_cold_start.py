"""Benchmark: cold start of a served function, launch to first answers, and what it imports.

Usage: ``.venv/bin/python scripts/bench_cold_start.py [--runs 7] [--target create]``

For each run it launches ``functions-framework --source functions/main.py --target TARGET``
(the documented command) against the in-process IMS emulator and measures the time from launch
to (a) the first HTTP answer (a GET, 404) and (b) the first accepted POST (202), which includes
building settings, the store, the validator and the IMS client. Prints medians and ranges.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "functions"), str(ROOT / "tools")]

from ims_emulator import EmulatorConfig, ImsEmulator  # noqa: E402

BODY = b'{"name": "bench", "instance_id": "877a2cda-ba63-4e1e-b95f-e67e48b6129a"}'


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def one_run(target: str, ims: ImsEmulator, state_dir: Path, run: int) -> tuple[float, float]:
    port = free_port()
    env = {
        **os.environ,
        "WHOLEIMAGE_IMS_ENDPOINT": ims.url,
        "WHOLEIMAGE_PROJECT_ID": ims.config.project_id,
        "HUAWEICLOUD_SDK_AK": ims.config.ak,
        "HUAWEICLOUD_SDK_SK": ims.config.sk,
        "WHOLEIMAGE_STATE_URL": f"sqlite:///{state_dir / f'run{run}.db'}",
        "WHOLEIMAGE_API_TOKEN": "bench-token-0123456789",
    }
    url = f"http://127.0.0.1:{port}/"
    headers = {"Authorization": "Bearer bench-token-0123456789"}
    started = time.perf_counter()
    process = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "functions-framework"),
            "--source",
            "functions/main.py",
            "--target",
            target,
            "--port",
            str(port),
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        while True:
            try:
                httpx.get(url, params={"job_id": "none"}, headers=headers, timeout=5)
                break
            except httpx.TransportError:
                time.sleep(0.005)
        first_answer = time.perf_counter() - started
        response = httpx.post(
            url, content=BODY, headers={**headers, "Content-Type": "application/json"}, timeout=10
        )
        if response.status_code != 202:
            raise SystemExit(f"create answered {response.status_code}: {response.text}")
        first_create = time.perf_counter() - started
    finally:
        process.terminate()
        process.wait(timeout=10)
    return first_answer, first_create


def ms(values: list[float]) -> str:
    low, high = min(values) * 1000, max(values) * 1000
    return f"median {statistics.median(values) * 1000:.0f} ms (range {low:.0f}-{high:.0f})"


def hello_world_baseline(runs: int, tmp: Path) -> list[float]:
    """functions-framework serving a one-line function: the floor under our cold start."""
    source = tmp / "hello.py"
    source.write_text("def hello(request):\n    return 'hello'\n")
    times = []
    for _ in range(runs):
        port = free_port()
        started = time.perf_counter()
        process = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "functions-framework"),
                "--source",
                str(source),
                "--target",
                "hello",
                "--port",
                str(port),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            while True:
                try:
                    httpx.get(f"http://127.0.0.1:{port}/", timeout=5)
                    break
                except httpx.TransportError:
                    time.sleep(0.005)
            times.append(time.perf_counter() - started)
        finally:
            process.terminate()
            process.wait(timeout=10)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--target", default="create")
    args = parser.parse_args()
    answers, creates = [], []
    with (
        ImsEmulator(EmulatorConfig(record_requests=False)) as ims,
        tempfile.TemporaryDirectory() as tmp,
    ):
        for run in range(args.runs):
            first_answer, first_create = one_run(args.target, ims, Path(tmp), run)
            answers.append(first_answer)
            creates.append(first_create)
        baseline = hello_world_baseline(args.runs, Path(tmp))
    print(f"target {args.target}, {args.runs} runs")
    print(f"functions-framework hello world, launch -> first answer: {ms(baseline)}")
    print(f"launch -> first HTTP answer:   {ms(answers)}")
    print(f"launch -> first accepted POST: {ms(creates)}")
    imports = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; import main; print(len(sys.modules)); "
            "print(sorted(m for m in sys.modules if m.startswith('wholeimage')))",
        ],
        cwd=ROOT / "functions",
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "WHOLEIMAGE_API_TOKEN": "x" * 16},  # no start-up warning on stdout
    ).stdout.split("\n")
    print(f"modules loaded by importing functions/main.py: {imports[0]}; ours: {imports[1]}")


if __name__ == "__main__":
    main()
