"""Receipts (spec §6): proof, to anyone holding the genesis, that a transaction was committed at a
position and what its result was.

A receipt is ``{"tx_id", "seq", "index", "proof", "batch", "certificate", "prev_hash", "result",
"result_proof", "execution"}``. It is built by the store from what it keeps
(:func:`build_receipt`) and checked by anyone with :func:`verify_receipt`, which treats the
receipt as untrusted JSON: every field's shape is checked before any cryptography, and every
failure is reported as a sentence. ``execution`` (the block's execution certificate) may be null
for a moment after the commit; such a receipt proves the ordering but not the result, and
:func:`verify_receipt` says so.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from consensus.batch import block_hash, commit_vote_body
from consensus.output import Committed
from crypto.canonical import MAX_SAFE_INTEGER, CanonicalJsonError, check_json_value
from crypto.hashing import hash_object
from crypto.hexcodec import HASH_HEX_LEN, KEY_HEX_LEN, SIGNATURE_HEX_LEN, is_hex
from crypto.merkle import inclusion_proof, leaf_hash, root_from_inclusion
from crypto.signing import TAG_COMMIT, signing_input, verify_bytes
from ledger.execution import (
    certificate_shape,
    result_leaf,
    result_proof,
    verify_execution_certificate,
)
from ledger.genesis import Genesis

RECEIPT_FIELDS = frozenset(
    {
        "tx_id",
        "seq",
        "index",
        "proof",
        "batch",
        "certificate",
        "prev_hash",
        "result",
        "result_proof",
        "execution",
    }
)
BATCH_FIELDS = frozenset({"chain_id", "seq", "time_ms", "tx_count", "tx_root"})
CERTIFICATE_FIELDS = frozenset({"view", "signatures"})
RESULT_FIELDS = frozenset({"ok", "error"})
PROOF_LEN_MAX = 64  # a tree of 2^53 leaves needs at most 53 siblings
RESULT_ERROR_LEN_MAX = 64


def build_receipt(
    tx_id: str,
    seq: int,
    index: int,
    tx_ids: Sequence[bytes],
    batch: Mapping[str, Any],
    certificate: Mapping[str, Any],
    results: Sequence[Mapping[str, Any]],
    prev_hash: str,
    execution: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The receipt of the transaction at ``index`` of the batch at ``seq``.

    ``tx_ids`` are the raw 32-byte ids of the whole batch, in order, and ``results`` their
    results; ``batch`` is the header, ``certificate`` the commit certificate in wire form,
    ``prev_hash`` the previous block's hash and ``execution`` the block's execution certificate
    (None while it is not complete).
    """
    if tx_ids[index].hex() != tx_id:
        raise ValueError(f"tx {tx_id} is not at index {index} of seq {seq}")
    hex_ids = [t.hex() for t in tx_ids]
    return {
        "tx_id": tx_id,
        "seq": seq,
        "index": index,
        "proof": [p.hex() for p in inclusion_proof(tx_ids, index)],
        "batch": dict(batch),
        "certificate": {"view": certificate["view"], "signatures": dict(certificate["signatures"])},
        "prev_hash": prev_hash,
        "result": dict(results[index]),
        "result_proof": result_proof(hex_ids, results, index),
        "execution": None if execution is None else _execution_wire(execution),
    }


def _execution_wire(execution: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "state_root": execution["state_root"],
        "results_root": execution["results_root"],
        "signatures": dict(execution["signatures"]),
    }


