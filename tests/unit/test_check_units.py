"""The poll back-off and the rate limiter, with a fixed jitter and a fake clock: no sleeping."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta

import pytest

from wholeimage.httputil import RateLimiter
from wholeimage.poll_backoff import JITTER, PollBackoff

T0 = datetime(2025, 3, 14, 9, 26, 53, tzinfo=UTC)


class FixedJitter(random.Random):
    """A random source whose ``uniform`` always lands at ``fraction`` of the range (0 = lowest)."""

    def __init__(self, fraction: float) -> None:
        super().__init__(0)
        self.fraction = fraction

    def uniform(self, a: float, b: float) -> float:
        return a + (b - a) * self.fraction


NO_JITTER = FixedJitter(0.5)
LOWEST = FixedJitter(0.0)
HIGHEST = FixedJitter(1.0)


def interval(backoff: PollBackoff, age: float, rng: random.Random = NO_JITTER) -> float:
    """Seconds until the next poll of a job ``age`` seconds old."""
    now = T0 + timedelta(seconds=age)
    return (backoff.next_poll_at(submitted_at=T0, now=now, rng=rng) - now).total_seconds()


# --- PollBackoff -------------------------------------------------------------------------------


def test_the_interval_grows_with_the_jobs_age():
    backoff = PollBackoff()
    intervals = [interval(backoff, age) for age in (0, 15, 30, 60, 120, 240, 299)]
    assert intervals == sorted(intervals)
    assert intervals == pytest.approx([15, 15, 30, 60, 120, 240, 299])


def test_the_interval_is_held_at_the_minimum_for_a_young_job_and_at_the_maximum_for_an_old_one():
    backoff = PollBackoff(min_interval=20, max_interval=120)
    assert interval(backoff, 0) == pytest.approx(20)
    assert interval(backoff, 5) == pytest.approx(20)
    assert interval(backoff, 120) == pytest.approx(120)
    assert interval(backoff, 3600) == pytest.approx(120)
    assert interval(backoff, 10 * 24 * 3600) == pytest.approx(120)


def test_a_submission_time_in_the_future_counts_as_age_zero():
    backoff = PollBackoff()
    assert interval(backoff, -600) == pytest.approx(15)


@pytest.mark.parametrize("age", [0, 10, 15, 40, 100, 250, 300, 1000, 86400])
def test_jitter_stays_within_ten_percent_and_never_below_the_minimum(age: float):
    backoff = PollBackoff()
    clamped = min(max(age, backoff.min_interval), backoff.max_interval)
    lowest = max(clamped * (1 - JITTER), backoff.min_interval)
    highest = clamped * (1 + JITTER)
    assert interval(backoff, age, LOWEST) == pytest.approx(lowest)
    assert interval(backoff, age, HIGHEST) == pytest.approx(highest)
    for seed in range(200):
        assert lowest - 1e-6 <= interval(backoff, age, random.Random(seed)) <= highest + 1e-6


def test_jitter_spreads_jobs_submitted_together():
    backoff = PollBackoff()
    rng = random.Random(7)
    spread = {round(interval(backoff, 100, rng), 3) for _ in range(50)}
    assert len(spread) > 40
    assert min(spread) < 95
    assert max(spread) > 105


def test_zero_minimum_and_maximum_make_a_job_due_at_once_whatever_its_age():
    backoff = PollBackoff(0, 0)
    for age in (0, 10, 3600):
        now = T0 + timedelta(seconds=age)
        assert backoff.next_poll_at(submitted_at=T0, now=now, rng=random.Random(age)) == now


def test_equal_minimum_and_maximum_give_a_fixed_interval_with_upward_jitter_only():
    backoff = PollBackoff(60, 60)
    for age in (0, 60, 6000):
        assert interval(backoff, age, NO_JITTER) == pytest.approx(60)
        assert interval(backoff, age, LOWEST) == pytest.approx(60)
        assert interval(backoff, age, HIGHEST) == pytest.approx(66)


def queries_until_the_end_is_seen(
    backoff: PollBackoff, rng: random.Random, ends_after: timedelta
) -> tuple[int, timedelta]:
    """Simulate polling one job from its first poll on (the schedule's shortest wait after its
    submission, as the create function sets it); the count and how late the end is seen."""
    now = T0 + timedelta(seconds=backoff.min_interval)
    queries = 0
    while True:
        queries += 1
        if now - T0 >= ends_after:
            return queries, now - T0 - ends_after
        now = backoff.next_poll_at(submitted_at=T0, now=now, rng=rng)


@pytest.mark.parametrize(
    "rng",
    [NO_JITTER, LOWEST, HIGHEST, *(random.Random(seed) for seed in range(100))],
    ids=lambda rng: f"fixed-{rng.fraction}" if isinstance(rng, FixedJitter) else "seeded",
)
def test_a_thirty_minute_job_costs_at_most_a_dozen_queries_with_the_default_schedule(
    rng: random.Random,
):
    backoff = PollBackoff()
    assert (backoff.min_interval, backoff.max_interval) == (15.0, 300.0)
    queries, late = queries_until_the_end_is_seen(backoff, rng, timedelta(minutes=30))
    assert queries <= 12
    # And its end is seen within one maximum interval (plus jitter) of happening.
    assert late <= timedelta(seconds=backoff.max_interval * (1 + JITTER))


# --- RateLimiter -------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_the_burst_is_spent_at_once_then_requests_come_at_the_rate(clock):
    limiter = RateLimiter(rate=2, burst=3, clock=clock)
    assert [limiter.delay_needed() for _ in range(3)] == [0, 0, 0]
    assert limiter.delay_needed() == pytest.approx(0.5)
    clock.advance(0.25)
    assert limiter.delay_needed() == pytest.approx(0.25)
    clock.advance(0.25)
    assert limiter.delay_needed() == 0
    assert limiter.delay_needed() == pytest.approx(0.5)


def test_tokens_refill_at_the_rate_but_never_beyond_the_burst(clock):
    limiter = RateLimiter(rate=10, burst=5, clock=clock)
    for _ in range(5):
        assert limiter.delay_needed() == 0
    clock.advance(3600)
    assert [limiter.delay_needed() for _ in range(5)] == [0] * 5
    assert limiter.delay_needed() == pytest.approx(0.1)


def test_the_burst_defaults_to_one_second_of_requests_and_at_least_one(clock):
    assert RateLimiter(rate=20, clock=clock).burst == 20
    assert RateLimiter(rate=0.5, clock=clock).burst == 1
    slow = RateLimiter(rate=0.5, clock=clock)
    assert slow.delay_needed() == 0
    assert slow.delay_needed() == pytest.approx(2.0)


def test_a_pause_on_429_blocks_every_caller_until_it_ends(clock):
    limiter = RateLimiter(rate=100, burst=100, clock=clock)
    limiter.pause(5)
    # Tokens are there, but nobody may go: every worker asks the same limiter.
    assert [limiter.delay_needed() for _ in range(10)] == [5.0] * 10
    clock.advance(3)
    assert limiter.delay_needed() == pytest.approx(2.0)
    clock.advance(2)
    assert limiter.delay_needed() == 0
    assert limiter.pauses == 1


def test_a_shorter_pause_does_not_cut_a_longer_one_short(clock):
    limiter = RateLimiter(rate=1, clock=clock)
    limiter.pause(30)
    limiter.pause(1)
    assert limiter.pauses == 1
    assert limiter.delay_needed() == pytest.approx(30)
    clock.advance(10)
    limiter.pause(60)
    assert limiter.pauses == 2
    assert limiter.delay_needed() == pytest.approx(60)


def test_a_negative_or_zero_pause_blocks_nobody(clock):
    limiter = RateLimiter(rate=0, clock=clock)
    limiter.pause(-5)
    limiter.pause(0)
    assert limiter.delay_needed() == 0


def test_rate_zero_is_unlimited_but_still_pausable(clock):
    limiter = RateLimiter(rate=0, clock=clock)
    assert all(limiter.delay_needed() == 0 for _ in range(10_000))
    limiter.pause(7)
    assert limiter.delay_needed() == pytest.approx(7)
    clock.advance(7)
    assert limiter.delay_needed() == 0


def test_acquire_waits_exactly_as_long_as_the_limiter_says(clock, monkeypatch):
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)
        clock.advance(seconds)

    monkeypatch.setattr(asyncio, "sleep", fake_sleep)
    limiter = RateLimiter(rate=4, burst=1, clock=clock)

    async def five_requests() -> list[float]:
        sent = []
        for _ in range(5):
            await limiter.acquire()
            sent.append(clock())
        return sent

    limiter.pause(10)
    sent = asyncio.run(five_requests())
    assert sent == pytest.approx([1010, 1010.25, 1010.5, 1010.75, 1011])
    assert sum(slept) == pytest.approx(11)
