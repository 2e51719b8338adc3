"""Auditing one ledger: everything LMDB holds is re-derived from the genesis and compared.

For every block (see ``ledger/store.py`` for the layout) the audit checks, in one read-only
snapshot, so that it also works beside a running node:

- the block record: canonical JSON, its fields, its seq; the batch header's shape and chain_id;
  a null batch's ``time_ms`` 0; ``prev_hash`` and ``hash`` along the chain from ``genesis_hash``;
- the commit certificate: every signer a genesis validator, every vote a valid Ed25519 signature
  over the commit vote body, at least q of them;
- every transaction: its shape (as the state machine decodes it), ``tx_id = h(JCS(body))``
  against the stored ids, its signature, ``tx_count`` and ``tx_root``;
- the results, recomputed by replaying every transaction through ``ledger/state_machine.py``
  from the genesis balances, with the genesis's chain_id and fee_per_byte (owners, fees and
  every error code), against the stored ones;
- the roots (spec §5): ``state_root`` (the state tree kept by the replay, updated with what
  the block wrote) and ``results_root`` (over the replayed results) against the roots the node
  stored for the block, and the block's stored execution certificate, if any: q valid votes of
  distinct genesis validators over the block's hash and the *replayed* roots (strict);
- after the last block: the tx index, the state (values, versions, owners) and the balances
  against the replay's, and the node's stored state tree against the replay's root.

Each problem becomes a :class:`Failure` naming the seq and the check. The checks are written as
a generator of small steps that yield the signatures to verify; ``ledger/audit/pool.py`` runs
them on several threads.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from typing import Any, cast

import lmdb

from consensus.batch import commit_vote_body
from crypto.canonical import CanonicalJsonError, canonical_json
from crypto.hexcodec import HASH_HEX_LEN, SIGNATURE_HEX_LEN, is_hex
from crypto.merkle import merkle_root
from crypto.signing import TAG_COMMIT, TAG_TX
from ledger.audit.codec import NotJsonError, canonical_bytes, is_canonical, load_json
from ledger.audit.pool import SigCheck
from ledger.audit.records import RecordsReport
from ledger.execution import results_root, verify_execution_certificate
from ledger.genesis import Genesis, GenesisError, genesis_from_document
from ledger.state_machine import (
    DUPLICATE,
    ChainRules,
    DictState,
    Entry,
    apply_transaction,
    error_result,
)
from ledger.state_tree import MemoryNodeStore, StateTree, StateTreeDamaged, entry_changes
from ledger.store import FORMAT_VERSION, _dump, _LmdbNodes, state_record
from ledger.transaction import (
    BODY_BYTES_MAX,
    MALFORMED,
    TxError,
    ValidTx,
    _body_of,
    _decode_checked,
)

FAILURES_KEPT_MAX = 1000  # per ledger; the total is still counted

BLOCK_FIELDS = frozenset({"seq", "hash", "prev_hash", "batch", "certificate"})
HEADER_FIELDS = frozenset({"chain_id", "seq", "time_ms", "tx_count", "tx_root"})
HEAD_FIELDS = frozenset({"seq", "hash"})
CERTIFICATE_FIELDS = frozenset({"view", "signatures"})
PER_BLOCK_DBS = ("blocks", "block_txs", "block_results", "block_tx_ids")

_TX_PREFIX = TAG_TX.encode("utf-8") + b"\x00"
_COMMIT_PREFIX = TAG_COMMIT.encode("utf-8") + b"\x00"
_NO_TX_ID = bytes(32)

Progress = Callable[[int, int], None]  # (blocks done, blocks in all)
Steps = Generator[list[SigCheck], None, Any]


@dataclass(frozen=True, slots=True)
class Failure:
    """One thing that does not hold: ``seq`` is None for ledger-wide checks."""

    seq: int | None
    check: str
    detail: str

    def to_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "check": self.check, "detail": self.detail}


@dataclass
class LedgerReport:
    """What the audit of one ledger found."""

    data_dir: str
    genesis_hash: str | None = None  # the genesis the ledger says it was made for
    chain_id: str | None = None
    head_seq: int = 0
    head_hash: str | None = None
    blocks: int = 0
    txs: int = 0
    signatures: int = 0
    state_keys: int = 0
    balances: int = 0
    executions: int = 0  # stored execution certificates checked
    failures: list[Failure] = field(default_factory=list)
    failures_total: int = 0
    complete: bool = True  # False when the audit had to stop early
    records: RecordsReport | None = None  # the consensus records, reported apart
    block_hashes: list[str | None] = field(default_factory=list, repr=False)  # seq s at s - 1

    @property
    def ok(self) -> bool:
        return self.failures_total == 0

    def fail(self, seq: int | None, check: str, detail: str) -> None:
        self.failures_total += 1
        if len(self.failures) < FAILURES_KEPT_MAX:
            self.failures.append(Failure(seq, check, detail))

    def to_json(self) -> dict[str, Any]:
        return {
            "data_dir": self.data_dir,
            "ok": self.ok,
            "complete": self.complete,
            "genesis_hash": self.genesis_hash,
            "chain_id": self.chain_id,
            "head": {"seq": self.head_seq, "hash": self.head_hash},
            "counts": {
                "blocks": self.blocks,
                "txs": self.txs,
                "signatures": self.signatures,
                "state_keys": self.state_keys,
                "balances": self.balances,
                "executions": self.executions,
            },
            "failures": [f.to_json() for f in self.failures],
            "failures_total": self.failures_total,
            "records": None if self.records is None else self.records.to_json(),
        }


class _ReplayState(DictState):
    """The replay's state, remembering the seq that last wrote each key and balance, so that a
    state difference found at the end can name the block it comes from, and keeping the state
    tree (in memory) up to date block by block."""

    def __init__(self, accounts: Any) -> None:
        super().__init__(accounts)
        self.seq = 0
        self.key_written_at: dict[str, int] = {}
        self.balance_written_at: dict[str, int] = {}
        self.tree = StateTree(MemoryNodeStore())
        self.tree.update(entry_changes([], self.balances.items()))
        self._touched_keys: set[str] = set()
        self._touched_balances: set[str] = set()

    def put_entry(self, key: str, entry: Entry) -> None:
        self.entries[key] = entry
        self.key_written_at[key] = self.seq
        self._touched_keys.add(key)

    def delete_entry(self, key: str) -> None:
        self.entries.pop(key, None)
        self.key_written_at[key] = self.seq
        self._touched_keys.add(key)

    def set_balance(self, pubkey: str, balance: int) -> None:
        if balance:
            self.balances[pubkey] = balance
        else:
            self.balances.pop(pubkey, None)
        self.balance_written_at[pubkey] = self.seq
        self._touched_balances.add(pubkey)

    def update_tree(self) -> bytes:
        """Bring the tree up to date with what was written since the last call; its root."""
        kv = []
        for key in self._touched_keys:
            entry = self.entries.get(key)
            kv.append(
                (key, None, None, None)
                if entry is None
                else (key, entry.value, entry.version, entry.owner)
            )
        balances = [(p, self.balances.get(p, 0)) for p in self._touched_balances]
        self._touched_keys, self._touched_balances = set(), set()
        return self.tree.update(entry_changes(kv, balances))


class LedgerAudit:
    """The checks of one ledger over one read transaction. Run :meth:`steps` to the end (through
    :func:`ledger.audit.pool.run_steps`), then hand the failed signatures to :meth:`finish`."""

    def __init__(
        self,
        txn: lmdb.Transaction,
        dbs: dict[str, Any],
        report: LedgerReport,
        trusted: Genesis | None,
        progress: Progress | None = None,
        step_txs: int = 1,
    ) -> None:
        self._txn = txn
        self._step_txs = step_txs  # transactions' signatures per step, at least
        self._dbs = dbs
        self.report = report
        self._trusted = trusted
        self._progress = progress
        self._genesis: Genesis | None = None
        self._view: _ReplayState | None = None
        self._rules: ChainRules | None = None
        self._votes: dict[int, int] = {}  # seq -> validator votes handed out for verification
        self._index: dict[bytes, bytes] = {}  # tx_id -> seq8 + index4 of its first position
        self._client_keys: dict[str, bytes] = {}  # hex -> raw, for the clients seen so far
        self._replayed: tuple[list[bytes], list[dict[str, Any]]] = ([], [])

    @property
    def genesis(self) -> Genesis | None:
        """The genesis the ledger was checked against, once :meth:`steps` found it."""
        return self._genesis

    def _get(self, db: str, key: bytes) -> bytes | None:
        data = self._txn.get(key, db=self._dbs[db])
        return None if data is None else bytes(data)

    def _fail(self, seq: int | None, check: str, detail: str) -> None:
        self.report.fail(seq, check, detail)

    # -- the steps ------------------------------------------------------------------------------

    def steps(self) -> Iterator[list[SigCheck]]:
        genesis = self._check_meta()
        if genesis is None:
            self.report.complete = False
            return
        self._genesis = genesis
        self._view = _ReplayState(genesis.accounts)
        self._rules = ChainRules.of(genesis)
        last = self._check_head()
        prev: str | None = genesis.genesis_hash
        for seq in range(1, last + 1):
            prev = yield from self._block_steps(seq, prev)
            if self._progress is not None:
                self._progress(seq, last)
        self.report.blocks = last
        yield []  # the ledger-wide comparisons below are steps of their own
        self._check_index()
        yield []
        self._check_state()
        self._check_balances()
        self._check_state_tree()

    def finish(self, failed: list[Any]) -> LedgerReport:
        """Report the signatures that did not verify and the certificates short of a quorum."""
        genesis = self._genesis
        bad_votes: dict[int, int] = {}
        # Threads finish in any order; the report does not depend on it.
        for reference in sorted(failed, key=lambda r: (r[1], r[0], r[2])):
            if reference[0] == "tx":
                _, seq, index, tx_id = reference
                self._fail(
                    seq,
                    "tx_signature",
                    f"tx {index} ({tx_id}): sig is not a valid Ed25519 signature of the body "
                    "by body.client",
                )
            else:
                _, seq, pubkey = reference
                bad_votes[seq] = bad_votes.get(seq, 0) + 1
                name = genesis.validator_name(pubkey) if genesis is not None else None
                self._fail(
                    seq,
                    "certificate",
                    f"the commit vote of {name} ({pubkey}) is not a valid signature of the "
                    "commit vote body",
                )
        if genesis is not None:
            for seq, handed in self._votes.items():
                valid = handed - bad_votes.get(seq, 0)
                if valid < genesis.q:
                    self._fail(
                        seq,
                        "certificate",
                        f"the certificate holds {valid} valid commit votes; a quorum is "
                        f"{genesis.q}",
                    )
        self.report.failures.sort(key=lambda f: -1 if f.seq is None else f.seq)
        return self.report

    # -- genesis and meta ---------------------------------------------------------------------

    def _check_meta(self) -> Genesis | None:
        version = self._get("meta", b"format_version")
        if version != FORMAT_VERSION:
            self._fail(None, "meta", f"format_version is {version!r}, not {FORMAT_VERSION!r}")
        stored = self._stored_genesis()
        meta_hash = self.report.genesis_hash
        if self._trusted is None:
            return stored
        hashes = {meta_hash, None if stored is None else stored.genesis_hash}
        if self._trusted.genesis_hash not in hashes:
            self._fail(
                None,
                "genesis",
                f"the ledger was made for genesis {meta_hash}, but the given genesis hashes to "
                f"{self._trusted.genesis_hash}; it belongs to another chain and was not audited "
                "further",
            )
            return None
        self.report.chain_id = self._trusted.chain_id
        return self._trusted

    def _stored_genesis(self) -> Genesis | None:
        raw_hash = self._get("meta", b"genesis_hash")
        meta_hash = None if raw_hash is None else raw_hash.decode("ascii", "replace")
        self.report.genesis_hash = meta_hash
        raw = self._get("meta", b"genesis")
        if raw is None:
            self._fail(None, "genesis", "the ledger holds no genesis document")
            return None
        trusted = self._trusted
        if trusted is not None and raw == trusted.canonical_bytes():
            genesis, document = trusted, trusted.document  # the same bytes: validated already
        else:
            try:
                document = load_json(raw)
                genesis = genesis_from_document(document)
            except (NotJsonError, GenesisError) as exc:
                self._fail(None, "genesis", f"the stored genesis document is damaged: {exc}")
                return None
        self.report.chain_id = genesis.chain_id
        if not is_canonical(raw, dict(document)):
            self._fail(None, "genesis", "the stored genesis document is not canonical JSON")
        if meta_hash != genesis.genesis_hash:
            self._fail(
                None,
                "genesis",
                f"meta genesis_hash {meta_hash} is not the hash of the stored genesis "
                f"document, {genesis.genesis_hash}",
            )
        chain_id = self._get("meta", b"chain_id")
        if chain_id != genesis.chain_id.encode("utf-8"):
            self._fail(None, "meta", f"meta chain_id {chain_id!r} is not the genesis chain_id")
        return genesis

    def _check_head(self) -> int:
        """The last seq to audit: the head, or the last block record if that is further."""
        genesis = self._genesis
        assert genesis is not None
        last_key = 0
        with self._txn.cursor(db=self._dbs["blocks"]) as cursor:
            if cursor.last():
                last_key = int.from_bytes(cursor.key(), "big")
        raw = self._get("meta", b"head")
        head_seq: int = 0
        head_hash: str | None = genesis.genesis_hash
        if raw is not None:
            head = self._load(None, "meta", "the head record", raw)
            if (
                isinstance(head, dict)
                and set(head) == HEAD_FIELDS
                and _is_int(head["seq"])
                and is_hex(head["hash"], HASH_HEX_LEN)
            ):
                head_seq, head_hash = head["seq"], head["hash"]
                if not is_canonical(raw, head):
                    self._fail(None, "meta", "the head record is not canonical JSON")
            else:
                self._fail(None, "meta", 'the head record is not {"seq", "hash"}')
                head_seq, head_hash = last_key, None
        self.report.head_seq, self.report.head_hash = head_seq, head_hash
        if last_key != head_seq:
            self._fail(None, "meta", f"the head is seq {head_seq}, the last block {last_key}")
        last = max(head_seq, last_key)
        for name in PER_BLOCK_DBS:
            entries = self._txn.stat(self._dbs[name])["entries"]
            if entries != last:
                self._fail(None, "meta", f"{name} holds {entries} records for {last} blocks")
        return last

    def _load(self, seq: int | None, check: str, what: str, raw: bytes) -> Any:
        try:
            return load_json(raw)
        except NotJsonError as exc:
            self._fail(seq, check, f"{what} {exc}")
            return None

    # -- one block ----------------------------------------------------------------------------

    def _block_steps(self, seq: int, prev: str | None) -> Steps:
        """Check block ``seq`` whose predecessor's hash is ``prev``; return this block's hash."""
        key = seq.to_bytes(8, "big")
        record = self._block_record(seq, key)
        batch = None if record is None else record["batch"]
        digest = None if batch is None else self._check_batch(seq, batch)
        stored_hash = None if record is None else self._check_chain(seq, record, prev, digest)
        self.report.block_hashes.append(stored_hash)
        if record is not None and digest is not None:
            yield self._certificate_checks(seq, record["certificate"], digest)
        yield from self._tx_steps(seq, key, batch if digest is not None else None)
        self._check_roots(seq, key, stored_hash)
        head_hash = self.report.head_hash
        if self.report.head_seq == seq and head_hash is not None and stored_hash != head_hash:
            self._fail(seq, "meta", f"the head hash {head_hash} is not block {seq}'s")
        return stored_hash

    def _block_record(self, seq: int, key: bytes) -> dict[str, Any] | None:
        raw = self._get("blocks", key)
        if raw is None:
            self._fail(seq, "block", "the block record is missing")
            return None
        record = self._load(seq, "block", "the block record", raw)
        if record is None:
            return None
        if not isinstance(record, dict) or set(record) != BLOCK_FIELDS:
            self._fail(
                seq, "block", f"the block record must have the fields {_names(BLOCK_FIELDS)}"
            )
            return None
        if not is_canonical(raw, record):
            self._fail(seq, "block", "the block record is not stored as canonical JSON")
        if record["seq"] != seq:
            self._fail(seq, "block", f"the block record under seq {seq} says seq {record['seq']!r}")
        return record

    def _check_batch(self, seq: int, batch: Any) -> str | None:
        """Check the batch header; return its digest, or None if it is too damaged to hash."""
        genesis = self._genesis
        assert genesis is not None
        if not isinstance(batch, dict) or set(batch) != HEADER_FIELDS:
            self._fail(
                seq, "batch", f"the batch header must have the fields {_names(HEADER_FIELDS)}"
            )
            return None
        if batch["chain_id"] != genesis.chain_id:
            self._fail(seq, "batch", f"chain_id {batch['chain_id']!r} is not {genesis.chain_id!r}")
        if batch["seq"] != seq:
            self._fail(seq, "batch", f"the batch header says seq {batch['seq']!r}")
        for name in ("time_ms", "tx_count"):
            if not _is_int(batch[name]) or batch[name] < 0:
                self._fail(seq, "batch", f"{name} {batch[name]!r} is not a non-negative integer")
        if not is_hex(batch["tx_root"], HASH_HEX_LEN):
            self._fail(seq, "batch", "tx_root is not 64 lowercase hex characters")
        if batch["tx_count"] == 0 and batch["time_ms"] != 0:
            self._fail(seq, "batch", "a null batch (tx_count 0) must have time_ms 0")
        try:
            return hashlib.sha256(canonical_bytes(batch)).hexdigest()
        except CanonicalJsonError as exc:
            self._fail(seq, "batch", f"the batch header has no canonical JSON form: {exc}")
            return None

    def _check_chain(
        self, seq: int, record: dict[str, Any], prev: str | None, digest: str | None
    ) -> str | None:
        """Check prev_hash and hash; return the hash the next block must chain to."""
        stored_prev, stored_hash = record["prev_hash"], record["hash"]
        if prev is not None and stored_prev != prev:
            self._fail(seq, "chain", f"prev_hash {stored_prev!r} is not block {seq - 1}'s {prev}")
        computed = None
        if digest is not None and is_hex(stored_prev, HASH_HEX_LEN):
            computed = _block_hash(seq, prev if prev is not None else stored_prev, digest)
            if stored_hash != computed:
                self._fail(
                    seq,
                    "chain",
                    f"hash {stored_hash!r} is not block_hash({seq}) = {computed}, computed from "
                    "prev_hash and h(JCS(batch))",
                )
        # Chaining on the stored hash keeps one damaged block from failing all later ones.
        return str(stored_hash) if is_hex(stored_hash, HASH_HEX_LEN) else computed

    def _certificate_checks(self, seq: int, certificate: Any, digest: str) -> list[SigCheck]:
        genesis = self._genesis
        assert genesis is not None
        if not isinstance(certificate, dict) or set(certificate) != CERTIFICATE_FIELDS:
            self._fail(seq, "certificate", 'the certificate must be {"view", "signatures"}')
            return []
        view, signatures = certificate["view"], certificate["signatures"]
        if not _is_int(view) or view < 0 or not isinstance(signatures, dict):
            self._fail(seq, "certificate", "view must be an integer >= 0, signatures an object")
            return []
        body = commit_vote_body(genesis.chain_id, seq, view, digest)
        message = _COMMIT_PREFIX + canonical_bytes(body)
        checks: list[SigCheck] = []
        for pubkey, signature in signatures.items():
            if not genesis.is_validator(pubkey):
                self._fail(seq, "certificate", f"signer {pubkey!r} is not a genesis validator")
            elif not is_hex(signature, SIGNATURE_HEX_LEN):
                self._fail(seq, "certificate", f"the vote of {pubkey} is not 128 hex characters")
            else:
                checks.append(
                    (
                        bytes.fromhex(signature) + message,
                        bytes.fromhex(pubkey),
                        ("vote", seq, pubkey),
                    )
                )
        self._votes[seq] = len(checks)
        self.report.signatures += len(checks)
        return checks

    # -- the block's transactions -----------------------------------------------------------

    def _tx_steps(self, seq: int, key: bytes, batch: dict[str, Any] | None) -> Steps:
        wires, slow = self._block_txs(seq, key)
        if wires is None:
            self._fail(
                seq,
                "tx",
                "the block's transactions cannot be replayed; the state "
                "checks may report the differences this causes",
            )
            return
        view, rules = self._view, self._rules
        assert view is not None and rules is not None
        view.seq = seq
        first_seen = self._index
        stored_ids = self._get("block_tx_ids", key)
        digests: list[bytes] = []
        results: list[dict[str, Any]] = []
        signed_count = 0
        tx_prefix = _TX_PREFIX
        pending: list[SigCheck] = []
        step_txs = self._step_txs
        keys = self._client_keys
        for index, wire in enumerate(wires):
            tx_id, tx, body_jcs, problem = _decode(wire, slow)
            if tx_id is None:  # no canonical body: the index uses whatever id the node stored
                tx_id = _stored_id(stored_ids, index)
            digests.append(tx_id)
            if problem is not None:
                self._fail(seq, "tx", f"tx {index} ({tx_id.hex()}) {problem}")
            # What ledger.state_machine.execute_tx does, with the body decoded only once and
            # the index kept in the store's own encoding.
            if tx_id in first_seen:
                results.append(error_result(DUPLICATE))
            else:
                first_seen[tx_id] = key + index.to_bytes(4, "big")
                results.append(
                    error_result(MALFORMED) if tx is None else apply_transaction(view, tx, rules)
                )
            if tx is not None and body_jcs is not None:
                signed_count += 1
                signed = b"".join((bytes.fromhex(tx.sig), tx_prefix, body_jcs))
                client = keys.get(tx.client)
                if client is None:
                    client = keys[tx.client] = bytes.fromhex(tx.client)
                pending.append((signed, client, ("tx", seq, index, tx.tx_id)))
            if len(pending) >= step_txs:
                yield pending
                pending = []
        if pending:
            yield pending
        self.report.txs += len(wires)
        self.report.signatures += signed_count
        self._check_block_tx_data(seq, key, batch, digests, stored_ids, results)
        self._replayed = (digests, results)

    def _check_roots(self, seq: int, key: bytes, block_hash: str | None) -> None:
        """The replayed state and results roots against the stored ones and the block's
        execution certificate (spec §5)."""
        view, genesis = self._view, self._genesis
        assert view is not None and genesis is not None
        state_root = view.update_tree().hex()
        digests, results = self._replayed
        self._replayed = ([], [])
        try:
            replayed_results = results_root([d.hex() for d in digests], results)
        except ValueError:
            return  # the block's transactions could not be replayed: reported already
        raw = self._get("block_roots", key)
        if raw is None or len(raw) != 64:
            self._fail(seq, "roots", "the block's state and results roots are missing")
        else:
            if raw[:32].hex() != state_root:
                self._fail(
                    seq,
                    "roots",
                    f"stored state_root {raw[:32].hex()} but the replay gives {state_root}",
                )
            if raw[32:].hex() != replayed_results:
                self._fail(
                    seq,
                    "roots",
                    f"stored results_root {raw[32:].hex()} but the replay gives {replayed_results}",
                )
        raw_execution = self._get("block_execution", key)
        if raw_execution is None or block_hash is None:
            return  # a block may lack its certificate for a while (votes still arriving)
        execution = self._load(seq, "execution", "the execution certificate", raw_execution)
        if execution is None:
            return
        self.report.executions += 1
        if isinstance(execution, dict) and execution.get("state_root") != state_root:
            self._fail(
                seq,
                "execution",
                f"the execution certificate certifies state_root {execution.get('state_root')} "
                f"but the replay gives {state_root}",
            )
        elif isinstance(execution, dict) and execution.get("results_root") != replayed_results:
            self._fail(
                seq,
                "execution",
                f"the execution certificate certifies results_root "
                f"{execution.get('results_root')} but the replay gives {replayed_results}",
            )
        else:
            for failure in verify_execution_certificate(genesis, seq, block_hash, execution):
                self._fail(seq, "execution", failure)

    def _check_state_tree(self) -> None:
        """The node's stored tree (what its proofs come from) against the replay's root."""
        view = self._view
        assert view is not None
        try:
            # The audit's transaction is read-only: LMDB itself refuses any write to the tree.
            stored = StateTree(_LmdbNodes(self._txn, self._dbs["state_tree"])).root()
        except StateTreeDamaged as exc:
            self._fail(None, "state_tree", str(exc))
            return
        replayed = view.tree.root()
        if stored != replayed:
            self._fail(
                None,
                "state_tree",
                f"the stored state tree's root is {stored.hex()} but the replay gives "
                f"{replayed.hex()}: proofs from this ledger would not verify",
            )

    def _block_txs(self, seq: int, key: bytes) -> tuple[list[Any] | None, bool]:
        """The block's transactions in wire form, and whether they need the slow JCS."""
        raw = self._get("block_txs", key)
        if raw is None:
            self._fail(seq, "tx", "the block's transaction list is missing")
            return None, False
        slow = False
        try:
            wires = load_json(raw)
        except NotJsonError as exc:
            self._fail(seq, "tx", f"the stored transaction list {exc}")
            try:  # a float or NaN: replay anyway, it makes its transaction malformed
                wires, slow = _loads_lenient(raw), True
            except ValueError:
                return None, False
        if not isinstance(wires, list):
            self._fail(seq, "tx", "the stored transaction list is not a JSON list")
            return None, False
        if not slow and b"\\" in raw and _dump(wires) != raw:
            # Only escapes can change the bytes but not the value of compact JSON.
            self._fail(seq, "tx", "the stored transaction list is not in the store's encoding")
        return wires, slow

    def _check_block_tx_data(
        self,
        seq: int,
        key: bytes,
        batch: dict[str, Any] | None,
        digests: list[bytes],
        stored_ids: bytes | None,
        results: list[dict[str, Any]],
    ) -> None:
        if stored_ids != b"".join(digests):
            self._diff_tx_ids(seq, stored_ids, digests)
        if batch is not None:
            if batch["tx_count"] != len(digests):
                self._fail(
                    seq,
                    "batch",
                    f"tx_count is {batch['tx_count']!r}, the block holds {len(digests)}",
                )
            root = merkle_root(digests).hex()
            if batch["tx_root"] != root:
                self._fail(
                    seq,
                    "tx_root",
                    f"tx_root {batch['tx_root']!r} is not the Merkle root of the tx_ids, {root}",
                )
        raw_results = self._get("block_results", key)
        if raw_results != _dump(results):
            self._diff_results(seq, raw_results, results)

    def _diff_tx_ids(self, seq: int, stored: bytes | None, digests: list[bytes]) -> None:
        if stored is None:
            self._fail(seq, "tx_ids", "the block's stored tx_ids are missing")
            return
        if len(stored) != 32 * len(digests):
            self._fail(seq, "tx_ids", f"{len(stored)} bytes of tx_ids for {len(digests)} txs")
            return
        for index, digest in enumerate(digests):
            kept = stored[32 * index : 32 * index + 32]
            if kept != digest:
                self._fail(
                    seq,
                    "tx_ids",
                    f"tx {index}: stored tx_id {kept.hex()} is not h(JCS(body)) = {digest.hex()}",
                )

    def _diff_results(self, seq: int, raw: bytes | None, results: list[dict[str, Any]]) -> None:
        if raw is None:
            self._fail(seq, "results", "the block's results are missing")
            return
        stored = self._load(seq, "results", "the stored results", raw)
        if stored is None:
            return
        if not isinstance(stored, list) or len(stored) != len(results):
            self._fail(seq, "results", f"{_count(stored)} stored results for {len(results)} txs")
            return
        found = False
        for index, (kept, replayed) in enumerate(zip(stored, results, strict=True)):
            if kept != replayed or _dump(kept) != _dump(replayed):
                found = True
                self._fail(
                    seq,
                    "results",
                    f"tx {index}: stored result {_dump(kept).decode()} but the replay gives "
                    f"{_dump(replayed).decode()}",
                )
        if not found:
            self._fail(seq, "results", "the stored results are not in the store's encoding")

    # -- ledger-wide --------------------------------------------------------------------------

    def _check_index(self) -> None:
        expected = self._index
        with self._txn.cursor(db=self._dbs["tx_index"]) as cursor:
            stored = _as_dict(cursor)
        if stored == expected:
            return
        for tx_id, location in stored.items():
            want = expected.get(tx_id)
            if want == location:
                continue
            seq, index = _location(location)
            if want is None:
                self._fail(
                    seq,
                    "tx_index",
                    f"the index holds {tx_id.hex()} (at seq {seq} index {index}), which no "
                    "block holds",
                )
            else:
                want_seq, want_index = _location(want)
                self._fail(
                    want_seq,
                    "tx_index",
                    f"the index entry of {tx_id.hex()} points to seq {seq} index {index}; the tx "
                    f"is first at seq {want_seq} index {want_index}",
                )
        for tx_id in expected.keys() - stored.keys():
            seq, index = _location(expected[tx_id])
            self._fail(
                seq, "tx_index", f"tx {tx_id.hex()} (seq {seq} index {index}) is not in the index"
            )

    def _check_state(self) -> None:
        view = self._view
        assert view is not None
        expected = {
            key.encode("utf-8"): _dump(state_record(entry)) for key, entry in view.entries.items()
        }

        def mismatch(
            raw_key: bytes, have: bytes | None, want: bytes | None
        ) -> tuple[int | None, str]:
            key = raw_key.decode("utf-8", "replace")
            seq = view.key_written_at.get(key)
            return seq, (
                f"key {key!r}: stored {_shown(have)} but the replay gives {_shown(want)}"
                + ("" if seq is None else f" (last written at seq {seq})")
            )

        self.report.state_keys = self._compare_table("state", expected, mismatch)

    def _check_balances(self) -> None:
        view = self._view
        assert view is not None
        expected = {
            bytes.fromhex(pubkey): balance.to_bytes(8, "big")
            for pubkey, balance in view.balances.items()
        }

        def mismatch(
            raw_key: bytes, have: bytes | None, want: bytes | None
        ) -> tuple[int | None, str]:
            pubkey = raw_key.hex()
            seq = view.balance_written_at.get(pubkey)
            return seq, (
                f"account {pubkey}: stored balance {_balance(have)} but the replay gives "
                f"{_balance(want)}" + ("" if seq is None else f" (last changed at seq {seq})")
            )

        self.report.balances = self._compare_table("balances", expected, mismatch)

    def _compare_table(
        self,
        db: str,
        expected: dict[bytes, bytes],
        mismatch: Callable[[bytes, bytes | None, bytes | None], tuple[int | None, str]],
    ) -> int:
        """Fail, key by key, where sub-database ``db`` differs from what the replay expects
        (``mismatch`` says at which seq and how); return how many entries it holds."""
        with self._txn.cursor(db=self._dbs[db]) as cursor:
            stored = _as_dict(cursor)
        if stored != expected:
            for raw_key in sorted(stored.keys() | expected.keys()):
                have, want = stored.get(raw_key), expected.get(raw_key)
                if have != want:
                    seq, detail = mismatch(raw_key, have, want)
                    self._fail(seq, db, detail)
        return len(stored)


