"""Execution votes and certificates (spec §5), results roots, proven reads (spec §6) and the
node's vote collector (certificates, divergence, conflicting validators)."""

from __future__ import annotations

import asyncio
import copy
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger.execution import (
    ExecutionVote,
    build_certificate,
    results_root,
    sign_execution_vote,
    verify_execution_certificate,
)
from ledger.genesis import Genesis
from ledger.proven_read import verify_read
from ledger.store import LedgerStore
from node.execution_votes import EXECUTION_VOTE, KEPT_BEHIND, ExecutionVotes
from tests.ledger import spec_verifier
from tests.ledger.helpers import (
    ALICE,
    BOB,
    CAROL,
    VALIDATORS,
    certify_execution,
    committed,
    make_genesis,
    signer,
    tx,
)

ROOTS = ("11" * 32, "22" * 32, "33" * 32)


@pytest.fixture
def genesis() -> Genesis:
    return make_genesis()


def _votes(genesis: Genesis, seq: int = 5, roots: tuple[str, str, str] = ROOTS) -> list[Any]:
    return [sign_execution_vote(v, genesis.chain_id, seq, *roots) for v in VALIDATORS]


def test_certificate_of_q_votes_verifies(genesis: Genesis) -> None:
    certificate = build_certificate(_votes(genesis)[: genesis.q])
    assert verify_execution_certificate(genesis, 5, ROOTS[0], certificate) == []
    assert spec_verifier.execution_ok(genesis.document, 5, ROOTS[0], certificate)
    assert verify_execution_certificate(genesis, 6, ROOTS[0], certificate)  # another seq
    assert verify_execution_certificate(genesis, 5, "44" * 32, certificate)  # another block


def test_certificate_is_strict(genesis: Genesis) -> None:
    votes = _votes(genesis)
    good = build_certificate(votes)
    # Fewer than q.
    short = build_certificate(votes[: genesis.q - 1])
    assert any("quorum" in f for f in verify_execution_certificate(genesis, 5, ROOTS[0], short))
    # q valid votes and one bad entry: invalid (spec v2: one bad entry invalidates).
    bad = copy.deepcopy(good)
    bad["signatures"][VALIDATORS[3].public_key] = "00" * 64
    assert verify_execution_certificate(genesis, 5, ROOTS[0], bad)
    # A foreign signer beside q valid votes: invalid.
    stranger = signer("stranger")
    foreign = copy.deepcopy(good)
    foreign["signatures"][stranger.public_key] = sign_execution_vote(
        stranger, genesis.chain_id, 5, *ROOTS
    ).signature
    assert any(
        "not a genesis" in f for f in verify_execution_certificate(genesis, 5, ROOTS[0], foreign)
    )
    # A vote over other roots inside the certificate: invalid.
    mixed = copy.deepcopy(good)
    other = sign_execution_vote(VALIDATORS[3], genesis.chain_id, 5, ROOTS[0], "55" * 32, ROOTS[2])
    mixed["signatures"][VALIDATORS[3].public_key] = other.signature
    assert verify_execution_certificate(genesis, 5, ROOTS[0], mixed)
    for field in ("state_root", "results_root"):
        changed = {**good, field: "66" * 32}
        assert verify_execution_certificate(genesis, 5, ROOTS[0], changed)
    with pytest.raises(ValueError):
        build_certificate([votes[0], other])
    # Shapes.
    assert verify_execution_certificate(genesis, 5, ROOTS[0], None)
    assert verify_execution_certificate(genesis, 5, ROOTS[0], {**good, "extra": 1})


def test_vote_wire_round_trip_and_refusals(genesis: Genesis) -> None:
    vote = _votes(genesis)[0]
    assert ExecutionVote.from_wire(vote.to_wire()) == vote
    assert vote.verify(genesis)
    for field, value in (("seq", 0), ("seq", True), ("state_root", "AB" * 32), ("sig", "00")):
        with pytest.raises(ValueError):
            ExecutionVote.from_wire({**vote.to_wire(), field: value})
    with pytest.raises(ValueError):
        ExecutionVote.from_wire({**vote.to_wire(), "extra": 1})
    forged = ExecutionVote.from_wire({**vote.to_wire(), "state_root": "77" * 32})
    assert not forged.verify(genesis)


