"""The pure parts of scripts/bench --sweep and the memory reading shared with scripts/bench:
step planning, the open-loop schedule, quantiles, throughput windows, RSS from /proc, the JSON
shape and the plot. (The benchmarks themselves are never timed tests.)"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
sys.path.insert(0, str(SCRIPTS))

import bench_common  # noqa: E402
import bench_sweep  # noqa: E402


def test_plan_steps_are_percentages_of_the_peak_in_order() -> None:
    steps = bench_sweep.plan_steps(2000.0, [5, 10, 120], seconds=8)
    assert [(s.percent, s.rate, s.count) for s in steps] == [
        (5, 100.0, 800),
        (10, 200.0, 1600),
        (120, 2400.0, 19200),
    ]
    with pytest.raises(ValueError, match="peak must be positive"):
        bench_sweep.plan_steps(0.0, [5], seconds=8)
    with pytest.raises(ValueError, match="positive"):
        bench_sweep.plan_steps(100.0, [0], seconds=8)


@pytest.mark.parametrize(
    ("rate", "seconds", "interval_s"), [(150, 2, 0.01), (3, 2, 0.01), (5000, 1, 0.01)]
)
def test_schedule_sends_every_transaction_once_at_its_due_time(
    rate: float, seconds: float, interval_s: float
) -> None:
    step = bench_sweep.Step(10, rate, seconds)
    batches = bench_sweep.schedule(step, interval_s)
    # contiguous, non-empty, covering 0..count exactly once, offsets on the interval grid
    assert batches[0].start == 0
    assert batches[-1].end == step.count
    for a, b in itertools.pairwise(batches):
        assert a.end == b.start
        assert b.offset_s > a.offset_s
    assert all(b.end > b.start for b in batches)
    for b in batches:
        # no transaction is sent before it is due, nor an interval or more after
        for i in range(b.start, b.end):
            assert i / rate <= b.offset_s + 1e-9
            assert b.offset_s < i / rate + interval_s + 1e-9
    # the offer is steady: the last batch goes out when the step's time is (almost) up
    assert seconds - 1 / rate - interval_s <= batches[-1].offset_s <= seconds


def test_schedule_rejects_a_zero_interval() -> None:
    with pytest.raises(ValueError, match="interval"):
        bench_sweep.schedule(bench_sweep.Step(5, 10, 1), 0)


def test_quantile_ms_and_throughput_window() -> None:
    latencies = sorted(i / 1000 for i in range(1, 101))  # 1 ms .. 100 ms
    assert bench_common.quantile_ms(latencies, 0.5) == 50.0
    assert bench_common.quantile_ms(latencies, 0.99) == 99.0
    assert bench_common.quantile_ms([], 0.5) is None
    # Below saturation: commits follow the offer (100 tx/s for 8 s) whatever their lag.
    steady = [5.0 + i / 100 for i in range(800)]
    assert bench_sweep.step_throughput(steady, 8) == pytest.approx(100, rel=0.01)
    # Past it: a slow start then 300 tx/s, long after the 8 s step ended; the rate is 300.
    overloaded = [1.0, 1.5] + [20.0 + i / 300 for i in range(3000)]
    assert bench_sweep.step_throughput(overloaded, 8) == pytest.approx(300, rel=0.01)
    # Everything in one block: the count over the step's time.
    assert bench_sweep.step_throughput([3.0] * 40, 8) == 5.0
    assert bench_sweep.step_throughput([], 8) == 0.0


def test_signature_limit_counts_one_sign_and_four_verifies_per_core() -> None:
    assert bench_common.signature_limit(2, 1e-4, 2e-4) == pytest.approx(2 / 9e-4)
    t_sign, t_verify = bench_common.measure_ed25519(samples=50, rounds=5)
    assert 0 < t_sign < 0.01 and 0 < t_verify < 0.01  # Ed25519 takes tens of microseconds


def test_rss_of_a_process_tree_counts_its_children() -> None:
    # A parent holding ~40 MiB whose child holds ~40 MiB more: the tree's figure includes both.
    # Each waits for end-of-file on its stdin, so closing the parent's ends both.
    code = (
        "import sys\n"
        "block = bytearray(40 * 2**20)\n"
        "for i in range(0, len(block), 4096): block[i] = 1\n"
        "sys.stdout.write('ready\\n'); sys.stdout.flush(); sys.stdin.read()\n"
    )
    parent_code = (
        "import subprocess, sys\n"
        f"child = subprocess.Popen([sys.executable, '-c', {code!r}], stdin=subprocess.PIPE,"
        " stdout=subprocess.PIPE)\n"
        "child.stdout.readline()\n"
        f"exec({code!r})\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", parent_code], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    with parent:
        assert parent.stdout is not None and parent.stdin is not None
        assert parent.stdout.readline() == b"ready\n"
        own = bench_common._vm_rss_bytes(parent.pid)
        tree = bench_common.process_tree_rss_bytes(parent.pid)
        assert own is not None and tree is not None
        assert own > 40 * 2**20
        assert tree > own + 40 * 2**20
        sampler = bench_common.RssSampler({"node0": parent.pid, "gone": 2**22 + 7})
        sampler.sample()
        report = sampler.report()
        assert set(report["rss_peak_mib"]) == {"node0"}  # a pid that is gone is skipped
        assert abs(report["rss_peak_mib"]["node0"] - tree / 2**20) < 5
        assert abs(report["rss_peak_main_process_mib"]["node0"] - own / 2**20) < 5
        assert report["rss_limit_mib"] == 512
        parent.stdin.close()
        parent.wait(timeout=30)
    assert bench_common.process_tree_rss_bytes(parent.pid) is None


def _result() -> dict[str, Any]:
    step = {
        "percent": 10,
        "offered_tx_per_s": 200.0,
        "submitted": 1600,
        "rejected": 0,
        "rejected_by_error": {},
        "committed": 1600,
        "committed_tx_per_s": 199.5,
        "latency_p50_ms": 8.1,
        "latency_p99_ms": 20.3,
        "receipt_probes": 160,
        "receipt_probes_pending": 0,
        "receipt_probes_failed": 0,
        "receipt_p50_ms": 9.0,
        "receipt_p99_ms": 25.0,
        "view_changes": 0,
    }
    overload = dict(step, percent=120, committed_tx_per_s=1900.0, latency_p99_ms=4000.0)
    return {
        "command": "scripts/bench --sweep",
        "peer_links": "tls",
        "cores": 2,
        "signature_limit_tx_per_s": 3000,
        "idle": {"txs": 100, "receipt_p50_ms": 4.0, "receipt_p99_ms": 9.0},
        "peak": {"committed_tx_per_s": 2000.0, "ratio_to_signature_limit": 0.6667},
        "steps": [step, dict(overload, receipt_p50_ms=None, receipt_p99_ms=None)],
        "rss_peak_mib": {"node0": 100.0},
        "rss_limit_mib": 512,
    }


def test_plot_writes_a_png_and_table_lists_every_step(tmp_path: Path) -> None:
    path = tmp_path / "sweep.png"
    bench_sweep.plot(_result(), path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 10_000
    text = bench_sweep.table(_result())
    assert "| 10% | 200 | 200 | 8.1 | 20.3 | 9.0 | 25.0 | 160 | 0 | 0 |" in text
    assert "| 120% | 200 | 1900 | 8.1 | 4000.0 | None | None | 160 | 0 | 0 |" in text
    assert "node0 100.0." in text and "`scripts/bench --sweep`" in text


def test_command_line_leaves_out_the_temporary_testnet_dir() -> None:
    argv = ["--dir", "/tmp/x", "--step-s", "4", "--dir=/tmp/y", "--percents", "5,10"]
    assert bench_sweep.command_line(argv) == "scripts/bench --sweep --step-s 4 --percents 5,10"


def test_json_shape_of_a_step_result() -> None:
    fields = set(bench_sweep.StepResult.__dataclass_fields__)
    assert fields == set(_result()["steps"][0])
    json.dumps(_result())  # all plain JSON
