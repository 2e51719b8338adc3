"""The spec §5 state tree: shared vectors, incremental updates against a from-scratch reference,
proofs checked by the project's verifier and by an independent one, and tamper detection."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger.state_tree import (
    EMPTY,
    MemoryNodeStore,
    StateTree,
    balance_leaf_data,
    balance_path,
    data_hash,
    kv_leaf_data,
    kv_path,
    proof_from_wire,
    verify_proof,
)
from tests.ledger import spec_verifier
from tests.ledger.spec_verifier import jcs, sha

OWNER_A = "6e73bff1d94b0a7500145be82722e7455dba1653e9b56eeaa043c5980aed376f"
OWNER_B = "11e85b7770ec43e8023b771be2b334b0e5543cd2f8d98aee3c8f09364bc10fb2"


def reference_root(entries: dict[bytes, bytes]) -> bytes:
    """The spec's recursive definition, straight: no storage, no incremental anything."""

    def subtree(depth: int, items: list[tuple[bytes, bytes]]) -> bytes:
        if not items:
            return bytes(32)
        if len(items) == 1:
            p, dh = items[0]
            return sha(b"\x00" + p + dh)
        left = [e for e in items if spec_verifier.path_bit(e[0], depth) == 0]
        right = [e for e in items if spec_verifier.path_bit(e[0], depth) == 1]
        return sha(b"\x01" + subtree(depth + 1, left) + subtree(depth + 1, right))

    return subtree(0, sorted(entries.items()))


def _vectors(vectors_dir: Path) -> list[dict[str, Any]]:
    doc = json.loads((vectors_dir / "state-tree" / "vectors.json").read_text())
    cases: list[dict[str, Any]] = doc["cases"]
    assert len(cases) >= 5
    return cases


def _case_changes(case: dict[str, Any]) -> dict[bytes, bytes | None]:
    changes: dict[bytes, bytes | None] = {}
    for e in case["kv"]:
        data = kv_leaf_data(e["key"], e["value"], e["version"], e["owner"])
        changes[kv_path(e["key"])] = data_hash(data)
    for b in case["balances"]:
        changes[balance_path(b["pubkey"])] = data_hash(balance_leaf_data(b["pubkey"], b["balance"]))
    return changes


def _read_claim(read: dict[str, Any]) -> tuple[bytes, bytes | None]:
    if read["kind"] == "kv":
        if not read["present"]:
            return kv_path(read["key"]), None
        data = kv_leaf_data(read["key"], read["value"], read["version"], read["owner"])
        return kv_path(read["key"]), data_hash(data)
    if read["balance"] == 0:
        return balance_path(read["pubkey"]), None
    return balance_path(read["pubkey"]), data_hash(
        balance_leaf_data(read["pubkey"], read["balance"])
    )


def test_vectors_roots_and_proofs(vectors_dir: Path) -> None:
    for case in _vectors(vectors_dir):
        tree = StateTree(MemoryNodeStore())
        root = tree.update(_case_changes(case))
        assert root.hex() == case["state_root"], case["name"]
        # Inserting one entry at a time must reach the same root (incremental path).
        one_by_one = StateTree(MemoryNodeStore())
        for path, value in _case_changes(case).items():
            one_by_one.update({path: value})
        assert one_by_one.root() == root, case["name"]
        for read in case["reads"]:
            path, claimed = _read_claim(read)
            assert path.hex() == read["path"]
            found = tree.lookup(path)
            assert found.data_hash == claimed, (case["name"], read)
            # "A proof is one valid proof, the one the compressed tree gives": ours is that one.
            assert found.proof.to_wire() == read["state_proof"], (case["name"], read)
            assert verify_proof(path, claimed, proof_from_wire(read["state_proof"]), root)
            answer = {k: read[k] for k in ("key", "value", "version", "owner") if k in read}
            if read["kind"] == "balance":
                answer = {"pubkey": read["pubkey"], "balance": read["balance"]}
            assert spec_verifier.state_proof_ok(answer, read["state_proof"], case["state_root"])


