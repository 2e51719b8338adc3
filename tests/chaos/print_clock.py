"""Prints the node runtime's wall clock in ms and the real one (for the clock-skew test)."""

import time

real_ms = time.clock_gettime_ns(time.CLOCK_REALTIME) // 1_000_000

from node import runtime  # noqa: E402  (imported after the clock was shifted, as a node is)

print(runtime._now_ms(), real_ms)
