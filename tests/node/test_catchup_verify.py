"""Fetched blocks whose transactions are checked in worker processes (node/p2p/verify_workers.py):
complete verification still (a certified block with one bad signature, or one transaction of
another chain, is refused), the replica's check answered from what the workers verified, and the
in-thread path when the workers cannot be used."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from consensus.batch import Batch, Tx
from consensus.output import Committed
from ledger.genesis import Genesis
from ledger.store import LedgerStore
from node.p2p.block_sync import FETCH_REQUEST, BlockFetcher, serve_fetch
from node.p2p.verify_workers import BadTx, FetchedTxs, VerifyWorkers, check_part
from tests.ledger.helpers import (
    ALICE,
    BOB,
    append_signed_blocks,
    certify,
    make_genesis,
    sign_tx,
    tx,
)

BLOCKS = 24
TXS_PER_BLOCK = 20
CHUNK_BLOCKS = 8
PROCESS_MIN_TXS = 50  # a chunk holds up to 160: the workers check them


@pytest.fixture(scope="module")
def genesis() -> Genesis:
    return make_genesis()


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory, genesis: Genesis) -> Iterator[LedgerStore]:
    store = LedgerStore.open(tmp_path_factory.mktemp("source"), genesis)
    append_signed_blocks(store, genesis, BLOCKS, TXS_PER_BLOCK, null_every=6, views_of=BLOCKS + 1)
    yield store
    store.close()


@pytest.fixture(scope="module")
def workers() -> Iterator[VerifyWorkers]:
    pool = VerifyWorkers(2)
    yield pool
    pool.close()


@pytest.fixture
def dest(tmp_path: Path, genesis: Genesis) -> Iterator[LedgerStore]:
    with LedgerStore.open(tmp_path / "dest", genesis) as store:
        yield store


def chain(store: LedgerStore) -> list[str]:
    return [block["hash"] for block in store.iter_blocks()]


class Run:
    """A fetch against fake peers, the delivered chunks applied as the runtime does (one
    write per chunk), each transaction first passed through the replica's checker."""

    def __init__(self, source: LedgerStore, dest: LedgerStore, fetched: FetchedTxs) -> None:
        self.source = source
        self.dest = dest
        self.fetched = fetched
        self.fetcher: BlockFetcher | None = None
        self.requests: dict[str, int] = {}
        self.unchecked: list[str] = []  # transactions the replica's checker refused

    def peer(self, tamper: Callable[[dict[str, Any]], None] | None = None) -> Callable[..., Any]:
        def answer(message: dict[str, Any]) -> dict[str, Any] | None:
            response = serve_fetch(self.source, message)
            if tamper is not None and response is not None and response["blocks"]:
                tamper(response)
            return response

        return answer

    def deliver(self, blocks: list[Committed]) -> None:
        asyncio.get_running_loop().call_soon(self._apply, blocks)

    def _apply(self, blocks: list[Committed]) -> None:
        new = [b for b in blocks if b.batch.seq > self.dest.head()[0]]
        for block in new:
            self.unchecked += [t.tx_id for t in block.batch.txs if not self.fetched.check(t)]
        self.dest.append_blocks(new)

    def fetch(self, genesis: Genesis, peers: dict[str, Callable[..., Any]], **kw: Any) -> None:
        def send(peer: str, message: dict[str, Any]) -> None:
            assert message["type"] == FETCH_REQUEST
            self.requests[peer] = self.requests.get(peer, 0) + 1
            response = peers[peer](message)
            assert self.fetcher is not None
            asyncio.get_running_loop().call_soon(self.fetcher.on_response, peer, response)

        async def run() -> None:
            self.fetcher = BlockFetcher(
                genesis,
                self.dest.head,
                send,
                self.deliver,
                timeout_s=0.5,
                chunk_blocks=CHUNK_BLOCKS,
                fetched=self.fetched,
                **kw,
            )
            self.fetcher.want(BLOCKS, sorted(peers))
            for _ in range(3000):
                if not self.fetcher.active:
                    break
                await asyncio.sleep(0.01)
            await self.fetcher.stop()

        asyncio.run(run())


