"""One PBFT replica (Castro & Liskov, OSDI'99 §4; TOCS 2002) as a pure deterministic state machine.

Inputs are peer messages (``on_message``), client requests (``on_requests``), timer ticks
(``on_tick``) and the results of a state transfer (``on_blocks_fetched``). Each returns an
``Output``: what to persist, then what to send, then what to execute (see ``consensus.output``).
No I/O, no clock, no randomness: the same inputs always give the same outputs.

Vocabulary follows the paper: ``h`` is the stable checkpoint (low watermark), ``h + L`` the high
watermark, ``q`` the quorum (2f + 1 when n = 3f + 1). Peer input that is invalid is dropped and
counted in ``dropped[(sender, reason)]``; a broken internal fact raises ``InvariantViolation``.
"""

from __future__ import annotations

import dataclasses
from collections import Counter, OrderedDict
from collections.abc import Callable, Collection, Iterable, Sequence
from itertools import islice
from typing import Any, TypeVar

from consensus import records as rec
from consensus.batch import Batch, KnownTx, Tx, TxChecker, block_hash, commit_vote_body
from consensus.config import ReplicaConfig
from consensus.errors import InvariantViolation, MalformedMessage, invariant
from consensus.log import Slot
from consensus.messages import (
    BATCH_REQUEST_DIGESTS_MAX,
    BatchRequest,
    BatchResponse,
    Checkpoint,
    Commit,
    Message,
    NewView,
    Prepare,
    PreparedCert,
    PrePrepare,
    ViewChange,
    decode_batch,
    decode_checkpoint,
    decode_message,
    decode_prepared_cert,
    sign_message,
)
from consensus.output import Certificate, Committed, Output, Record, Send, StateTransfer
from consensus.view_change import NewViewPlan, check_view_change, plan_new_view
from crypto.canonical import CanonicalJsonError, canonical_json
from crypto.hashing import sha256
from crypto.hexcodec import KEY_HEX_LEN, is_hex
from crypto.signing import TAG_COMMIT, Signer, Verifier

# Bounds ("put a limit on everything"); past each one, input is dropped and counted.
VIEWS_AHEAD_MAX = 64  # messages for views further ahead than this are ignored
PENDING_TXS_MAX = 200_000  # client requests waiting to be ordered
EARLY_MESSAGES_MAX = 8_192  # normal-case messages for a view whose NEW-VIEW we have not installed
# The early buffer also holds at most this many bytes per sender (messages measured as their
# canonical JSON, ``_early_size``). Only what could become valid is kept: a PRE-PREPARE from
# the primary of its view with a batch within the limits, votes, all for seqs inside the
# current watermarks. So the whole buffer holds at most
#     EARLY_BYTES_BOUND(n) = (n - 1) * EARLY_BYTES_PER_SENDER_MAX      (48 MiB for n = 4),
# and f Byzantine peers pin at most f * EARLY_BYTES_PER_SENDER_MAX (16 MiB each), whatever
# they send; honest messages refused past the cap are retransmitted (``_tick_retransmit``).
EARLY_BYTES_PER_SENDER_MAX = 16 * 1024 * 1024
EARLY_VOTE_BYTES = 512  # what a buffered PREPARE or COMMIT is counted as (its JSON is ~400 B)


def early_bytes_bound(n: int) -> int:
    """The most bytes the early buffer ever holds in a group of ``n`` validators."""
    return (n - 1) * EARLY_BYTES_PER_SENDER_MAX


# Replies are rate-limited per peer (amplification): a peer gets at most this many bytes of
# BATCH-RESPONSEs and NEW-VIEWs per REPLY_WINDOW_TICKS, and our NEW-VIEW at most once per
# (peer, view) per HELP_PERIOD (half the view-change timeout: how often a laggard re-asks).
REPLY_BYTES_PER_WINDOW = 8 * 1024 * 1024
REPLY_WINDOW_TICKS = 10
# Requests that waited a timeout are relayed again every timeout, at most this many per round
# (PBFT §4.4: the client retransmits to every replica; the node that took the request from the
# client stands in for it). A backup whose request timer fires relays once per view at once.
RELAY_ON_TIMEOUT_MAX = 256
VERIFY_CACHE_MAX = 65_536  # good signatures remembered (NEW-VIEW re-checks VIEW-CHANGEs)
DROPPED_KEYS_MAX = 4_096  # distinct (sender, reason) counters
TIMEOUT_DOUBLINGS_MAX = 16
# A backup suspects censorship when its oldest request has waited this many timeouts while the
# primary executed requests that reached us a timeout or more after it. Waiting alone is no
# sign: under a flood every request waits behind the queue, and a primary that orders in
# arrival order must not be deposed for being busy.
CENSORSHIP_TIMEOUTS = 4
BATCH_REFETCH_TICKS = 10  # re-ask for a missing batch this often
LOCAL = "local"  # the "sender" under which problems with local input are counted
STATE_TRANSFER = "state_transfer"

_TX_ARRIVAL = int  # tick at which a pending request arrived
_Vote = TypeVar("_Vote", PrePrepare, Prepare, Commit)
NormalCaseMessage = PrePrepare | Prepare | Commit