def test_results_root_matches_the_independent_definition() -> None:
    ids = [f"{i:02x}" * 32 for i in range(5)]
    results = [{"ok": i % 2 == 0, "error": None if i % 2 == 0 else "forbidden"} for i in range(5)]
    leaves = [
        spec_verifier.jcs({"tx_id": t, "result": r}) for t, r in zip(ids, results, strict=True)
    ]

    def mth(items: list[bytes]) -> bytes:
        if not items:
            return spec_verifier.sha(b"")
        if len(items) == 1:
            return spec_verifier.sha(b"\x00" + items[0])
        k = 1 << ((len(items) - 1).bit_length() - 1)
        return spec_verifier.sha(b"\x01" + mth(items[:k]) + mth(items[k:]))

    assert results_root(ids, results) == mth(leaves).hex()
    assert results_root([], []) == spec_verifier.sha(b"").hex()


# -- the store: roots per block, proven reads --------------------------------------------------


@pytest.fixture
def store(tmp_path: Path, genesis: Genesis) -> Any:
    s = LedgerStore.open(tmp_path / "ledger", genesis)
    yield s
    s.close()


def _fill(store: LedgerStore, genesis: Genesis) -> None:
    store.append_block(
        committed(
            genesis,
            1,
            [
                tx(ALICE, 0, {"op": "set", "key": "colour", "value": "blue"}),
                tx(ALICE, 1, {"op": "transfer", "to": CAROL.public_key, "amount": 10}),
            ],
        )
    )
    store.append_block(
        committed(genesis, 2, [tx(BOB, 0, {"op": "set", "key": "size", "value": [1, 2]})])
    )
    certify_execution(store, 2)


def test_proven_reads_verify_and_tampering_fails(store: LedgerStore, genesis: Genesis) -> None:
    _fill(store, genesis)
    reads = []
    for key in ("colour", "size", "absent"):
        answer = store.proven_state(key)
        answer["execution"] = store.execution(answer["seq"])
        reads.append(answer)
    for pubkey in (ALICE.public_key, CAROL.public_key, signer("nobody").public_key):
        answer = store.proven_balance(pubkey)
        answer["execution"] = store.execution(answer["seq"])
        reads.append(answer)
    assert reads[0]["value"] == "blue" and reads[0]["owner"] == ALICE.public_key
    assert reads[2]["version"] == 0 and reads[5]["balance"] == 0
    for answer in reads:
        assert answer["seq"] == 2
        assert verify_read(answer, genesis) == [], answer
        assert spec_verifier.proven_read_ok(genesis.document, answer), answer
        for bad in _tampered(answer):
            assert verify_read(bad, genesis), bad
            assert not spec_verifier.proven_read_ok(genesis.document, bad), bad