def _refuse(tx: Tx) -> bool:
    return False  # the pool's checker, for a test where every check must hit the workers' verdicts


def _forged_then_certified(answer: dict[str, Any]) -> None:
    """The last block gets one transaction with a broken signature, and q real validators
    certify the result: only the signature check can catch it."""
    block = answer["blocks"][-1]
    if not block["txs"]:
        block["txs"] = [sign_tx(ALICE, 10**6, [{"op": "set", "key": "x", "value": 1}])]
    bad = copy.deepcopy(block["txs"][0])
    bad["sig"] = ("0" if bad["sig"][0] != "0" else "1") + bad["sig"][1:]
    block["txs"][-1] = bad
    _certify_again(answer)


def _other_chain_then_certified(answer: dict[str, Any]) -> None:
    """A validly signed transaction for another network, in a block q validators certify."""
    block = answer["blocks"][-1]
    wire = sign_tx(BOB, 7, [{"op": "set", "key": "y", "value": 2}], chain_id="other-net")
    block["txs"] = [*block["txs"], wire]
    _certify_again(answer)


def _certify_again(answer: dict[str, Any]) -> None:
    block = answer["blocks"][-1]
    header = block["batch"]
    batch = Batch(
        header["chain_id"],
        header["seq"],
        header["time_ms"] or 1,
        tuple(Tx.from_wire(w) for w in block["txs"]),
    )
    block["batch"] = batch.header
    block["certificate"] = certify(make_genesis(), batch, block["certificate"]["view"]).to_wire()
    block["hash"] = None  # the peer states no hash: the certificate is what must hold
    block["execution"] = None


def test_workers_verify_every_chunk_and_the_replica_check_hits_their_verdicts(
    genesis: Genesis, source: LedgerStore, dest: LedgerStore, workers: VerifyWorkers
) -> None:
    before = workers.parts_checked
    fetched = FetchedTxs(_refuse)
    run = Run(source, dest, fetched)
    run.fetch(
        genesis,
        {"a": run.peer(), "b": run.peer()},
        workers=workers,
        process_min_txs=PROCESS_MIN_TXS,
    )
    assert chain(dest) == chain(source)
    assert run.unchecked == []  # every check answered from the workers' verdicts
    assert workers.parts_checked - before >= BLOCKS // CHUNK_BLOCKS
    assert len(fetched) == 0  # forgotten once the fetch is over
    assert not workers.running  # and the processes let go


@pytest.mark.parametrize("tamper", [_forged_then_certified, _other_chain_then_certified])
def test_a_certified_block_with_one_bad_transaction_is_refused_by_the_workers(
    genesis: Genesis,
    source: LedgerStore,
    dest: LedgerStore,
    workers: VerifyWorkers,
    tamper: Callable[[dict[str, Any]], None],
) -> None:
    before = workers.parts_checked
    run = Run(source, dest, FetchedTxs(lambda t: True))
    run.fetch(
        genesis,
        {"liar": run.peer(tamper)},
        workers=workers,
        process_min_txs=PROCESS_MIN_TXS,
    )
    assert run.fetcher is not None
    assert run.fetcher.bad_responses == 1
    assert dest.head()[0] == 0
    assert workers.parts_checked > before  # refused by the process path, not another check
    # With an honest peer beside it, the whole chain arrives all the same.
    run.fetch(
        genesis,
        {"liar": run.peer(tamper), "honest": run.peer()},
        workers=workers,
        process_min_txs=PROCESS_MIN_TXS,
    )
    assert chain(dest) == chain(source)


