"""An independent verifier for spec v2 §5-§6, written from the spec text alone.

It imports nothing from the project (only hashlib, json and PyNaCl), so a shared bug between the
project's tree or verifier and this one is unlikely: tests check the project's proofs, receipts
and proven reads with these functions. JCS here is ``json.dumps`` with sorted keys, which equals
RFC 8785 for the values the tests use (no floats, object keys inside the Basic Multilingual Plane).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import nacl.exceptions
import nacl.signing


def jcs(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def path_bit(p: bytes, i: int) -> int:
    return (p[i // 8] >> (7 - i % 8)) & 1


def answer_path_and_data(answer: dict[str, Any]) -> tuple[bytes, bytes | None]:
    """Path and leaf data (None if the answer says absent) of a kv or balance answer."""
    if "key" in answer:
        p = sha(jcs({"kind": "kv", "key": answer["key"]}))
        if answer["value"] is None and answer["version"] == 0 and answer["owner"] is None:
            return p, None
        data = {
            "kind": "kv",
            "key": answer["key"],
            "value": answer["value"],
            "version": answer["version"],
            "owner": answer["owner"],
        }
        return p, jcs(data)
    p = sha(jcs({"kind": "balance", "pubkey": answer["pubkey"]}))
    if answer["balance"] == 0:
        return p, None
    return p, jcs({"kind": "balance", "pubkey": answer["pubkey"], "balance": answer["balance"]})


def state_proof_ok(answer: dict[str, Any], proof: dict[str, Any], state_root: str) -> bool:
    """Spec §5 fold of a state proof for the entry (or absence) ``answer`` states."""
    p, data = answer_path_and_data(answer)
    siblings = [bytes.fromhex(s) for s in proof["siblings"]]
    d = len(siblings)
    if d > 256:
        return False
    leaf = proof["leaf"]
    if data is not None:
        if leaf is not None:
            return False
        h = sha(b"\x00" + p + sha(data))
    elif leaf is None:
        h = bytes(32)
    else:
        other = bytes.fromhex(leaf["path"])
        if other == p or any(path_bit(other, i) != path_bit(p, i) for i in range(d)):
            return False
        h = sha(b"\x00" + other + bytes.fromhex(leaf["data_hash"]))
    for i in reversed(range(d)):
        s = siblings[i]
        h = sha(b"\x01" + h + s) if path_bit(p, i) == 0 else sha(b"\x01" + s + h)
    return h.hex() == state_root


def rfc9162_root_from_path(leaf: bytes, index: int, size: int, path: list[bytes]) -> bytes | None:
    """RFC 9162 §2.1.3.2 with a raw leaf ``leaf`` (hashed here)."""
    if not 0 <= index < size:
        return None
    fn, sn, r = index, size - 1, sha(b"\x00" + leaf)
    for p in path:
        if sn == 0:
            return None
        if fn % 2 == 1 or fn == sn:
            r = sha(b"\x01" + p + r)
            while fn % 2 == 0 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = sha(b"\x01" + r + p)
        fn >>= 1
        sn >>= 1
    return r if sn == 0 else None


def quorum(genesis: dict[str, Any]) -> int:
    n = len(genesis["validators"])
    f = (n - 1) // 3
    return -(-(n + f + 1) // 2)


def signatures_ok(genesis: dict[str, Any], tag: str, body: Any, signatures: dict[str, str]) -> bool:
    """At least q entries, every one a valid vote by a distinct genesis validator (strict)."""
    validators = {v["pubkey"] for v in genesis["validators"]}
    message = tag.encode() + b"\x00" + jcs(body)
    if len(signatures) < quorum(genesis):
        return False
    for pubkey, sig in signatures.items():
        if pubkey not in validators:
            return False
        try:
            nacl.signing.VerifyKey(bytes.fromhex(pubkey)).verify(message, bytes.fromhex(sig))
        except (nacl.exceptions.BadSignatureError, ValueError):
            return False
    return True


def execution_ok(genesis: dict[str, Any], seq: int, block_hash: str, execution: Any) -> bool:
    if not isinstance(execution, dict):
        return False
    body = {
        "chain_id": genesis["chain_id"],
        "seq": seq,
        "block_hash": block_hash,
        "state_root": execution["state_root"],
        "results_root": execution["results_root"],
    }
    return signatures_ok(genesis, "phalanx/execution/v1", body, execution["signatures"])


def receipt_ok(genesis: dict[str, Any], receipt: dict[str, Any]) -> bool:
    """Every check of spec §6 on a v2 receipt."""
    batch = receipt["batch"]
    if batch["chain_id"] != genesis["chain_id"] or batch["seq"] != receipt["seq"]:
        return False
    root = rfc9162_root_from_path(
        bytes.fromhex(receipt["tx_id"]),
        receipt["index"],
        batch["tx_count"],
        [bytes.fromhex(p) for p in receipt["proof"]],
    )
    if root is None or root.hex() != batch["tx_root"]:
        return False
    digest = sha(jcs(batch)).hex()
    cert = receipt["certificate"]
    vote = {"chain_id": genesis["chain_id"], "seq": batch["seq"], "view": cert["view"]}
    if not signatures_ok(
        genesis, "phalanx/commit/v1", {**vote, "digest": digest}, cert["signatures"]
    ):
        return False
    block_hash = sha(
        jcs({"seq": batch["seq"], "prev_hash": receipt["prev_hash"], "digest": digest})
    ).hex()
    leaf = jcs({"tx_id": receipt["tx_id"], "result": receipt["result"]})
    execution = receipt["execution"]
    results_root = rfc9162_root_from_path(
        leaf,
        receipt["index"],
        batch["tx_count"],
        [bytes.fromhex(p) for p in receipt["result_proof"]],
    )
    if results_root is None or results_root.hex() != execution["results_root"]:
        return False
    return execution_ok(genesis, batch["seq"], block_hash, execution)


def proven_read_ok(genesis: dict[str, Any], answer: dict[str, Any]) -> bool:
    """A ``?proof=true`` answer of ``/v1/state/{key}`` or ``/v1/accounts/{pubkey}``."""
    execution = answer["execution"]
    if not execution_ok(genesis, answer["seq"], answer["block_hash"], execution):
        return False
    return state_proof_ok(answer, answer["state_proof"], execution["state_root"])
