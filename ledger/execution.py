"""Execution votes and certificates (spec §5) and the results root.

After executing block ``s`` every validator signs, under ``phalanx/execution/v1``,
``{"chain_id", "seq", "block_hash", "state_root", "results_root"}``. An execution certificate is
``{"state_root", "results_root", "signatures"}`` with at least q entries, every one a valid vote
by a distinct genesis validator over that same object: it is strict, one bad entry makes the
whole certificate invalid (an honest node never builds such a certificate, so accepting one
would only hide a bug or an attack).

``results_root`` is the RFC 9162 tree hash over ``JCS({"tx_id", "result"})`` leaves in batch
order (the same tree as ``tx_root``, other leaves).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from crypto.hexcodec import HASH_HEX_LEN, KEY_HEX_LEN, SIGNATURE_HEX_LEN, is_hex
from crypto.merkle import inclusion_proof, merkle_root
from crypto.signing import TAG_EXECUTION, Signer, signing_input, verify_bytes
from ledger.genesis import Genesis
from ledger.state_tree import fast_jcs

EXECUTION_FIELDS = frozenset({"state_root", "results_root", "signatures"})


def execution_vote_body(
    chain_id: str, seq: int, block_hash: str, state_root: str, results_root: str
) -> dict[str, Any]:
    return {
        "chain_id": chain_id,
        "seq": seq,
        "block_hash": block_hash,
        "state_root": state_root,
        "results_root": results_root,
    }


def result_leaf(tx_id: str, result: Mapping[str, Any]) -> bytes:
    return fast_jcs({"tx_id": tx_id, "result": dict(result)})


def results_root(tx_ids: Sequence[str], results: Sequence[Mapping[str, Any]]) -> str:
    if len(tx_ids) != len(results):
        raise ValueError(f"{len(tx_ids)} tx_ids but {len(results)} results")
    return merkle_root([result_leaf(t, r) for t, r in zip(tx_ids, results, strict=True)]).hex()


def result_proof(
    tx_ids: Sequence[str], results: Sequence[Mapping[str, Any]], index: int
) -> list[str]:
    leaves = [result_leaf(t, r) for t, r in zip(tx_ids, results, strict=True)]
    return [p.hex() for p in inclusion_proof(leaves, index)]


@dataclass(frozen=True)
class ExecutionVote:
    """One validator's signed roots for one executed block."""

    seq: int
    block_hash: str
    state_root: str
    results_root: str
    validator: str
    signature: str

    def roots(self) -> tuple[str, str, str]:
        return self.block_hash, self.state_root, self.results_root

    def body(self, chain_id: str) -> dict[str, Any]:
        return execution_vote_body(
            chain_id, self.seq, self.block_hash, self.state_root, self.results_root
        )

    def verify(self, genesis: Genesis) -> bool:
        if not genesis.is_validator(self.validator):
            return False
        message = signing_input(TAG_EXECUTION, self.body(genesis.chain_id))
        return verify_bytes(self.validator, message, self.signature)

    def to_wire(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "block_hash": self.block_hash,
            "state_root": self.state_root,
            "results_root": self.results_root,
            "validator": self.validator,
            "sig": self.signature,
        }

    @classmethod
    def from_wire(cls, wire: Any) -> ExecutionVote:
        """Decode a peer's vote; ValueError if it is malformed (the signature is not checked)."""
        fields = {"seq", "block_hash", "state_root", "results_root", "validator", "sig"}
        if not isinstance(wire, Mapping) or set(wire) != fields:
            raise ValueError(f"an execution vote is an object with exactly {sorted(fields)}")
        seq = wire["seq"]
        if not isinstance(seq, int) or isinstance(seq, bool) or not 1 <= seq < 2**53:
            raise ValueError("execution vote seq must be a positive integer")
        for name in ("block_hash", "state_root", "results_root"):
            if not is_hex(wire[name], HASH_HEX_LEN):
                raise ValueError(f"execution vote {name} must be 64 lowercase hex characters")
        if not is_hex(wire["validator"], KEY_HEX_LEN):
            raise ValueError("execution vote validator must be 64 lowercase hex characters")
        if not is_hex(wire["sig"], SIGNATURE_HEX_LEN):
            raise ValueError("execution vote sig must be 128 lowercase hex characters")
        return cls(
            seq, wire["block_hash"], wire["state_root"], wire["results_root"],
            wire["validator"], wire["sig"],
        )  # fmt: skip


def sign_execution_vote(
    signer: Signer,
    chain_id: str,
    seq: int,
    block_hash: str,
    state_root: str,
    results_root: str,
) -> ExecutionVote:
    body = execution_vote_body(chain_id, seq, block_hash, state_root, results_root)
    signature = signer.sign(TAG_EXECUTION, body)
    return ExecutionVote(seq, block_hash, state_root, results_root, signer.public_key, signature)


def build_certificate(votes: Sequence[ExecutionVote]) -> dict[str, Any]:
    """The certificate (wire form) of matching votes; ValueError if they do not all match."""
    if not votes:
        raise ValueError("an execution certificate needs votes")
    first = votes[0]
    if any(v.roots() != first.roots() or v.seq != first.seq for v in votes):
        raise ValueError("execution votes for different roots cannot form one certificate")
    return {
        "state_root": first.state_root,
        "results_root": first.results_root,
        "signatures": {v.validator: v.signature for v in votes},
    }


def certificate_shape(execution: Any) -> list[str]:
    """Why ``execution`` (untrusted JSON) is not a well-formed certificate; empty if it is."""
    if not isinstance(execution, Mapping) or set(execution) != EXECUTION_FIELDS:
        return ['execution must be an object with exactly "state_root", "results_root" and '
                '"signatures"']  # fmt: skip
    failures = []
    for name in ("state_root", "results_root"):
        if not is_hex(execution[name], HASH_HEX_LEN):
            failures.append(f"execution.{name} must be 64 lowercase hex characters")
    signatures = execution["signatures"]
    if not isinstance(signatures, Mapping) or not all(
        is_hex(k, KEY_HEX_LEN) and is_hex(v, SIGNATURE_HEX_LEN) for k, v in signatures.items()
    ):
        failures.append(
            "execution.signatures must map validator public keys (64 hex) to signatures (128 hex)"
        )
    return failures


def verify_execution_certificate(
    genesis: Genesis, seq: int, block_hash: str, execution: Any
) -> list[str]:
    """All the reasons ``execution`` is not a valid certificate for block ``(seq, block_hash)``;
    empty if it is. Strict: any foreign or invalid entry fails it, whatever the others."""
    failures = certificate_shape(execution)
    if failures:
        return failures
    body = execution_vote_body(
        genesis.chain_id, seq, block_hash, execution["state_root"], execution["results_root"]
    )
    message = signing_input(TAG_EXECUTION, body)
    signatures = execution["signatures"]
    for pubkey, signature in signatures.items():
        if not genesis.is_validator(pubkey):
            failures.append(f"execution signer {pubkey} is not a genesis validator")
        elif not verify_bytes(pubkey, message, signature):
            failures.append(
                f"execution signature by {pubkey} does not verify for seq {seq}, "
                f"block_hash {block_hash} and these roots"
            )
    if len(signatures) < genesis.q:
        failures.append(
            f"execution certificate holds {len(signatures)} votes; a quorum is {genesis.q}"
        )
    return failures
