"""The v2 state machine (spec §3): each op, owners, fees, chown, atomicity, duplicates, chains,
and a model-based check written from the spec that covers every result code."""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consensus.batch import Tx
from crypto.canonical import canonical_json
from ledger.state_machine import (
    CAS_MISMATCH,
    DUPLICATE,
    FORBIDDEN,
    INSUFFICIENT_FUNDS,
    NOT_FOUND,
    RESULT_ERRORS,
    ChainRules,
    DictState,
    Entry,
    execute_batch,
)
from ledger.transaction import INSUFFICIENT_FEE, MALFORMED, WRONG_CHAIN
from tests.ledger.helpers import ALICE, BOB, CAROL, CHAIN_ID

OK = {"ok": True, "error": None}
FAKE_SIG = "00" * 64  # execution checks shape only; signatures are checked once, at admission
FREE = ChainRules(CHAIN_ID, 0)


def fake_tx(client: str, nonce: int, *ops: dict[str, Any], chain_id: str = CHAIN_ID) -> Tx:
    body = {"chain_id": chain_id, "client": client, "nonce": nonce, "ops": list(ops)}
    return Tx.from_wire({"body": body, "sig": FAKE_SIG})


def size(t: Tx) -> int:
    return len(canonical_json(t.wire["body"]))


def fail(code: str) -> dict[str, Any]:
    return {"ok": False, "error": code}


def run(state: DictState, *txs: Tx, seq: int = 1, rules: ChainRules = FREE) -> list[dict[str, Any]]:
    return execute_batch(state, seq, list(txs), rules)


def fresh() -> DictState:
    return DictState({ALICE.public_key: 100, BOB.public_key: 10})


A, B, C = ALICE.public_key, BOB.public_key, CAROL.public_key


def set_(key: str, value: Any) -> dict[str, Any]:
    return {"op": "set", "key": key, "value": value}


def delete(key: str) -> dict[str, Any]:
    return {"op": "delete", "key": key}


def cas(key: str, expect: int, value: Any) -> dict[str, Any]:
    return {"op": "cas", "key": key, "expect": expect, "value": value}


def chown(key: str, to: str) -> dict[str, Any]:
    return {"op": "chown", "key": key, "to": to}


def transfer(to: str, amount: int) -> dict[str, Any]:
    return {"op": "transfer", "to": to, "amount": amount}


# -- ops and versions ---------------------------------------------------------------------------


def test_set_creates_with_the_client_as_owner_and_bumps_version() -> None:
    s = fresh()
    assert run(s, fake_tx(A, 0, set_("k", 1))) == [OK]
    assert s.get_entry("k") == Entry(1, 1, A)
    assert run(s, fake_tx(A, 1, set_("k", {"x": [2]}))) == [OK]
    assert s.get_entry("k") == Entry({"x": [2]}, 2, A)


def test_delete_removes_and_version_restarts() -> None:
    s = fresh()
    run(s, fake_tx(A, 0, set_("k", 1), set_("k", 2)))
    assert s.get_entry("k") == Entry(2, 2, A)
    assert run(s, fake_tx(A, 1, delete("k"))) == [OK]
    assert s.get_entry("k") is None
    run(s, fake_tx(A, 2, set_("k", 3)))
    assert s.get_entry("k") == Entry(3, 1, A)


def test_delete_of_absent_key_is_not_found() -> None:
    s = fresh()
    assert run(s, fake_tx(A, 0, delete("nothing"))) == [fail(NOT_FOUND)]


def test_cas_on_absent_key_expects_zero() -> None:
    s = fresh()
    assert run(s, fake_tx(A, 0, cas("k", 1, "x"))) == [fail(CAS_MISMATCH)]
    assert s.get_entry("k") is None
    assert run(s, fake_tx(A, 1, cas("k", 0, "x"))) == [OK]
    assert s.get_entry("k") == Entry("x", 1, A)
    assert run(s, fake_tx(A, 2, cas("k", 1, "y"))) == [OK]
    assert s.get_entry("k") == Entry("y", 2, A)
    assert run(s, fake_tx(A, 3, cas("k", 1, "z"))) == [fail(CAS_MISMATCH)]
    assert s.get_entry("k") == Entry("y", 2, A)


def test_cas_sees_earlier_ops_of_the_same_transaction() -> None:
    s = fresh()
    assert run(s, fake_tx(A, 0, set_("k", 1), cas("k", 1, 2))) == [OK]
    assert s.get_entry("k") == Entry(2, 2, A)


