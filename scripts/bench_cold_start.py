"""Benchmark: the create function's cold start and CPU per request, each against functions-framework
itself, measured in one run.

Usage: ``.venv/bin/python scripts/bench_cold_start.py [--runs 9] [--requests 200]``

Both comparisons launch ``functions-framework --source ... --target ...`` (the documented command)
from a virtual environment holding only ``requirements.txt`` (``.venv-runtime``, built on first use):
what a deployment installs, without the test tools' extra packages. The IMS emulator runs in this
process, so the server's own work is what is timed.

1. Cold start, interleaved (hello, create, hello, create, ...), so load on the machine hits both
   alike: launch -> first answer of a one-line function (the floor), against launch -> first
   accepted ``create`` POST (202), which includes importing our modules, settings, the store and
   its migrations, the validator, the IMS client and one signed IMS call. Printed as medians and
   their ratio (target: at most 1.5).
2. CPU per request once warm: the server process tree's user+system CPU over ``--requests``
   accepted creates (validation, two store writes, one signed HTTP call each), against an echo
   function answering the same body, each divided by the count. Printed with their ratio.
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
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "functions"), str(ROOT / "tools")]

from ims_emulator import EmulatorConfig, ImsEmulator  # noqa: E402

RUNTIME_VENV = ROOT / ".venv-runtime"
BODY = b'{"name": "bench", "instance_id": "877a2cda-ba63-4e1e-b95f-e67e48b6129a"}'
TOKEN = "bench-token-0123456789"  # noqa: S105 (a benchmark's own caller token)
FUNCTIONS = """\
def hello(request):
    return "hello"


def echo(request):
    return request.get_data()
"""
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def runtime_python() -> Path:
    """The interpreter of ``.venv-runtime`` (requirements.txt only), built when missing."""
    python = RUNTIME_VENV / "bin" / "python"
    stamp = RUNTIME_VENV / ".installed-requirements.txt"
    if not stamp.exists() or (ROOT / "requirements.txt").stat().st_mtime > stamp.stat().st_mtime:
        print("building .venv-runtime from requirements.txt ...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(RUNTIME_VENV)], check=True)
        subprocess.run(
            [
                str(python),
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "-r",
                str(ROOT / "requirements.txt"),
            ],
            check=True,
        )
        stamp.touch()
    return python


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU of ``pid`` and its descendants (gunicorn's worker is a child), from /proc."""
    total = 0.0
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except FileNotFoundError:
            continue
        total += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime
        pending += [int(child) for child in children]
    return total


