"""NodeMetrics on its own: the windowed throughput gauge and view-change counting."""

from __future__ import annotations

from dataclasses import dataclass, field

from node.metrics import TX_RATE_WINDOW_S, NodeMetrics


@dataclass
class FakeBatch:
    seq: int
    txs: list[int] = field(default_factory=list)


@dataclass
class FakeReplica:
    view: int = 0
    last_executed_seq: int = 0
    stable_checkpoint: int = 0
    in_view_change: bool = False
    dropped: dict[tuple[str, str], int] = field(default_factory=dict)


def _gauge(metrics: NodeMetrics, name: str) -> float:
    for line in metrics.render().decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in the scrape")


def test_tx_per_second_counts_only_the_last_window() -> None:
    now = [1000.0]
    metrics = NodeMetrics(clock=lambda: now[0])
    metrics.observe_block(FakeBatch(1, [0] * 50), [{"ok": True}] * 50)
    now[0] += 5
    metrics.observe_block(FakeBatch(2, [0] * 30), [{"ok": True}] * 30)
    assert _gauge(metrics, "phalanx_committed_tx_per_second") == 80 / TX_RATE_WINDOW_S
    now[0] += TX_RATE_WINDOW_S - 4  # the first block has left the window
    assert _gauge(metrics, "phalanx_committed_tx_per_second") == 30 / TX_RATE_WINDOW_S
    now[0] += TX_RATE_WINDOW_S
    assert _gauge(metrics, "phalanx_committed_tx_per_second") == 0


def test_view_changes_count_views_entered_and_replica_drops_are_exported() -> None:
    metrics = NodeMetrics()
    replica = FakeReplica()
    metrics.observe_replica(replica)
    replica.view = 2
    replica.dropped = {("a", "bad_signature"): 3, ("b", "bad_signature"): 1}
    metrics.observe_replica(replica)
    assert _gauge(metrics, "phalanx_view_changes_total") == 2
    assert _gauge(metrics, "phalanx_view") == 2
    text = metrics.render().decode()
    assert 'phalanx_dropped_peer_messages_total{reason="bad_signature"} 4.0' in text
