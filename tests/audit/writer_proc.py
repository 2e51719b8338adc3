"""Run by test_concurrent as a separate process: a node-like writer appending to a ledger.

Usage: python -m tests.audit.writer_proc DATA_DIR BLOCKS. Prints "ready" after the first block,
then appends (5 signed transactions each, short pauses, from a tiny map so that the map grows
while the test's audits read) until a line arrives on stdin or BLOCKS blocks are written, so the
audits overlap the appends however slow the machine is. Prints "done SEQ" at the end.
"""

from __future__ import annotations

import select
import sys
from pathlib import Path

from ledger.store import LedgerStore
from tests.audit.builder import append
from tests.ledger.helpers import ALICE, make_genesis, tx


def main() -> int:
    path, blocks = Path(sys.argv[1]), int(sys.argv[2])
    genesis = make_genesis()
    with LedgerStore.open(path, genesis, map_size=64 * 1024) as store:
        for seq in range(1, blocks + 1):
            txs = [
                tx(ALICE, seq * 10 + i, {"op": "set", "key": f"k{seq % 7}-{i}", "value": [seq, i]})
                for i in range(5)
            ]
            append(store, genesis, seq, txs, view=seq % 3)
            if seq == 1:
                print("ready", flush=True)
            if select.select([sys.stdin], [], [], 0.003)[0]:
                break
    print(f"done {seq}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