@contextmanager
def served(
    source: Path, target: str, env: dict[str, str]
) -> Iterator[tuple[subprocess.Popen[bytes], str, float]]:
    """A functions-framework process serving ``target``; yields it, its URL and its launch time."""
    port = free_port()
    command = [str(RUNTIME_VENV / "bin" / "functions-framework"), "--source", str(source)]
    started = time.perf_counter()
    process = subprocess.Popen(
        [*command, "--target", target, "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield process, f"http://127.0.0.1:{port}/", started
    finally:
        process.terminate()
        process.wait(timeout=10)


def until_answered(send: object) -> httpx.Response:
    """Call ``send`` until the server accepts the connection."""
    while True:
        try:
            return send()  # type: ignore[operator,no-any-return]
        except httpx.TransportError:
            time.sleep(0.002)


def create_env(ims: ImsEmulator, state: Path) -> dict[str, str]:
    return {
        **os.environ,
        "WHOLEIMAGE_IMS_ENDPOINT": ims.url,
        "WHOLEIMAGE_PROJECT_ID": ims.config.project_id,
        "HUAWEICLOUD_SDK_AK": ims.config.ak,
        "HUAWEICLOUD_SDK_SK": ims.config.sk,
        "WHOLEIMAGE_STATE_URL": f"sqlite:///{state}",
        "WHOLEIMAGE_API_TOKEN": TOKEN,
    }


def create_headers() -> dict[str, str]:
    return {
        "Authorization": f"Bearer {TOKEN}",
        "Content-Type": "application/json",
        "Idempotency-Key": uuid.uuid4().hex,
    }


def accepted(response: httpx.Response) -> httpx.Response:
    if response.status_code != 202:
        raise SystemExit(f"create answered {response.status_code}: {response.text}")
    return response


def hello_cold_start(functions: Path) -> float:
    with served(functions, "hello", dict(os.environ)) as (_, url, started):
        until_answered(lambda: httpx.get(url, timeout=5))
        return time.perf_counter() - started


def create_cold_start(ims: ImsEmulator, state: Path, source: Path) -> float:
    with served(source, "create", create_env(ims, state)) as (_, url, started):
        until_answered(
            lambda: accepted(httpx.post(url, content=BODY, headers=create_headers(), timeout=10))
        )
        return time.perf_counter() - started


def cpu_per_request(source: Path, target: str, env: dict[str, str], count: int) -> float:
    """Seconds of server CPU per request, warm (the first request is not counted)."""
    headers = create_headers if target == "create" else lambda: {"Content-Type": "application/json"}
    expected = 202 if target == "create" else 200
    with served(source, target, env) as (process, url, _), httpx.Client(timeout=10) as client:
        until_answered(lambda: client.post(url, content=BODY, headers=headers()))
        before = tree_cpu_seconds(process.pid)
        for _ in range(count):
            response = client.post(url, content=BODY, headers=headers())
            if response.status_code != expected:
                raise SystemExit(f"{target} answered {response.status_code}: {response.text}")
        return (tree_cpu_seconds(process.pid) - before) / count


def ms(values: list[float]) -> str:
    low, high = min(values) * 1000, max(values) * 1000
    return f"median {statistics.median(values) * 1000:.0f} ms (range {low:.0f}-{high:.0f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=9, help="cold starts of each (default 9)")
    parser.add_argument("--requests", type=int, default=200, help="warm requests (default 200)")
    parser.add_argument(
        "--also",
        type=Path,
        metavar="MAIN_PY",
        help="another checkout's functions/main.py, measured interleaved too (before/after)",
    )
    args = parser.parse_args()
    python = runtime_python()
    source = ROOT / "functions" / "main.py"
    # Compiled as the container image compiles them at build time (infra/Dockerfile): without
    # .pyc files (PYTHONDONTWRITEBYTECODE, a fresh checkout) every launch compiles the package.
    for main_py in filter(None, (source, args.also)):
        subprocess.run([str(python), "-m", "compileall", "-q", str(main_py.parent)], check=True)
    hello, create, also = [], [], []
    with (
        ImsEmulator(EmulatorConfig(record_requests=False)) as ims,
        tempfile.TemporaryDirectory() as tmp,
    ):
        functions = Path(tmp) / "baseline.py"
        functions.write_text(FUNCTIONS)
        for run in range(args.runs):
            hello.append(hello_cold_start(functions))
            create.append(create_cold_start(ims, Path(tmp) / f"cold{run}.db", source))
            if args.also is not None:
                also.append(create_cold_start(ims, Path(tmp) / f"also{run}.db", args.also))
        echo_cpu = cpu_per_request(functions, "echo", dict(os.environ), args.requests)
        create_cpu = cpu_per_request(
            ROOT / "functions" / "main.py",
            "create",
            create_env(ims, Path(tmp) / "warm.db"),
            args.requests,
        )
        also_cpu = None
        if args.also is not None:
            also_env = create_env(ims, Path(tmp) / "also-warm.db")
            also_cpu = cpu_per_request(args.also, "create", also_env, args.requests)
    ratio = statistics.median(create) / statistics.median(hello)
    print(f"cold start, {args.runs} interleaved runs each (.venv-runtime: requirements.txt only)")
    print(f"  functions-framework one-line function, launch -> first answer: {ms(hello)}")
    print(f"  create, launch -> first accepted POST (202):                  {ms(create)}")
    print(f"  ratio of the medians: {ratio:.2f} (target <= 1.5)")
    if also:
        print(
            f"  {args.also}, the same:  {ms(also)}, ratio {statistics.median(also) / statistics.median(hello):.2f}"
        )
    print(f"server CPU per warm request, {args.requests} requests each")
    print(f"  functions-framework echo of the same body: {echo_cpu * 1000:.2f} ms")
    print(f"  create (validate, two store writes, one signed IMS call): {create_cpu * 1000:.2f} ms")
    print(f"  ratio: {create_cpu / echo_cpu:.1f}")
    if also_cpu is not None:
        print(f"  {args.also}, the same: {also_cpu * 1000:.2f} ms, ratio {also_cpu / echo_cpu:.1f}")


if __name__ == "__main__":
    main()
