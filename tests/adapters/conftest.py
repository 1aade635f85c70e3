"""The emulator tests' shared pieces: a clock that jumps, a started emulator on it, a client.

``test_emulator.py``, ``test_emulator_images.py`` and ``test_emulator_delete.py`` take these
fixtures; a module that needs another emulator defines its own ``ims``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from ims_emulator import EmulatorConfig, ImsEmulator

JOB_SECONDS = 100.0


class FakeClock:
    """A clock that starts at the real time (``X-Sdk-Date`` is checked against it) and jumps."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def ims(clock: FakeClock) -> Iterator[ImsEmulator]:
    emulator = ImsEmulator(EmulatorConfig(job_seconds=JOB_SECONDS), clock=clock)
    emulator.start()
    yield emulator
    emulator.stop()


@pytest.fixture
def http(ims: ImsEmulator) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=ims.url, timeout=5.0) as client:
        yield client