# -- owners -------------------------------------------------------------------------------------


def test_another_clients_set_delete_cas_and_chown_are_forbidden() -> None:
    s = fresh()
    run(s, fake_tx(A, 0, set_("colour", "blue")))
    for nonce, op in enumerate(
        [set_("colour", "hijacked"), delete("colour"), cas("colour", 1, "x"), chown("colour", B)]
    ):
        assert run(s, fake_tx(B, nonce, op)) == [fail(FORBIDDEN)], op
    assert s.get_entry("colour") == Entry("blue", 1, A)


def test_cas_on_another_clients_key_with_the_wrong_version_is_forbidden() -> None:
    s = fresh()
    run(s, fake_tx(A, 0, set_("k", 1)))
    assert run(s, fake_tx(B, 0, cas("k", 7, "x"))) == [fail(FORBIDDEN)]
    assert run(s, fake_tx(B, 1, cas("k", 0, "x"))) == [fail(FORBIDDEN)]


def test_not_found_comes_before_forbidden() -> None:
    s = fresh()
    assert run(s, fake_tx(B, 0, chown("absent", B))) == [fail(NOT_FOUND)]
    assert run(s, fake_tx(B, 1, delete("absent"))) == [fail(NOT_FOUND)]


def test_forbidden_is_atomic_with_the_rest_of_the_transaction() -> None:
    s = fresh()
    run(s, fake_tx(A, 0, set_("mine", 1)))
    ops = [set_("new", 1), transfer(C, 5), set_("mine", 2)]
    assert run(s, fake_tx(B, 0, *ops)) == [fail(FORBIDDEN)]
    assert s.get_entry("new") is None and s.get_entry("mine") == Entry(1, 1, A)
    assert (s.get_balance(B), s.get_balance(C)) == (10, 0)


def test_chown_hands_over_then_the_new_owner_writes_and_the_old_cannot() -> None:
    s = fresh()
    run(s, fake_tx(A, 0, set_("k", "a")))
    assert run(s, fake_tx(A, 1, chown("k", B))) == [OK]
    assert s.get_entry("k") == Entry("a", 2, B)  # chown counts as a write
    assert run(s, fake_tx(A, 2, set_("k", "back"))) == [fail(FORBIDDEN)]
    assert run(s, fake_tx(A, 3, chown("k", A))) == [fail(FORBIDDEN)]
    assert run(s, fake_tx(B, 0, cas("k", 2, "b"))) == [OK]
    assert s.get_entry("k") == Entry("b", 3, B)
    assert run(s, fake_tx(B, 1, delete("k"))) == [OK]


def test_chown_then_write_in_one_transaction_is_forbidden_for_the_giver() -> None:
    s = fresh()
    assert run(s, fake_tx(A, 0, set_("k", 1), chown("k", B), set_("k", 2))) == [fail(FORBIDDEN)]
    assert s.get_entry("k") is None


def test_after_delete_anyone_recreates_the_key_as_its_owner() -> None:
    s = fresh()
    run(s, fake_tx(A, 0, set_("k", 1), set_("k", 2)))
    run(s, fake_tx(A, 1, delete("k")))
    assert run(s, fake_tx(B, 0, cas("k", 0, "bob's"))) == [OK]
    assert s.get_entry("k") == Entry("bob's", 1, B)
    assert run(s, fake_tx(A, 2, set_("k", "alice again"))) == [fail(FORBIDDEN)]


def test_a_key_can_be_handed_to_a_client_with_no_account() -> None:
    s = fresh()
    run(s, fake_tx(A, 0, set_("k", 1), chown("k", C)))
    assert s.get_entry("k") == Entry(1, 2, C)


# -- transfers ----------------------------------------------------------------------------------


def test_transfer_moves_funds_to_new_and_existing_accounts() -> None:
    s = fresh()
    assert run(s, fake_tx(A, 0, transfer(C, 30))) == [OK]
    assert (s.get_balance(A), s.get_balance(C)) == (70, 30)
    assert run(s, fake_tx(A, 1, transfer(B, 70))) == [OK]
    assert (s.get_balance(A), s.get_balance(B)) == (0, 80)
    assert A not in s.balances  # zero balances are not stored


