"""The v1 state machine (spec §3): each op, atomicity, duplicates, and a model-based check."""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consensus.batch import Tx
from ledger.state_machine import (
    CAS_MISMATCH,
    DUPLICATE,
    INSUFFICIENT_FUNDS,
    DictState,
    Entry,
    execute_batch,
)
from ledger.transaction import MALFORMED
from tests.ledger.helpers import ALICE, BOB, CAROL

OK = {"ok": True, "error": None}
FAKE_SIG = "00" * 64  # execution checks shape only; signatures are checked once, at admission


def fake_tx(client: str, nonce: int, *ops: dict[str, Any]) -> Tx:
    return Tx.from_wire(
        {"body": {"client": client, "nonce": nonce, "ops": list(ops)}, "sig": FAKE_SIG}
    )


def fail(code: str) -> dict[str, Any]:
    return {"ok": False, "error": code}


def run(state: DictState, *txs: Tx, seq: int = 1) -> list[dict[str, Any]]:
    return execute_batch(state, seq, list(txs))


def fresh() -> DictState:
    return DictState({ALICE.public_key: 100, BOB.public_key: 10})


A, B, C = ALICE.public_key, BOB.public_key, CAROL.public_key


def test_set_creates_and_bumps_version() -> None:
    s = fresh()
    assert run(s, fake_tx(A, 0, {"op": "set", "key": "k", "value": 1})) == [OK]
    assert s.get_entry("k") == Entry(1, 1)
    assert run(s, fake_tx(A, 1, {"op": "set", "key": "k", "value": {"x": [2]}})) == [OK]
    assert s.get_entry("k") == Entry({"x": [2]}, 2)


def test_delete_removes_and_version_restarts() -> None:
    s = fresh()
    run(
        s,
        fake_tx(A, 0, {"op": "set", "key": "k", "value": 1}, {"op": "set", "key": "k", "value": 2}),
    )
    assert s.get_entry("k") == Entry(2, 2)
    assert run(s, fake_tx(A, 1, {"op": "delete", "key": "k"})) == [OK]
    assert s.get_entry("k") is None
    run(s, fake_tx(A, 2, {"op": "set", "key": "k", "value": 3}))
    assert s.get_entry("k") == Entry(3, 1)


def test_delete_of_absent_key_succeeds() -> None:
    s = fresh()
    assert run(s, fake_tx(A, 0, {"op": "delete", "key": "nothing"})) == [OK]


def test_cas_on_absent_key_expects_zero() -> None:
    s = fresh()
    assert run(s, fake_tx(A, 0, {"op": "cas", "key": "k", "expect": 1, "value": "x"})) == [
        fail(CAS_MISMATCH)
    ]
    assert s.get_entry("k") is None
    assert run(s, fake_tx(A, 1, {"op": "cas", "key": "k", "expect": 0, "value": "x"})) == [OK]
    assert s.get_entry("k") == Entry("x", 1)
    assert run(s, fake_tx(A, 2, {"op": "cas", "key": "k", "expect": 1, "value": "y"})) == [OK]
    assert s.get_entry("k") == Entry("y", 2)
    assert run(s, fake_tx(A, 3, {"op": "cas", "key": "k", "expect": 1, "value": "z"})) == [
        fail(CAS_MISMATCH)
    ]
    assert s.get_entry("k") == Entry("y", 2)


def test_cas_sees_earlier_ops_of_the_same_transaction() -> None:
    s = fresh()
    ops = [
        {"op": "set", "key": "k", "value": 1},
        {"op": "cas", "key": "k", "expect": 1, "value": 2},
    ]
    assert run(s, fake_tx(A, 0, *ops)) == [OK]
    assert s.get_entry("k") == Entry(2, 2)


