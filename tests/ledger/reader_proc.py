"""Run as a separate process by test_store: reads a ledger read-only while its writer appends.

Usage: python -m tests.ledger.reader_proc DATA_DIR TARGET_SEQ. Polls until the head reaches
TARGET_SEQ, checking at each step that the hash chain it sees is whole; prints one JSON line.
"""

from __future__ import annotations

import json
import sys
import time

from consensus.batch import block_hash
from crypto.hashing import hash_object
from ledger.store import LedgerStore


def main() -> int:
    data_dir, target = sys.argv[1], int(sys.argv[2])
    store = LedgerStore.open(data_dir, readonly=True, map_size=64 * 1024)
    sys.stdout.write("opened\n")
    sys.stdout.flush()
    polls, seen = 0, 0
    deadline = time.monotonic() + 60
    while seen < target and time.monotonic() < deadline:
        with store.snapshot() as snap:
            seq, head = snap.head()
            prev = store.genesis.genesis_hash
            for block in snap.iter_blocks(1, seq):
                digest = hash_object(block["batch"])
                assert block["prev_hash"] == prev
                prev = block_hash(block["seq"], prev, digest)
                assert block["hash"] == prev
            assert prev == head
        seen = seq
        polls += 1
        time.sleep(0.005)
    size = store.map_size()
    store.close()
    print(json.dumps({"seen": seen, "polls": polls, "map_size": size}))
    return 0 if seen >= target else 1


if __name__ == "__main__":
    sys.exit(main())