class Replica:
    """A PBFT replica. The node and the simulator drive it through exactly this interface:

    * ``on_message(wire)``, ``on_requests(txs)``, ``on_tick(now_ms)``,
      ``on_blocks_fetched(committed)``: each returns an ``Output`` to carry out in order;
    * read-only ``view``, ``primary``, ``is_primary``, ``last_executed_seq``, ``head_hash``,
      ``stable_checkpoint``, ``in_view_change``, ``pending_count``, ``public_key``;
    * ``dropped``: a Counter of (sender, reason) for every peer input that was refused.

    ``records`` are what earlier Outputs asked to persist (see ``consensus.records``);
    ``last_executed_seq`` and ``head_hash`` come from the ledger (None means genesis_hash), and
    so do ``last_exec_time_ms`` (the time of the latest executed non-null batch, so that batch
    times never go back across a restart) and ``executed_batch`` (the batch executed at a seq,
    so that BATCH-REQUESTs for executed seqs are answered after a restart too).
    """

    def __init__(
        self,
        config: ReplicaConfig,
        signer: Signer,
        verifier: Verifier,
        tx_checker: TxChecker,
        committed_among: Callable[[Collection[str]], Collection[str]],
        *,
        records: Sequence[Record] = (),
        last_executed_seq: int = 0,
        head_hash: str | None = None,
        last_exec_time_ms: int = 0,
        executed_batch: Callable[[int], Batch | None] | None = None,
        known_tx: KnownTx | None = None,
    ) -> None:
        self._config = config
        self._signer = signer
        self._verifier = verifier
        self._tx_checker = tx_checker
        self._known_tx = known_tx
        # Which of these tx_ids the ledger holds: asked once per batch or request set, so that
        # the node answers from one read snapshot instead of one per transaction.
        self._committed_among = committed_among
        self._me = signer.public_key
        self.dropped: Counter[tuple[str, str]] = Counter()

        self._view = 0
        self._active = True  # False between sending VIEW-CHANGE and installing NEW-VIEW
        self._last_active_view = 0
        self._slots: dict[int, Slot] = {}
        # Every batch we hold above the stable checkpoint, by digest, whatever its view: one of
        # them may be prepared somewhere and re-proposed by any later NEW-VIEW. Each is also
        # persisted under its own record (``rec.batch_record``) until the stable checkpoint.
        self._batches: dict[str, Batch] = {}
        self._stored_batches: set[str] = set()  # digests with a durable batch record
        self._executed_batch = executed_batch
        self._exec_digests: dict[str, int] = {}  # executed digest -> seq, above the stable seq
        self._tx_seq: dict[str, int] = {}  # tx_id -> seq of the current log's batch holding it
        # Requests in arrival order. OrderedDicts: they are consumed from the front, where a
        # plain dict would leave a growing run of deleted slots to skip on every scan.
        self._pending: OrderedDict[str, tuple[Tx, _TX_ARRIVAL]] = OrderedDict()  # not executed
        self._unbatched: OrderedDict[str, Tx] = OrderedDict()  # pending, in no batch of the log
        self._prepared_certs: dict[int, PreparedCert] = {}  # highest-view certificate per seq
        self._ready: dict[int, tuple[str, Certificate]] = {}  # committed-local, not executed
        self._wanted: dict[str, int] = {}  # missing batch digest -> tick of the last request

        self._last_executed = last_executed_seq
        self._head_hash = config.genesis_hash if head_hash is None else head_hash
        self._exec_hashes: dict[int, str] = {last_executed_seq: self._head_hash}
        self._last_exec_time_ms = last_exec_time_ms
        self._stable_seq = 0
        self._stable_hash = config.genesis_hash
        self._stable_proof: tuple[Checkpoint, ...] = ()
        self._checkpoints: dict[int, dict[str, Checkpoint]] = {}  # inside the window
        self._far_checkpoints: dict[str, Checkpoint] = {}  # latest per sender beyond the window
        self._heads: dict[str, Checkpoint] = {}  # latest head announcement per sender

        self._view_changes: dict[int, dict[str, ViewChange]] = {}
        self._sent_view_change: ViewChange | None = None
        self._sent_new_view: NewView | None = None
        self._early: list[NormalCaseMessage] = []
        self._early_per_sender: Counter[str] = Counter()
        self._early_bytes: Counter[str] = Counter()
        self._early_views: dict[str, int] = {}  # sender -> highest view above ours it voted in
        self._batch_answers: dict[str, int] = {}  # sender -> tick of our last BATCH-RESPONSE
        self._reply_bytes: dict[str, tuple[int, int]] = {}  # sender -> (window start, bytes)
        self._helped: dict[tuple[str, int], int] = {}  # (sender, view) -> tick of our NEW-VIEW
        self._relayed_view = -1  # the view in which we last relayed requests on timeout
        self._relay_cursor: str | None = None  # the last request of an incomplete relay round
        self._timer_restart_tick = 0  # a relay on timeout gives the primary one more timeout
        self._lost_peers: frozenset[str] = frozenset()  # from the node, at every tick
        self._executed_arrival = 0  # latest arrival tick of a request of ours that executed
        self._signed_votes: dict[tuple[str, int, int], str] = {}  # (type, view, seq) -> digest
        self._verified: set[tuple[str, str, str, bytes]] = set()

        self._next_seq = last_executed_seq + 1
        self._now_ms = 0
        self._ticks = 0
        self._progress_tick = 0  # last tick at which something executed (or the view changed)
        self._vc_ticks = 0
        self._vc_started_ticks = 0  # ticks since q VIEW-CHANGEs for our view were in
        self._view_start_tick = 0
        self._lag_ticks = 0
        self._lone_lag_ticks = 0
        self._executed_at_last_tick = last_executed_seq
        self._transfer_sent: tuple[int, int] | None = None  # (seq, tick) of the last request

        self._out = Output()
        self._restore(records)

    # ----------------------------------------------------------------------------------------
    # Read-only state
    # ----------------------------------------------------------------------------------------

    @property
    def view(self) -> int:
        return self._view

    @property
    def primary(self) -> str:
        return self._config.primary(self._view)

    @property
    def is_primary(self) -> bool:
        return self.primary == self._me

    @property
    def last_executed_seq(self) -> int:
        return self._last_executed

    @property
    def head_hash(self) -> str:
        return self._head_hash

    @property
    def stable_checkpoint(self) -> int:
        return self._stable_seq

    @property
    def in_view_change(self) -> bool:
        return not self._active

    @property
    def pending_count(self) -> int:
        return len(self._pending)

    @property
    def public_key(self) -> str:
        return self._me

    @property
    def early_bytes(self) -> int:
        """Bytes held in the early-message buffer (bounded by ``early_bytes_bound(n)``)."""
        return sum(self._early_bytes.values())

    # ----------------------------------------------------------------------------------------
    # Inputs
    # ----------------------------------------------------------------------------------------

    def on_message(self, wire: dict[str, Any]) -> Output:
        """A raw peer message: decode, authenticate, dispatch. Bad input is dropped and counted."""
        self._out = Output()
        message = self._authenticate(wire)
        if message is not None:
            self._dispatch(message)
        return self._take()

    def on_requests(self, txs: Sequence[Tx]) -> Output:
        """Client requests already verified by the caller (OSDI'99 §4.1: the client multicasts,
        so every replica learns the request and backups can time the primary)."""
        self._out = Output()
        fresh = [tx for tx in txs if tx.tx_id not in self._pending]
        committed = self._committed_among([tx.tx_id for tx in fresh]) if fresh else ()
        for tx in fresh:
            if tx.tx_id not in committed:  # each request is ordered at most once
                self._add_request(tx)
        self._try_propose()
        return self._take()

    def on_tick(self, now_ms: int, lost_peers: Iterable[str] = ()) -> Output:
        """One timer tick. ``now_ms`` stamps batches and bounds their times; never safety.
        ``lost_peers``: validators the node had a link to that has been down for a while. If
        the primary is among them and requests wait, a backup asks for the next view at once
        instead of waiting for its request timer. It only sends its own VIEW-CHANGE (the others
        join on f + 1, a new view needs q), so a faulty peer cannot force a view change this
        way and safety never depends on it."""
        self._out = Output()
        self._now_ms = now_ms
        self._ticks += 1
        self._lost_peers = frozenset(lost_peers)
        if self._active:
            self._tick_normal_case()
            self._tick_retransmit()
        else:
            self._tick_view_change()
        self._tick_relay()
        self._tick_state_transfer()
        self._tick_missing_batches()
        self._tick_checkpoint_resend()
        return self._take()

    def on_blocks_fetched(self, committed: Sequence[Committed]) -> Output:
        """Blocks fetched by state transfer (§4.3): accepted in seq order, each with a commit
        certificate of q distinct validators' votes, re-emitted for execution."""
        self._out = Output()
        for block in sorted(committed, key=lambda c: c.batch.seq):
            seq = block.batch.seq
            if seq <= self._last_executed:
                continue
            if seq != self._last_executed + 1:
                self._drop(STATE_TRANSFER, "gap")
                break
            reason = self._check_certificate(block)
            if reason is None and not self._txs_signed(block.batch):
                # The certificate covers the digest, hence the tx_ids but not the signatures.
                reason = "block_with_invalid_tx"
            if reason is not None:
                self._drop(STATE_TRANSFER, reason)
                break
            self._ready.pop(seq, None)
            self._execute(block.batch, block.certificate)
        self._execute_ready()
        self._next_seq = max(self._next_seq, self._last_executed + 1)
        self._try_propose()
        return self._take()

    # ----------------------------------------------------------------------------------------
    # Boundary: decode, authenticate, dispatch
    # ----------------------------------------------------------------------------------------

    def _authenticate(self, wire: dict[str, Any]) -> Message | None:
        try:
            message = decode_message(wire, self._known_tx)
        except MalformedMessage as exc:
            self._drop(_claimed_sender(wire), f"malformed:{exc.reason}")
            return None
        if message.chain_id != self._config.chain_id:
            self._drop(message.sender, "wrong_chain")
        elif not self._config.is_validator(message.sender):
            self._drop(message.sender, "not_validator")
        elif message.sender == self._me:
            # Our own key from outside: a loop, a replay or a twin. A key votes once.
            self._drop(message.sender, "own_key")
        elif not self._verify(message):
            self._drop(message.sender, "bad_signature")
        else:
            return message
        return None

    def _dispatch(self, message: Message) -> None:
        match message:
            case PrePrepare():
                self.on_pre_prepare(message)
            case Prepare():
                self.on_prepare(message)
            case Commit():
                self.on_commit(message)
            case Checkpoint():
                self.on_checkpoint(message)
            case ViewChange():
                self.on_view_change(message)
            case NewView():
                self.on_new_view(message)
            case BatchRequest():
                self.on_batch_request(message)
            case BatchResponse():
                self.on_batch_response(message)

    def _verify(self, message: Message) -> bool:
        """Signature check with a bounded cache of good signatures: the same VIEW-CHANGE and
        prepared certificates are re-checked inside NEW-VIEW, and Ed25519 costs ~70 us."""
        body = message.signed_body()
        try:
            encoded = canonical_json(body)
        except CanonicalJsonError:
            return False  # e.g. a lone surrogate in a nested chain_id: nobody can have signed it
        key = (message.TAG, message.sender, message.signature, sha256(encoded))
        if key in self._verified:
            return True
        if not self._verifier.verify(message.sender, message.TAG, body, message.signature):
            return False
        if len(self._verified) >= VERIFY_CACHE_MAX:
            self._verified.clear()
        self._verified.add(key)
        return True

    def _accepts_view(self, message: PrePrepare | Prepare | Commit) -> bool:
        """§4.2: normal-case messages are accepted only in the current view. Messages for a view
        whose NEW-VIEW we have not installed yet are kept (bounded) and replayed then, so a
        reordered PREPARE does not cost a vote."""
        if message.view < self._view:
            self._drop(message.sender, "stale_view")
            return False
        if message.view > self._view + VIEWS_AHEAD_MAX:
            self._drop(message.sender, "view_too_far")
            return False
        if message.view > self._view or not self._active:
            self._keep_early(message)
            return False
        if not self._in_window(message.seq):
            self._drop(message.sender, "outside_watermarks")
            return False
        return True

    # ----------------------------------------------------------------------------------------
    # Normal case (OSDI'99 §4.2)
    # ----------------------------------------------------------------------------------------

    def on_pre_prepare(self, pre_prepare: PrePrepare) -> None:
        """A backup accepts <PRE-PREPARE, v, n, d> if it is from the primary of its current view
        v, n is between the watermarks, d is the batch's digest, and it has not accepted another
        pre-prepare for (v, n) with a different digest; then it multicasts PREPARE."""
        if not self._accepts_view(pre_prepare):
            return
        sender = pre_prepare.sender
        if sender != self.primary:
            self._drop(sender, "pre_prepare_not_from_primary")
            return
        if pre_prepare.batch is None:
            self._drop(sender, "pre_prepare_without_batch")
            return
        slot = self._slot(pre_prepare.seq)
        if slot.pre_prepare is not None:
            if slot.pre_prepare.digest != pre_prepare.digest:
                self._drop(sender, "equivocation")
            return
        if pre_prepare.seq <= self._last_executed:
            self._drop(sender, "already_executed")
            return
        reason = self._check_batch(pre_prepare.batch)
        if reason is not None:
            self._drop(sender, reason)
            return
        self._accept_pre_prepare(slot, pre_prepare, pre_prepare.batch)
        self._send_prepare(slot)
        self._check_prepared(slot)

    def on_prepare(self, prepare: Prepare) -> None:
        """§4.2: a replica accepts PREPAREs for its view within the watermarks and logs them;
        the primary does not send one (its pre-prepare stands for it)."""
        if not self._accepts_view(prepare):
            return
        if prepare.sender == self.primary:
            self._drop(prepare.sender, "prepare_from_primary")
            return
        slot = self._slot(prepare.seq)
        known = slot.prepares.get(prepare.sender)
        if known is not None:
            if known.digest != prepare.digest:
                self._drop(prepare.sender, "conflicting_prepare")
            return
        slot.prepares[prepare.sender] = prepare
        self._check_prepared(slot)

    def on_commit(self, commit: Commit) -> None:
        """§4.2: COMMITs for the current view within the watermarks are logged; committed-local
        holds once prepared and q matching COMMITs from distinct replicas are in the log."""
        if not self._accepts_view(commit):
            return
        slot = self._slot(commit.seq)
        known = slot.commits.get(commit.sender)
        if known is not None:
            if known.digest != commit.digest:
                self._drop(commit.sender, "conflicting_commit")
            return
        slot.commits[commit.sender] = commit
        self._check_committed(slot)

    def _check_batch(self, batch: Batch) -> str | None:
        """Why an honest backup must not prepare ``batch``, or None (spec §3: never prepare an
        invalid transaction or one already ordered; ARCHITECTURE §8: refuse absurd times)."""
        if len(batch.txs) > self._config.batch_size_max:
            return "batch_too_large"
        if batch.txs and not self._knows_ordered_txs():
            return "ordered_txs_unknown"
        seen: set[str] = set()
        committed = self._committed_among([tx.tx_id for tx in batch.txs]) if batch.txs else ()
        for tx in batch.txs:
            if tx.tx_id in seen:
                return "duplicate_tx_in_batch"
            seen.add(tx.tx_id)
            if tx.tx_id in committed:
                return "tx_already_committed"
            other = self._tx_seq.get(tx.tx_id)
            if other is not None and other != batch.seq:
                return "tx_in_other_batch"
            if not self._tx_checker(tx):
                return "invalid_tx"
        if batch.is_null:
            return None
        if self._now_ms > 0 and abs(batch.time_ms - self._now_ms) > self._config.time_skew_max_ms:
            return "batch_time_skewed"
        low, high = self._time_bounds(batch.seq)
        if not low <= batch.time_ms <= high:
            return "batch_time_not_monotonic"
        return None

    def _knows_ordered_txs(self) -> bool:
        """Whether we can tell every request already ordered: those executed, plus those in the
        batches of the log. Not while a state transfer is due (the stable checkpoint, e.g. one
        adopted from a NEW-VIEW, is above what we executed: the blocks between hold requests we
        never saw batched), nor while a batch of the log is missing. Proposing or preparing
        meanwhile could order a request a second time."""
        return self._last_executed >= self._stable_seq and not self._missing_digests()

    def _txs_signed(self, batch: Batch) -> bool:
        """Every transaction of ``batch`` is well formed and signed by its client (spec §3)."""
        return all(self._tx_checker(tx) for tx in batch.txs)

    def _time_bounds(self, seq: int) -> tuple[int, int]:
        """Batch times never decrease with seq: bounded by the neighbours already accepted."""
        low, high = self._last_exec_time_ms, 2**53 - 1
        for slot in self._slots.values():
            digest = slot.digest
            batch = None if digest is None else self._batches.get(digest)
            if batch is None or batch.is_null or slot.seq == seq:
                continue
            if slot.seq < seq:
                low = max(low, batch.time_ms)
            else:
                high = min(high, batch.time_ms)
        return low, high

    def _accept_pre_prepare(self, slot: Slot, pre_prepare: PrePrepare, batch: Batch | None) -> None:
        invariant(
            slot.pre_prepare is None, f"seq {slot.seq} already pre-prepared in view {slot.view}"
        )
        invariant(
            batch is None or batch.digest == pre_prepare.digest, "batch does not match digest"
        )
        slot.pre_prepare = pre_prepare.without_batch()
        if batch is not None:
            self._remember_batch(batch)
        # The batch has its own record (by digest): the pre-prepare's never carries it, so
        # writing this one again without a batch cannot destroy a stored batch.
        self._persist(
            rec.seq_record(
                slot.seq, rec.PHASE_PRE_PREPARE, "message", pre_prepare.without_batch().to_wire()
            )
        )

    def _store_batch(self, batch: Batch) -> None:
        """Hold ``batch`` in memory and durably (once) until the stable checkpoint passes it."""
        self._batches[batch.digest] = batch
        self._wanted.pop(batch.digest, None)
        if batch.digest not in self._stored_batches and not batch.is_null:
            self._stored_batches.add(batch.digest)
            self._persist(rec.batch_record(batch.seq, batch.digest, batch.to_wire()))

    def _remember_batch(self, batch: Batch) -> None:
        """``batch`` is in the current view's log: its requests are ordered there."""
        self._store_batch(batch)
        for tx in batch.txs:
            self._tx_seq[tx.tx_id] = batch.seq
            self._unbatched.pop(tx.tx_id, None)

    def _send_prepare(self, slot: Slot) -> None:
        if self.is_primary or slot.pre_prepare is None:
            return
        prepare = self._sign_vote(
            Prepare(self._config.chain_id, slot.view, slot.seq, slot.pre_prepare.digest)
        )
        slot.prepares[self._me] = prepare
        self._persist(rec.seq_record(slot.seq, rec.PHASE_PREPARE, "message", prepare.to_wire()))
        self._broadcast(prepare)

    def _check_prepared(self, slot: Slot) -> None:
        """prepared(m, v, n, i): the pre-prepare and q - 1 (2f) matching PREPAREs from distinct
        backups are in the log. Then the replica multicasts COMMIT (§4.2)."""
        if slot.prepared or slot.pre_prepare is None or not self._active:
            return
        prepares = slot.matching_prepares(self._config.primary(slot.view))
        if len(prepares) < self._config.q - 1:
            return
        slot.prepared = True
        cert = PreparedCert(slot.pre_prepare, tuple(prepares))
        self._prepared_certs[slot.seq] = cert
        self._persist(rec.seq_record(slot.seq, rec.PHASE_PREPARED, "certificate", cert.to_wire()))
        commit = self._sign_vote(Commit(self._config.chain_id, slot.view, slot.seq, cert.digest))
        slot.commits[self._me] = commit
        self._persist(rec.seq_record(slot.seq, rec.PHASE_COMMIT, "message", commit.to_wire()))
        self._broadcast(commit)
        self._check_committed(slot)

    def _check_committed(self, slot: Slot) -> None:
        if slot.committed or not slot.prepared:
            return
        votes = slot.matching_commits()
        if len(votes) < self._config.q:
            return
        slot.committed = True
        digest = slot.digest
        invariant(digest is not None, "a committed slot has a pre-prepare")
        if slot.seq > self._last_executed and digest is not None:
            self._ready[slot.seq] = (digest, Certificate(slot.view, votes))
        self._execute_ready()
        self._try_propose()  # an execution made room in the pipeline: send what queued

    # ----------------------------------------------------------------------------------------
    # Execution, strictly in seq order, chaining block hashes (spec §4)
    # ----------------------------------------------------------------------------------------

    def _execute_ready(self) -> None:
        for seq in [s for s in self._ready if s <= self._last_executed]:
            del self._ready[seq]
        while (entry := self._ready.get(self._last_executed + 1)) is not None:
            digest, certificate = entry
            batch = self._batches.get(digest)
            if batch is None:
                self._request_batches([digest])
                return
            del self._ready[self._last_executed + 1]
            self._execute(batch, certificate)

    def _execute(self, batch: Batch, certificate: Certificate) -> None:
        invariant(
            batch.seq == self._last_executed + 1,
            f"executing {batch.seq} after {self._last_executed}",
        )
        self._out.committed.append(Committed(batch, certificate))
        self._exec_digests[batch.digest] = batch.seq
        self._head_hash = block_hash(batch.seq, self._head_hash, batch.digest)
        self._last_executed = batch.seq
        self._progress_tick = self._ticks
        if not batch.is_null:
            self._last_exec_time_ms = max(self._last_exec_time_ms, batch.time_ms)
        for tx in batch.txs:
            waited = self._pending.pop(tx.tx_id, None)
            if waited is not None:
                self._executed_arrival = max(self._executed_arrival, waited[1])
            self._unbatched.pop(tx.tx_id, None)
        if batch.seq % self._config.checkpoint_interval == 0:
            self._exec_hashes[batch.seq] = self._head_hash
            self._send_checkpoint(batch.seq, self._head_hash)

    # ----------------------------------------------------------------------------------------
    # Checkpoints and garbage collection (OSDI'99 §4.3)
    # ----------------------------------------------------------------------------------------

    def _send_checkpoint(self, seq: int, state_hash: str) -> None:
        checkpoint = sign_message(self._signer, Checkpoint(self._config.chain_id, seq, state_hash))
        self._persist(rec.seq_record(seq, rec.PHASE_CHECKPOINT, "message", checkpoint.to_wire()))
        self._broadcast(checkpoint)
        if seq > self._stable_seq:
            self._checkpoints.setdefault(seq, {})[self._me] = checkpoint
            self._try_stabilize(seq)

    def on_checkpoint(self, checkpoint: Checkpoint) -> None:
        """§4.3: CHECKPOINTs are logged until q matching ones from distinct replicas make the
        checkpoint stable. One from far beyond the window tells us we are behind."""
        seq, sender = checkpoint.seq, checkpoint.sender
        if seq % self._config.checkpoint_interval:
            self._on_head(checkpoint)
            return
        if seq <= self._stable_seq:
            return
        if seq > self._stable_seq + self._config.watermark_window:
            known_far = self._far_checkpoints.get(sender)
            if known_far is None or known_far.seq < seq:
                self._far_checkpoints[sender] = checkpoint
            if seq <= self._last_executed:
                # Already executed (blocks fetched before the CHECKPOINTs arrived): the quorum
                # may now make it stable, which moves our window up to where the others are.
                self._try_stabilize(seq)
            self._check_state_transfer()
            return
        votes = self._checkpoints.setdefault(seq, {})
        known = votes.get(sender)
        if known is not None:
            if known.block_hash != checkpoint.block_hash:
                self._drop(sender, "conflicting_checkpoint")
            return
        votes[sender] = checkpoint
        self._try_stabilize(seq)

    def _on_head(self, head: Checkpoint) -> None:
        """A CHECKPOINT between multiples of K announces the sender's executed head (see
        ``_announce_head``). It never becomes stable; f + 1 matching ones from other replicas
        make it a state-transfer target, like checkpoints do."""
        if head.seq <= self._last_executed:
            return
        known = self._heads.get(head.sender)
        if known is None or known.seq <= head.seq:  # the latest counts, even for the same seq
            self._heads[head.sender] = head
        self._check_state_transfer()

    def _try_stabilize(self, seq: int) -> None:
        if seq <= self._stable_seq:
            return
        # Checkpoints that arrived while this seq was beyond our window count now.
        for sender, far in list(self._far_checkpoints.items()):
            if far.seq == seq:
                self._checkpoints.setdefault(seq, {}).setdefault(sender, far)
        by_hash: dict[str, list[Checkpoint]] = {}
        for checkpoint in self._checkpoints.get(seq, {}).values():
            by_hash.setdefault(checkpoint.block_hash, []).append(checkpoint)
        for state_hash, proof in by_hash.items():
            if len(proof) < self._config.q or self._last_executed < seq:
                continue  # not a quorum, or we must first catch up (state transfer)
            mine = self._exec_hashes.get(seq)
            if mine is not None and mine != state_hash:
                # q validators vouch for a history we did not execute: more than f are faulty.
                self._drop(LOCAL, "checkpoint_quorum_disagrees")
                continue
            self._make_stable(seq, state_hash, tuple(sorted(proof, key=lambda c: c.sender)))
            self._try_propose()
            return

    def _make_stable(self, seq: int, state_hash: str, proof: tuple[Checkpoint, ...]) -> None:
        """The checkpoint becomes stable: discard the log up to it and move the watermarks."""
        invariant(
            seq > self._stable_seq, f"stable checkpoint going back from {self._stable_seq} to {seq}"
        )
        self._stable_seq, self._stable_hash, self._stable_proof = seq, state_hash, proof
        self._persist(
            Record(
                rec.KEY_STABLE,
                {
                    "stable_seq": seq,
                    "block_hash": state_hash,
                    "proof": [c.to_wire() for c in proof],
                },
            )
        )
        self._out.discard_below = max(self._out.discard_below or 0, seq)
        self._slots = {s: slot for s, slot in self._slots.items() if s > seq}
        self._ready = {s: entry for s, entry in self._ready.items() if s > seq}
        self._prepared_certs = {s: c for s, c in self._prepared_certs.items() if s > seq}
        self._checkpoints = {s: v for s, v in self._checkpoints.items() if s > seq}
        self._far_checkpoints = {k: c for k, c in self._far_checkpoints.items() if c.seq > seq}
        self._heads = {k: c for k, c in self._heads.items() if c.seq > seq}
        self._exec_hashes = {s: h for s, h in self._exec_hashes.items() if s >= seq}
        self._batches = {d: b for d, b in self._batches.items() if b.seq > seq}
        self._stored_batches &= self._batches.keys()  # the store discards their records too
        self._exec_digests = {d: s for d, s in self._exec_digests.items() if s > seq}
        self._tx_seq = {t: s for t, s in self._tx_seq.items() if s > seq}
        self._signed_votes = {k: d for k, d in self._signed_votes.items() if k[2] > seq}
        self._set_early([m for m in self._early if m.seq > seq])
        self._next_seq = max(self._next_seq, seq + 1)

    # ----------------------------------------------------------------------------------------
    # State transfer (§4.3: a replica that learns of a checkpoint beyond its log fetches it)
    # ----------------------------------------------------------------------------------------

    def _transfer_target(self) -> tuple[int, str, tuple[str, ...]] | None:
        """The highest checkpoint above what we executed that f + 1 distinct validators vouch
        for: at least one of them is honest, so that history is committed. The fetched blocks
        are checked against their commit certificates anyway; f + 1 only avoids chasing a lie."""
        if self._stable_seq > self._last_executed:
            senders = tuple(c.sender for c in self._stable_proof if c.sender != self._me)
            return self._stable_seq, self._stable_hash, senders
        vouchers: dict[tuple[int, str], set[str]] = {}
        claims = self._claims_ahead()
        for checkpoint in claims:
            vouchers.setdefault((checkpoint.seq, checkpoint.block_hash), set()).add(
                checkpoint.sender
            )
        good = [(k, v) for k, v in vouchers.items() if len(v) >= self._config.f + 1]
        if good:
            (best_seq, best_hash), vouching = max(good, key=lambda item: item[0])
            return best_seq, best_hash, tuple(sorted(vouching))
        if not claims or self._lone_lag_ticks < self._config.view_change_timeout_ticks:
            return None
        # Stuck for a whole timeout and no f + 1 agree: maybe a single honest replica is ahead
        # and a faulty one announces a wrong hash (found by the simulator, seeds 26487 and
        # 26604). Try the highest claim, from everyone who claims to be ahead: each fetched
        # block proves itself by its certificate, and peers serve what they have, so a lie
        # costs one fetch per timeout (``_check_state_transfer``), never a wrong block.
        top = max(claims, key=lambda c: (c.seq, c.block_hash))
        return top.seq, top.block_hash, tuple(sorted({c.sender for c in claims}))

    def _claims_ahead(self) -> list[Checkpoint]:
        """Other replicas' checkpoints and head announcements above what we executed."""
        candidates = [c for votes in self._checkpoints.values() for c in votes.values()]
        candidates.extend(self._far_checkpoints.values())
        candidates.extend(self._heads.values())
        return [c for c in candidates if c.seq > self._last_executed and c.sender != self._me]

    def _check_state_transfer(self) -> None:
        target = self._transfer_target()
        if target is None:
            return
        seq, state_hash, peers = target
        beyond_log = seq > self._stable_seq + self._config.watermark_window
        if not beyond_log and self._lag_ticks < 2 and self._stable_seq <= self._last_executed:
            return
        if self._transfer_sent is not None:
            sent_seq, sent_tick = self._transfer_sent
            if sent_seq >= seq and self._ticks - sent_tick < self._config.view_change_timeout_ticks:
                return  # already asked; give the driver time before asking again
        self._transfer_sent = (seq, self._ticks)
        self._out.state_transfer = StateTransfer(seq, state_hash, peers)

    def _tick_state_transfer(self) -> None:
        # Lagging = someone vouches for a checkpoint we have not reached and our execution has
        # not moved for two ticks: messages for the missing seqs were lost or discarded.
        if self._last_executed != self._executed_at_last_tick or self._transfer_target() is None:
            self._lag_ticks = 0
        else:
            self._lag_ticks += 1
        if self._last_executed != self._executed_at_last_tick or not self._claims_ahead():
            self._lone_lag_ticks = 0
        else:
            self._lone_lag_ticks += 1  # someone, maybe a single replica, claims to be ahead
        self._executed_at_last_tick = self._last_executed
        self._check_state_transfer()

    def _check_certificate(self, block: Committed) -> str | None:
        """Spec §4: q valid votes over (chain_id, seq, view, digest) from distinct validators."""
        batch, certificate = block.batch, block.certificate
        if batch.chain_id != self._config.chain_id:
            return "wrong_chain"
        if not isinstance(certificate.view, int) or certificate.view < 0:
            return "bad_certificate_view"
        body = commit_vote_body(batch.chain_id, batch.seq, certificate.view, batch.digest)
        good = sum(
            1
            for key, signature in certificate.signatures.items()
            if self._config.is_validator(key)
            and self._verifier.verify(key, TAG_COMMIT, body, signature)
        )
        return None if good >= self._config.q else "bad_certificate"

    # ----------------------------------------------------------------------------------------
    # The primary: batching and pipelining
    # ----------------------------------------------------------------------------------------

    def _add_request(self, tx: Tx) -> None:
        if tx.tx_id in self._pending:
            return
        if len(self._pending) >= PENDING_TXS_MAX:
            self._drop(LOCAL, "pending_full")
            return
        # Timed until executed, even if a batch in the log already holds it: that batch may
        # never commit, and the timer is what replaces a primary that stalls it.
        self._pending[tx.tx_id] = (tx, self._ticks)
        if tx.tx_id not in self._tx_seq:
            self._unbatched[tx.tx_id] = tx

    def _try_propose(self) -> None:
        """§4.2 with adaptive batching: a full batch goes out while the pipeline has room
        (fewer than pipeline_depth_max batches in flight, all within [h, h + L]); a partial one
        only while fewer than partial_in_flight_max are in flight. So an idle primary proposes
        a request at once, and what arrives while batches are in flight waits for the next
        execution and goes out together: no request waits for a tick, batches grow with the
        load by themselves, and a moderate load does not pay a whole round of signed messages
        per request."""
        if not (self._active and self.is_primary):
            return
        if not self._knows_ordered_txs():
            return
        while self._unbatched and self._now_ms > 0:
            if self._next_seq > self._stable_seq + self._config.watermark_window:
                return
            in_flight = self._next_seq - 1 - self._last_executed
            if in_flight >= self._config.pipeline_depth_max:
                return
            txs, full = self._next_batch_txs()
            if not txs or not (full or in_flight < self._config.partial_in_flight_max):
                return
            self._propose(txs)

    def _next_batch_txs(self) -> tuple[list[Tx], bool]:
        """The oldest requests not yet ordered, at most batch_size_max of them and (but for a
        single larger one) at most batch_bytes_max bytes, and whether that batch is full.
        Requests found already ordered (in the ledger, or in a batch of the log) leave the
        queue on the way."""
        while self._unbatched:
            candidates = list(islice(self._unbatched.items(), self._config.batch_size_max))
            committed = self._committed_among([tx_id for tx_id, _ in candidates])
            txs: list[Tx] = []
            size = 0
            for tx_id, tx in candidates:
                if tx_id in committed or tx_id in self._tx_seq:
                    del self._unbatched[tx_id]
                    if tx_id in committed:
                        self._pending.pop(tx_id, None)
                    continue
                if txs and size + tx.size > self._config.batch_bytes_max:
                    return txs, True
                txs.append(tx)
                size += tx.size
            if txs:
                return txs, len(txs) >= self._config.batch_size_max
        return [], False

    def _propose(self, txs: list[Tx]) -> None:
        seq = self._next_seq
        self._next_seq += 1
        slot = self._slot(seq)
        time_ms = max(self._now_ms, self._time_bounds(seq)[0])
        batch = Batch(self._config.chain_id, seq, time_ms, tuple(txs))
        pre_prepare = self._sign_vote(
            PrePrepare(self._config.chain_id, self._view, seq, batch.digest, batch)
        )
        self._accept_pre_prepare(slot, pre_prepare, batch)
        self._broadcast(pre_prepare)
        self._check_prepared(slot)

    # ----------------------------------------------------------------------------------------
    # Timers
    # ----------------------------------------------------------------------------------------

    def _timeout_ticks(self) -> int:
        """§4.5.2: if a view change fails, the next timeout is twice as long."""
        doublings = max(0, self._view - self._last_active_view - 1)
        return self._config.view_change_timeout_ticks << min(doublings, TIMEOUT_DOUBLINGS_MAX)

    def _tick_normal_case(self) -> None:
        if self.is_primary:
            # Requests that came before our first tick (no clock to stamp a batch yet).
            self._try_propose()
            return
        if self._pending and self.primary in self._lost_peers:
            self._start_view_change(self._view + 1)  # no relay: the primary cannot receive it
            return
        if self._request_timer_expired():
            if self._relay_stale_requests():
                return  # the primary may simply never have heard of them: one more timeout
            self._start_view_change(self._view + 1)

    def _relay_stale_requests(self) -> bool:
        """PBFT §4.4: a backup forwards a request whose timer fired, since the primary may never
        have received it (the client or the node's one-shot relay reached us alone). Once per
        view, at most RELAY_ON_TIMEOUT_MAX requests, and it buys the primary one more timeout
        (once per view, so a primary that stalls cannot keep the timer from firing); True if
        something was relayed."""
        if self._relayed_view == self._view:
            return False
        if not self._relay_round(self._timeout_ticks(), self._view_start_tick):
            return False
        self._relayed_view = self._view
        self._timer_restart_tick = self._ticks
        return True

    def _tick_relay(self) -> None:
        """Every timeout, relay requests that waited a timeout, whatever our view state. The
        node's first relay of a request may have been dropped (a busy peer sheds relays), and a
        backup whose timer then fires may be alone in asking for a view change: without this,
        a request only it holds would wait there forever (seen in a 50,000-tx flood: 732
        accepted transactions, known to one node stuck in a view change, never committed)."""
        period = self._config.view_change_timeout_ticks
        if self._pending and self._ticks % period == 0:
            self._relay_round(period, 0)

    def _relay_round(self, waited_min: int, since_tick: int) -> bool:
        """Relay, oldest first, up to RELAY_ON_TIMEOUT_MAX requests that waited ``waited_min``
        ticks (counted from ``since_tick`` at the earliest). A round that hits the cap leaves a
        cursor, and the next round goes on after it, so every stale request gets its turn; True
        if something was relayed."""
        cursor = self._relay_cursor if self._relay_cursor in self._pending else None
        stale: list[Tx] = []
        for tx_id, (tx, arrival) in self._pending.items():
            if self._ticks - max(arrival, since_tick) < waited_min:
                break  # in arrival order: the rest waited less
            if cursor is not None:
                cursor = None if tx_id == cursor else cursor
                continue
            stale.append(tx)
            if len(stale) >= RELAY_ON_TIMEOUT_MAX:
                break
        self._relay_cursor = stale[-1].tx_id if len(stale) >= RELAY_ON_TIMEOUT_MAX else None
        self._out.relay.extend(stale)
        return bool(stale)

    def _tick_retransmit(self) -> None:
        """The paper assumes lost messages are retransmitted. When execution has stalled for half
        a timeout, resend what we signed for the stalled seqs of this view (the primary with its
        batch); receivers ignore duplicates, so this is safe and bounded by the window."""
        period = max(1, self._config.view_change_timeout_ticks // 2)
        if self._ticks - self._progress_tick < period or self._ticks % period:
            return
        for seq in sorted(self._slots):
            slot = self._slots[seq]
            if seq <= self._last_executed or slot.view != self._view or slot.pre_prepare is None:
                continue
            batch = self._batches.get(slot.pre_prepare.digest)
            if self.is_primary and batch is not None:
                self._broadcast(dataclasses.replace(slot.pre_prepare, batch=batch))
            for own in (slot.prepares.get(self._me), slot.commits.get(self._me)):
                if own is not None:
                    self._broadcast(own)

    def _request_timer_expired(self) -> bool:
        """§4.4: a backup waiting to execute a request starts a timer; it expires when the oldest
        request has waited a timeout with no execution meanwhile, or several timeouts while
        requests that came a timeout later were executed (so a primary that orders other
        requests cannot censor one forever, and one that is merely busy is not deposed)."""
        if not self._pending:
            return False
        _, arrival = next(iter(self._pending.values()))
        waited = self._ticks - max(arrival, self._view_start_tick)
        timeout = self._timeout_ticks()
        since = max(self._progress_tick, self._view_start_tick, self._timer_restart_tick)
        stalled = self._ticks - since >= timeout
        overtaken = self._executed_arrival - arrival >= timeout
        censored = overtaken and waited >= CENSORSHIP_TIMEOUTS * timeout
        return waited >= timeout and (stalled or censored)

    def _tick_view_change(self) -> None:
        """§4.4: the view-change timer starts once q VIEW-CHANGEs for the view are in; if it
        expires before a valid NEW-VIEW, move on to the next view (with a doubled timeout).
        Meanwhile our own VIEW-CHANGE is re-sent now and then, in case it was lost."""
        self._vc_ticks += 1
        # Resend halfway through the timeout, so that a primary which already installed the
        # view can answer with its NEW-VIEW (_help_laggard) before we give up on the view.
        own = self._sent_view_change
        resend_period = max(1, self._config.view_change_timeout_ticks // 2)
        if self._vc_ticks % resend_period == 0 and own is not None and own.view == self._view:
            self._broadcast(own)
        if self._view_change_support() >= self._config.q:
            self._vc_started_ticks += 1
            if self._vc_started_ticks >= self._timeout_ticks():
                self._start_view_change(self._view + 1)

    def _view_change_support(self) -> int:
        """Distinct validators known to have left every view below ours: VIEW-CHANGEs for our
        view *or a higher one*. §4.5.2 starts the timer at q VIEW-CHANGEs for our view; counting
        higher ones too matters when a replica timed out of our view and moved on before its
        VIEW-CHANGE for our view reached us: it never resends that one, so we would wait for it
        forever (the simulator found three replicas stuck so, seed 493)."""
        senders = {s for v, vcs in self._view_changes.items() if v >= self._view for s in vcs}
        return len(senders)

    def _tick_checkpoint_resend(self) -> None:
        """Our latest checkpoint is not stable yet: some CHECKPOINTs may have been lost, and the
        watermarks cannot move without them. Resend ours now and then (they are idempotent)."""
        latest = self._last_executed - self._last_executed % self._config.checkpoint_interval
        if latest > self._stable_seq and self._ticks % BATCH_REFETCH_TICKS == 0:
            own = self._checkpoints.get(latest, {}).get(self._me)
            if own is not None:
                self._broadcast(own)
        # Once in a while, even when idle, say where we are: a replica that missed the last
        # checkpoints (it was down, or they were lost) learns from f + 1 of these that it is
        # behind and fetches the blocks, instead of waiting for new traffic.
        elif self._ticks % self._config.view_change_timeout_ticks == 0:
            if self._last_executed > self._stable_seq:
                self._announce_head()
                return
            stable = next((c for c in self._stable_proof if c.sender == self._me), None)
            if stable is not None:
                self._broadcast(stable)

    def _announce_head(self) -> None:
        """Sign and send our executed head (seq, block_hash) as a CHECKPOINT between multiples
        of K, once execution has been idle for a timeout. Without it, a replica that missed the
        COMMITs of the last seqs before traffic stopped would wait for the next checkpoint, which
        may never come: the simulator found such replicas never executing the last requests
        (seeds 0 and 42). Signed like anything else, so persisted first."""
        if self._ticks - self._progress_tick < self._config.view_change_timeout_ticks:
            return
        head = sign_message(
            self._signer, Checkpoint(self._config.chain_id, self._last_executed, self._head_hash)
        )
        self._persist(rec.seq_record(head.seq, rec.PHASE_CHECKPOINT, "message", head.to_wire()))
        self._broadcast(head)

    def _tick_missing_batches(self) -> None:
        # Forget digests nothing in the log needs any more (GC'd, or replaced by a view change).
        missing = self._missing_digests()
        needed = set(missing)
        self._wanted = {d: tick for d, tick in self._wanted.items() if d in needed}
        due = [
            d
            for d in missing
            if d not in self._wanted or self._ticks - self._wanted[d] >= BATCH_REFETCH_TICKS
        ]
        if due:
            self._send_batch_requests(due)

    # ----------------------------------------------------------------------------------------
    # View changes (OSDI'99 §4.4)
    # ----------------------------------------------------------------------------------------

    def _start_view_change(self, new_view: int) -> None:
        """Move to view v + 1: stop accepting normal-case messages and multicast VIEW-CHANGE
        with the stable checkpoint's proof C and a prepared certificate for every prepared seq
        above it (P)."""
        invariant(new_view > self._view, f"view change from {self._view} to {new_view}")
        if self._active:
            self._last_active_view = self._view
        self._view, self._active = new_view, False
        self._vc_ticks = self._vc_started_ticks = 0
        self._view_start_tick = self._ticks
        self._slots = {}  # the old view's votes are worthless now; prepared certificates remain
        self._persist(rec.view_record(new_view, active=False))
        prepared = tuple(
            self._prepared_certs[s] for s in sorted(self._prepared_certs) if s > self._stable_seq
        )
        invariant(
            self._sent_view_change is None or self._sent_view_change.view < new_view,
            f"a second VIEW-CHANGE for view {new_view}",
        )
        view_change = sign_message(
            self._signer,
            ViewChange(
                self._config.chain_id,
                new_view,
                self._stable_seq,
                self._stable_hash,
                self._stable_proof,
                prepared,
            ),
        )
        self._sent_view_change = view_change
        self._persist(Record(rec.KEY_VIEW_CHANGE, {"message": view_change.to_wire()}))
        self._broadcast(view_change)
        self._view_changes = {v: vcs for v, vcs in self._view_changes.items() if v >= new_view}
        self._view_changes.setdefault(new_view, {})[self._me] = view_change
        self._set_early([m for m in self._early if m.view >= new_view])
        self._try_new_view()

    def on_view_change(self, view_change: ViewChange) -> None:
        """§4.4: log a valid VIEW-CHANGE for a view above ours; with f + 1 of them for higher
        views, join the smallest; the new primary sends NEW-VIEW once it holds q."""
        sender, view = view_change.sender, view_change.view
        if view > self._view + VIEWS_AHEAD_MAX:
            self._drop(sender, "view_too_far")
            return
        if view < self._view or (view == self._view and self._active):
            self._help_laggard(view_change)
            return
        per_view = self._view_changes.setdefault(view, {})
        if sender in per_view:
            return
        reason = check_view_change(self._config, self._verify, view_change)
        if reason is not None:
            self._drop(sender, f"bad_view_change:{reason}")
            return
        per_view[sender] = view_change
        self._maybe_join_higher_view()
        if view == self._view and not self._active:
            self._try_new_view()

    def _help_laggard(self, view_change: ViewChange) -> None:
        """A replica still asking for the view we installed (and lead), or an older one (it was
        down while views passed, or timed out alone), missed our NEW-VIEW: send it the current
        one, which proves itself (q VIEW-CHANGEs); moving up to a later view is always allowed.
        Only to the VIEW-CHANGE's signer, at most once per (signer, current view) per half
        timeout (how often it re-asks), and within its reply budget: a VIEW-CHANGE is cheap to
        replay (cached signature) and the NEW-VIEW is large, so answering every copy would let
        one faulty replica aim a stream of NEW-VIEWs at anyone whose VIEW-CHANGEs it holds."""
        nv = self._sent_new_view
        if nv is None or nv.view != self._view or view_change.view > self._view:
            return
        key = (view_change.sender, self._view)
        last = self._helped.get(key)
        if last is not None and self._ticks - last < self._help_period():
            self._drop(view_change.sender, "help_rate")
            return
        if not self._reply_budget(view_change.sender, _new_view_size(nv)):
            self._drop(view_change.sender, "reply_bytes_rate")
            return
        self._helped = {k: t for k, t in self._helped.items() if k[1] == self._view}
        self._helped[key] = self._ticks
        self._out.sends.append(Send(nv.to_wire(), to=view_change.sender))

    def _help_period(self) -> int:
        return max(1, self._config.view_change_timeout_ticks // 2)

    def _maybe_join_higher_view(self) -> None:
        """§4.5.2: f + 1 replicas asking for views above ours include an honest one: join the
        smallest such view without waiting for our own timer."""
        lowest: dict[str, int] = {}
        for view, per_view in self._view_changes.items():
            if view <= self._view:
                continue
            for sender in per_view:
                if sender != self._me:
                    lowest[sender] = min(lowest.get(sender, view), view)
        if len(lowest) >= self._config.f + 1:
            self._start_view_change(min(lowest.values()))

    def _try_new_view(self) -> None:
        """§4.4: the primary of v + 1 with q VIEW-CHANGEs computes O and multicasts NEW-VIEW."""
        if self._active or self._config.primary(self._view) != self._me:
            return
        if self._sent_new_view is not None and self._sent_new_view.view == self._view:
            return
        per_view = self._view_changes.get(self._view, {})
        if len(per_view) < self._config.q:
            return
        others = [per_view[s] for s in sorted(per_view) if s != self._me]
        chosen = ([per_view[self._me]] if self._me in per_view else []) + others
        chosen = chosen[: self._config.q]
        plan = plan_new_view(self._config, chosen)
        pre_prepares = tuple(
            self._sign_vote(PrePrepare(self._config.chain_id, self._view, seq, digest, None))
            for seq, digest in plan.proposals
        )
        new_view = sign_message(
            self._signer, NewView(self._config.chain_id, self._view, tuple(chosen), pre_prepares)
        )
        self._sent_new_view = new_view
        self._persist(Record(rec.KEY_NEW_VIEW, {"message": new_view.to_wire()}))
        self._broadcast(new_view)
        self._install_new_view(new_view, plan)

    def on_new_view(self, new_view: NewView) -> None:
        """§4.4: a backup accepts NEW-VIEW for v + 1 if it is signed by the primary of v + 1,
        its VIEW-CHANGEs are valid and for v + 1, and O is what it computes from them itself."""
        sender, view = new_view.sender, new_view.view
        if view < self._view or (view == self._view and self._active):
            return
        if view > self._view + VIEWS_AHEAD_MAX:
            self._drop(sender, "view_too_far")
            return
        if sender != self._config.primary(view):
            self._drop(sender, "new_view_not_from_primary")
            return
        checked = self._check_new_view(new_view)
        if isinstance(checked, str):
            self._drop(sender, f"bad_new_view:{checked}")
            return
        self._install_new_view(new_view, checked)

    def _check_new_view(self, new_view: NewView) -> NewViewPlan | str:
        senders: set[str] = set()
        for vc in new_view.view_changes:
            if vc.view != new_view.view:
                return "view_change_for_other_view"
            if not self._config.is_validator(vc.sender) or vc.sender in senders:
                return "view_change_bad_sender"
            if not self._verify(vc):
                return "view_change_bad_signature"
            reason = check_view_change(self._config, self._verify, vc)
            if reason is not None:
                return reason
            senders.add(vc.sender)
        if len(senders) < self._config.q:
            return "too_few_view_changes"
        plan = plan_new_view(self._config, new_view.view_changes)
        if tuple((p.seq, p.digest) for p in new_view.pre_prepares) != plan.proposals:
            return "proposals_differ"
        for pre_prepare in new_view.pre_prepares:
            if (pre_prepare.chain_id, pre_prepare.view, pre_prepare.sender) != (
                self._config.chain_id,
                new_view.view,
                new_view.sender,
            ) or not self._verify(pre_prepare):
                return "bad_pre_prepare"
        return plan

    def _install_new_view(self, new_view: NewView, plan: NewViewPlan) -> None:
        """Enter view v + 1: adopt the latest stable checkpoint among the VIEW-CHANGEs, log the
        re-proposals in O as pre-prepares and (backups) multicast PREPAREs for them."""
        self._view, self._active = new_view.view, True
        self._last_active_view = new_view.view
        self._view_start_tick = self._progress_tick = self._ticks
        self._persist(rec.view_record(new_view.view, active=True))
        self._view_changes = {v: vcs for v, vcs in self._view_changes.items() if v > new_view.view}
        if plan.min_s > self._stable_seq:
            self._make_stable(plan.min_s, plan.stable_block_hash, plan.checkpoint_proof)
        self._slots = {}
        self._tx_seq = {}
        missing: list[str] = []
        for pre_prepare in new_view.pre_prepares:
            if pre_prepare.seq <= self._stable_seq:
                continue
            batch = self._batches.get(pre_prepare.digest)
            null = Batch.null(self._config.chain_id, pre_prepare.seq)
            if batch is None and null.digest == pre_prepare.digest:
                batch = null
            if batch is None and pre_prepare.seq > self._last_executed:
                missing.append(pre_prepare.digest)
            slot = self._slot(pre_prepare.seq)
            self._accept_pre_prepare(slot, pre_prepare, batch)
            self._send_prepare(slot)
        self._request_batches(missing)
        self._unbatched = OrderedDict(
            (t, tx) for t, (tx, _) in self._pending.items() if t not in self._tx_seq
        )
        highest = max((p.seq for p in new_view.pre_prepares), default=0)
        self._next_seq = max(self._last_executed, self._stable_seq, highest) + 1
        self._replay_early()
        self._check_state_transfer()
        self._try_propose()

    def _keep_early(self, message: NormalCaseMessage) -> None:
        """Keep only what could become valid once the view is installed, bounded per sender in
        count and bytes, so a faulty replica cannot pin memory nor crowd out honest votes."""
        reason = self._early_refusal(message)
        if reason is not None:
            self._drop(message.sender, reason)
            return
        size = _early_size(message)
        sender = message.sender
        if (
            self._early_per_sender[sender] >= EARLY_MESSAGES_MAX // self._config.n
            or self._early_bytes[sender] + size > EARLY_BYTES_PER_SENDER_MAX
        ):
            self._drop(sender, "early_buffer_full")
            return
        self._early.append(message)
        self._early_per_sender[sender] += 1
        self._early_bytes[sender] += size
        if message.view > self._view:
            view = max(message.view, self._early_views.get(message.sender, 0))
            self._early_views[message.sender] = view
            self._maybe_join_installed_view()

    def _early_refusal(self, message: NormalCaseMessage) -> str | None:
        """Why ``message`` could never be accepted in its view, or None."""
        if not self._in_window(message.seq):
            return "early_outside_watermarks"
        if isinstance(message, PrePrepare):
            if message.sender != self._config.primary(message.view):
                return "pre_prepare_not_from_primary"
            batch = message.batch
            if batch is None:
                return "pre_prepare_without_batch"
            if len(batch.txs) > self._config.batch_size_max:
                return "batch_too_large"
            if len(batch.txs) > 1 and _batch_size(batch) > (
                self._config.batch_bytes_max + EARLY_VOTE_BYTES
            ):
                return "batch_too_large"
        elif message.sender == self._config.primary(message.view) and isinstance(message, Prepare):
            return "prepare_from_primary"
        return None

    def _set_early(self, messages: list[NormalCaseMessage]) -> None:
        self._early = [m for m in messages if self._in_window(m.seq)]
        messages = self._early
        self._early_per_sender = Counter(m.sender for m in messages)
        self._early_bytes = Counter()
        for m in messages:
            self._early_bytes[m.sender] += _early_size(m)
        self._early_views = {}
        for m in messages:
            if m.view > self._view:
                self._early_views[m.sender] = max(m.view, self._early_views.get(m.sender, 0))

    def _maybe_join_installed_view(self) -> None:
        """f + 1 replicas voting in views above ours include an honest one, which votes only in
        a view it installed: that view is live and we are behind (restarted from old records,
        or wiped). Ask to join the highest view f + 1 of them reached; a replica of that view
        answers with its NEW-VIEW (``_help_laggard``). Waiting for our own timer instead could
        take forever: the blocks we fetch meanwhile execute our requests, so it never fires."""
        views = sorted((v for s, v in self._early_views.items() if s != self._me), reverse=True)
        if len(views) <= self._config.f:
            return
        if views[self._config.f] > self._view:
            self._start_view_change(views[self._config.f])

    def _replay_early(self) -> None:
        replay = [m for m in self._early if m.view == self._view]
        self._set_early([m for m in self._early if m.view > self._view])
        for message in replay:
            self._dispatch(message)

    # ----------------------------------------------------------------------------------------
    # Fetching batches by digest
    # ----------------------------------------------------------------------------------------

    def _missing_digests(self) -> list[str]:
        """Batches the log needs but does not hold: accepted pre-prepares of this view (from a
        NEW-VIEW) and committed seqs waiting for execution, above what we executed."""
        needed = {digest for digest, _ in self._ready.values()}
        needed.update(
            slot.pre_prepare.digest
            for seq, slot in self._slots.items()
            if seq > self._last_executed
            and slot.view == self._view
            and slot.pre_prepare is not None
        )
        return sorted(d for d in needed if d not in self._batches)  # sorted: deterministic

    def _request_batches(self, digests: Iterable[str]) -> None:
        fresh = [
            d for d in dict.fromkeys(digests) if d not in self._batches and d not in self._wanted
        ]
        if fresh:
            self._send_batch_requests(fresh)

    def _send_batch_requests(self, digests: list[str]) -> None:
        for digest in digests:
            self._wanted[digest] = self._ticks
        for start in range(0, len(digests), BATCH_REQUEST_DIGESTS_MAX):
            chunk = tuple(digests[start : start + BATCH_REQUEST_DIGESTS_MAX])
            self._broadcast(sign_message(self._signer, BatchRequest(self._config.chain_id, chunk)))

    def on_batch_request(self, request: BatchRequest) -> None:
        """Batches certify themselves by digest, so any replica may answer for any other: from
        memory, or from the ledger for an executed seq. At most one answer per peer per tick,
        and at most REPLY_BYTES_PER_WINDOW bytes of replies per peer per window."""
        if self._batch_answers.get(request.sender) == self._ticks:
            self._drop(request.sender, "batch_request_rate")  # one answer per peer per tick
            return
        answered = False
        # One response per batch: each batch fits a peer frame (batch_bytes_max), several
        # together might not, and an oversized message would never arrive.
        for digest in request.digests:
            batch = self._find_batch(digest)
            if batch is None:
                continue
            if not self._reply_budget(request.sender, _batch_size(batch)):
                self._drop(request.sender, "reply_bytes_rate")
                break
            answered = True
            response = sign_message(self._signer, BatchResponse(self._config.chain_id, (batch,)))
            self._out.sends.append(Send(response.to_wire(), to=request.sender))
        if answered:
            self._batch_answers[request.sender] = self._ticks

    def _find_batch(self, digest: str) -> Batch | None:
        batch = self._batches.get(digest)
        if batch is not None:
            return batch
        seq = self._exec_digests.get(digest)
        if seq is None or self._executed_batch is None:
            return None
        batch = self._executed_batch(seq)
        return batch if batch is not None and batch.digest == digest else None

    def _reply_budget(self, peer: str, size: int) -> bool:
        """Charge ``size`` bytes of replies to ``peer``; False once its window's budget is spent
        (replies are cheap to ask for and costly to send: amplification)."""
        start, spent = self._reply_bytes.get(peer, (self._ticks, 0))
        if self._ticks - start >= REPLY_WINDOW_TICKS:
            start, spent = self._ticks, 0
        if spent + size > REPLY_BYTES_PER_WINDOW:
            self._reply_bytes[peer] = (start, spent)
            return False
        self._reply_bytes[peer] = (start, spent + size)
        return True

    def on_batch_response(self, response: BatchResponse) -> None:
        for batch in response.batches:
            if batch.digest not in self._wanted:
                self._drop(response.sender, "unsolicited_batch")
                continue
            if not self._txs_signed(batch):
                # The digest covers tx_ids, not signatures: a faulty peer can serve the batch with
                # forged signatures. Refuse it; the digest stays wanted and is asked for again.
                self._drop(response.sender, "batch_with_invalid_tx")
                continue
            slot = self._slots.get(batch.seq)
            if slot is not None and slot.digest == batch.digest:
                self._remember_batch(batch)
            else:
                self._store_batch(batch)  # wanted for execution, or by a slot of another view
        self._execute_ready()

    # ----------------------------------------------------------------------------------------
    # Restart: rebuild from what earlier Outputs persisted
    # ----------------------------------------------------------------------------------------

    def _restore(self, records: Sequence[Record]) -> None:
        """Rebuild view, stable checkpoint, our signed votes and the current view's log, so that
        a restarted replica never signs something conflicting for a (view, seq, phase)."""
        per_seq: dict[int, dict[str, dict[str, Any]]] = {}
        for record in records:
            try:
                self._restore_one(record, per_seq)
            except (MalformedMessage, KeyError, TypeError, ValueError) as exc:
                raise InvariantViolation(f"record {record.key!r} is corrupt: {exc}") from exc
        for seq in sorted(per_seq):
            try:
                self._restore_seq(seq, per_seq[seq])
            except (MalformedMessage, KeyError, TypeError, ValueError) as exc:
                raise InvariantViolation(f"records of seq {seq} are corrupt: {exc}") from exc
        self._batches = {d: b for d, b in self._batches.items() if b.seq > self._stable_seq}
        self._stored_batches &= self._batches.keys()
        self._index_executed()
        if not self._active:
            self._last_active_view = max(0, self._view - 1)
        else:
            self._last_active_view = self._view
        if self._sent_view_change is not None and self._sent_view_change.view == self._view:
            self._view_changes.setdefault(self._view, {})[self._me] = self._sent_view_change
        highest = max(
            (s for s, slot in self._slots.items() if slot.pre_prepare is not None), default=0
        )
        self._next_seq = max(self._last_executed, self._stable_seq, highest) + 1

    def _restore_one(self, record: Record, per_seq: dict[int, dict[str, dict[str, Any]]]) -> None:
        value = record.value
        if record.key == rec.KEY_VIEW:
            self._view, self._active = int(value["view"]), bool(value["active"])
        elif record.key == rec.KEY_STABLE:
            self._stable_seq = int(value["stable_seq"])
            self._stable_hash = str(value["block_hash"])
            self._stable_proof = tuple(decode_checkpoint(c) for c in value["proof"])
        elif record.key == rec.KEY_VIEW_CHANGE:
            message = decode_message(value["message"])
            invariant(isinstance(message, ViewChange), "view_change record holds another message")
            self._sent_view_change = message if isinstance(message, ViewChange) else None
        elif (digest := rec.parse_batch_key(record.key)) is not None:
            batch = decode_batch(value["batch"])
            if batch.digest != digest or batch.seq != value["seq"]:
                raise ValueError(f"batch record {record.key!r} holds another batch")
            self._batches[digest] = batch
            self._stored_batches.add(digest)
        elif record.key == rec.KEY_NEW_VIEW:
            message = decode_message(value["message"])
            invariant(isinstance(message, NewView), "new_view record holds another message")
            self._sent_new_view = message if isinstance(message, NewView) else None
            if isinstance(message, NewView):
                for pre_prepare in message.pre_prepares:
                    self._note_signed(pre_prepare)
        else:
            parsed = rec.parse_seq_key(record.key)
            invariant(parsed is not None, f"unknown record key {record.key!r}")
            if parsed is not None:
                per_seq.setdefault(parsed[0], {})[parsed[1]] = value

    def _restore_seq(self, seq: int, phases: dict[str, dict[str, Any]]) -> None:
        if seq <= self._stable_seq:
            return  # below the stable checkpoint: the driver may not have discarded it yet
        messages = {
            phase: decode_message(value["message"])
            for phase, value in phases.items()
            if phase != rec.PHASE_PREPARED
        }
        for message in messages.values():
            if isinstance(message, PrePrepare | Prepare | Commit) and message.sender == self._me:
                self._note_signed(message)
        checkpoint = messages.get(rec.PHASE_CHECKPOINT)
        if isinstance(checkpoint, Checkpoint) and seq % self._config.checkpoint_interval == 0:
            self._checkpoints.setdefault(seq, {})[self._me] = checkpoint
        cert = None
        if rec.PHASE_PREPARED in phases:
            cert = decode_prepared_cert(phases[rec.PHASE_PREPARED]["certificate"])
            self._prepared_certs[seq] = cert
        pre_prepare = messages.get(rec.PHASE_PRE_PREPARE)
        if isinstance(pre_prepare, PrePrepare) and pre_prepare.batch is not None:
            # Records written before batches had their own: keep the batch, whatever its view.
            self._batches.setdefault(pre_prepare.digest, pre_prepare.batch)
        if (
            not isinstance(pre_prepare, PrePrepare)
            or pre_prepare.view != self._view
            or not self._active
        ):
            return
        slot = self._slot(seq)
        slot.pre_prepare = pre_prepare.without_batch()
        batch = self._batches.get(pre_prepare.digest)
        if batch is not None:
            self._remember_batch(batch)
        own_prepare, own_commit = messages.get(rec.PHASE_PREPARE), messages.get(rec.PHASE_COMMIT)
        if isinstance(own_prepare, Prepare) and (own_prepare.view, own_prepare.digest) == (
            self._view,
            slot.digest,
        ):
            slot.prepares[self._me] = own_prepare
        if isinstance(own_commit, Commit) and (own_commit.view, own_commit.digest) == (
            self._view,
            slot.digest,
        ):
            slot.commits[self._me] = own_commit
        if cert is not None and cert.view == self._view and cert.digest == slot.digest:
            slot.prepares.update({p.sender: p for p in cert.prepares})
            slot.prepared = True

    def _index_executed(self) -> None:
        """Digest -> seq of the executed batches above the stable checkpoint (at most L of them),
        read from the ledger: a peer may ask for one of them by digest (a NEW-VIEW re-proposed
        it, or it is committed and the peer missed it), and only the ledger still has it."""
        if self._executed_batch is None:
            return
        low = max(self._stable_seq, self._last_executed - self._config.watermark_window)
        for seq in range(low + 1, self._last_executed + 1):
            batch = self._executed_batch(seq)
            if batch is not None:
                self._exec_digests[batch.digest] = seq

    def _note_signed(self, message: PrePrepare | Prepare | Commit) -> None:
        self._signed_votes[(message.TYPE, message.view, message.seq)] = message.digest

    # ----------------------------------------------------------------------------------------
    # Helpers
    # ----------------------------------------------------------------------------------------

    def _sign_vote(self, message: _Vote) -> _Vote:
        """Sign a vote, refusing (as a bug) to sign two digests for one (view, seq, phase)."""
        key = (message.TYPE, message.view, message.seq)
        known = self._signed_votes.get(key)
        invariant(known is None or known == message.digest, f"equivocation: second {key} vote")
        self._signed_votes[key] = message.digest
        return sign_message(self._signer, message)

    def _slot(self, seq: int) -> Slot:
        slot = self._slots.get(seq)
        if slot is None or slot.view != self._view:
            slot = Slot(self._view, seq)
            self._slots[seq] = slot
        return slot

    def _in_window(self, seq: int) -> bool:
        return self._stable_seq < seq <= self._stable_seq + self._config.watermark_window

    def _broadcast(self, message: Message) -> None:
        self._out.sends.append(Send(message.to_wire()))

    def _persist(self, record: Record) -> None:
        self._out.persist.append(record)

    def _drop(self, sender: str, reason: str) -> None:
        key = (sender, reason)
        if key not in self.dropped and len(self.dropped) >= DROPPED_KEYS_MAX:
            key = ("overflow", reason)  # claimed senders are attacker-chosen: bound the keys
        self.dropped[key] += 1

    def _take(self) -> Output:
        out, self._out = self._out, Output()
        return out


def _tx_size(tx: Tx) -> int:
    """Bytes of a transaction as JSON: measured where the node parsed it, else measured here."""
    if tx.size:
        return tx.size
    try:
        return len(canonical_json(dict(tx.wire)))
    except CanonicalJsonError:
        return 0


def _batch_size(batch: Batch) -> int:
    return EARLY_VOTE_BYTES + sum(_tx_size(tx) for tx in batch.txs)


def _early_size(message: NormalCaseMessage) -> int:
    if isinstance(message, PrePrepare) and message.batch is not None:
        return _batch_size(message.batch)
    return EARLY_VOTE_BYTES


def _new_view_size(new_view: NewView) -> int:
    """A NEW-VIEW's size: its VIEW-CHANGEs' certificates and its pre-prepares, about a vote
    each (a close estimate without encoding the message again)."""
    votes = len(new_view.pre_prepares) + 1
    for vc in new_view.view_changes:
        votes += 1 + len(vc.checkpoint_proof)
        votes += sum(1 + len(cert.prepares) for cert in vc.prepared)
    return votes * EARLY_VOTE_BYTES


def _claimed_sender(wire: object) -> str:
    sender = wire.get("sender") if isinstance(wire, dict) else None
    return sender if isinstance(sender, str) and is_hex(sender, KEY_HEX_LEN) else "unknown"
