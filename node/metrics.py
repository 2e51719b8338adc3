"""Prometheus metrics of one node, in a registry of its own (never the global one, so that
several nodes or tests in one process do not collide).

======================================  =========  ==========================================
metric                                  type       meaning
======================================  =========  ==========================================
``phalanx_committed_seq``               gauge      last executed sequence number
``phalanx_view``                        gauge      current view
``phalanx_view_changes_total``          counter    views entered after the first
``phalanx_in_view_change``              gauge      1 while a view change is under way
``phalanx_stable_checkpoint``           gauge      seq of the last stable checkpoint
``phalanx_pending_pool_size``           gauge      transactions in the pending pool
``phalanx_committed_txs_total``         counter    transactions executed (rate = throughput)
``phalanx_committed_tx_per_second``     gauge      transactions executed per second, last 10 s
``phalanx_failed_txs_total``            counter    executed transactions whose result is not ok
``phalanx_commit_latency_seconds``      histogram  submission to this node -> execution
``phalanx_dropped_peer_messages_total`` counter    peer input refused, by ``reason``
``phalanx_event_subscribers``           gauge      connected ``/v1/events`` clients
``phalanx_peers_connected``             gauge      validators with an authenticated link now
``phalanx_build_info``                  gauge      1, labelled ``version`` and ``python``
``phalanx_batch_size``                  histogram  transactions per executed block
``phalanx_view_change_starts_total``    counter    view changes this node began, by ``reason``
                                                   (``node.consensus_log``)
``phalanx_evidence_total``              counter    misbehaviour evidence detected and stored,
                                                   by ``kind`` (spec §7; ``node.evidence``)
``process_*``, ``python_*``             various    prometheus_client's default collectors
======================================  =========  ==========================================

Every counter exists from the start at 0 (labelled ones for their known labels), so that
``rate()`` and alerts see a series before the first event. :meth:`NodeMetrics.series` keeps the
last minutes of committed transactions and commit latency per second for the dashboard.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from node.version import phalanx_version, python_version

# The *_created series (process-wide switch) only add noise to a node's scrape.
disable_created_metrics()  # type: ignore[no-untyped-call]

CONTENT_TYPE = CONTENT_TYPE_LATEST
LATENCY_BUCKETS_S = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
BATCH_SIZE_BUCKETS = (0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
VIEW_CHANGE_REASONS = (
    "primary_lost",
    "request_timeout",
    "new_view_timeout",
    "joined_higher_view",
)
KNOWN_DROP_REASONS = ("inbox_full", "bad_relay")
SERIES_SECONDS = 300  # the dashboard's charts: the last five minutes, one point per second
TX_RATE_WINDOW_S = 10.0
DROP_REASONS_MAX = 256  # distinct reason labels; more are counted under "other"


class ReplicaView(Protocol):
    """What the metrics read from the replica."""

    @property
    def view(self) -> int: ...

    @property
    def last_executed_seq(self) -> int: ...

    @property
    def stable_checkpoint(self) -> int: ...

    @property
    def in_view_change(self) -> bool: ...

    @property
    def dropped(self) -> Mapping[tuple[str, str], int]: ...


class Sized(Protocol):
    def __len__(self) -> int: ...


class BatchView(Protocol):
    @property
    def seq(self) -> int: ...

    @property
    def txs(self) -> Sequence[Any]: ...


class NodeMetrics:
    """The node's metrics; :meth:`render` gives the ``/metrics`` text."""

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._clock = clock
        self._wall_clock = wall_clock
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        # The process-wide default collectors (CPU, memory, file descriptors, GC, Python
        # version) registered in our own registry as well.
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            r.register(collector)
        self.committed_seq = Gauge(
            "phalanx_committed_seq", "Last executed sequence number", registry=r
        )
        self.view = Gauge("phalanx_view", "Current view", registry=r)
        self.view_changes = Counter(
            "phalanx_view_changes", "Views entered after the first", registry=r
        )
        self.in_view_change = Gauge(
            "phalanx_in_view_change", "1 while a view change is under way", registry=r
        )
        self.stable_checkpoint = Gauge(
            "phalanx_stable_checkpoint", "Seq of the last stable checkpoint", registry=r
        )
        self.pending_pool_size = Gauge(
            "phalanx_pending_pool_size", "Transactions in the pending pool", registry=r
        )
        self.committed_txs = Counter(
            "phalanx_committed_txs", "Transactions executed (rate = throughput)", registry=r
        )
        self.tx_per_second = Gauge(
            "phalanx_committed_tx_per_second",
            f"Transactions executed per second over the last {TX_RATE_WINDOW_S:g} s",
            registry=r,
        )
        self.failed_txs = Counter(
            "phalanx_failed_txs", "Executed transactions whose result is not ok", registry=r
        )
        self.commit_latency = Histogram(
            "phalanx_commit_latency_seconds",
            "Time from a transaction's acceptance by this node to its execution",
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.dropped_peer_messages = Counter(
            "phalanx_dropped_peer_messages",
            "Peer input refused or dropped, by reason",
            ["reason"],
            registry=r,
        )
        self.event_subscribers = Gauge(
            "phalanx_event_subscribers", "Connected /v1/events clients", registry=r
        )
        self.peers_connected = Gauge(
            "phalanx_peers_connected", "Validators with an authenticated peer link", registry=r
        )
        self.build_info = Gauge(
            "phalanx_build_info",
            "Always 1; the labels name the build",
            ["version", "python"],
            registry=r,
        )
        self.build_info.labels(version=phalanx_version(), python=python_version()).set(1)
        self.batch_size = Histogram(
            "phalanx_batch_size",
            "Transactions per executed block",
            buckets=BATCH_SIZE_BUCKETS,
            registry=r,
        )
        self.view_change_starts = Counter(
            "phalanx_view_change_starts",
            "View changes this node began, by reason",
            ["reason"],
            registry=r,
        )
        self.block_write_seconds = Counter(
            "phalanx_block_write_seconds",
            "CPU time spent executing and writing blocks (the writing thread's)",
            registry=r,
        )
        self.roots_seconds = Counter(
            "phalanx_state_roots_seconds",
            "Part of that CPU time spent on the state tree and the results root",
            registry=r,
        )
        self.execution_conflicts = Counter(
            "phalanx_execution_vote_conflicts",
            "Execution votes that conflict with the block's certified roots, by validator",
            ["validator"],
            registry=r,
        )
        for reason in VIEW_CHANGE_REASONS:
            self.view_change_starts.labels(reason=reason)
        for reason in KNOWN_DROP_REASONS:
            self.dropped_peer_messages.labels(reason=reason)
        # Per wall-clock second: [second, committed txs, latency sum (s), latency count].
        self._series: deque[list[float]] = deque(maxlen=SERIES_SECONDS)
        self._recent_blocks: deque[tuple[float, int]] = deque()  # (when, tx count)
        self._last_view: int | None = None
        self._replica: ReplicaView | None = None
        self._pool: Sized | None = None
        self._dropped_seen: dict[str, int] = {}  # reason -> replica drops already counted

    # ---- fed by the runtime -----------------------------------------------------------------

    def observe_replica(self, replica: ReplicaView, pool: Sized | None = None) -> None:
        """After each replica step: cheap gauges now; the drop counters at the next scrape."""
        self._replica = replica
        if pool is not None:
            self._pool = pool
            self.pending_pool_size.set(len(pool))
        view = replica.view
        if self._last_view is not None and view > self._last_view:
            self.view_changes.inc(view - self._last_view)
        self._last_view = view
        self.view.set(view)
        self.committed_seq.set(replica.last_executed_seq)

    def observe_block(
        self,
        batch: BatchView,
        results: Sequence[Mapping[str, Any]],
        submitted_at: Sequence[float] = (),
    ) -> None:
        """After executing a block: counts, and latency of the transactions this node took in."""
        self.committed_seq.set(batch.seq)
        self.committed_txs.inc(len(batch.txs))
        failed = sum(1 for result in results if not result.get("ok"))
        if failed:
            self.failed_txs.inc(failed)
        self.batch_size.observe(len(batch.txs))
        now = self._clock()
        self._recent_blocks.append((now, len(batch.txs)))
        bucket = self._bucket()
        bucket[1] += len(batch.txs)
        for at in submitted_at:
            latency = max(0.0, now - at)
            self.commit_latency.observe(latency)
            bucket[2] += latency
            bucket[3] += 1

    def _bucket(self) -> list[float]:
        second = float(int(self._wall_clock()))
        if not self._series or self._series[-1][0] != second:
            self._series.append([second, 0.0, 0.0, 0.0])
        return self._series[-1]

    def series(self) -> list[dict[str, Any]]:
        """The last SERIES_SECONDS seconds, one point per second (seconds with no block too):
        ``{"t_ms", "txs", "latency_ms"}`` (``latency_ms`` the mean of the transactions this
        node took in and executed that second, null if none)."""
        now = int(self._wall_clock())
        by_second = {int(b[0]): b for b in self._series}
        points = []
        for second in range(now - SERIES_SECONDS + 1, now + 1):
            b = by_second.get(second)
            latency = None if b is None or b[3] == 0 else round(b[2] / b[3] * 1000, 1)
            points.append(
                {"t_ms": second * 1000, "txs": 0 if b is None else int(b[1]), "latency_ms": latency}
            )
        return points

    def observe_peers(self, connected: int) -> None:
        self.peers_connected.set(connected)

    def drop(self, reason: str, count: int = 1) -> None:
        self.dropped_peer_messages.labels(reason=reason).inc(count)

    # ---- read by /metrics -------------------------------------------------------------------

    def render(self) -> bytes:
        self._sync()
        return generate_latest(self.registry)

    def _sync(self) -> None:
        replica = self._replica
        if replica is not None:
            self.in_view_change.set(1 if replica.in_view_change else 0)
            self.stable_checkpoint.set(replica.stable_checkpoint)
            self._sync_replica_drops(replica.dropped)
        if self._pool is not None:
            self.pending_pool_size.set(len(self._pool))
        self.tx_per_second.set(self._tx_rate())

    def _tx_rate(self) -> float:
        horizon = self._clock() - TX_RATE_WINDOW_S
        while self._recent_blocks and self._recent_blocks[0][0] < horizon:
            self._recent_blocks.popleft()
        return sum(count for _, count in self._recent_blocks) / TX_RATE_WINDOW_S

    def _sync_replica_drops(self, dropped: Mapping[tuple[str, str], int]) -> None:
        by_reason: dict[str, int] = {}
        for (_sender, reason), count in dropped.items():
            by_reason[reason] = by_reason.get(reason, 0) + count
        for reason, total in by_reason.items():
            known = reason in self._dropped_seen or len(self._dropped_seen) < DROP_REASONS_MAX
            label = reason if known else "other"
            seen = self._dropped_seen.get(reason, 0)
            if total > seen:
                self.dropped_peer_messages.labels(reason=label).inc(total - seen)
                self._dropped_seen[reason] = total
