"""Relay messages are cut so that each fits a peer frame."""

from __future__ import annotations

from consensus.batch import Tx
from node.runtime import RELAY_CHUNK_MAX, _relay_chunks


def _tx(i: int, size: int) -> Tx:
    return Tx(f"{i:064x}", {"body": {"nonce": i}, "sig": "00"}, size)


def test_relay_chunks_respect_count_and_bytes() -> None:
    txs = [_tx(i, 100) for i in range(10)] + [_tx(10, 5_000)] + [_tx(11, 100)]
    chunks = _relay_chunks(txs, bytes_max=350)
    assert [len(c) for c in chunks] == [3, 3, 3, 1, 1, 1]
    assert [tx["body"]["nonce"] for c in chunks for tx in c] == list(range(12))


def test_relay_chunks_respect_the_count_limit() -> None:
    chunks = _relay_chunks([_tx(i, 0) for i in range(RELAY_CHUNK_MAX + 1)], bytes_max=1 << 20)
    assert [len(c) for c in chunks] == [RELAY_CHUNK_MAX, 1]
    assert _relay_chunks([], bytes_max=10) == []