def _tampered(answer: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    if "key" in answer:
        if answer["version"]:
            out.append({**answer, "value": "other"})
            out.append({**answer, "version": answer["version"] + 1})
            other = BOB.public_key if answer["owner"] != BOB.public_key else ALICE.public_key
            out.append({**answer, "owner": other})
            out.append({**answer, "key": answer["key"] + "!"})
            out.append({**answer, "value": None, "version": 0, "owner": None})
        else:
            out.append({**answer, "value": 1, "version": 1, "owner": ALICE.public_key})
    else:
        out.append({**answer, "balance": answer["balance"] + 1})
        if answer["balance"]:
            out.append({**answer, "balance": 0})
            other = BOB.public_key if answer["pubkey"] != BOB.public_key else ALICE.public_key
            out.append({**answer, "pubkey": other})
    out.append({**answer, "seq": answer["seq"] + 1})
    out.append({**answer, "block_hash": "00" * 32})
    out.append({**answer, "execution": {**answer["execution"], "state_root": "00" * 32}})
    proof = answer["state_proof"]
    for i in range(len(proof["siblings"])):
        siblings = list(proof["siblings"])
        siblings[i] = "ff" * 32
        out.append({**answer, "state_proof": {**proof, "siblings": siblings}})
    return out


def test_roots_are_kept_per_block_and_survive_a_restart(tmp_path: Path, genesis: Genesis) -> None:
    with LedgerStore.open(tmp_path / "l", genesis) as store:
        _fill(store, genesis)
        roots = [store.roots(s) for s in (0, 1, 2)]
        root_now = store._read(lambda s: s.state_root())
    assert roots[2] is not None and roots[2][0] == root_now
    assert len({r[0] for r in roots if r}) == 3  # every block changed the state
    with LedgerStore.open(tmp_path / "l", genesis) as store:
        assert [store.roots(s) for s in (0, 1, 2)] == roots
        assert store.execution(2) is not None and store.execution(1) is None
        store.append_block(committed(genesis, 3, [tx(ALICE, 9, {"op": "delete", "key": "colour"})]))
        # The tree continued from its stored nodes: equal to a ledger built in one go.
        after_restart = store.roots(3)
    with LedgerStore.open(tmp_path / "m", genesis) as other:
        _fill(other, genesis)
        other.append_block(committed(genesis, 3, [tx(ALICE, 9, {"op": "delete", "key": "colour"})]))
        assert other.roots(3) == after_restart


def test_genesis_balances_are_in_the_tree(tmp_path: Path, genesis: Genesis) -> None:
    from ledger.state_tree import balance_leaf_data, balance_path, data_hash, root_of

    with LedgerStore.open(tmp_path / "g", genesis) as store:
        expected = root_of(
            {
                balance_path(k): data_hash(balance_leaf_data(k, v))
                for k, v in genesis.accounts.items()
                if v
            }
        )
        assert store.roots(0) is not None
        assert store.roots(0)[0] == expected.hex()  # type: ignore[index]


# -- the node's vote collector ------------------------------------------------------------------


class _Net:
    def __init__(self) -> None:
        self.broadcasts: list[dict[str, Any]] = []
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self.drops: list[str] = []
        self.conflicts: list[str] = []


def _collector(store: LedgerStore, genesis: Genesis, me: int = 0) -> tuple[ExecutionVotes, _Net]:
    net = _Net()
    votes = ExecutionVotes(
        genesis,
        VALIDATORS[me],
        store,
        broadcast=net.broadcasts.append,
        send=lambda to, m: net.sent.append((to, m)),
        on_drop=net.drops.append,
        on_conflict=net.conflicts.append,
    )
    return votes, net


def _executed(store: LedgerStore, votes: ExecutionVotes, seq: int) -> tuple[str, str, str]:
    roots = store.roots(seq)
    block_hash = store.block_hash(seq)
    assert roots is not None and block_hash is not None
    votes.on_executed(seq, block_hash, *roots)
    return block_hash, *roots


def _message(genesis: Genesis, who: int, seq: int, roots: tuple[str, str, str]) -> dict[str, Any]:
    vote = sign_execution_vote(VALIDATORS[who], genesis.chain_id, seq, *roots)
    return {"type": EXECUTION_VOTE, "vote": vote.to_wire(), "reply": False}


def test_collector_certifies_with_q_matching_votes(store: LedgerStore, genesis: Genesis) -> None:
    store.append_block(committed(genesis, 1, [tx(ALICE, 0, {"op": "set", "key": "k", "value": 1})]))
    votes, net = _collector(store, genesis)
    roots = _executed(store, votes, 1)
    assert net.broadcasts and net.broadcasts[0]["vote"]["state_root"] == roots[1]
    assert store.execution(1) is None
    votes.on_message(VALIDATORS[1].public_key, _message(genesis, 1, 1, roots))
    assert store.execution(1) is None  # 2 of q = 3
    # A vote relayed by someone else than its signer is dropped.
    votes.on_message(VALIDATORS[3].public_key, _message(genesis, 2, 1, roots))
    assert net.drops == ["execution_vote_not_from_signer"]
    votes.on_message(VALIDATORS[2].public_key, _message(genesis, 2, 1, roots))
    certificate = store.execution(1)
    assert certificate is not None
    assert verify_execution_certificate(genesis, 1, roots[0], certificate) == []
    # A late vote over other roots is named, not counted; it does not undo the certificate.
    wrong = (roots[0], "99" * 32, roots[2])
    votes.on_message(VALIDATORS[3].public_key, _message(genesis, 3, 1, wrong))
    assert net.conflicts == [VALIDATORS[3].public_key]
    assert votes.diverged is None and store.execution(1) == certificate
    # A vote for a certified block is answered with ours (a restarted peer collects again).
    assert net.sent and net.sent[-1][0] == VALIDATORS[3].public_key
    assert net.sent[-1][1]["reply"] is True


def test_collector_refuses_bad_signatures_and_out_of_window(
    store: LedgerStore, genesis: Genesis
) -> None:
    store.append_block(committed(genesis, 1))
    votes, net = _collector(store, genesis)
    roots = _executed(store, votes, 1)
    forged = _message(genesis, 1, 1, roots)
    forged["vote"]["state_root"] = "88" * 32
    votes.on_message(VALIDATORS[1].public_key, forged)
    votes.on_message(VALIDATORS[1].public_key, _message(genesis, 1, 10_000, roots))
    votes.on_message(VALIDATORS[1].public_key, {"type": EXECUTION_VOTE, "vote": "nonsense"})
    assert net.drops == [
        "bad_execution_vote_signature",
        "execution_vote_out_of_window",
        "bad_execution_vote",
    ]


def test_collector_diverges_when_q_others_certify_other_roots(
    store: LedgerStore, genesis: Genesis
) -> None:
    store.append_block(committed(genesis, 1, [tx(ALICE, 0, {"op": "set", "key": "k", "value": 1})]))
    votes, net = _collector(store, genesis)
    # The others' votes arrive before this node executed the block: kept, decided later.
    theirs = (store.block_hash(1) or "", "ab" * 32, "cd" * 32)
    for i in (1, 2, 3):
        votes.on_message(VALIDATORS[i].public_key, _message(genesis, i, 1, theirs))
    assert votes.diverged is None
    _executed(store, votes, 1)
    assert votes.diverged is not None
    assert votes.diverged.seq == 1 and votes.diverged.certified == theirs
    assert "state_root" in votes.diverged.detail() and len(votes.diverged.votes) == 3
    assert store.execution(1) is None
    # Diverged: no more votes are signed.
    broadcasts = len(net.broadcasts)
    store.append_block(committed(genesis, 2))
    _executed(store, votes, 2)
    assert len(net.broadcasts) == broadcasts


def test_equivocating_validator_is_kept_as_evidence(store: LedgerStore, genesis: Genesis) -> None:
    from ledger.evidence import verify_evidence

    store.append_block(committed(genesis, 1))
    votes, _ = _collector(store, genesis)
    roots = _executed(store, votes, 1)
    votes.on_message(VALIDATORS[1].public_key, _message(genesis, 1, 1, roots))
    votes.on_message(
        VALIDATORS[1].public_key, _message(genesis, 1, 1, (roots[0], "12" * 32, roots[2]))
    )
    assert len(votes.evidence) == 1
    verify_evidence(votes.evidence[0], genesis)  # raises if it is not valid spec §7 evidence


def test_waiting_for_a_certificate(store: LedgerStore, genesis: Genesis) -> None:
    store.append_block(committed(genesis, 1))
    votes, _ = _collector(store, genesis)

    async def scenario() -> None:
        roots = _executed(store, votes, 1)
        waiting = asyncio.create_task(votes.wait_certified(1, 5))
        executed = asyncio.create_task(votes.wait_executed(2, 5))
        await asyncio.sleep(0.01)
        assert not waiting.done()
        for i in (1, 2):
            votes.on_message(VALIDATORS[i].public_key, _message(genesis, i, 1, roots))
        assert (await waiting) == store.execution(1)
        assert await votes.wait_certified(7, 0.01) is None
        store.append_block(committed(genesis, 2))
        _executed(store, votes, 2)
        assert await executed
        assert not await votes.wait_executed(9, 0.01)

    asyncio.run(scenario())


def test_fetched_blocks_bring_checked_execution_certificates(
    store: LedgerStore, genesis: Genesis
) -> None:
    from node.p2p.block_sync import BadBlocks, serve_fetch, verified_executions, verify_blocks

    _fill(store, genesis)
    answer = serve_fetch(store, {"from_seq": 1, "count": 10})
    assert answer is not None
    blocks = answer["blocks"]
    assert blocks[0]["execution"] is None and blocks[1]["execution"] == store.execution(2)
    committed_blocks = verify_blocks(genesis, 1, blocks, genesis.genesis_hash)
    found = verified_executions(genesis, 1, genesis.genesis_hash, blocks, committed_blocks)
    assert found == {2: store.execution(2)}
    bad = copy.deepcopy(blocks)
    bad[1]["execution"]["results_root"] = "00" * 32
    with pytest.raises(BadBlocks, match="execution certificate"):
        verified_executions(genesis, 1, genesis.genesis_hash, bad, committed_blocks)


def test_a_fetched_certificate_that_differs_from_our_roots_is_divergence(
    store: LedgerStore, genesis: Genesis
) -> None:
    store.append_block(committed(genesis, 1, [tx(ALICE, 0, {"op": "set", "key": "k", "value": 1})]))
    votes, net = _collector(store, genesis)
    block_hash = store.block_hash(1) or ""
    roots = store.roots(1)
    assert roots is not None
    theirs = build_certificate(_votes(genesis, 1, (block_hash, "ab" * 32, roots[1]))[:3])
    votes.on_executed(1, block_hash, *roots, certificate=theirs)
    assert votes.diverged is not None and not net.broadcasts
    # A matching one is stored without any vote being sent.
    store.append_block(committed(genesis, 2))
    votes2, net2 = _collector(store, genesis)
    roots2 = store.roots(2)
    hash2 = store.block_hash(2) or ""
    assert roots2 is not None
    good = build_certificate(_votes(genesis, 2, (hash2, *roots2))[:3])
    votes2.on_executed(2, hash2, *roots2, certificate=good)
    assert votes2.diverged is None and store.execution(2) == good and not net2.broadcasts


def test_after_a_restart_votes_for_uncertified_blocks_are_sent_again(
    store: LedgerStore, genesis: Genesis
) -> None:
    for seq in (1, 2, 3):
        store.append_block(committed(genesis, seq))
    certify_execution(store, 1)
    votes, net = _collector(store, genesis)
    votes.start()
    assert sorted(m["vote"]["seq"] for m in net.broadcasts) == [2, 3]
    # The peers answer with their votes (reply: true); q of them complete the certificate.
    roots = (store.block_hash(3) or "", *(store.roots(3) or ("", "")))
    for i in (1, 2):
        reply = _message(genesis, i, 3, roots)  # type: ignore[arg-type]
        reply["reply"] = True
        votes.on_message(VALIDATORS[i].public_key, reply)
    assert store.execution(3) is not None and not net.sent  # replies are never answered


def test_a_recorded_divergence_survives_a_restart(
    store: LedgerStore, genesis: Genesis, tmp_path: Path
) -> None:
    record = tmp_path / "divergence.json"
    store.append_block(committed(genesis, 1, [tx(ALICE, 0, {"op": "set", "key": "k", "value": 1})]))
    net = _Net()
    votes = ExecutionVotes(
        genesis, VALIDATORS[0], store, net.broadcasts.append, lambda to, m: None, record=record
    )
    theirs = (store.block_hash(1) or "", "ab" * 32, "cd" * 32)
    for i in (1, 2, 3):
        votes.on_message(VALIDATORS[i].public_key, _message(genesis, i, 1, theirs))
    _executed(store, votes, 1)
    assert votes.diverged is not None and record.exists()
    assert json.loads(record.read_text())["certified"]["state_root"] == "ab" * 32
    # Restarted over the same data directory: diverged from the start, it signs nothing.
    again = ExecutionVotes(
        genesis, VALIDATORS[0], store, net.broadcasts.append, lambda to, m: None, record=record
    )
    assert again.diverged is not None and again.diverged.seq == 1
    sent = len(net.broadcasts)
    store.append_block(committed(genesis, 2))
    _executed(store, again, 2)
    assert len(net.broadcasts) == sent


def test_the_collector_keeps_votes_for_the_last_blocks_only(
    store: LedgerStore, genesis: Genesis
) -> None:
    """However many blocks execute, what the collector holds stays within KEPT_BEHIND of the
    head (it forgets from the front as blocks execute)."""
    votes, _ = _collector(store, genesis)
    blocks = KEPT_BEHIND + 40
    for seq in range(1, blocks + 1):
        store.append_block(committed(genesis, seq))
        roots = _executed(store, votes, seq)
        for i in (1, 2):
            votes.on_message(VALIDATORS[i].public_key, _message(genesis, i, seq, roots))
    for table in (votes._votes, votes._own, votes._certified):
        assert table and min(table) > blocks - KEPT_BEHIND - 1 and max(table) == blocks
        assert len(table) <= KEPT_BEHIND + 1


# -- the real state machine: the store's incremental roots against a rebuild -------------------

_CLIENTS = [ALICE, BOB, CAROL]
_op_strategy = st.one_of(
    st.builds(lambda k, v: {"op": "set", "key": k, "value": v}, st.sampled_from("abcdef"),
              st.integers(0, 3)),
    st.builds(lambda k: {"op": "delete", "key": k}, st.sampled_from("abcdef")),
    st.builds(lambda k, n, v: {"op": "cas", "key": k, "expect": n, "value": v},
              st.sampled_from("abcdef"), st.integers(0, 2), st.integers(0, 3)),
    st.builds(lambda k, c: {"op": "chown", "key": k, "to": _CLIENTS[c].public_key},
              st.sampled_from("abcdef"), st.integers(0, 2)),
    st.builds(lambda c, a: {"op": "transfer", "to": _CLIENTS[c].public_key, "amount": a},
              st.integers(0, 2), st.integers(1, 400)),
)  # fmt: skip
_tx_strategy = st.tuples(st.integers(0, 2), st.lists(_op_strategy, min_size=1, max_size=3))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(_tx_strategy, max_size=5), min_size=1, max_size=6))
def test_store_roots_equal_a_rebuild_after_any_ops(blocks: list[list[Any]]) -> None:
    """Random set/delete/cas/chown/transfer transactions (with fees, failures included) through
    the real state machine and store: after every block the incrementally kept state_root equals
    a from-scratch tree over the stored entries and balances."""
    import tempfile

    from ledger.state_tree import entry_changes, root_of

    genesis = make_genesis(accounts={c.public_key: 100_000 for c in _CLIENTS[:2]}, fee_per_byte=1)
    with (
        tempfile.TemporaryDirectory() as directory,
        LedgerStore.open(Path(directory) / "l", genesis) as store,
    ):
        nonce = 0
        for seq, block in enumerate(blocks, start=1):
            txs = []
            for client, ops in block:
                txs.append(tx(_CLIENTS[client], nonce, *ops))
                nonce += 1
            store.append_block(committed(genesis, seq, txs))
            with store.snapshot() as snap:
                kv = [(k, e.value, e.version, e.owner) for k, e in snap.iter_state()]
                balances = list(snap.iter_balances())
                rebuilt = root_of(entry_changes(kv, balances))  # type: ignore[arg-type]
                assert snap.roots(seq)[0] == rebuilt.hex()  # type: ignore[index]
                assert snap.state_root() == rebuilt.hex()