def test_vectors_tampered_reads_fail(vectors_dir: Path) -> None:
    """Changing any field of a vector's answer, or claiming absence of a present entry, fails."""
    checked = 0
    for case in _vectors(vectors_dir):
        root = bytes.fromhex(case["state_root"])
        for read in case["reads"]:
            for tampered in _tampered_reads(read):
                path, claimed = _read_claim(tampered)
                proof = proof_from_wire(tampered["state_proof"])
                assert not verify_proof(path, claimed, proof, root), (case["name"], tampered)
                checked += 1
    assert checked > 100


def _tampered_reads(read: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if read["kind"] == "kv":
        present = read["present"]
        if present:
            # (For an absence, another absent key may well be proven by the same proof.)
            out.append({**read, "key": read["key"] + "x"})
            out.append({**read, "value": [read["value"]]})
            out.append({**read, "version": read["version"] + 1})
            out.append({**read, "owner": OWNER_B if read["owner"] != OWNER_B else OWNER_A})
            out.append({**read, "present": False, "value": None, "version": 0, "owner": None})
        else:
            out.append({**read, "present": True, "value": 1, "version": 1, "owner": OWNER_A})
    else:
        out.append({**read, "balance": read["balance"] + 1})
        if read["balance"]:
            out.append({**read, "balance": 0})
    proof = read["state_proof"]
    for i in range(len(proof["siblings"])):
        siblings = list(proof["siblings"])
        siblings[i] = _flip_hex(siblings[i])
        out.append({**read, "state_proof": {**proof, "siblings": siblings}})
    if proof["siblings"]:
        out.append({**read, "state_proof": {**proof, "siblings": proof["siblings"][:-1]}})
    out.append({**read, "state_proof": {**proof, "siblings": [*proof["siblings"], "00" * 32]}})
    if proof["leaf"] is not None:
        for field in ("path", "data_hash"):
            leaf = {**proof["leaf"], field: _flip_hex(proof["leaf"][field])}
            out.append({**read, "state_proof": {**proof, "leaf": leaf}})
        out.append({**read, "state_proof": {**proof, "leaf": None}})
    return out


def _flip_hex(value: str) -> str:
    raw = bytearray(bytes.fromhex(value))
    raw[-1] ^= 1
    return raw.hex()


# -- property tests against the reference --------------------------------------------------------

_KEYS = [f"k{i}" for i in range(40)]
_PUBKEYS = [sha(f"pk{i}".encode()).hex() for i in range(10)]

_op = st.one_of(
    st.tuples(st.just("set"), st.sampled_from(_KEYS), st.integers(-5, 5)),
    st.tuples(st.just("delete"), st.sampled_from(_KEYS), st.just(0)),
    st.tuples(st.just("cas"), st.sampled_from(_KEYS), st.integers(0, 3)),
    st.tuples(st.just("chown"), st.sampled_from(_KEYS), st.integers(0, 1)),
    st.tuples(st.just("transfer"), st.sampled_from(_PUBKEYS), st.integers(-3, 3)),
)


class _Model:
    """A tiny state (value, version, owner per key; balances) driven by the five op kinds."""

    def __init__(self) -> None:
        self.kv: dict[str, tuple[Any, int, str]] = {}
        self.balances: dict[str, int] = {}

    def apply(self, op: tuple[str, str, int]) -> dict[bytes, bytes | None]:
        kind, name, n = op
        if kind in ("set", "cas"):
            old = self.kv.get(name)
            version = old[1] if old else 0
            if kind == "cas" and version != n:
                return {}
            self.kv[name] = ({"n": n}, version + 1, old[2] if old else OWNER_A)
        elif kind == "delete":
            self.kv.pop(name, None)
        elif kind == "chown":
            if name not in self.kv:
                return {}
            value, version, _ = self.kv[name]
            self.kv[name] = (value, version + 1, (OWNER_A, OWNER_B)[n])
        else:
            self.balances[name] = max(0, self.balances.get(name, 0) + n)
        return {self.path(kind, name): self.data(kind, name)}

    @staticmethod
    def path(kind: str, name: str) -> bytes:
        return balance_path(name) if kind == "transfer" else kv_path(name)

    def data(self, kind: str, name: str) -> bytes | None:
        if kind == "transfer":
            balance = self.balances.get(name, 0)
            return data_hash(balance_leaf_data(name, balance)) if balance else None
        entry = self.kv.get(name)
        return None if entry is None else data_hash(kv_leaf_data(name, *entry))

    def entries(self) -> dict[bytes, bytes]:
        out: dict[bytes, bytes] = {}
        for key in self.kv:
            out[kv_path(key)] = self.data("set", key)  # type: ignore[assignment]
        for pubkey, balance in self.balances.items():
            if balance:
                out[balance_path(pubkey)] = data_hash(balance_leaf_data(pubkey, balance))
        return out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(_op, min_size=1, max_size=12), min_size=1, max_size=12))
