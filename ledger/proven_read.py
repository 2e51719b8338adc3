"""Proven reads (spec §6): a key's entry or a balance, with the proof that q validators certified
it as of one block.

A proven state read is ``{"key", "value", "version", "owner", "seq", "block_hash", "execution",
"state_proof"}`` (absent: ``value`` null, ``version`` 0, ``owner`` null); a proven balance read
is ``{"pubkey", "balance", "seq", "block_hash", "execution", "state_proof"}`` (absent: 0).
:func:`verify_read` checks one against the genesis alone: the state proof (§5) must lead to the
execution certificate's ``state_root``, and the certificate must hold q valid execution votes
for ``(seq, block_hash)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from crypto.canonical import MAX_SAFE_INTEGER, CanonicalJsonError, check_json_value
from crypto.hexcodec import HASH_HEX_LEN, KEY_HEX_LEN, is_hex
from ledger.execution import verify_execution_certificate
from ledger.genesis import Genesis
from ledger.state_tree import (
    balance_leaf_data,
    balance_path,
    data_hash,
    kv_leaf_data,
    kv_path,
    proof_from_wire,
    root_from_proof,
)

STATE_READ_FIELDS = frozenset(
    {"key", "value", "version", "owner", "seq", "block_hash", "execution", "state_proof"}
)
BALANCE_READ_FIELDS = frozenset(
    {"pubkey", "balance", "seq", "block_hash", "execution", "state_proof"}
)


def read_claim(answer: Mapping[str, Any]) -> tuple[bytes, bytes | None]:
    """The tree path an answer is about and the data hash it claims (None: absent). Expects a
    well-shaped answer (see :func:`read_shape`)."""
    if "key" in answer:
        key = answer["key"]
        if answer["version"] == 0:
            return kv_path(key), None
        data = kv_leaf_data(key, answer["value"], answer["version"], answer["owner"])
        return kv_path(key), data_hash(data)
    pubkey = answer["pubkey"]
    if answer["balance"] == 0:
        return balance_path(pubkey), None
    return balance_path(pubkey), data_hash(balance_leaf_data(pubkey, answer["balance"]))


def read_shape(answer: Any) -> list[str]:
    """Why ``answer`` (untrusted JSON) is not a well-formed proven read; empty if it is."""
    if not isinstance(answer, Mapping):
        return ["a proven read must be a JSON object"]
    try:
        check_json_value(dict(answer))
    except (CanonicalJsonError, RecursionError) as exc:
        return [f"the proven read is not a Phalanx JSON value: {exc}"]
    expected = STATE_READ_FIELDS if "key" in answer else BALANCE_READ_FIELDS
    missing, unknown = expected - answer.keys(), answer.keys() - expected
    failures = []
    if missing:
        failures.append(f"the proven read lacks field(s) {', '.join(sorted(missing))}")
    if unknown:
        failures.append(f"the proven read has unknown field(s) {', '.join(sorted(unknown))}")
    if failures:
        return failures
    if not _is_int(answer["seq"], 1):
        failures.append("seq must be a positive integer")
    if not is_hex(answer["block_hash"], HASH_HEX_LEN):
        failures.append("block_hash must be 64 lowercase hex characters")
    if "key" in answer:
        failures.extend(_entry_shape(answer))
    else:
        if not is_hex(answer["pubkey"], KEY_HEX_LEN):
            failures.append("pubkey must be 64 lowercase hex characters")
        if not _is_int(answer["balance"], 0):
            failures.append("balance must be a non-negative integer")
    return failures


def _entry_shape(answer: Mapping[str, Any]) -> list[str]:
    key, version, owner = answer["key"], answer["version"], answer["owner"]
    failures = []
    if not isinstance(key, str) or not key:
        failures.append("key must be a non-empty string")
    if not _is_int(version, 0):
        failures.append("version must be a non-negative integer")
    elif version == 0 and (answer["value"] is not None or owner is not None):
        failures.append("an absent key (version 0) has value null and owner null")
    elif version > 0 and not is_hex(owner, KEY_HEX_LEN):
        failures.append("owner must be 64 lowercase hex characters")
    return failures


def verify_read(answer: Any, genesis: Genesis) -> list[str]:
    """All the reasons ``answer`` does not prove its entry (or absence); empty if it does."""
    failures = read_shape(answer)
    if failures:
        return failures
    try:
        proof = proof_from_wire(answer["state_proof"])
    except ValueError as exc:
        return [str(exc)]
    failures = verify_execution_certificate(
        genesis, answer["seq"], answer["block_hash"], answer["execution"]
    )
    if failures:
        return failures
    path, claimed = read_claim(answer)
    root = root_from_proof(path, claimed, proof)
    what = "the entry" if claimed is not None else "the absence"
    if root is None:
        return [f"state_proof cannot prove {what} the answer states (its leaf is not allowed)"]
    if root.hex() != answer["execution"]["state_root"]:
        return [f"state_proof does not lead from {what} the answer states to execution.state_root"]
    return []


def _is_int(value: Any, low: int) -> bool:
    return (
        isinstance(value, int) and not isinstance(value, bool) and low <= value <= MAX_SAFE_INTEGER
    )
