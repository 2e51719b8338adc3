"""Determinism (ARCHITECTURE "Boundaries"; STYLE: etcd raft, TigerBeetle VOPR): the same inputs
give the same outputs, byte for byte, even across processes with different hash seeds (set and
dict-of-str iteration order must never leak into what the replica sends or persists)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

from tests.consensus.test_random_schedules import Schedule

ROOT = Path(__file__).resolve().parents[2]


def fingerprint(seed: int, steps: int) -> str:
    schedule = Schedule(seed, byzantine=False)
    for _ in range(steps):
        schedule.step()
    digest = hashlib.sha256()
    for i, output in schedule.cluster.outputs:
        item = {
            "replica": i,
            "persist": [[r.key, r.value] for r in output.persist],
            "sends": [[s.to, s.message] for s in output.sends],
            "committed": [c.batch.digest for c in output.committed],
            "discard_below": output.discard_below,
            "transfer": None if output.state_transfer is None else output.state_transfer.seq,
        }
        digest.update(json.dumps(item, sort_keys=True).encode())
    return digest.hexdigest()


def test_same_inputs_same_outputs_across_hash_seeds() -> None:
    code = "from tests.consensus.test_determinism import fingerprint; print(fingerprint(5, 60))"
    results = set()
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": str(ROOT)}
        done = subprocess.run(
            [sys.executable, "-c", code],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        results.add(done.stdout.strip())
    assert len(results) == 1
    assert results == {fingerprint(5, 60)}
