"""What the replica reads back from the ledger at start-up and while serving peers: the batch
executed at a seq (a BATCH-REQUEST for an executed seq is answered from the ledger), and the
time of the latest executed non-null batch (batch times never go back across a restart)."""

from __future__ import annotations

from consensus.batch import Batch
from ledger.store import LedgerStore, committed_from_block

# Null batches (time 0) are skipped when looking for the last batch time; a run longer than this
# (many failed views in a row, each re-proposing at most L null batches) gives up: 0 only
# loosens the monotonicity bound of that restarted replica, the others still enforce it.
NULL_RUN_MAX = 65_536


def executed_batch(store: LedgerStore, seq: int) -> Batch | None:
    """The batch committed at ``seq``, or None beyond the head or if the block is unreadable
    (the peer asks another replica then)."""
    block = store.block(seq)
    if block is None:
        return None
    try:
        return committed_from_block(block).batch
    except ValueError:
        return None


def last_batch_time(store: LedgerStore, head_seq: int) -> int:
    """``time_ms`` of the latest executed batch holding transactions (null batches carry 0)."""
    for seq in range(head_seq, max(0, head_seq - NULL_RUN_MAX), -1):
        block = store.block(seq)
        if block is None:
            return 0
        header = block.get("batch")
        if isinstance(header, dict) and header.get("tx_count"):
            time_ms = header.get("time_ms")
            return time_ms if isinstance(time_ms, int) else 0
    return 0
