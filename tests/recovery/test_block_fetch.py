"""State transfer (node/p2p/block_sync.py) against fake peers: honest ones serving a real ledger,
liars tampering with what they serve, silent ones, and ones claiming blocks they do not hold.

The fetched blocks are applied to a second real ledger, as the node does, so the checks are on
what ends up stored: exactly the source's chain, whatever the peers did.
"""

from __future__ import annotations

import asyncio
import copy
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from consensus.output import Committed
from ledger.genesis import Genesis
from ledger.store import LedgerStore, committed_from_block
from node.p2p import block_sync
from node.p2p.block_sync import (
    FETCH_REQUEST,
    HEAD,
    BadBlocks,
    BlockFetcher,
    BlockSync,
    NoBlocks,
    serve_fetch,
    verify_blocks,
)
from tests.ledger.helpers import (
    ALICE,
    VALIDATORS,
    append_signed_blocks,
    certify,
    make_genesis,
    sign_tx,
)

BLOCKS = 80
TXS_PER_BLOCK = 4

Tamper = Callable[[dict[str, Any]], None]


@pytest.fixture(scope="module")
def genesis() -> Genesis:
    return make_genesis()


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory, genesis: Genesis) -> Iterator[LedgerStore]:
    """A ledger of BLOCKS blocks (some null) with signed transactions and certificates."""
    store = LedgerStore.open(tmp_path_factory.mktemp("source"), genesis)
    append_signed_blocks(store, genesis, BLOCKS, TXS_PER_BLOCK, null_every=7, views_of=20)
    yield store
    store.close()


def chain(store: LedgerStore) -> list[str]:
    return [block["hash"] for block in store.iter_blocks()]


class FakePeers:
    """The network as the fetcher sees it: ``send`` reaches a peer, whose behaviour decides
    the answer (delivered later on the loop, like a real one)."""

    def __init__(self, source: LedgerStore, behaviours: dict[str, Callable[..., Any]]) -> None:
        self.source = source
        self.behaviours = behaviours
        self.requests: Counter[str] = Counter()
        self.fetcher: BlockFetcher | None = None
        self.in_flight_max = 0

    def send(self, peer: str, message: dict[str, Any]) -> None:
        assert message["type"] == FETCH_REQUEST
        self.requests[peer] += 1
        assert self.fetcher is not None
        self.in_flight_max = max(self.in_flight_max, len(self.fetcher._waiting))
        answer = self.behaviours[peer](message, self.requests[peer])
        if answer is not None:
            assert self.fetcher is not None
            asyncio.get_running_loop().call_soon(self.fetcher.on_response, peer, answer)

    def honest(self, message: dict[str, Any], _n: int) -> dict[str, Any] | None:
        return serve_fetch(self.source, message)

    def silent(self, message: dict[str, Any], _n: int) -> None:
        return None

    def lying(self, tamper: Tamper, after: int = 0) -> Callable[..., Any]:
        """Honest for ``after`` requests, then tampers with every answer."""

        def behave(message: dict[str, Any], n: int) -> dict[str, Any] | None:
            answer = serve_fetch(self.source, message)
            if answer is not None and n > after and answer["blocks"]:
                tamper(answer)
            return answer

        return behave


class Applier:
    """Applies delivered chunks to a ledger on the loop, as the runtime's inbox does, and
    records how many chunks were ever held at once."""

    def __init__(self, store: LedgerStore, delay_s: float = 0.0) -> None:
        self.store = store
        self.delay_s = delay_s
        self.queued = 0
        self.queued_max = 0

    def deliver(self, blocks: list[Committed]) -> None:
        self.queued += 1
        self.queued_max = max(self.queued_max, self.queued)
        asyncio.get_running_loop().call_later(self.delay_s, self._apply, blocks)

    def _apply(self, blocks: list[Committed]) -> None:
        self.queued -= 1
        for block in blocks:
            if block.batch.seq == self.store.head()[0] + 1:
                self.store.append_block(block)


