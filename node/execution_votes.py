"""Execution votes between validators, execution certificates, and divergence (spec §5).

After the runtime executes a block it calls :meth:`ExecutionVotes.on_executed` with the roots
the ledger computed; this signs an execution vote, broadcasts it as an ``execution-vote`` peer
message and collects the others' votes. When q verified votes agree on ``(block_hash,
state_root, results_root)`` they form the block's execution certificate, which is stored (its own
durable write) and wakes the clients waiting for it (``wait=commit``, proven reads).

Divergence: when q validators certify roots that differ from the ones this node computed for a
block it executed, this node has diverged (non-determinism, a bug, local damage). It stops
signing execution votes, the API stops serving writes and state (503 ``diverged``), the reason
is logged and exposed as :attr:`ExecutionVotes.diverged`, and the conflicting votes are kept.
A validator whose vote conflicts with a certificate is named in the log and a metric.
The divergence (both roots and the q votes) is written to ``DATA_DIR/divergence.json``; while
that file exists the node starts diverged (it never signs from a state known to be wrong): the
operator audits the ledger, resyncs it from an empty data directory, and removes the file.

Peer messages (this implementation's own format)::

    {"type": "execution-vote", "vote": {"seq", "block_hash", "state_root", "results_root",
     "validator", "sig"}, "reply": bool}

A vote must come from its validator's own link. A vote for a block this node has certified
already is answered with this node's vote for it (``reply``: true, never answered again), so a
node that restarted before its certificates were complete collects them again.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crypto.signing import TAG_EXECUTION, Signer
from ledger.execution import ExecutionVote, build_certificate, sign_execution_vote
from ledger.genesis import Genesis
from ledger.store import LedgerStore

EXECUTION_VOTE = "execution-vote"
AHEAD_MAX = 512  # votes accepted for blocks up to this far beyond our head
KEPT_BEHIND = 128  # votes kept this far behind our head (late conflicting votes are named)
RESIGN_ON_START = 64  # at start, re-send our votes for this many uncertified last blocks
EVIDENCE_MAX = 256

_log = logging.getLogger("phalanx.execution")

Roots = tuple[str, str, str]  # block_hash, state_root, results_root


@dataclass
class Divergence:
    """Why this node stopped: its roots for ``seq`` differ from those q others certified."""

    seq: int
    own: Roots
    certified: Roots
    votes: list[dict[str, Any]] = field(default_factory=list)

    def detail(self) -> str:
        return (
            f"block {self.seq}: this node computed state_root {self.own[1]} and results_root "
            f"{self.own[2]} (block_hash {self.own[0]}), but {len(self.votes)} validators "
            f"certified state_root {self.certified[1]} and results_root {self.certified[2]} "
            f"(block_hash {self.certified[0]}); the node stopped signing and serving. Stop it, "
            "run phalanx audit on its data directory, and resync it from an empty one"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "own": dict(zip(("block_hash", "state_root", "results_root"), self.own, strict=True)),
            "certified": dict(
                zip(("block_hash", "state_root", "results_root"), self.certified, strict=True)
            ),
            "votes": self.votes,
        }


class ExecutionVotes:
    """Signs, sends and collects execution votes; builds, stores and serves certificates."""

    def __init__(
        self,
        genesis: Genesis,
        signer: Signer,
        store: LedgerStore,
        broadcast: Callable[[dict[str, Any]], None],
        send: Callable[[str, dict[str, Any]], None],
        on_drop: Callable[[str], None] = lambda reason: None,
        on_conflict: Callable[[str], None] = lambda validator: None,
        on_diverged: Callable[[Divergence], None] = lambda divergence: None,
        record: Path | None = None,
    ) -> None:
        self._genesis = genesis
        self._signer = signer
        self._store = store
        self._broadcast = broadcast
        self._send = send
        self._on_drop = on_drop
        self._on_conflict = on_conflict
        self._on_diverged = on_diverged
        self._votes: dict[int, dict[str, ExecutionVote]] = {}
        self._own: dict[int, Roots] = {}
        self._certified: dict[int, Roots] = {}
        self._cert_waiters: dict[int, list[asyncio.Future[None]]] = {}
        self._exec_waiters: list[tuple[int, asyncio.Future[None]]] = []
        self.diverged: Divergence | None = None
        self.evidence: list[dict[str, Any]] = []
        self.conflicting: dict[str, int] = {}  # validator -> conflicting votes seen
        self._named: set[tuple[int, str]] = set()
        self._record = record
        if record is not None and record.exists():
            self._diverge(_load_divergence(record), write=False)

    # -- the runtime's side -----------------------------------------------------------------

    def start(self) -> None:
        """Re-send our votes for the last blocks without a certificate (lost at a restart)."""
        head = self._store.head()[0]
        for seq in range(max(1, head - RESIGN_ON_START + 1), head + 1):
            if self._store.execution(seq) is None:
                self._executed_from_store(seq)

    def _executed_from_store(self, seq: int) -> None:
        roots = self._store.roots(seq)
        block_hash = self._store.block_hash(seq)
        if roots is not None and block_hash is not None:
            self.on_executed(seq, block_hash, *roots)

    def on_executed(
        self,
        seq: int,
        block_hash: str,
        state_root: str,
        results_root: str,
        certificate: Mapping[str, Any] | None = None,
    ) -> None:
        """Block ``seq`` was executed with these roots. ``certificate``: one that came with the
        block during catch-up, already verified against the genesis; then no vote is sent."""
        own = (block_hash, state_root, results_root)
        self._own[seq] = own
        self._forget_below(seq - KEPT_BEHIND)
        self._wake_executed(seq)
        if certificate is not None:
            certified = (block_hash, certificate["state_root"], certificate["results_root"])
            if certified != own:
                votes = [{"validator": k, "sig": v} for k, v in certificate["signatures"].items()]
                self._diverge(Divergence(seq, own, certified, votes))
            elif seq not in self._certified:
                self._store.put_executions({seq: certificate})
                self._certified[seq] = own
                self._wake_certified(seq)
            return
        if self.diverged is None:
            vote = sign_execution_vote(self._signer, self._genesis.chain_id, seq, *own)
            self._votes.setdefault(seq, {})[vote.validator] = vote
            self._broadcast({"type": EXECUTION_VOTE, "vote": vote.to_wire(), "reply": False})
        self._check(seq)

    def on_message(self, sender: str, wire: Mapping[str, Any]) -> None:
        """A peer's ``execution-vote`` message; bad ones are dropped and counted."""
        try:
            vote = ExecutionVote.from_wire(wire.get("vote"))
        except ValueError:
            self._on_drop("bad_execution_vote")
            return
        if vote.validator != sender:
            self._on_drop("execution_vote_not_from_signer")
            return
        head = self._store.head()[0]
        if not head - KEPT_BEHIND < vote.seq <= head + AHEAD_MAX:
            self._on_drop("execution_vote_out_of_window")
            return
        if not vote.verify(self._genesis):
            self._on_drop("bad_execution_vote_signature")
            return
        if vote.seq in self._certified and wire.get("reply") is not True:
            # The sender may be missing this certificate (it restarted): answer with our vote.
            own = self._own_vote(vote.seq)
            if own is not None:
                self._send(sender, {"type": EXECUTION_VOTE, "vote": own.to_wire(), "reply": True})
        seen = self._votes.setdefault(vote.seq, {})
        earlier = seen.get(vote.validator)
        if earlier is not None and earlier.roots() != vote.roots():
            self._keep_evidence(earlier, vote)
            return
        seen[vote.validator] = vote
        self._check(vote.seq)

    # -- what the API waits for ----------------------------------------------------------------

    async def wait_certified(self, seq: int, timeout_s: float) -> dict[str, Any] | None:
        """Block ``seq``'s execution certificate, waiting up to ``timeout_s`` for it."""
        certificate = self._store.execution(seq)
        if certificate is not None or timeout_s <= 0:
            return certificate
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._cert_waiters.setdefault(seq, []).append(future)
        try:
            await asyncio.wait_for(future, timeout_s)
        except TimeoutError:
            pass
        finally:
            waiting = self._cert_waiters.get(seq, [])
            if future in waiting:
                waiting.remove(future)
            if not waiting:
                self._cert_waiters.pop(seq, None)
        return self._store.execution(seq)

    async def wait_executed(self, seq: int, timeout_s: float) -> bool:
        """Whether block ``seq`` is executed here, waiting up to ``timeout_s``."""
        if self._store.head()[0] >= seq:
            return True
        if timeout_s <= 0:
            return False
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (seq, future)
        self._exec_waiters.append(entry)
        try:
            await asyncio.wait_for(future, timeout_s)
        except TimeoutError:
            pass
        finally:
            if entry in self._exec_waiters:
                self._exec_waiters.remove(entry)
        return self._store.head()[0] >= seq

    # -- internals -------------------------------------------------------------------------------

    def _own_vote(self, seq: int) -> ExecutionVote | None:
        vote = self._votes.get(seq, {}).get(self._signer.public_key)
        if vote is not None or self.diverged is not None:
            return vote
        own = self._own.get(seq)
        if own is None:
            return None
        return sign_execution_vote(self._signer, self._genesis.chain_id, seq, *own)

    def _check(self, seq: int) -> None:
        votes = self._votes.get(seq, {})
        certified = self._certified.get(seq)
        if certified is not None:
            self._name_conflicts(seq, certified)
            return
        groups: dict[Roots, list[ExecutionVote]] = {}
        for vote in votes.values():
            groups.setdefault(vote.roots(), []).append(vote)
        for roots, group in groups.items():
            if len(group) < self._genesis.q:
                continue
            own = self._own.get(seq)
            if own is None:
                return  # not executed here yet: decided when it is
            if own != roots:
                evidence = [v.to_wire() for v in group]
                self._diverge(Divergence(seq, own, roots, evidence))
                return
            group.sort(key=lambda v: v.validator)
            self._store.put_executions({seq: build_certificate(group)})
            self._certified[seq] = roots
            self._wake_certified(seq)
            self._name_conflicts(seq, roots)
            return

    def _name_conflicts(self, seq: int, certified: Roots) -> None:
        for vote in self._votes.get(seq, {}).values():
            if vote.roots() != certified and vote.validator != self._signer.public_key:
                key = (seq, vote.validator)
                if key in self._named:
                    continue
                self._named.add(key)
                self.conflicting[vote.validator] = self.conflicting.get(vote.validator, 0) + 1
                self._on_conflict(vote.validator)
                _log.warning(
                    "execution_vote_conflicts",
                    extra={
                        "seq": seq,
                        "validator": vote.validator,
                        "validator_name": self._genesis.validator_name(vote.validator),
                        "state_root": vote.state_root,
                        "certified_state_root": certified[1],
                    },
                )

    def _diverge(self, divergence: Divergence, write: bool = True) -> None:
        if self.diverged is not None:
            return
        self.diverged = divergence
        if write and self._record is not None:
            try:
                self._record.write_text(json.dumps(divergence.to_json(), indent=2) + "\n")
            except OSError:
                _log.exception("divergence_not_recorded", extra={"path": str(self._record)})
        self._on_diverged(divergence)
        _log.error(
            "execution_diverged", extra={"seq": divergence.seq, "detail": divergence.detail()}
        )

    def _keep_evidence(self, a: ExecutionVote, b: ExecutionVote) -> None:
        """Two different execution votes by one validator for one seq (spec §7 ``execution``)."""
        if len(self.evidence) >= EVIDENCE_MAX:
            return
        chain_id = self._genesis.chain_id
        self.evidence.append(
            {
                "kind": "execution",
                "validator": a.validator,
                "a": {"tag": TAG_EXECUTION, "object": a.body(chain_id), "sig": a.signature},
                "b": {"tag": TAG_EXECUTION, "object": b.body(chain_id), "sig": b.signature},
            }
        )
        _log.warning("execution_equivocation", extra={"seq": a.seq, "validator": a.validator})

    def _wake_certified(self, seq: int) -> None:
        for future in self._cert_waiters.pop(seq, []):
            if not future.done():
                future.set_result(None)

    def _wake_executed(self, seq: int) -> None:
        still = []
        for wanted, future in self._exec_waiters:
            if wanted <= seq:
                if not future.done():
                    future.set_result(None)
            else:
                still.append((wanted, future))
        self._exec_waiters = still

    def _forget_below(self, low: int) -> None:
        # From the front, in insertion order (seqs mostly come in order): one executed block
        # costs what it frees, not a scan of every table (the scan showed in an idle node's
        # profile: it ran at every block).
        # A seq inserted out of order waits behind a later one: the tables stay bounded all the
        # same, within the window of votes taken.
        for table in (self._votes, self._own, self._certified):
            while table:
                seq = next(iter(table))
                if seq >= low:
                    break
                del table[seq]
        if self._named:
            self._named = {k for k in self._named if k[0] >= low}


def _load_divergence(path: Path) -> Divergence:
    """The divergence recorded in ``path``; an unreadable record still means "diverged"."""
    try:
        data = json.loads(path.read_text())
        own = _roots(data["own"])
        certified = _roots(data["certified"])
        return Divergence(int(data["seq"]), own, certified, list(data.get("votes", [])))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return Divergence(0, ("unknown",) * 3, (f"unreadable record {path}: {exc}", "", ""))


def _roots(data: Mapping[str, Any]) -> Roots:
    return str(data["block_hash"]), str(data["state_root"]), str(data["results_root"])