def test_transfer_insufficient_funds_and_unknown_client() -> None:
    s = fresh()
    assert run(s, fake_tx(B, 0, transfer(A, 11))) == [fail(INSUFFICIENT_FUNDS)]
    assert run(s, fake_tx(C, 0, transfer(A, 1))) == [fail(INSUFFICIENT_FUNDS)]
    assert (s.get_balance(A), s.get_balance(B)) == (100, 10)


def test_transfer_to_self_keeps_balance_but_needs_cover() -> None:
    s = fresh()
    assert run(s, fake_tx(B, 0, transfer(B, 10))) == [OK]
    assert s.get_balance(B) == 10
    assert run(s, fake_tx(B, 1, transfer(B, 11))) == [fail(INSUFFICIENT_FUNDS)]


def test_transfers_within_a_transaction_accumulate() -> None:
    s = fresh()
    assert run(s, fake_tx(B, 0, transfer(C, 6), transfer(C, 5))) == [fail(INSUFFICIENT_FUNDS)]
    assert s.get_balance(B) == 10 and s.get_balance(C) == 0


def test_failed_transaction_changes_nothing() -> None:
    s = fresh()
    run(s, fake_tx(A, 0, set_("keep", 1)))
    ops = [set_("new", 1), delete("keep"), transfer(C, 50), cas("keep", 5, 0)]
    assert run(s, fake_tx(A, 1, *ops)) == [fail(CAS_MISMATCH)]
    assert s.get_entry("new") is None
    assert s.get_entry("keep") == Entry(1, 1, A)
    assert (s.get_balance(A), s.get_balance(C)) == (100, 0)
    assert s.tx_location(fake_tx(A, 1, *ops).tx_id) == (1, 0)  # still ordered and indexed


# -- fees ---------------------------------------------------------------------------------------


def test_the_exact_fee_is_taken_from_the_client() -> None:
    s = DictState({A: 10_000})
    t = fake_tx(A, 0, set_("k", "v"))
    assert run(s, t, rules=ChainRules(CHAIN_ID, 3)) == [OK]
    assert s.get_balance(A) == 10_000 - 3 * size(t)
    assert sum(s.balances.values()) == 10_000 - 3 * size(t)  # burned, nobody receives it


def test_a_failing_op_keeps_the_fee_taken() -> None:
    s = DictState({A: 10_000, B: 10_000})
    run(s, fake_tx(A, 0, set_("k", 1)))
    for nonce, op in enumerate([set_("k", 2), delete("absent"), cas("mine", 4, 0)]):
        t = fake_tx(B, nonce, op)
        before = s.get_balance(B)
        assert run(s, t, seq=2 + nonce, rules=ChainRules(CHAIN_ID, 2))[0]["ok"] is False
        assert s.get_balance(B) == before - 2 * size(t)
    assert s.get_entry("k") == Entry(1, 1, A) and s.get_entry("mine") is None


def test_insufficient_fee_changes_nothing_but_is_recorded() -> None:
    t = fake_tx(B, 0, set_("k", 1), transfer(C, 1))
    s = DictState({B: size(t) - 1})
    assert run(s, t, rules=ChainRules(CHAIN_ID, 1)) == [fail(INSUFFICIENT_FEE)]
    assert s.get_balance(B) == size(t) - 1 and s.entries == {} and s.get_balance(C) == 0
    assert s.tx_location(t.tx_id) == (1, 0)


def test_a_balance_of_exactly_the_fee_pays_it() -> None:
    t = fake_tx(B, 0, set_("k", 1))
    s = DictState({B: size(t)})
    assert run(s, t, rules=ChainRules(CHAIN_ID, 1)) == [OK]
    assert s.get_balance(B) == 0 and B not in s.balances


def test_a_transfer_must_be_covered_after_the_fee() -> None:
    t = fake_tx(B, 0, transfer(C, 10))
    fee = size(t)
    s = DictState({B: fee + 9})  # pays the fee, then lacks one for the transfer
    assert run(s, t, rules=ChainRules(CHAIN_ID, 1)) == [fail(INSUFFICIENT_FUNDS)]
    assert (s.get_balance(B), s.get_balance(C)) == (9, 0)
    t2 = fake_tx(B, 1, transfer(C, 10))
    s = DictState({B: size(t2) + 10})
    assert run(s, t2, rules=ChainRules(CHAIN_ID, 1)) == [OK]
    assert (s.get_balance(B), s.get_balance(C)) == (0, 10)


