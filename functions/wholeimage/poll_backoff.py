"""How long to wait before polling a job again: soon at first, then backing off with its age.

The next query comes after as long as the job has already run (its age), held between the
minimum and maximum interval, with ±10 % jitter so jobs submitted together spread out. The
query count therefore grows with the logarithm of the age until the cap, then linearly: with
the defaults (15 s, 300 s) a 30-minute job costs about a dozen queries. ``min = max = 0`` makes
every outstanding job due at every tick.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta

JITTER = 0.1


@dataclass(frozen=True)
class PollBackoff:
    """The age-proportional back-off between two queries of one job; intervals in seconds."""

    min_interval: float = 15.0
    max_interval: float = 300.0

    def next_poll_at(
        self, *, submitted_at: datetime, now: datetime, rng: random.Random
    ) -> datetime:
        """The time of the next query for a job submitted at ``submitted_at``, polled ``now``."""
        if self.max_interval <= 0:
            return now
        age = max((now - submitted_at).total_seconds(), 0.0)
        interval = min(max(age, self.min_interval), self.max_interval)
        interval *= 1 + rng.uniform(-JITTER, JITTER)
        return now + timedelta(seconds=max(interval, min(self.min_interval, self.max_interval)))
