"""The metrics issue 12 adds: zero series from the start, build info, process collectors,
connected peers, batch sizes, view-change reasons, and the dashboard's per-second series."""

from __future__ import annotations

from dataclasses import dataclass, field

from node.metrics import SERIES_SECONDS, VIEW_CHANGE_REASONS, NodeMetrics
from node.version import phalanx_version


@dataclass
class FakeBatch:
    seq: int
    txs: list[int] = field(default_factory=list)


def test_every_counter_has_a_series_before_any_event() -> None:
    text = NodeMetrics().render().decode()
    for line in (
        "phalanx_committed_txs_total 0.0",
        "phalanx_failed_txs_total 0.0",
        "phalanx_view_changes_total 0.0",
        'phalanx_dropped_peer_messages_total{reason="inbox_full"} 0.0',
        "phalanx_peers_connected 0.0",
        "phalanx_batch_size_count 0.0",
    ):
        assert line in text, line
    for reason in VIEW_CHANGE_REASONS:
        assert f'phalanx_view_change_starts_total{{reason="{reason}"}} 0.0' in text


def test_build_info_and_process_collectors() -> None:
    text = NodeMetrics().render().decode()
    assert 'phalanx_build_info{python="' in text and f'version="{phalanx_version()}"' in text
    assert "process_resident_memory_bytes" in text
    assert "python_info" in text
    assert "python_gc_collections_total" in text


def test_batch_sizes_peers_and_series() -> None:
    wall = [1_000.2]
    mono = [50.0]
    metrics = NodeMetrics(clock=lambda: mono[0], wall_clock=lambda: wall[0])
    metrics.observe_peers(2)
    metrics.observe_block(FakeBatch(1, [0] * 3), [{"ok": True}] * 3, submitted_at=[49.5, 49.9])
    wall[0] = 1_002.5
    mono[0] = 52.0
    metrics.observe_block(FakeBatch(2, [0] * 40), [{"ok": True}] * 40)
    text = metrics.render().decode()
    assert "phalanx_peers_connected 2.0" in text
    assert 'phalanx_batch_size_bucket{le="5.0"} 1.0' in text
    assert 'phalanx_batch_size_bucket{le="50.0"} 2.0' in text
    series = metrics.series()
    assert len(series) == SERIES_SECONDS
    assert series[-1] == {"t_ms": 1_002_000, "txs": 40, "latency_ms": None}
    assert series[-2] == {"t_ms": 1_001_000, "txs": 0, "latency_ms": None}
    assert series[-3] == {"t_ms": 1_000_000, "txs": 3, "latency_ms": 300.0}