def test_transfer_moves_funds_to_new_and_existing_accounts() -> None:
    s = fresh()
    assert run(s, fake_tx(A, 0, {"op": "transfer", "to": C, "amount": 30})) == [OK]
    assert (s.get_balance(A), s.get_balance(C)) == (70, 30)
    assert run(s, fake_tx(A, 1, {"op": "transfer", "to": B, "amount": 70})) == [OK]
    assert (s.get_balance(A), s.get_balance(B)) == (0, 80)
    assert A not in s.balances  # zero balances are not stored


def test_transfer_insufficient_funds_and_unknown_client() -> None:
    s = fresh()
    assert run(s, fake_tx(B, 0, {"op": "transfer", "to": A, "amount": 11})) == [
        fail(INSUFFICIENT_FUNDS)
    ]
    assert run(s, fake_tx(C, 0, {"op": "transfer", "to": A, "amount": 1})) == [
        fail(INSUFFICIENT_FUNDS)
    ]
    assert (s.get_balance(A), s.get_balance(B)) == (100, 10)


def test_transfer_to_self_keeps_balance_but_needs_cover() -> None:
    s = fresh()
    assert run(s, fake_tx(B, 0, {"op": "transfer", "to": B, "amount": 10})) == [OK]
    assert s.get_balance(B) == 10
    assert run(s, fake_tx(B, 1, {"op": "transfer", "to": B, "amount": 11})) == [
        fail(INSUFFICIENT_FUNDS)
    ]


def test_transfers_within_a_transaction_accumulate() -> None:
    s = fresh()
    two = [{"op": "transfer", "to": C, "amount": 6}, {"op": "transfer", "to": C, "amount": 5}]
    assert run(s, fake_tx(B, 0, *two)) == [fail(INSUFFICIENT_FUNDS)]
    assert s.get_balance(B) == 10 and s.get_balance(C) == 0


def test_failed_transaction_changes_nothing() -> None:
    s = fresh()
    run(s, fake_tx(A, 0, {"op": "set", "key": "keep", "value": 1}))
    ops: list[dict[str, Any]] = [
        {"op": "set", "key": "new", "value": 1},
        {"op": "delete", "key": "keep"},
        {"op": "transfer", "to": C, "amount": 50},
        {"op": "cas", "key": "keep", "expect": 5, "value": 0},
    ]
    assert run(s, fake_tx(A, 1, *ops)) == [fail(CAS_MISMATCH)]
    assert s.get_entry("new") is None
    assert s.get_entry("keep") == Entry(1, 1)
    assert (s.get_balance(A), s.get_balance(C)) == (100, 0)
    assert s.tx_location(fake_tx(A, 1, *ops).tx_id) == (1, 0)  # still ordered and indexed


def test_duplicate_in_same_batch_and_later_batch() -> None:
    s = fresh()
    t = fake_tx(A, 0, {"op": "set", "key": "k", "value": 1})
    assert run(s, t, t, seq=1) == [OK, fail(DUPLICATE)]
    assert run(s, t, seq=2) == [fail(DUPLICATE)]
    assert s.get_entry("k") == Entry(1, 1)
    assert s.tx_location(t.tx_id) == (1, 0)  # the receipt stays the one of its first position


def test_same_body_with_another_signature_is_a_duplicate() -> None:
    s = fresh()
    t = fake_tx(A, 0, {"op": "set", "key": "k", "value": 1})
    other = Tx.from_wire({"body": t.wire["body"], "sig": "11" * 64})
    assert other.tx_id == t.tx_id
    assert run(s, t, other) == [OK, fail(DUPLICATE)]


def test_failed_transaction_is_still_a_duplicate_later() -> None:
    s = fresh()
    t = fake_tx(B, 0, {"op": "transfer", "to": A, "amount": 1000})
    assert run(s, t) == [fail(INSUFFICIENT_FUNDS)]
    s.set_balance(B, 5000)
    assert run(s, t, seq=2) == [fail(DUPLICATE)]