def test_a_throwaway_key_cannot_write() -> None:
    s = fresh()
    nobody = fake_tx(C, 0, set_("spam", "x" * 1000))
    assert run(s, nobody, rules=ChainRules(CHAIN_ID, 1)) == [fail(INSUFFICIENT_FEE)]
    assert s.entries == {}


def test_a_duplicate_pays_nothing() -> None:
    s = DictState({A: 10_000})
    t = fake_tx(A, 0, set_("k", 1))
    rules = ChainRules(CHAIN_ID, 1)
    assert run(s, t, t, rules=rules) == [OK, fail(DUPLICATE)]
    assert run(s, t, seq=2, rules=rules) == [fail(DUPLICATE)]
    assert s.get_balance(A) == 10_000 - size(t)


def test_zero_fee_per_byte_switches_fees_off() -> None:
    s = DictState({})
    assert run(s, fake_tx(C, 0, set_("k", 1)), rules=FREE) == [OK]
    assert s.get_entry("k") == Entry(1, 1, C)


# -- duplicates, chains, malformed ---------------------------------------------------------------


def test_duplicate_in_same_batch_and_later_batch() -> None:
    s = fresh()
    t = fake_tx(A, 0, set_("k", 1))
    assert run(s, t, t, seq=1) == [OK, fail(DUPLICATE)]
    assert run(s, t, seq=2) == [fail(DUPLICATE)]
    assert s.get_entry("k") == Entry(1, 1, A)
    assert s.tx_location(t.tx_id) == (1, 0)  # the receipt stays the one of its first position


def test_same_body_with_another_signature_is_a_duplicate() -> None:
    s = fresh()
    t = fake_tx(A, 0, set_("k", 1))
    other = Tx.from_wire({"body": t.wire["body"], "sig": "11" * 64})
    assert other.tx_id == t.tx_id
    assert run(s, t, other) == [OK, fail(DUPLICATE)]


def test_failed_transaction_is_still_a_duplicate_later() -> None:
    s = fresh()
    t = fake_tx(B, 0, transfer(A, 1000))
    assert run(s, t) == [fail(INSUFFICIENT_FUNDS)]
    s.set_balance(B, 5000)
    assert run(s, t, seq=2) == [fail(DUPLICATE)]


def test_another_chains_transaction_never_executes_and_pays_nothing() -> None:
    s = DictState({A: 10_000})
    t = fake_tx(A, 0, set_("k", 1), chain_id="other-net")
    assert run(s, t, rules=ChainRules(CHAIN_ID, 1)) == [fail(WRONG_CHAIN)]
    assert s.entries == {} and s.get_balance(A) == 10_000
    assert s.tx_location(t.tx_id) == (1, 0)


def test_malformed_transaction_in_a_committed_batch_fails_deterministically() -> None:
    s = fresh()
    bad = Tx.from_wire(
        {"body": {"chain_id": CHAIN_ID, "client": A, "nonce": 0, "ops": []}, "sig": FAKE_SIG}
    )
    body = {"chain_id": CHAIN_ID, "client": A, "nonce": 0, "ops": [set_("k", 0.5)]}
    floating = Tx("ab" * 32, {"body": body, "sig": FAKE_SIG})  # a float in a value
    v1 = Tx.from_wire({"body": {"client": A, "nonce": 0, "ops": [set_("k", 1)]}, "sig": FAKE_SIG})
    assert run(s, bad, floating, v1) == [fail(MALFORMED)] * 3
    assert s.entries == {} and s.get_balance(A) == 100


# -- model-based: a plain reference model written from the spec, compared op by op -----------

CLIENTS = [A, B, C]
KEYS = ["a", "b", "é"]
FEES = [0, 1, 2]

op_strategy = st.one_of(
    st.builds(set_, st.sampled_from(KEYS), st.integers(0, 3)),
    st.builds(delete, st.sampled_from(KEYS)),
    st.builds(cas, st.sampled_from(KEYS), st.integers(0, 3), st.integers(0, 3)),
    st.builds(chown, st.sampled_from(KEYS), st.sampled_from(CLIENTS)),
    st.builds(transfer, st.sampled_from(CLIENTS), st.integers(1, 200)),
)
tx_strategy = st.tuples(
    st.sampled_from(CLIENTS),
    st.integers(0, 3),
    st.lists(op_strategy, min_size=1, max_size=4),
    st.sampled_from([CHAIN_ID, CHAIN_ID, CHAIN_ID, "other-net"]),
)
# Each batch: its transactions, and whether to repeat an earlier one (a duplicate).
batches_strategy = st.lists(
    st.tuples(st.lists(tx_strategy, max_size=5), st.booleans()), min_size=1, max_size=8
)
Model_KV = dict[str, tuple[Any, int, str]]


