"""A real node process with a Byzantine hook on what leaves it (dev/test only).

    python -m tests.adversary.byzantine --behaviour NAME [--seed S] [--record FILE] \
        -m node.cli node run ...

runs the module as ``python -m`` would, after replacing ``PeerNetwork.send`` and
``PeerNetwork.broadcast`` (``node/p2p/peers.py``) with a behaviour that decides what really goes
out. The node itself is unchanged: its replica, ledger and API are the real ones, and it signs
with its own validator key; only the messages it sends are rewritten. Nothing in the node imports
this module, and ``phalanx node run`` has no option that reaches it.

A behaviour is a function ``(out, to, wire)``: ``to`` is the peer a message was sent to (None for
a broadcast) and ``wire`` the message; it sends whatever it likes through ``out`` (the original
methods, and the node's signer to forge *its own* statements). Every equivocation a behaviour
commits is written to ``--record`` as a JSON line ``{"kind", "view", "seq", "to"}``, so a test
can check that each one shows up as evidence on the honest nodes.

==========================  ====================================================================
behaviour                   what leaves the node
==========================  ====================================================================
``honest``                  everything, unchanged (the control)
``silent``                  no consensus message at all (relays and block sync still flow)
``selective``               consensus messages to the first other validator only (sorted keys)
``wrong-digest``            COMMITs and PREPAREs for random digests instead of the real ones
``equivocate-commits``      each COMMIT, then a second COMMIT for the same slot with another
                            digest, both to every peer (evidence kind ``commit``)
``equivocate-prepares``     the same with PREPAREs (evidence kind ``prepare``)
``equivocating-primary``    as primary, each PRE-PREPARE of a non-empty batch goes to half of
                            the peers; the other half get a PRE-PREPARE of another batch (same
                            transactions, batch time + 1 ms) for the same slot; with
                            ``--witness`` the first peer is sent both (kind ``pre_prepare``)
``equivocate-execution``    each execution vote, then one for the same block with another
                            ``state_root`` (kind ``execution``; recorded with view 0)
==========================  ====================================================================
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import runpy
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from consensus.batch import Batch
from consensus.errors import MalformedMessage
from consensus.messages import Commit, Prepare, PrePrepare, decode_message, sign_message
from crypto.signing import Signer
from ledger.execution import ExecutionVote, sign_execution_vote

CONSENSUS_TYPES = frozenset(
    {"pre_prepare", "prepare", "commit", "checkpoint", "view_change", "new_view"}
)


@dataclass
class Out:
    """What a behaviour may use: the real send and broadcast, the node's own signer, the other
    validators (sorted), a seeded random source and the record of equivocations."""

    send: Callable[[str, dict[str, Any]], None]
    broadcast: Callable[[dict[str, Any]], None]
    signer: Signer
    peers: list[str]
    rng: random.Random
    chain_id: str = ""
    witness: bool = False
    record_path: Path | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def to(self, to: str | None, wire: dict[str, Any]) -> None:
        if to is None:
            self.broadcast(wire)
        else:
            self.send(to, wire)

    def record(self, kind: str, view: int, seq: int, to: str | None) -> None:
        if self.record_path is None:
            return
        line = json.dumps({"kind": kind, "view": view, "seq": seq, "to": to}) + "\n"
        with self._lock, self.record_path.open("a") as f:
            f.write(line)

    def digest(self) -> str:
        return self.rng.randbytes(32).hex()


Behaviour = Callable[[Out, "str | None", dict[str, Any]], None]


def honest(out: Out, to: str | None, wire: dict[str, Any]) -> None:
    out.to(to, wire)


def silent(out: Out, to: str | None, wire: dict[str, Any]) -> None:
    if wire.get("type") not in CONSENSUS_TYPES:
        out.to(to, wire)


def selective(out: Out, to: str | None, wire: dict[str, Any]) -> None:
    if wire.get("type") not in CONSENSUS_TYPES:
        out.to(to, wire)
    elif to is None or to == out.peers[0]:
        out.send(out.peers[0], wire)


def _vote(wire: dict[str, Any]) -> Commit | Prepare | None:
    if wire.get("type") not in ("commit", "prepare"):
        return None
    try:
        message = decode_message(wire)
    except MalformedMessage:
        return None
    return message if isinstance(message, Commit | Prepare) else None


def wrong_digest(out: Out, to: str | None, wire: dict[str, Any]) -> None:
    vote = _vote(wire)
    if vote is None:
        out.to(to, wire)
        return
    out.to(to, sign_message(out.signer, dataclasses.replace(vote, digest=out.digest())).to_wire())


def _equivocate_votes(kind: str) -> Behaviour:
    def behave(out: Out, to: str | None, wire: dict[str, Any]) -> None:
        out.to(to, wire)
        vote = _vote(wire)
        if vote is None or wire.get("type") != kind:
            return
        other = dataclasses.replace(vote, digest=out.digest())
        out.to(to, sign_message(out.signer, other).to_wire())
        out.record(kind, vote.view, vote.seq, to)

    return behave


def equivocating_primary(out: Out, to: str | None, wire: dict[str, Any]) -> None:
    if wire.get("type") != "pre_prepare" or to is not None:
        out.to(to, wire)
        return
    try:
        message = decode_message(wire)
    except MalformedMessage:
        out.to(to, wire)
        return
    if not isinstance(message, PrePrepare) or message.batch is None or message.batch.is_null:
        out.to(to, wire)
        return
    batch = message.batch
    twin = Batch(batch.chain_id, batch.seq, batch.time_ms + 1, batch.txs)
    other = sign_message(
        out.signer, PrePrepare(message.chain_id, message.view, message.seq, twin.digest, twin)
    ).to_wire()
    half = len(out.peers) // 2 or 1
    for i, peer in enumerate(out.peers):
        out.send(peer, wire if i < half else other)
    if out.witness:
        out.send(out.peers[0], other)
    out.record("pre_prepare", message.view, message.seq, out.peers[0] if out.witness else None)


def equivocate_execution(out: Out, to: str | None, wire: dict[str, Any]) -> None:
    """Each execution vote, then another for the same block with a different state_root."""
    out.to(to, wire)
    if wire.get("type") != "execution-vote" or wire.get("reply") is True:
        return
    try:
        vote = ExecutionVote.from_wire(wire.get("vote"))
    except ValueError:
        return
    other = sign_execution_vote(
        out.signer, out.chain_id, vote.seq, vote.block_hash, out.digest(), vote.results_root
    )
    out.to(to, {**wire, "vote": other.to_wire()})
    out.record("execution", 0, vote.seq, to)


BEHAVIOURS: dict[str, Behaviour] = {
    "honest": honest,
    "silent": silent,
    "selective": selective,
    "wrong-digest": wrong_digest,
    "equivocate-commits": _equivocate_votes("commit"),
    "equivocate-prepares": _equivocate_votes("prepare"),
    "equivocating-primary": equivocating_primary,
    "equivocate-execution": equivocate_execution,
}


def install(behaviour: Behaviour, seed: int, record: Path | None, witness: bool) -> None:
    """Rewrite what every PeerNetwork made from now on in this process sends."""
    from node.p2p import peers as peers_module

    network = peers_module.PeerNetwork
    original_init = network.__init__
    original_send = network.send
    original_broadcast = network.broadcast

    def init(self: Any, my_signer: Signer, validators: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, my_signer, validators, *args, **kwargs)
        self._chaos_out = Out(
            send=lambda pubkey, wire: original_send(self, pubkey, wire),
            broadcast=lambda wire: original_broadcast(self, wire),
            signer=my_signer,
            peers=sorted(k for k in validators if k != my_signer.public_key),
            rng=random.Random(seed),
            chain_id=self.chain_id,
            witness=witness,
            record_path=record,
        )

    def send(self: Any, pubkey: str, message: dict[str, Any]) -> None:
        behaviour(self._chaos_out, pubkey, message)

    def broadcast(self: Any, message: dict[str, Any]) -> None:
        behaviour(self._chaos_out, None, message)

    network.__init__ = init  # type: ignore[method-assign]
    network.send = send  # type: ignore[method-assign]
    network.broadcast = broadcast  # type: ignore[method-assign]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="tests.adversary.byzantine", description=__doc__)
    parser.add_argument("--behaviour", choices=sorted(BEHAVIOURS), required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--record", type=Path, default=None, help="JSON lines of equivocations")
    parser.add_argument("--witness", action="store_true", help="equivocating-primary: see above")
    parser.add_argument("-m", dest="module", required=True, help="the module to run")
    parser.add_argument("args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    install(BEHAVIOURS[args.behaviour], args.seed, args.record, args.witness)
    sys.argv = [args.module, *args.args]
    runpy.run_module(args.module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