def test_malformed_transaction_in_a_committed_batch_fails_deterministically() -> None:
    s = fresh()
    bad = Tx.from_wire({"body": {"client": A, "nonce": 0, "ops": []}, "sig": FAKE_SIG})
    body = {"client": A, "nonce": 0, "ops": [{"op": "set", "key": "k", "value": 0.5}]}
    floating = Tx("ab" * 32, {"body": body, "sig": FAKE_SIG})  # a float in a value
    assert run(s, bad, floating) == [fail(MALFORMED), fail(MALFORMED)]
    assert s.entries == {}


# -- model-based: a plain reference model written from the spec, compared op by op -----------

CLIENTS = [A, B, C]
KEYS = ["a", "b", "é"]

op_strategy = st.one_of(
    st.builds(
        lambda k, v: {"op": "set", "key": k, "value": v}, st.sampled_from(KEYS), st.integers(0, 3)
    ),
    st.builds(lambda k: {"op": "delete", "key": k}, st.sampled_from(KEYS)),
    st.builds(
        lambda k, e, v: {"op": "cas", "key": k, "expect": e, "value": v},
        st.sampled_from(KEYS),
        st.integers(0, 3),
        st.integers(0, 3),
    ),
    st.builds(
        lambda to, amt: {"op": "transfer", "to": to, "amount": amt},
        st.sampled_from(CLIENTS),
        st.integers(1, 60),
    ),
)
tx_strategy = st.tuples(
    st.sampled_from(CLIENTS), st.integers(0, 3), st.lists(op_strategy, min_size=1, max_size=4)
)
batches_strategy = st.lists(st.lists(tx_strategy, max_size=5), min_size=1, max_size=8)


class Model:
    """Reference semantics, as plain as possible: copy, apply, keep the copy only on success."""

    def __init__(self, accounts: dict[str, int]) -> None:
        self.kv: dict[str, tuple[Any, int]] = {}
        self.balances = dict(accounts)
        self.executed: dict[str, tuple[int, int]] = {}

    def apply(
        self, seq: int, index: int, tx_id: str, client: str, ops: list[dict[str, Any]]
    ) -> dict[str, Any]:
        if tx_id in self.executed:
            return fail(DUPLICATE)
        self.executed[tx_id] = (seq, index)
        kv, bal = copy.deepcopy(self.kv), dict(self.balances)
        for op in ops:
            if op["op"] == "set":
                kv[op["key"]] = (op["value"], kv.get(op["key"], (None, 0))[1] + 1)
            elif op["op"] == "delete":
                kv.pop(op["key"], None)
            elif op["op"] == "cas":
                if kv.get(op["key"], (None, 0))[1] != op["expect"]:
                    return fail(CAS_MISMATCH)
                kv[op["key"]] = (op["value"], op["expect"] + 1)
            else:
                if bal.get(client, 0) < op["amount"]:
                    return fail(INSUFFICIENT_FUNDS)
                bal[client] = bal.get(client, 0) - op["amount"]
                bal[op["to"]] = bal.get(op["to"], 0) + op["amount"]
        self.kv, self.balances = kv, bal
        return OK


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches_strategy)
def test_state_machine_matches_the_model(batches: list[list[tuple[str, int, list[Any]]]]) -> None:
    accounts = {A: 100, B: 10}
    state, model = DictState(accounts), Model(accounts)
    for seq, batch in enumerate(batches, start=1):
        txs = [fake_tx(client, nonce, *ops) for client, nonce, ops in batch]
        results = execute_batch(state, seq, txs)
        expected = [
            model.apply(seq, i, t.tx_id, client, ops)
            for i, (t, (client, _, ops)) in enumerate(zip(txs, batch, strict=True))
        ]
        assert results == expected
        assert {k: (e.value, e.version) for k, e in state.entries.items()} == model.kv
        assert state.balances == {k: v for k, v in model.balances.items() if v}
        assert state.locations == model.executed
        assert sum(state.balances.values()) == 110  # transfers conserve money