def test_incremental_root_equals_rebuild_and_every_proof_verifies(
    blocks: list[list[tuple[str, str, int]]],
) -> None:
    model = _Model()
    store = MemoryNodeStore()
    tree = StateTree(store)
    for block in blocks:
        changes: dict[bytes, bytes | None] = {}
        for op in block:
            changes.update(model.apply(op))
        root = tree.update(changes)
        entries = model.entries()
        assert root == reference_root(entries)
        # A restart reads the same records back: a new tree object over the same store agrees.
        assert StateTree(store).root() == root
        # No stale records: a fresh build over the same entries holds exactly the same ones.
        fresh = MemoryNodeStore()
        StateTree(fresh).update(dict(entries))
        assert dict(store.records) == dict(fresh.records)
    for key in _KEYS:
        _check_read(tree, root, model, "set", key)
    for pubkey in _PUBKEYS:
        _check_read(tree, root, model, "transfer", pubkey)


def _check_read(tree: StateTree, root: bytes, model: _Model, kind: str, name: str) -> None:
    path = model.path(kind, name)
    found = tree.lookup(path)
    claimed = model.data(kind, name)
    assert found.data_hash == claimed
    assert verify_proof(path, claimed, found.proof, root)
    if kind == "transfer":
        answer: dict[str, Any] = {"pubkey": name, "balance": model.balances.get(name, 0)}
    else:
        value, version, owner = model.kv.get(name, (None, 0, None))
        answer = {"key": name, "value": value, "version": version, "owner": owner}
    wire = found.proof.to_wire()
    assert spec_verifier.state_proof_ok(answer, wire, root.hex())
    # Every single-field tamper of the answer or the proof fails the independent verifier.
    for field in answer:
        if field in ("key", "pubkey"):
            if claimed is None:
                continue  # another absent key may well be proven absent by the same proof
            bad = {**answer, field: answer[field] + "0"}
        elif field == "owner":
            bad = {**answer, "owner": OWNER_B if answer["owner"] != OWNER_B else OWNER_A}
        elif field == "value":
            bad = {**answer, "value": {"n": 99}, "version": max(1, answer["version"])}
            bad["owner"] = bad["owner"] or OWNER_A
        else:
            bad = {**answer, field: answer[field] + 1}
            if field == "version" and answer["owner"] is None:
                bad["owner"], bad["value"] = OWNER_A, 0
        assert not spec_verifier.state_proof_ok(bad, wire, root.hex()), (answer, bad)
    for i in range(len(wire["siblings"])):
        siblings = list(wire["siblings"])
        siblings[i] = _flip_hex(siblings[i])
        assert not spec_verifier.state_proof_ok(answer, {**wire, "siblings": siblings}, root.hex())
    if wire["leaf"] is not None:
        for field in ("path", "data_hash"):
            leaf = {**wire["leaf"], field: _flip_hex(wire["leaf"][field])}
            assert not spec_verifier.state_proof_ok(answer, {**wire, "leaf": leaf}, root.hex())


