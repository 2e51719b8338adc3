"""The RFC 9162 Merkle tree (spec §4 tx_root, §5 receipts) against the RFC 6962 reference vectors
and every transparency-dev/merkle inclusion and consistency probe, plus property tests.

The probes under subtreeinclusion/ and subtreeconsistency/ test a newer "subtree" proof API that
Phalanx does not have; they do not apply."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from crypto.merkle import (
    EMPTY_ROOT,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    merkle_root,
    node_hash,
    root_from_inclusion,
    verify_consistency,
    verify_inclusion,
)

INCLUSION_PROBES = 98
CONSISTENCY_PROBES = 98


def _reference(vectors_dir: Path) -> dict[str, Any]:
    path = vectors_dir / "merkle" / "rfc6962_reference_vectors.json"
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def _mth(leaves: Sequence[bytes]) -> bytes:
    """MTH straight from RFC 9162 section 2.1.1, recursively: the oracle for the tests."""
    n = len(leaves)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    k = 1
    while k * 2 < n:
        k *= 2
    return hashlib.sha256(b"\x01" + _mth(leaves[:k]) + _mth(leaves[k:])).digest()


def test_reference_roots_for_sizes_0_to_8(vectors_dir: Path) -> None:
    ref = _reference(vectors_dir)
    leaves = [bytes.fromhex(x) for x in ref["leaf_inputs_hex"]]
    roots = ref["root_hashes_by_size"]
    assert len(roots) == 9
    for size, root in enumerate(roots):
        assert merkle_root(leaves[:size]).hex() == root, size
        assert _mth(leaves[:size]).hex() == root, size
    assert EMPTY_ROOT.hex() == roots[0]


def test_reference_node_hashes_and_hasher(vectors_dir: Path) -> None:
    ref = _reference(vectors_dir)
    leaves = [bytes.fromhex(x) for x in ref["leaf_inputs_hex"]]
    level = [leaf_hash(d) for d in leaves]
    for want in ref["node_hashes_by_level"]:
        assert [h.hex() for h in level] == want
        level = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
    hasher = ref["hasher_vectors"]
    assert EMPTY_ROOT.hex() == hasher[0]["want"]
    assert leaf_hash(b"").hex() == hasher[1]["want"]
    assert leaf_hash(bytes.fromhex(hasher[2]["input_hex"])).hex() == hasher[2]["want"]
    left, right = bytes.fromhex(hasher[3]["left_hex"]), bytes.fromhex(hasher[3]["right_hex"])
    assert node_hash(left, right).hex() == hasher[3]["want"]


def test_reference_inclusion_and_consistency_proofs(vectors_dir: Path) -> None:
    ref = _reference(vectors_dir)
    leaves = [bytes.fromhex(x) for x in ref["leaf_inputs_hex"]]
    for case in ref["inclusion_proofs"]:
        index, size = case["leaf_index_0based"], case["tree_size"]
        proof = inclusion_proof(leaves[:size], index)
        assert [p.hex() for p in proof] == case["proof"]
        root = merkle_root(leaves[:size])
        assert verify_inclusion(leaf_hash(leaves[index]), index, size, proof, root)
    for case in ref["consistency_proofs"]:
        m, n = case["size1"], case["size2"]
        proof = consistency_proof(leaves[:n], m)
        assert [p.hex() for p in proof] == case["proof"]
        assert verify_consistency(m, n, merkle_root(leaves[:m]), merkle_root(leaves[:n]), proof)


def _b64(text: str | None) -> bytes:
    return base64.b64decode(text) if text else b""


def _probes(vectors_dir: Path, kind: str) -> list[tuple[str, dict[str, Any]]]:
    base = vectors_dir / "merkle" / "transparency-dev-merkle-testdata" / kind
    return [
        (str(p.relative_to(base)), json.loads(p.read_text())) for p in sorted(base.rglob("*.json"))
    ]


def test_transparency_dev_inclusion_probes(vectors_dir: Path) -> None:
    probes = _probes(vectors_dir, "inclusion")
    assert len(probes) == INCLUSION_PROBES
    failing = 0
    for name, p in probes:
        proof = [_b64(x) for x in p["proof"] or []]
        ok = verify_inclusion(
            _b64(p["leafHash"]), p["leafIdx"], p["treeSize"], proof, _b64(p["root"])
        )
        assert ok is not p["wantErr"], f"{name}: {p['desc']}"
        failing += p["wantErr"]
    assert 0 < failing < INCLUSION_PROBES  # tamper cases included


def test_transparency_dev_consistency_probes(vectors_dir: Path) -> None:
    probes = _probes(vectors_dir, "consistency")
    assert len(probes) == CONSISTENCY_PROBES
    failing = 0
    for name, p in probes:
        proof = [_b64(x) for x in p["proof"] or []]
        ok = verify_consistency(p["size1"], p["size2"], _b64(p["root1"]), _b64(p["root2"]), proof)
        assert ok is not p["wantErr"], f"{name}: {p['desc']}"
        failing += p["wantErr"]
    assert 0 < failing < CONSISTENCY_PROBES


# -- properties -------------------------------------------------------------------------------

leaf_lists = st.lists(st.binary(min_size=0, max_size=40), min_size=1, max_size=40)


def _tamper(proof: list[bytes], which: int, bit: int) -> list[bytes]:
    i = which % len(proof)
    element = bytearray(proof[i])
    element[bit % 32] ^= 1 << (bit % 8)
    return [*proof[:i], bytes(element), *proof[i + 1 :]]


@settings(max_examples=150, deadline=None)
@given(leaf_lists)
def test_root_matches_the_rfc_definition(leaves: list[bytes]) -> None:
    assert merkle_root(leaves) == _mth(leaves)


@settings(max_examples=100, deadline=None)
@given(leaf_lists, st.integers(0, 10**6), st.integers(0, 255))
def test_inclusion_proof_of_every_leaf_verifies_and_tampering_fails(
    leaves: list[bytes], which: int, bit: int
) -> None:
    n, root = len(leaves), merkle_root(leaves)
    for index, data in enumerate(leaves):
        proof = inclusion_proof(leaves, index)
        leaf = leaf_hash(data)
        assert verify_inclusion(leaf, index, n, proof, root)
        assert root_from_inclusion(leaf, index, n, proof) == root
        if proof:
            assert not verify_inclusion(leaf, index, n, _tamper(proof, which, bit), root)
            assert not verify_inclusion(leaf, index, n, proof[:-1], root)
            assert not verify_inclusion(leaf, index, n, [*proof, root], root)
        assert not verify_inclusion(leaf_hash(data + b"x"), index, n, proof, root)
        if n > 1 and len(set(leaves)) == n:  # with distinct leaves, no other index fits
            assert not verify_inclusion(leaf, (index + 1) % n, n, proof, root)
        assert not verify_inclusion(leaf, index, n, proof, hashlib.sha256(root).digest())


@settings(max_examples=100, deadline=None)
@given(leaf_lists, st.integers(0, 10**6), st.integers(0, 255))
def test_consistency_between_any_sizes_verifies_and_tampering_fails(
    leaves: list[bytes], which: int, bit: int
) -> None:
    n = len(leaves)
    new_root = merkle_root(leaves)
    for m in range(1, n + 1):
        old_root = merkle_root(leaves[:m])
        proof = consistency_proof(leaves, m)
        assert verify_consistency(m, n, old_root, new_root, proof)
        if proof:
            assert not verify_consistency(m, n, old_root, new_root, _tamper(proof, which, bit))
            assert not verify_consistency(m, n, old_root, new_root, proof[:-1])
        if m < n:
            assert not verify_consistency(m, n, new_root, old_root, proof)
            assert not verify_consistency(m, n, old_root, hashlib.sha256(new_root).digest(), proof)
    assert not verify_consistency(0, n, EMPTY_ROOT, new_root, [])