def verify_certificate(
    genesis: Genesis, seq: int, digest: str, certificate: Mapping[str, Any]
) -> list[str]:
    """Check that ``certificate`` (wire form, shape already checked) holds at least q valid commit
    votes for ``(seq, certificate.view, digest)`` from distinct genesis validators."""
    body = commit_vote_body(genesis.chain_id, seq, certificate["view"], digest)
    message = signing_input(TAG_COMMIT, body)
    valid = 0
    failures: list[str] = []
    for pubkey, signature in certificate["signatures"].items():
        if not genesis.is_validator(pubkey):
            failures.append(f"certificate signer {pubkey} is not a genesis validator")
        elif not verify_bytes(pubkey, message, signature):
            failures.append(f"certificate signature by {pubkey} does not verify")
        else:
            valid += 1
    if valid < genesis.q:
        failures.append(f"certificate holds {valid} valid commit votes; a quorum is {genesis.q}")
    # Spec v2 §4: strict; one invalid or foreign entry makes the certificate invalid.
    return failures


def verify_committed(genesis: Genesis, committed: Committed) -> list[str]:
    """Check a committed batch (from a peer, during state transfer) against the genesis."""
    batch = committed.batch
    failures: list[str] = []
    if batch.chain_id != genesis.chain_id:
        failures.append(f"batch chain_id {batch.chain_id!r} is not {genesis.chain_id!r}")
    certificate = committed.certificate.to_wire()
    failures.extend(_certificate_shape(certificate))
    if failures:
        return failures
    return verify_certificate(genesis, batch.seq, batch.digest, certificate)


def verify_receipt(receipt: Any, genesis: Genesis) -> list[str]:
    """All the reasons ``receipt`` does not prove its transaction's commitment; empty if valid."""
    failures = _receipt_shape(receipt)
    if failures:
        return failures
    batch = receipt["batch"]
    if batch["chain_id"] != genesis.chain_id:
        failures.append(f"batch.chain_id {batch['chain_id']!r} is not {genesis.chain_id!r}")
    if batch["seq"] != receipt["seq"]:
        failures.append(f"batch.seq {batch['seq']} differs from seq {receipt['seq']}")
    if receipt["index"] >= batch["tx_count"]:
        failures.append(f"index {receipt['index']} is outside a batch of {batch['tx_count']}")
    else:
        root = root_from_inclusion(
            leaf_hash(bytes.fromhex(receipt["tx_id"])),
            receipt["index"],
            batch["tx_count"],
            [bytes.fromhex(p) for p in receipt["proof"]],
        )
        if root is None:
            failures.append("proof is not a valid inclusion path for index in batch.tx_count")
        elif root.hex() != batch["tx_root"]:
            failures.append("proof does not lead from tx_id to batch.tx_root")
    digest = hash_object(batch)
    failures.extend(verify_certificate(genesis, batch["seq"], digest, receipt["certificate"]))
    failures.extend(_verify_result(receipt, genesis, digest))
    return failures


def _verify_result(receipt: Mapping[str, Any], genesis: Genesis, digest: str) -> list[str]:
    """The result's leaf leads to the execution certificate's results_root, which q validators
    signed for this block (spec §6)."""
    execution = receipt["execution"]
    if execution is None:
        return [
            "execution is null: the block's execution certificate is not complete yet, so the "
            "result is not proven; fetch the receipt again in a moment"
        ]
    failures = certificate_shape(execution)
    if failures:
        return failures
    batch = receipt["batch"]
    if receipt["index"] < batch["tx_count"]:
        root = root_from_inclusion(
            leaf_hash(result_leaf(receipt["tx_id"], receipt["result"])),
            receipt["index"],
            batch["tx_count"],
            [bytes.fromhex(p) for p in receipt["result_proof"]],
        )
        if root is None:
            failures.append("result_proof is not a valid inclusion path for index")
        elif root.hex() != execution["results_root"]:
            failures.append("result_proof does not lead from {tx_id, result} to results_root")
    block = block_hash(batch["seq"], receipt["prev_hash"], digest)
    failures.extend(verify_execution_certificate(genesis, batch["seq"], block, execution))
    return failures


