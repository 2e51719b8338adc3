"""The audit reads a ledger while its writer (another process, like a running node) appends."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from ledger.audit import audit_ledger

PROJECT_ROOT = Path(__file__).resolve().parents[2]
BLOCKS = 100_000  # a cap: the writer appends until told to stop
AUDITS = 4  # audits (two of them by the CLI) while the writer appends


def test_audit_while_a_writer_appends(tmp_path: Path) -> None:
    path = tmp_path / "ledger"
    writer = subprocess.Popen(
        [sys.executable, "-m", "tests.audit.writer_proc", str(path), str(BLOCKS)],
        cwd=PROJECT_ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert writer.stdout is not None
        assert writer.stdout.readline().strip() == "ready"
        heads: list[int] = []
        cli_codes: list[int] = []
        while len(heads) < AUDITS:
            assert writer.poll() is None, "the writer stopped before it was told to"
            report = audit_ledger(path)
            assert report.ok, [f"{f.seq} {f.check}: {f.detail}" for f in report.failures]
            heads.append(report.head_seq)
            if len(cli_codes) < 2:
                cli = subprocess.run(
                    [sys.executable, "-m", "node.cli", "audit", str(path)],
                    cwd=PROJECT_ROOT,
                    capture_output=True,
                    text=True,
                    timeout=60,
                )
                cli_codes.append(cli.returncode)
                assert cli.returncode == 0, cli.stdout + cli.stderr
        assert writer.stdin is not None
        writer.stdin.write("stop\n")
        writer.stdin.flush()
        done = writer.stdout.readline().split()
        assert writer.wait(timeout=60) == 0 and done[0] == "done"
        last = int(done[1])
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
        for pipe in (writer.stdin, writer.stdout):
            if pipe is not None:
                pipe.close()
    # Every audit saw a consistent snapshot of a ledger that kept growing under it.
    assert heads == sorted(heads) and heads[0] < heads[-1] <= last < BLOCKS
    final = audit_ledger(path)
    assert final.ok and final.head_seq == last and final.txs == 5 * last