# -- helpers ------------------------------------------------------------------------------------


def _decode(wire: Any, slow: bool) -> tuple[bytes | None, ValidTx | None, bytes | None, str | None]:
    """``(tx_id, decoded tx, JCS(body), problem)`` for one stored transaction. The tx is decoded
    as ``decode_transaction`` does it (so it is malformed exactly when the state machine finds
    it so), but JCS(body) is computed once, here, for the tx_id and the signature alike."""
    try:
        body = wire.get("body") if type(wire) is dict and len(wire) == 2 and "sig" in wire else None
        if type(body) is not dict:  # the common shape is settled above, _body_of says the rest
            body = _body_of(wire)
        body_jcs = canonical_json(body) if slow else canonical_bytes(body)
    except TxError as exc:
        return None, None, None, f"is malformed: {exc.detail}"
    except (CanonicalJsonError, RecursionError) as exc:
        return None, None, None, f"is malformed: its body has no canonical JSON form ({exc})"
    digest = hashlib.sha256(body_jcs).digest()
    try:
        tx = _decode_checked(wire, body, digest.hex(), body_jcs, values_checked=True)
    except TxError as exc:
        return digest, None, None, f"is malformed: {exc.detail}"
    if len(body_jcs) > BODY_BYTES_MAX:
        problem = f"has a canonical body of {len(body_jcs)} bytes, more than {BODY_BYTES_MAX}"
        return digest, tx, body_jcs, problem
    return digest, tx, body_jcs, None