def test_empty_tree_and_delete_everything() -> None:
    tree = StateTree(MemoryNodeStore())
    assert tree.root() == EMPTY
    paths = [kv_path(f"x{i}") for i in range(50)]
    tree.update({p: sha(p) for p in paths})
    assert tree.root() == reference_root({p: sha(p) for p in paths})
    tree.update(dict.fromkeys(paths))
    assert tree.root() == EMPTY
    assert tree.lookup(paths[0]).proof.to_wire() == {"siblings": [], "leaf": None}


def test_large_random_batches_match_reference() -> None:
    rng = random.Random(7)
    tree = StateTree(MemoryNodeStore())
    entries: dict[bytes, bytes] = {}
    for _ in range(20):
        changes: dict[bytes, bytes | None] = {}
        for _ in range(rng.randrange(1, 300)):
            p = kv_path(f"key{rng.randrange(2000)}")
            if rng.random() < 0.3:
                changes[p] = None
                entries.pop(p, None)
            else:
                changes[p] = sha(rng.randbytes(8))
                entries[p] = changes[p]  # type: ignore[assignment]
        assert tree.update(changes) == reference_root(entries)


def test_proof_of_present_entry_cannot_claim_absence_or_use_a_leaf() -> None:
    tree = StateTree(MemoryNodeStore())
    paths = [kv_path(f"y{i}") for i in range(30)]
    tree.update({p: sha(p) for p in paths})
    root = tree.root()
    found = tree.lookup(paths[3])
    assert verify_proof(paths[3], sha(paths[3]), found.proof, root)
    assert not verify_proof(paths[3], None, found.proof, root)
    assert not verify_proof(paths[3], sha(b"other"), found.proof, root)
    # An absence "ending at" the entry itself is refused (leaf.path must differ from the path).
    from ledger.state_tree import StateProof

    selfish = StateProof(found.proof.siblings, (paths[3], sha(paths[3])))
    assert not verify_proof(paths[3], None, selfish, root)


def test_malformed_records_are_reported_as_damage() -> None:
    from ledger.state_tree import StateTreeDamaged

    store = MemoryNodeStore()
    tree = StateTree(store)
    tree.update({kv_path("a"): sha(b"a"), kv_path("b"): sha(b"b")})
    root_pos = next(p for p in store.records if p[:2] == b"\x00\x00")
    store.records[root_pos] = b"X" * 65
    with pytest.raises(StateTreeDamaged):
        tree.root()


def test_spec_verifier_jcs_matches_project_jcs() -> None:
    from crypto.canonical import canonical_json

    value = {"kind": "kv", "key": 'é"\\\n', "value": [1, None, {"b": 2, "a": "ü"}], "owner": "x"}
    assert jcs(value) == canonical_json(value)


_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53) + 1, 2**53 - 1)
    | st.text(alphabet=st.characters(codec="utf-8"), max_size=8),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.text(alphabet=st.characters(codec="utf-8"), max_size=4), children, max_size=4
        )
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(_json_values)
def test_fast_jcs_is_rfc8785(value: Any) -> None:
    """The C-encoder fast path of leaf data equals the exact encoder, also for keys beyond the
    Basic Multilingual Plane (where code-point and UTF-16 orders differ) and escapes."""
    from crypto.canonical import canonical_json
    from ledger.state_tree import fast_jcs

    assert fast_jcs(value) == canonical_json(value)
    assert fast_jcs({"\U0001f600": 1, "\uffff": 2, "a": value}) == canonical_json(
        {"\U0001f600": 1, "\uffff": 2, "a": value}
    )