def fetch(
    genesis: Genesis,
    source: LedgerStore,
    dest: LedgerStore,
    behaviours: dict[str, Callable[..., Any]] | None = None,
    make: Callable[[FakePeers], dict[str, Callable[..., Any]]] | None = None,
    target: int = BLOCKS,
    chunk_blocks: int = 8,
    timeout_s: float = 0.2,
    delay_s: float = 0.0,
) -> tuple[BlockFetcher, FakePeers, Applier]:
    peers = FakePeers(source, behaviours or {})
    if make is not None:
        peers.behaviours = make(peers)
    applier = Applier(dest, delay_s)

    async def run() -> None:
        fetcher = BlockFetcher(
            genesis,
            dest.head,
            peers.send,
            applier.deliver,
            timeout_s=timeout_s,
            chunk_blocks=chunk_blocks,
        )
        peers.fetcher = fetcher
        fetcher.want(target, sorted(peers.behaviours))
        for _ in range(2000):
            if not fetcher.active:
                break
            await asyncio.sleep(0.01)
        await fetcher.stop()
        peers.fetcher = fetcher

    asyncio.run(run())
    assert peers.fetcher is not None
    return peers.fetcher, peers, applier


@pytest.fixture
def dest(tmp_path: Path, genesis: Genesis) -> Iterator[LedgerStore]:
    store = LedgerStore.open(tmp_path / "dest", genesis)
    yield store
    store.close()