class Model:
    """Reference semantics, as plain as possible: copy, apply, keep the copy only on success."""

    def __init__(self, accounts: dict[str, int], fee_per_byte: int) -> None:
        self.kv: Model_KV = {}
        self.balances = dict(accounts)
        self.executed: dict[str, tuple[int, int]] = {}
        self.fee_per_byte = fee_per_byte

    def apply(self, seq: int, index: int, t: Tx) -> dict[str, Any]:
        body = t.wire["body"]
        if t.tx_id in self.executed:
            return fail(DUPLICATE)
        self.executed[t.tx_id] = (seq, index)
        if body["chain_id"] != CHAIN_ID:
            return fail(WRONG_CHAIN)
        client = body["client"]
        fee = self.fee_per_byte * len(canonical_json(body))
        if self.balances.get(client, 0) < fee:
            return fail(INSUFFICIENT_FEE)
        self.balances[client] = self.balances.get(client, 0) - fee
        kv, bal = copy.deepcopy(self.kv), dict(self.balances)
        for op in body["ops"]:
            error = self._op(kv, bal, client, op)
            if error is not None:
                return fail(error)
        self.kv, self.balances = kv, bal
        return OK

    @staticmethod
    def _op(kv: Model_KV, bal: dict[str, int], client: str, op: dict[str, Any]) -> str | None:
        key = op.get("key")
        current = kv.get(key) if key is not None else None
        if op["op"] in ("delete", "chown") and current is None:
            return NOT_FOUND
        if op["op"] != "transfer" and current is not None and current[2] != client:
            return FORBIDDEN
        version = current[1] if current is not None else 0
        if op["op"] == "set":
            kv[op["key"]] = (op["value"], version + 1, client)
        elif op["op"] == "delete":
            del kv[op["key"]]
        elif op["op"] == "cas":
            if version != op["expect"]:
                return CAS_MISMATCH
            kv[op["key"]] = (op["value"], version + 1, client)
        elif op["op"] == "chown":
            assert current is not None
            kv[op["key"]] = (current[0], version + 1, op["to"])
        else:
            if bal.get(client, 0) < op["amount"]:
                return INSUFFICIENT_FUNDS
            bal[client] = bal.get(client, 0) - op["amount"]
            bal[op["to"]] = bal.get(op["to"], 0) + op["amount"]
        return None


SEEN_CODES: set[str | None] = set()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches_strategy, st.sampled_from(FEES), st.integers(0, 2000), st.integers(0, 400))
def test_state_machine_matches_the_model(
    batches: list[tuple[list[tuple[str, int, list[Any], str]], bool]],
    fee_per_byte: int,
    a: int,
    b: int,
) -> None:
    accounts = {A: a, B: b}
    rules = ChainRules(CHAIN_ID, fee_per_byte)
    state, model = DictState(accounts), Model(accounts, fee_per_byte)
    earlier: list[Tx] = []
    for seq, (batch, repeat) in enumerate(batches, start=1):
        txs = [fake_tx(client, nonce, *ops, chain_id=chain) for client, nonce, ops, chain in batch]
        if repeat and earlier:
            txs.append(earlier[seq % len(earlier)])
        earlier.extend(txs)
        results = execute_batch(state, seq, txs, rules)
        expected = [model.apply(seq, i, t) for i, t in enumerate(txs)]
        assert results == expected
        SEEN_CODES.update(r["error"] for r in results)
        assert {k: (e.value, e.version, e.owner) for k, e in state.entries.items()} == model.kv
        assert state.balances == {k: v for k, v in model.balances.items() if v}
        assert state.locations == model.executed
        # Transfers conserve money; only fees leave it.
        assert sum(state.balances.values()) <= a + b


def test_the_model_based_run_reached_every_result_code() -> None:
    """Runs after the property (same module, file order): the generated runs must have produced
    every code the state machine can give a well-formed transaction, and success."""
    if not SEEN_CODES:  # run on its own (e.g. -k): drive the property first
        test_state_machine_matches_the_model()
    expected = set(RESULT_ERRORS) - {MALFORMED} | {None}
    assert expected <= SEEN_CODES, expected - SEEN_CODES