def _loads_lenient(raw: bytes) -> Any:
    return json.loads(raw)


def _stored_id(stored_ids: bytes | None, index: int) -> bytes:
    if stored_ids is None or len(stored_ids) < 32 * (index + 1):
        return _NO_TX_ID
    return stored_ids[32 * index : 32 * index + 32]


def _block_hash(seq: int, prev_hash: str, digest: str) -> str:
    """``consensus.batch.block_hash`` with the fast JCS."""
    body = {"seq": seq, "prev_hash": prev_hash, "digest": digest}
    return hashlib.sha256(canonical_bytes(body)).hexdigest()


def _as_dict(cursor: lmdb.Cursor) -> dict[bytes, bytes]:
    """A whole sub-database as a dict (the transaction reads bytes: ``buffers=False``)."""
    return cast(dict[bytes, bytes], dict(cursor))


def _location(data: bytes) -> tuple[int, int]:
    return int.from_bytes(data[:8], "big"), int.from_bytes(data[8:12], "big")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _names(fields: frozenset[str]) -> str:
    return ", ".join(sorted(fields))


def _count(value: Any) -> int:
    return len(value) if isinstance(value, list) else 0


def _shown(data: bytes | None) -> str:
    if data is None:
        return "nothing"
    text = data.decode("utf-8", "replace")
    return text if len(text) <= 200 else text[:200] + "..."


def _balance(data: bytes | None) -> str:
    if data is None:
        return "0 (absent)"
    if len(data) != 8:
        return f"{data.hex()} (not 8 bytes)"
    return str(int.from_bytes(data, "big"))
