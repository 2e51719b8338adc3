"""Work done on admission is not done again: a proposal's transactions that reached the node
before (relayed or submitted) are taken from the pool instead of being serialised and hashed
again, only for exactly that wire form (a primary that disguises a body, ``true`` for ``1``,
gets its PRE-PREPARE refused, never taken with other content), and execution reuses the
decoded transaction."""

from __future__ import annotations

import asyncio
import copy
from pathlib import Path
from typing import Any

import pytest

from consensus.batch import Batch, Tx
from consensus.errors import MalformedMessage
from consensus.messages import PrePrepare, decode_batch, decode_message, sign_message
from ledger import state_machine
from ledger.state_machine import ChainRules
from ledger.store import LedgerStore
from node.pool import Pool
from tests.ledger.helpers import ALICE, CHAIN_ID, VALIDATORS, committed, make_genesis, sign_tx


def _pool_with(wire: dict[str, Any]) -> Pool:
    pool = Pool(ChainRules(CHAIN_ID, 0), lambda pubkeys: dict.fromkeys(pubkeys, 0))
    (result,) = asyncio.run(pool.submit([wire]))
    assert result.ok
    return pool


def _wire(value: Any = 1) -> dict[str, Any]:
    return sign_tx(ALICE, 5, [{"op": "set", "key": "k", "value": value}])


def test_the_pool_knows_exactly_the_wire_it_verified() -> None:
    wire = _wire()
    pool = _pool_with(wire)
    known = pool.known_tx(copy.deepcopy(wire))
    assert known is not None and known.tx_id == Tx.from_wire(wire).tx_id
    other_sig = {**wire, "sig": "00" * 64}
    extra_field = {**wire, "note": "x"}
    other_body = _wire(value=2)
    for unknown in (other_sig, extra_field, other_body, [wire], "text"):
        assert pool.known_tx(unknown) is None
    pool.close()


def test_a_batch_takes_known_transactions_without_hashing_them() -> None:
    wire = _wire()
    pool = _pool_with(wire)
    known = pool.known_tx(wire)
    batch = Batch(CHAIN_ID, 1, 1_764_000_000_000, (Tx.from_wire(wire),))
    decoded = decode_batch(batch.to_wire(), pool.known_tx)
    assert decoded.txs[0] is known and decoded.digest == batch.digest
    pool.close()


@pytest.mark.parametrize("header_from", ["disguised", "original"])
def test_a_disguised_body_is_refused_or_taken_as_verified(header_from: str) -> None:
    """The pool verified ``value: 1``; a Byzantine primary proposes the same signature with
    ``value: true`` (equal in Python). Built over the disguised bytes, the batch no longer
    matches its tx_root and is refused; built over the original, the verified wire is what
    the batch holds."""
    wire = _wire(value=1)
    pool = _pool_with(wire)
    disguised = copy.deepcopy(wire)
    disguised["body"]["ops"][0]["value"] = True
    assert disguised == wire  # Python's equality cannot tell them apart
    source = disguised if header_from == "disguised" else wire
    batch = Batch(CHAIN_ID, 1, 1_764_000_000_000, (Tx.from_wire(source),))
    batch_wire = batch.to_wire()
    batch_wire["txs"] = [disguised]
    pre_prepare = sign_message(VALIDATORS[0], PrePrepare(CHAIN_ID, 0, 1, batch.digest, batch))
    message = {**pre_prepare.to_wire(), "batch": batch_wire}
    if header_from == "disguised":
        with pytest.raises(MalformedMessage, match="tx_root"):
            decode_message(message, pool.known_tx)
    else:
        decoded = decode_message(message, pool.known_tx)
        assert isinstance(decoded, PrePrepare) and decoded.batch is not None
        assert decoded.batch.txs[0].wire["body"]["ops"][0]["value"] is not True
        with pytest.raises(MalformedMessage, match="tx_root"):
            decode_message(message)  # a node that never saw it refuses the disguise too
    pool.close()


def test_execution_reuses_what_admission_decoded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pool hands execution the ValidTx it decoded from the very same Tx object (and only
    that one): the block's results are the same as when decoding again, without decoding."""
    wires = [_wire(value=1), sign_tx(ALICE, 6, [{"op": "delete", "key": "nope"}])]
    pool = Pool(ChainRules(CHAIN_ID, 0), lambda pubkeys: dict.fromkeys(pubkeys, 0))
    assert all(r.ok for r in asyncio.run(pool.submit(wires)))
    pending = pool.pending_txs()
    assert pool.predecoded(pending[0]) is not None
    assert pool.predecoded(Tx.from_wire(wires[0])) is None  # an equal Tx, not this one
    genesis = make_genesis()
    decodes: list[str] = []
    real = state_machine.decode_for_execution

    def counting(wire: Any, tx_id: str) -> Any:
        decodes.append(tx_id)
        return real(wire, tx_id)

    monkeypatch.setattr(state_machine, "decode_for_execution", counting)
    results = []
    for name, predecoded in (("reused", pool.predecoded), ("decoded", None)):
        with LedgerStore.open(tmp_path / name, genesis) as store:
            block = committed(genesis, 1, pending)
            results.append(store.append_block(block, predecoded=predecoded))
    assert results[0] == results[1] and results[0][1]["error"] == "not_found"
    assert decodes == [tx.tx_id for tx in pending]  # only the run without the pool decoded
    pool.close()