def test_without_workers_chunks_are_checked_in_threads_just_as_completely(
    genesis: Genesis, source: LedgerStore, dest: LedgerStore
) -> None:
    closed = VerifyWorkers(2)
    closed.close()
    run = Run(source, dest, FetchedTxs(lambda t: True))
    run.fetch(
        genesis,
        {"liar": run.peer(_forged_then_certified)},
        workers=closed,
        process_min_txs=PROCESS_MIN_TXS,
    )
    assert run.fetcher is not None and run.fetcher.bad_responses == 1
    assert dest.head()[0] == 0
    run.fetch(genesis, {"honest": run.peer()}, workers=closed, process_min_txs=PROCESS_MIN_TXS)
    assert chain(dest) == chain(source)
    assert closed.parts_checked == 0


def test_check_part_answers_tx_ids_and_sizes_or_the_first_bad_one() -> None:
    wires = [sign_tx(ALICE, n, [{"op": "set", "key": f"k{n}", "value": n}]) for n in range(4)]
    answer = check_part(make_genesis().chain_id, wires)
    assert not isinstance(answer, BadTx)
    tx_ids, sizes = answer
    assert tx_ids == [Tx.from_wire(w).tx_id for w in wires]
    assert all(size > 100 for size in sizes)
    forged = copy.deepcopy(wires)
    forged[2]["sig"] = "00" * 64
    assert check_part(make_genesis().chain_id, forged) == BadTx(2, forged_reason(forged[2]))
    assert check_part("other-net", wires) == BadTx(0, wrong_chain_reason())
    broken = [*wires[:1], {"body": {"chain_id": "x"}, "sig": "ab"}]
    bad = check_part(make_genesis().chain_id, broken)
    assert isinstance(bad, BadTx) and bad.index == 1


def forged_reason(wire: dict[str, Any]) -> str:
    from ledger.transaction import TxError, decode_transaction, verify_transaction

    with pytest.raises(TxError) as caught:
        verify_transaction(decode_transaction(wire))
    return str(caught.value)


def wrong_chain_reason() -> str:
    from ledger.transaction import TxError, check_chain, decode_transaction

    with pytest.raises(TxError) as caught:
        check_chain(decode_transaction(sign_tx(ALICE, 0, [{"op": "delete", "key": "k"}])), "o")
    return str(caught.value).replace("'o'", "'other-net'")


def test_fetched_txs_answers_only_for_what_the_workers_verified() -> None:
    asked: list[str] = []

    def fallback(t: Tx) -> bool:
        asked.append(t.tx_id)
        return False

    fetched = FetchedTxs(fallback)
    first = [tx(ALICE, n, {"op": "set", "key": "a", "value": n}) for n in range(3)]
    second = [tx(ALICE, 10 + n, {"op": "set", "key": "b", "value": n}) for n in range(3)]
    fetched.add(8, first, applied_seq=0)
    fetched.add(16, second, applied_seq=0)
    assert all(fetched.check(t) for t in first + second) and asked == []
    # Same signature, another tx_id (a body that is not the one signed): not a hit.
    assert not fetched.check(Tx("ab" * 32, first[0].wire))
    assert asked == ["ab" * 32]
    fetched.add(24, [], applied_seq=8)  # the first chunk is in the ledger now
    assert not fetched.check(first[0]) and fetched.check(second[0])
    fetched.clear()
    assert len(fetched) == 0 and not fetched.check(second[0])


def test_values_the_workers_cannot_take_are_left_to_the_in_process_check(
    workers: VerifyWorkers,
) -> None:
    deep: Any = 0
    for _ in range(5000):
        deep = [deep]
    wires = [sign_tx(ALICE, 1, [{"op": "set", "key": "k", "value": 1}])]
    wires.append({"body": {"chain_id": "phalanx-test", "nested": deep}, "sig": "00" * 64})
    answer = asyncio.run(workers.check(make_genesis().chain_id, wires))
    # Too deep to pickle (None: the caller checks in-process) or refused by the worker.
    assert answer is None or (isinstance(answer, BadTx) and answer.index == 1), answer
    ok = asyncio.run(workers.check(make_genesis().chain_id, wires[:1]))
    assert isinstance(ok, list) and [t.tx_id for t in ok] == [Tx.from_wire(wires[0]).tx_id]
