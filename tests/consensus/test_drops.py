"""Invalid peer input is dropped and counted per (sender, reason), never raised (STYLE:
TigerBeetle's operating errors vs assertions; OSDI'99 §4: messages with bad signatures are
discarded)."""

from __future__ import annotations

import copy
import random
from typing import Any

from consensus.messages import Prepare, sign_message
from crypto.signing import Ed25519Signer
from tests.consensus.harness import CHAIN_ID, Cluster


def _prepare_wire(
    cluster: Cluster, signer: Ed25519Signer, chain_id: str = CHAIN_ID
) -> dict[str, Any]:
    return sign_message(signer, Prepare(chain_id, 0, 1, "aa" * 32)).to_wire()


def test_bad_signature_is_dropped_and_counted() -> None:
    """OSDI'99 §4: all messages are signed; a replica discards one whose signature is wrong."""
    cluster = Cluster()
    wire = _prepare_wire(cluster, cluster.signers[2])
    wire["signature"] = "00" * 64
    output = cluster.inject(1, wire)
    assert output.is_empty
    assert cluster.replica(1).dropped == {(cluster.keys[2], "bad_signature"): 1}


def test_non_validator_is_dropped_and_counted() -> None:
    """Spec §2: validators are identified by their genesis public keys; anyone else is ignored."""
    cluster = Cluster()
    stranger = Ed25519Signer(b"\x99" * 32)
    cluster.inject(1, _prepare_wire(cluster, stranger))
    assert cluster.replica(1).dropped == {(stranger.public_key, "not_validator"): 1}


def test_wrong_chain_and_own_key_are_dropped() -> None:
    """All signed bodies include chain_id; a message under our own key comes from a twin or a
    replay and must not count as a second vote (ARCHITECTURE point 4)."""
    cluster = Cluster()
    cluster.inject(1, _prepare_wire(cluster, cluster.signers[2], chain_id="other-chain"))
    cluster.inject(1, _prepare_wire(cluster, cluster.signers[1]))
    dropped = cluster.replica(1).dropped
    assert dropped[(cluster.keys[2], "wrong_chain")] == 1
    assert dropped[(cluster.keys[1], "own_key")] == 1


def test_malformed_is_dropped_with_its_reason() -> None:
    cluster = Cluster()
    wire = _prepare_wire(cluster, cluster.signers[2])
    wire["seq"] = "one"
    cluster.inject(1, wire)
    cluster.inject(1, {"type": "nonsense"})
    dropped = cluster.replica(1).dropped
    assert dropped[(cluster.keys[2], "malformed:bad_int")] == 1
    assert dropped[("unknown", "malformed:unknown_type")] == 1


def _mangle(value: Any, rng: random.Random) -> Any:
    choices: list[Any] = [None, True, -1, 2**63, 1.5, "", "zz", [], {}, "ab" * 32, [value]]
    if isinstance(value, dict) and value and rng.random() < 0.7:
        key = rng.choice(sorted(value))
        value = dict(value)
        value[key] = _mangle(value[key], rng)
        return value
    if isinstance(value, list) and value and rng.random() < 0.7:
        value = list(value)
        index = rng.randrange(len(value))
        value[index] = _mangle(value[index], rng)
        return value
    return rng.choice(choices)


def test_fuzzed_messages_never_raise() -> None:
    """Whatever a peer sends, on_message returns an Output; nothing escapes the replica."""
    cluster = Cluster(batch_size_max=2)
    cluster.tick()
    cluster.submit([cluster_tx for cluster_tx in _txs()])
    cluster.tick(2)
    samples = [w for _, o in cluster.outputs for s in o.sends for w in [s.message]]
    assert samples
    rng = random.Random(1234)
    for _ in range(400):
        wire = _mangle(copy.deepcopy(rng.choice(samples)), rng)
        cluster.replica(3).on_message(wire)
    assert sum(cluster.replica(3).dropped.values()) > 0


def _txs() -> list[Any]:
    from tests.consensus.harness import make_tx

    return [make_tx(i) for i in range(4)]


def test_unsignable_nested_string_is_dropped() -> None:
    """A lone UTF-16 surrogate cannot be canonical JSON (spec §1), so no signature can cover it:
    a VIEW-CHANGE nesting one is dropped as badly signed, not raised."""
    from consensus.messages import Checkpoint, ViewChange

    cluster = Cluster()
    inner = sign_message(cluster.signers[2], Checkpoint(CHAIN_ID, 128, "cd" * 32))
    vc = ViewChange(CHAIN_ID, 1, 128, "cd" * 32, (inner,), (), cluster.keys[2], "00" * 64)
    wire = vc.to_wire()
    wire["checkpoint_proof"][0]["chain_id"] = "\ud800"
    cluster.inject(1, wire)
    assert cluster.replica(1).dropped[(cluster.keys[2], "bad_signature")] == 1


def test_single_validator_orders_alone() -> None:
    """n = 1: f = 0 and q = 1, so the lone primary prepares, commits and checkpoints by itself."""
    from tests.consensus.harness import make_tx

    cluster = Cluster(n=1, batch_size_max=2, checkpoint_interval=2, watermark_window=4)
    cluster.tick()
    cluster.submit([make_tx(i) for i in range(6)])
    cluster.tick()
    assert cluster.executed(0) == 3
    assert cluster.replica(0).stable_checkpoint == 2