def _receipt_shape(receipt: Any) -> list[str]:
    if not isinstance(receipt, Mapping):
        return ["a receipt must be a JSON object"]
    try:
        check_json_value(dict(receipt))
    except (CanonicalJsonError, RecursionError) as exc:
        return [f"receipt is not a Phalanx JSON value: {exc}"]
    failures = _fields(receipt, RECEIPT_FIELDS, "receipt")
    if failures:
        return failures
    if not is_hex(receipt["tx_id"], HASH_HEX_LEN):
        failures.append(f"tx_id must be {HASH_HEX_LEN} lowercase hex characters")
    if not _is_int(receipt["seq"], 1):
        failures.append("seq must be a positive integer")
    if not _is_int(receipt["index"], 0):
        failures.append("index must be a non-negative integer")
    for name in ("proof", "result_proof"):
        proof = receipt[name]
        if not isinstance(proof, list) or len(proof) > PROOF_LEN_MAX:
            failures.append(f"{name} must be a list of at most {PROOF_LEN_MAX} hashes")
        elif not all(is_hex(p, HASH_HEX_LEN) for p in proof):
            failures.append(f"each {name} hash must be {HASH_HEX_LEN} lowercase hex characters")
    if not is_hex(receipt["prev_hash"], HASH_HEX_LEN):
        failures.append(f"prev_hash must be {HASH_HEX_LEN} lowercase hex characters")
    failures.extend(_batch_shape(receipt["batch"]))
    failures.extend(_certificate_shape(receipt["certificate"]))
    failures.extend(_result_shape(receipt["result"]))
    return failures


def _batch_shape(batch: Any) -> list[str]:
    if not isinstance(batch, Mapping):
        return ["batch must be an object"]
    failures = _fields(batch, BATCH_FIELDS, "batch")
    if failures:
        return failures
    if not isinstance(batch["chain_id"], str):
        failures.append("batch.chain_id must be a string")
    for name, low in (("seq", 1), ("time_ms", 0), ("tx_count", 0)):
        if not _is_int(batch[name], low):
            failures.append(f"batch.{name} must be an integer >= {low}")
    if not is_hex(batch["tx_root"], HASH_HEX_LEN):
        failures.append(f"batch.tx_root must be {HASH_HEX_LEN} lowercase hex characters")
    return failures


def _certificate_shape(certificate: Any) -> list[str]:
    if not isinstance(certificate, Mapping):
        return ["certificate must be an object"]
    failures = _fields(certificate, CERTIFICATE_FIELDS, "certificate")
    if failures:
        return failures
    if not _is_int(certificate["view"], 0):
        failures.append("certificate.view must be a non-negative integer")
    signatures = certificate["signatures"]
    if not isinstance(signatures, Mapping):
        failures.append("certificate.signatures must be an object")
    elif not all(
        is_hex(k, KEY_HEX_LEN) and is_hex(v, SIGNATURE_HEX_LEN) for k, v in signatures.items()
    ):
        failures.append(
            "certificate.signatures must map validator public keys (64 hex) to signatures (128 hex)"
        )
    return failures


def _result_shape(result: Any) -> list[str]:
    if not isinstance(result, Mapping) or set(result) != RESULT_FIELDS:
        return ['result must be {"ok": true, "error": null} or {"ok": false, "error": "<code>"}']
    ok, error = result["ok"], result["error"]
    if ok is True and error is None:
        return []
    if ok is False and isinstance(error, str) and 0 < len(error) <= RESULT_ERROR_LEN_MAX:
        return []
    return ['result must be {"ok": true, "error": null} or {"ok": false, "error": "<code>"}']


def _fields(obj: Mapping[str, Any], expected: frozenset[str], what: str) -> list[str]:
    failures = []
    missing = expected - obj.keys()
    if missing:
        failures.append(f"{what} lacks field(s) {', '.join(sorted(missing))}")
    unknown = obj.keys() - expected
    if unknown:
        failures.append(f"{what} has unknown field(s) {', '.join(sorted(map(str, unknown)))}")
    return failures


def _is_int(value: Any, low: int) -> bool:
    return (
        isinstance(value, int) and not isinstance(value, bool) and low <= value <= MAX_SAFE_INTEGER
    )
