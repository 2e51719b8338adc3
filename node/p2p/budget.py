"""Token buckets: how much of something (bytes, frames, CPU seconds) one peer may spend."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


class TokenBucket:
    """``rate`` units per second, at most ``burst`` saved up. :meth:`spend` takes ``amount``
    and says whether the bucket still had that much (a refused spend takes nothing)."""

    def __init__(
        self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if rate <= 0 or burst <= 0:
            raise ValueError("rate and burst must be positive")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = burst
        self._at = clock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now

    def spend(self, amount: float) -> bool:
        self._refill()
        if amount > self._tokens:
            return False
        self._tokens -= amount
        return True

    def charge(self, amount: float) -> bool:
        """Take ``amount`` even if it is not there (for a cost only known afterwards, such as
        CPU time); False once the bucket is in debt."""
        self._refill()
        self._tokens -= amount
        return self._tokens >= 0


@dataclass(frozen=True)
class PeerBudgets:
    """What one authenticated peer may make us spend before it is disconnected (and kept away
    for a back-off that doubles per offence). The defaults are several times what an honest
    validator of a busy 4-node testnet uses (measured by ``scripts/bench``)."""

    bytes_per_s: float = 32 * 1024 * 1024
    bytes_burst: float = 64 * 1024 * 1024
    frames_per_s: float = 20_000
    frames_burst: float = 40_000
    decode_cpu_per_s: float = 0.25  # seconds of decoding per second
    decode_cpu_burst: float = 2.0
    invalid_per_s: float = 2.0  # messages the replica or the pool found invalid (bad signature...)
    invalid_burst: float = 50.0
