"""Prints the node runtime's wall clock in ms and the real one, read one after the other (for
the clock-skew test; clock_gettime is not what tests.adversary.clock shifts)."""

import time

from node import runtime

node_ms = runtime._now_ms()
real_ms = time.clock_gettime_ns(time.CLOCK_REALTIME) // 1_000_000
print(node_ms, real_ms)