def test_fetches_everything_in_chunks_spread_over_the_peers(
    genesis: Genesis, source: LedgerStore, dest: LedgerStore
) -> None:
    fetcher, peers, applier = fetch(
        genesis, source, dest, make=lambda p: {"a": p.honest, "b": p.honest, "c": p.honest}
    )
    assert chain(dest) == chain(source)
    assert dest.head() == source.head()
    assert sum(peers.requests.values()) == -(-BLOCKS // 8)
    assert min(peers.requests.values()) >= 2, f"requests not spread: {peers.requests}"
    assert fetcher.blocks_fetched == BLOCKS and fetcher.bad_responses == 0
    assert applier.queued_max == 1


def _forge_tx_signature(answer: dict[str, Any]) -> None:
    block = next(b for b in answer["blocks"] if b["txs"])
    sig = block["txs"][0]["sig"]
    block["txs"][0]["sig"] = ("0" if sig[0] != "0" else "1") + sig[1:]


def _drop_certificate_votes(answer: dict[str, Any]) -> None:
    signatures = answer["blocks"][-1]["certificate"]["signatures"]
    for key in list(signatures)[1:]:
        del signatures[key]


def _outsider_certificate(answer: dict[str, Any]) -> None:
    from tests.ledger.helpers import signer

    block = answer["blocks"][0]
    outsiders = [signer(f"outsider-{i}") for i in range(4)]
    body_view = block["certificate"]["view"]
    from consensus.batch import Batch, Tx

    batch = Batch(
        block["batch"]["chain_id"],
        block["batch"]["seq"],
        block["batch"]["time_ms"],
        tuple(Tx.from_wire(w) for w in block["txs"]),
    )
    block["certificate"] = certify(make_genesis(), batch, body_view, outsiders).to_wire()


def _swap_transactions(answer: dict[str, Any]) -> None:
    block = next(b for b in answer["blocks"] if len(b["txs"]) > 1)
    block["txs"].reverse()


def _replace_transaction(answer: dict[str, Any]) -> None:
    """A validly signed transaction, but not the one the certificate covers."""
    block = next(b for b in answer["blocks"] if b["txs"])
    block["txs"][0] = sign_tx(ALICE, 10**9, [{"op": "set", "key": "evil", "value": 1}])


def _wrong_seq(answer: dict[str, Any]) -> None:
    answer["blocks"] = answer["blocks"][1:] or answer["blocks"]
    answer["blocks"][0] = copy.deepcopy(answer["blocks"][0])
    answer["blocks"][0]["batch"]["seq"] += 1


def _skip_a_block(answer: dict[str, Any]) -> None:
    """Every block genuine and certified, but one is missing from the middle."""
    if len(answer["blocks"]) > 2:
        del answer["blocks"][1]
    else:
        answer["blocks"][0]["hash"] = "ee" * 32


def _wrong_hash(answer: dict[str, Any]) -> None:
    answer["blocks"][0]["hash"] = "00" * 32


def _not_a_list(answer: dict[str, Any]) -> None:
    answer["blocks"] = {"oops": 1}


def _garbage_block(answer: dict[str, Any]) -> None:
    answer["blocks"][0] = "garbage"


def _too_many(answer: dict[str, Any]) -> None:
    answer["blocks"] = answer["blocks"] * 3


TAMPERINGS = [
    _forge_tx_signature,
    _drop_certificate_votes,
    _outsider_certificate,
    _swap_transactions,
    _replace_transaction,
    _wrong_seq,
    _skip_a_block,
    _wrong_hash,
    _not_a_list,
    _garbage_block,
    _too_many,
]


@pytest.mark.parametrize("tamper", TAMPERINGS, ids=lambda t: t.__name__.strip("_"))
def test_a_lying_peer_mid_transfer_is_dropped_and_nothing_it_sent_is_applied(
    genesis: Genesis, source: LedgerStore, dest: LedgerStore, tamper: Tamper
) -> None:
    fetcher, peers, _ = fetch(
        genesis,
        source,
        dest,
        make=lambda p: {"liar": p.lying(tamper, after=1), "b": p.honest, "c": p.honest},
    )
    assert chain(dest) == chain(source)
    assert fetcher.bad_responses >= 1
    assert peers.requests["liar"] >= 2


def test_only_liars_leave_the_ledger_untouched(
    genesis: Genesis, source: LedgerStore, dest: LedgerStore
) -> None:
    fetcher, peers, _ = fetch(
        genesis,
        source,
        dest,
        make=lambda p: {
            "x": p.lying(_forge_tx_signature),
            "y": p.lying(_drop_certificate_votes),
            "z": p.lying(_replace_transaction),
        },
    )
    assert dest.head()[0] == 0
    assert fetcher.bad_responses == 3
    # Each bad answer may have been followed by one request for the next chunk, then dropped.
    assert sum(peers.requests.values()) <= 6


def test_a_silent_peer_is_timed_out_and_avoided(
    genesis: Genesis, source: LedgerStore, dest: LedgerStore
) -> None:
    fetcher, peers, _ = fetch(
        genesis, source, dest, make=lambda p: {"mute": p.silent, "b": p.honest, "c": p.honest}
    )
    assert chain(dest) == chain(source)
    assert fetcher.timeouts >= 1
    assert peers.requests["mute"] <= 2, "a peer that timed out keeps being asked first"


def test_a_peer_that_goes_silent_mid_transfer(
    genesis: Genesis, source: LedgerStore, dest: LedgerStore
) -> None:
    def flaky(p: FakePeers) -> Callable[..., Any]:
        return lambda message, n: p.honest(message, n) if n <= 2 else None

    fetcher, _, _ = fetch(genesis, source, dest, make=lambda p: {"a": flaky(p), "b": p.honest})
    assert chain(dest) == chain(source)
    assert fetcher.timeouts >= 1


def test_every_peer_silent_gives_up_after_bounded_attempts(
    genesis: Genesis, source: LedgerStore, dest: LedgerStore
) -> None:
    fetcher, peers, _ = fetch(
        genesis, source, dest, make=lambda p: {"a": p.silent, "b": p.silent}, timeout_s=0.02
    )
    assert dest.head()[0] == 0
    assert sum(peers.requests.values()) == 2 * block_sync.STRIKES_MAX
    assert not fetcher.active


def test_a_peer_claiming_blocks_it_does_not_hold(
    genesis: Genesis, source: LedgerStore, dest: LedgerStore
) -> None:
    """The claimed head is only a hint: the fetch ends where the blocks end."""
    fetcher, _peers, _ = fetch(
        genesis, source, dest, make=lambda p: {"a": p.honest}, target=BLOCKS + 500
    )
    assert chain(dest) == chain(source)
    assert fetcher.failures[("a", "no_blocks")] == 1


def test_slow_apply_holds_at_most_one_chunk_back(
    genesis: Genesis, source: LedgerStore, dest: LedgerStore
) -> None:
    """Memory is bounded whatever the gap: one chunk handed on and not yet applied, one being
    verified, one more asked for, never more."""
    _, peers, applier = fetch(
        genesis, source, dest, make=lambda p: {"a": p.honest, "b": p.honest}, delay_s=0.05
    )
    assert chain(dest) == chain(source)
    assert applier.queued_max == 1
    assert peers.in_flight_max <= 2


def test_resumes_from_the_ledger_after_a_crash_mid_transfer(
    tmp_path: Path, genesis: Genesis, source: LedgerStore
) -> None:
    """Stop the fetch halfway (the node is killed), reopen the ledger, fetch again: it goes on
    from the head it had, and the result is the source chain."""
    path = tmp_path / "dest"
    dest = LedgerStore.open(path, genesis)

    def stopping(p: FakePeers) -> Callable[..., Any]:
        return lambda message, n: p.honest(message, n) if n <= 3 else None

    fetch(genesis, source, dest, make=lambda p: {"a": stopping(p)}, timeout_s=0.02)
    reached = dest.head()[0]
    assert 0 < reached < BLOCKS
    dest.close()
    dest = LedgerStore.open(path, genesis)
    try:
        assert dest.head()[0] == reached
        fetcher, _peers, _ = fetch(genesis, source, dest, make=lambda p: {"b": p.honest})
        assert chain(dest) == chain(source)
        assert fetcher.blocks_fetched == BLOCKS - reached
    finally:
        dest.close()


# ---- verify_blocks and serve_fetch directly ----------------------------------------------------


def _answer(source: LedgerStore, from_seq: int, count: int) -> dict[str, Any]:
    answer = serve_fetch(source, {"type": FETCH_REQUEST, "from_seq": from_seq, "count": count})
    assert answer is not None
    return answer


@pytest.mark.parametrize(
    "tamper", [t for t in TAMPERINGS if t is not _too_many], ids=lambda t: t.__name__.strip("_")
)
def test_verify_blocks_refuses_every_tampering(
    genesis: Genesis, source: LedgerStore, tamper: Tamper
) -> None:
    answer = _answer(source, 1, 8)
    prev = genesis.genesis_hash
    assert len(verify_blocks(genesis, 1, answer["blocks"], prev)) == 8
    tamper(answer)
    with pytest.raises(BadBlocks):
        verify_blocks(genesis, 1, answer["blocks"], prev)


def test_verify_blocks_checks_the_chain_onto_our_head(
    genesis: Genesis, source: LedgerStore
) -> None:
    answer = _answer(source, 10, 5)
    prev = source.block_hash(9)
    assert prev is not None
    assert [c.batch.seq for c in verify_blocks(genesis, 10, answer["blocks"], prev)] == [
        10,
        11,
        12,
        13,
        14,
    ]
    with pytest.raises(BadBlocks, match="not the one computed from our chain"):
        verify_blocks(genesis, 10, answer["blocks"], "ab" * 32)
    with pytest.raises(NoBlocks):
        verify_blocks(genesis, 10, [], prev)


def test_verify_blocks_refuses_another_chain(genesis: Genesis, source: LedgerStore) -> None:
    other = make_genesis(chain_id="another-chain")
    answer = _answer(source, 1, 2)
    with pytest.raises(BadBlocks, match="chain"):
        verify_blocks(other, 1, answer["blocks"], other.genesis_hash)


def test_serve_fetch_bounds_and_malformed_requests(source: LedgerStore) -> None:
    assert len(_answer(source, 1, 10_000)["blocks"]) == block_sync.CHUNK_BLOCKS_MAX
    assert _answer(source, BLOCKS + 1, 5)["blocks"] == []
    assert [b["batch"]["seq"] for b in _answer(source, BLOCKS - 1, 5)["blocks"]] == [
        BLOCKS - 1,
        BLOCKS,
    ]
    for bad in (
        {"from_seq": 0, "count": 1},
        {"from_seq": 1, "count": 0},
        {"from_seq": "1", "count": 1},
        {"from_seq": True, "count": 1},
        {"from_seq": 1},
        {"from_seq": 2**64, "count": 1},
    ):
        assert serve_fetch(source, bad) is None, bad


def test_serve_fetch_bounds_bytes(monkeypatch: pytest.MonkeyPatch, source: LedgerStore) -> None:
    monkeypatch.setattr(block_sync, "RESPONSE_BYTES_MAX", 3000)
    blocks = _answer(source, 1, 20)["blocks"]
    assert 1 <= len(blocks) < 20  # at least one block, even past the limit


# ---- head announcements --------------------------------------------------------------------------


def _sync_from_announcements(
    genesis: Genesis, source: LedgerStore, dest: LedgerStore, rounds_before_fetch: int
) -> list[dict[str, Any]]:
    """Two idle peers announce the source's head; count the announcement rounds until the
    fetch starts, then let it finish. Returns our own announcements."""
    sent: list[tuple[str | None, dict[str, Any]]] = []

    async def run() -> None:
        sync: BlockSync

        def send(peer: str, message: dict[str, Any]) -> None:
            sent.append((peer, message))
            answer = serve_fetch(source, message)
            assert answer is not None
            asyncio.get_running_loop().call_soon(sync.on_message, peer, answer)

        applier = Applier(dest)
        sync = BlockSync(
            genesis,
            dest,
            send,
            lambda message: sent.append((None, message)),
            applier.deliver,
            timeout_s=0.5,
        )
        head_seq, head_hash = source.head()
        for peer in ("a", "b"):
            sync.on_message(peer, {"type": HEAD, "seq": head_seq, "hash": head_hash})
        for _ in range(rounds_before_fetch):
            assert not sync.fetcher.active
            sync.announce()
        assert sync.fetcher.active
        for _ in range(500):
            if not sync.fetcher.active:
                break
            await asyncio.sleep(0.01)
        await sync.stop()

    asyncio.run(run())
    return [m for to, m in sent if to is None]


def test_a_node_a_little_behind_idle_peers_fetches_after_a_round_of_announcements(
    genesis: Genesis, source: LedgerStore, dest: LedgerStore
) -> None:
    """No checkpoint will come (the others are idle): the peers' announced heads, seen ahead of
    ours for a whole round, start the fetch. Only a whole round: a node that is merely a few
    pipelined blocks behind gets them from consensus a moment later."""
    for block in source.iter_blocks(1, BLOCKS - block_sync.FAR_BEHIND_BLOCKS):
        dest.append_block(committed_from_block(block))
    ours = _sync_from_announcements(genesis, source, dest, rounds_before_fetch=2)
    assert chain(dest) == chain(source)
    assert ours[0]["seq"] == BLOCKS - block_sync.FAR_BEHIND_BLOCKS


def test_a_node_far_behind_fetches_at_the_first_announcement(
    genesis: Genesis, source: LedgerStore, dest: LedgerStore
) -> None:
    assert BLOCKS > block_sync.FAR_BEHIND_BLOCKS
    assert _sync_from_announcements(genesis, source, dest, rounds_before_fetch=0) == []
    assert chain(dest) == chain(source)


def test_peers_at_or_behind_our_head_start_no_fetch(
    genesis: Genesis, source: LedgerStore, dest: LedgerStore
) -> None:
    async def run() -> bool:
        sync = BlockSync(genesis, dest, lambda p, m: None, lambda m: None, lambda b: None)
        sync.on_message("a", {"type": HEAD, "seq": 0, "hash": genesis.genesis_hash})
        sync.on_message("b", {"type": HEAD, "seq": -1, "hash": genesis.genesis_hash})
        sync.on_message("c", {"type": HEAD, "seq": 5, "hash": "not hex"})
        sync.announce()
        sync.announce()
        active = sync.fetcher.active
        await sync.stop()
        return active

    assert asyncio.run(run()) is False


def test_certify_helper_uses_real_validators(genesis: Genesis) -> None:
    assert {v.public_key for v in VALIDATORS} == set(genesis.validator_keys)


def test_bad_sync_messages_are_dropped_and_counted(genesis: Genesis, source: LedgerStore) -> None:
    """Peer input is never trusted: malformed requests, unsolicited or malformed answers and
    bad head announcements are dropped and counted, never raised."""
    drops: Counter[str] = Counter()
    sent: list[tuple[str, dict[str, Any]]] = []

    async def run() -> None:
        sync = BlockSync(
            genesis,
            source,
            lambda peer, message: sent.append((peer, message)),
            lambda message: None,
            lambda blocks: None,
            on_drop=lambda reason: drops.update([reason]),
        )
        sync.on_message("a", {"type": FETCH_REQUEST, "from_seq": "x", "count": 1})
        sync.on_message("a", {"type": block_sync.FETCH_RESPONSE, "from_seq": [1], "blocks": []})
        sync.on_message("a", {"type": block_sync.FETCH_RESPONSE, "from_seq": 1, "blocks": []})
        sync.on_message("a", {"type": HEAD, "seq": "1", "hash": "ab" * 32})
        sync.on_message("b", {"type": FETCH_REQUEST, "from_seq": 1, "count": 2})
        sync.on_message("b", {"type": FETCH_REQUEST, "from_seq": 3, "count": 2})  # busy
        for _ in range(100):
            if sent:
                break
            await asyncio.sleep(0.01)
        await sync.stop()

    asyncio.run(run())
    assert drops == Counter(
        {
            "bad_fetch_request": 1,
            "unsolicited_blocks": 2,
            "bad_head": 1,
            "fetch_request_busy": 1,
        }
    )
    ((peer, answer),) = sent
    assert peer == "b" and [b["batch"]["seq"] for b in answer["blocks"]] == [1, 2]
