"""The checkers: what must hold after every simulated step, and what must happen after the faults.

Safety (checked incrementally after every tick, over every host running honest code, twins
included: with at most f faulty *keys*, every commit certificate is consistent, so even twins
must agree):

* **agreement**: no two hosts execute different batch digests at one seq;
* **prefix**: each ledger is contiguous from seq 1, so with agreement per seq the shorter of
  two ledgers is a prefix of the longer (``check_prefixes`` re-checks it by chained hashes);
* **certified**: every executed block carries q valid commit votes of distinct validators;
* **client-signed only**: every executed transaction's wire holds its client's signature, and
  no transaction the clients forged is ever executed;
* **once**: no tx_id is executed twice by one host. A tx_id may be *committed* twice: a request
  in a batch prepared in one view can be batched again in a later view whose VIEW-CHANGE quorum
  did not carry that certificate, and a still later NEW-VIEW may re-propose both (PBFT dedups at
  execution too). Spec §3 says the repeat is recorded as "duplicate" and not executed; the check
  is that the host's execution (``HonestHost.executed``) follows that rule. Repeats are counted.
* **batch times**: the times of executed non-null batches proposed and committed in one view
  never decrease along a ledger (across views they may: a NEW-VIEW re-proposes older batches
  above seqs filled meanwhile), and none lies further in the future than the tolerated skew
  (plus the largest honest clock offset) from the true time when it is executed: honest backups
  refuse such batches;
* **honest evidence is valid**: every VIEW-CHANGE an honest replica sends passes the checks
  another honest replica applies to it, and every NEW-VIEW it sends re-proposes exactly what
  its VIEW-CHANGEs imply (OSDI'99 §4.4). An honest replica holding a certificate that others
  refuse accepted something it should not have (e.g. a PRE-PREPARE from a non-primary).

Liveness (``LivenessChecker``): once the fault window is over, every valid transaction a client
submitted is executed by every honest host (not Byzantine, not a twin) within the bound that
``consensus.sim.scenario.liveness_deadline`` states.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from consensus.batch import Batch, TxChecker, block_hash, commit_vote_body
from consensus.config import ReplicaConfig
from consensus.errors import MalformedMessage
from consensus.messages import Message, NewView, ViewChange, decode_message, verify_message
from consensus.output import Committed
from consensus.sim.hosts import HonestHost
from consensus.view_change import check_view_change, plan_new_view
from crypto.signing import TAG_COMMIT, Verifier

SENT_CHECKED_MAX = 100_000  # signatures of honest VIEW-CHANGEs / NEW-VIEWs already checked


class SafetyChecker:
    def __init__(
        self,
        config: ReplicaConfig,
        verifier: Verifier,
        tx_checker: TxChecker,
        forged: set[str],
        hosts: Sequence[HonestHost],
        clock_skew_max_ms: int = 0,
    ) -> None:
        self._config = config
        self._future_ms = config.time_skew_max_ms + clock_skew_max_ms
        # Per host: (view, time) of the last executed batch proposed and committed in one view.
        self._last_time: dict[int, tuple[int, int]] = {h.index: (-1, 0) for h in hosts if h.honest}
        self._proposed_in: dict[str, int] = {}  # batch digest -> view of its first PRE-PREPARE
        self._sent_checked: set[str] = set()
        self._sent_found: list[str] = []
        self._verifier = verifier
        self._tx_checker = tx_checker
        self._forged = forged
        self._hosts = [h for h in hosts if h.honest]
        self._digests: dict[int, tuple[str, int]] = {}  # seq -> (digest, first host to execute)
        self._checked: dict[int, int] = {h.index: 0 for h in self._hosts}
        self._executed: dict[int, list[str]] = {h.index: [] for h in self._hosts}
        self._seen: dict[int, set[str]] = {h.index: set() for h in self._hosts}
        self.repeats = 0  # committed repeats of a tx_id (not violations, see above)
        # Coverage, not a check: NEW-VIEWs of honest hosts in which one seq carries certificates
        # for different digests from different views (only there does the plan's rule matter).
        self._split_seen: set[str] = set()
        self.violations: list[str] = []

    def check(self, tick: int, now_ms: int = 0) -> list[str]:
        """Check what each host executed (and sent) since the last call; returns the new
        violations. ``now_ms`` is the true time (no host's clock offset)."""
        found: list[str] = self._sent_found
        self._sent_found = []
        for host in self._hosts:
            start = self._checked[host.index]
            for block in host.ledger[start:]:
                found.extend(self._check_block(host.index, block, tick))
                found.extend(self._check_time(host.index, block, tick, now_ms))
            self._checked[host.index] = len(host.ledger)
            found.extend(self._check_executed_once(host, tick))
        self.violations.extend(found)
        return found

    def _check_block(self, index: int, block: Committed, tick: int) -> list[str]:
        batch, found = block.batch, []
        where = f"tick {tick}: host {index} seq {batch.seq}"
        if batch.seq != self._checked[index] + 1:
            found.append(f"{where}: ledger not contiguous (after {self._checked[index]})")
        self._checked[index] = batch.seq
        first = self._digests.setdefault(batch.seq, (batch.digest, index))
        if first[0] != batch.digest:
            found.append(
                f"{where}: AGREEMENT violated, digest {batch.digest[:12]} but host {first[1]} "
                f"executed {first[0][:12]}"
            )
        if not self._certified(block):
            found.append(f"{where}: executed without a valid commit certificate")
        seen, executed = self._seen[index], self._executed[index]
        for tx in batch.txs:
            if tx.tx_id in self._forged:
                found.append(f"{where}: executed forged transaction {tx.tx_id[:12]}")
            elif not self._tx_checker(tx):
                found.append(f"{where}: executed {tx.tx_id[:12]} without its client's signature")
            if tx.tx_id in seen:
                self.repeats += 1
            else:
                executed.append(tx.tx_id)
            seen.add(tx.tx_id)
        return found

    def _check_time(self, index: int, block: Committed, tick: int, now_ms: int) -> list[str]:
        batch = block.batch
        if batch.is_null:
            return []
        found = []
        where = f"tick {tick}: host {index} seq {batch.seq}"
        # Within one view, the batches its primary proposed (and committed there) never go back
        # in time. Across views they may: a NEW-VIEW re-proposes a batch made earlier, above a
        # seq that a later primary filled meanwhile; its digest cannot be re-stamped.
        view = block.certificate.view
        if self._proposed_in.get(batch.digest) == view:
            last_view, last_time = self._last_time[index]
            if last_view == view and batch.time_ms < last_time:
                found.append(
                    f"{where}: batch time {batch.time_ms} before the previous batch's "
                    f"{last_time}, both proposed in view {view}"
                )
            if last_view != view or batch.time_ms > last_time:
                self._last_time[index] = (view, batch.time_ms)
        if now_ms and batch.time_ms > now_ms + self._future_ms:
            found.append(f"{where}: batch time {batch.time_ms - now_ms} ms in the future")
        return found

    def observe(self, wire: dict[str, Any]) -> None:
        """A consensus message on the network, from anyone: remember where batches come from."""
        if wire.get("type") == "pre_prepare" and wire.get("batch") is not None:
            digest, view = wire.get("digest"), wire.get("view")
            if isinstance(digest, str) and isinstance(view, int):
                self._proposed_in.setdefault(digest, view)

    def check_sent(self, index: int, wire: dict[str, Any], tick: int) -> None:
        """An honest host sends ``wire``: VIEW-CHANGEs and NEW-VIEWs must be valid evidence."""
        if wire.get("type") not in ("view_change", "new_view"):
            return
        signature = str(wire.get("signature"))
        if signature in self._sent_checked:
            return
        if len(self._sent_checked) >= SENT_CHECKED_MAX:
            self._sent_checked.clear()
        self._sent_checked.add(signature)
        self._check_evidence(index, wire, tick, "sent")

    def check_installed(self, index: int, wire: dict[str, Any], tick: int) -> None:
        """An honest host installed the view of the NEW-VIEW ``wire`` on receiving it: it must
        be evidence an honest replica could have sent (q distinct valid VIEW-CHANGEs, each
        validly signed, and exactly the re-proposals OSDI'99 §4.4 derives from them). Accepting
        anything else lets a faulty new primary choose what the new view re-proposes."""
        self._check_evidence(index, wire, tick, "installed")

    def _check_evidence(self, index: int, wire: dict[str, Any], tick: int, act: str) -> None:
        """Record a finding if the VIEW-CHANGE or NEW-VIEW ``wire`` that honest host ``index``
        ``act`` (sent or installed) is malformed or not valid evidence."""
        try:
            message = decode_message(wire)
        except MalformedMessage as exc:
            self._sent_found.append(f"tick {tick}: host {index} {act} a malformed {exc.reason}")
            return
        if isinstance(message, NewView) and _split_seq(message) is not None:
            if len(self._split_seen) >= SENT_CHECKED_MAX:
                self._split_seen.clear()
            self._split_seen.add(message.signature)
        reason = self._invalid_evidence(message)
        if reason is not None:
            self._sent_found.append(
                f"tick {tick}: host {index} (honest) {act} an invalid {message.TYPE} for view "
                f"{getattr(message, 'view', '?')}: {reason}"
            )

    def _invalid_evidence(self, message: Message) -> str | None:
        def verify(m: Message) -> bool:
            return verify_message(self._verifier, m)

        if isinstance(message, ViewChange):
            return check_view_change(self._config, verify, message) or _cert_fault(
                self._config, verify, message
            )
        if isinstance(message, NewView):
            senders = {vc.sender for vc in message.view_changes}
            if len(senders) < self._config.q or len(senders) != len(message.view_changes):
                return "not q distinct VIEW-CHANGEs"
            for vc in message.view_changes:
                reason = check_view_change(self._config, verify, vc) or _cert_fault(
                    self._config, verify, vc
                )
                if vc.view != message.view or not verify(vc) or reason is not None:
                    return f"VIEW-CHANGE of {vc.sender[:8]} invalid ({reason})"
            proposals = tuple((p.seq, p.digest) for p in message.pre_prepares)
            plan = plan_new_view(self._config, message.view_changes)
            if proposals != plan.proposals:
                return "re-proposals differ from what its VIEW-CHANGEs imply"
            reference = _reference_proposals(self._config, message.view_changes)
            if reference is not None and proposals != reference:
                return "re-proposals differ from OSDI'99 §4.4's rule (the checker's own plan)"
        return None

    @property
    def split_new_views(self) -> int:
        return len(self._split_seen)

    def _check_executed_once(self, host: HonestHost, tick: int) -> list[str]:
        """The host executed exactly the first occurrence of each tx_id, in ledger order."""
        if host.executed == self._executed[host.index]:
            return []
        twice = len(host.executed) - len(set(host.executed))
        return [
            f"tick {tick}: host {host.index}: execution differs from the ledger's first "
            f"occurrences ({twice} tx_ids executed twice)"
        ]

    def _certified(self, block: Committed) -> bool:
        batch, cert = block.batch, block.certificate
        body = commit_vote_body(self._config.chain_id, batch.seq, cert.view, batch.digest)
        good = [
            key
            for key, sig in sorted(cert.signatures.items())
            if self._config.is_validator(key) and self._verifier.verify(key, TAG_COMMIT, body, sig)
        ]
        return batch.chain_id == self._config.chain_id and len(good) >= self._config.q

    def check_prefixes(self) -> list[str]:
        """The prefix property, re-checked independently by chained block hashes (spec §4): two
        ledgers that agree on block_hash(s) agree on everything up to s."""
        chains = {h.index: _chain(self._config.genesis_hash, h.ledger) for h in self._hosts}
        found: list[str] = []
        indexes = sorted(chains)
        for a_pos, a in enumerate(indexes):
            for b in indexes[a_pos + 1 :]:
                common = min(len(chains[a]), len(chains[b]))
                if common and chains[a][common - 1] != chains[b][common - 1]:
                    found.append(f"ledgers of hosts {a} and {b} are not prefixes of each other")
        self.violations.extend(found)
        return found


def _split_seq(new_view: NewView) -> int | None:
    """A seq for which the NEW-VIEW's VIEW-CHANGEs hold certificates of different views with
    different digests, if any."""
    min_s = max((vc.stable_seq for vc in new_view.view_changes), default=0)
    certs: dict[int, set[tuple[int, str]]] = {}
    for vc in new_view.view_changes:
        for cert in vc.prepared:
            if cert.seq > min_s:
                certs.setdefault(cert.seq, set()).add((cert.view, cert.digest))
    for seq, found in sorted(certs.items()):
        if len({view for view, _ in found}) > 1 and len({digest for _, digest in found}) > 1:
            return seq
    return None


def _reference_proposals(
    config: ReplicaConfig, view_changes: Sequence[ViewChange]
) -> tuple[tuple[int, str], ...] | None:
    """OSDI'99 §4.4, written out apart from ``consensus.view_change`` so that a change there
    cannot change the oracle: min-s is the highest stable checkpoint among the VIEW-CHANGEs,
    max-s the highest prepared seq; each seq between is re-proposed with the digest of its
    highest-view certificate, or the null batch. None if two certificates of one view disagree
    (only more than f faulty replicas could make them)."""
    min_s = max(vc.stable_seq for vc in view_changes)
    best: dict[int, tuple[int, str]] = {}
    for vc in view_changes:
        for cert in vc.prepared:
            if cert.seq <= min_s:
                continue
            known = best.get(cert.seq)
            if known is not None and known[0] == cert.view and known[1] != cert.digest:
                return None
            if known is None or cert.view > known[0]:
                best[cert.seq] = (cert.view, cert.digest)
    max_s = max(best, default=min_s)
    return tuple(
        (seq, best[seq][1] if seq in best else Batch.null(config.chain_id, seq).digest)
        for seq in range(min_s + 1, max_s + 1)
    )


def _cert_fault(
    config: ReplicaConfig, verify: Callable[[Message], bool], vc: ViewChange
) -> str | None:
    """OSDI'99 §4.4's prepared certificate, checked apart from ``consensus.view_change`` so that
    a weakened check there cannot weaken the oracle: a pre-prepare signed by its view's primary
    and q - 1 matching PREPAREs validly signed by distinct other validators."""
    for cert in vc.prepared:
        pp = cert.pre_prepare
        if pp.sender != config.primary(pp.view) or not verify(pp):
            return f"certificate for seq {pp.seq}: pre-prepare not from view {pp.view}'s primary"
        good = {
            p.sender
            for p in cert.prepares
            if (p.chain_id, p.view, p.seq, p.digest) == (pp.chain_id, pp.view, pp.seq, pp.digest)
            and config.is_validator(p.sender)
            and p.sender != pp.sender
            and verify(p)
        }
        if len(good) < config.q - 1:
            return f"certificate for seq {pp.seq}: {len(good)} valid PREPAREs, not {config.q - 1}"
    return None


def _chain(genesis_hash: str, ledger: Sequence[Committed]) -> list[str]:
    hashes, head = [], genesis_hash
    for block in ledger:
        head = block_hash(block.batch.seq, head, block.batch.digest)
        hashes.append(head)
    return hashes


class LivenessChecker:
    """Which valid transactions some honest host has not executed (yet)."""

    def __init__(self, hosts: Sequence[HonestHost]) -> None:
        self._hosts = [h for h in hosts if h.honest and not h.twin]

    def missing(self, valid: dict[str, int]) -> dict[int, list[str]]:
        """Host index -> the valid tx_ids it has not executed."""
        out: dict[int, list[str]] = {}
        for host in self._hosts:
            lacking = [t for t in valid if t not in host.committed_ids]
            if lacking:
                out[host.index] = lacking
        return out
