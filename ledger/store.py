"""The LMDB ledger: blocks, certificates, results, the tx index, state and consensus records.

One LMDB write transaction per committed block holds everything the block changes, so a crash
leaves the ledger either before or after the block, never in between. Readers (the HTTP API, the
offline audit, also in another process while the node runs) use read-only transactions, which
never block the writer and see a consistent snapshot.

Layout (one environment, ``max_dbs`` named sub-databases; ``seq8`` is the sequence number as 8
bytes big-endian, so byte order is seq order; "JCS" values are RFC 8785 bytes, "JSON" values
compact JSON from the C encoder, for bulk entries nobody hashes):

==================  =============================  =============================================
db                  key                            value
==================  =============================  =============================================
``meta``            ``format_version``             ``b"2"`` (:data:`FORMAT_VERSION`)
                    ``genesis_hash``               hex ASCII
                    ``chain_id``                   UTF-8
                    ``genesis``                    JCS(genesis document)
                    ``head``                       JCS ``{"seq", "hash"}`` (seq 0: genesis_hash)
                    ``discard_below``              decimal ASCII (last value applied)
``blocks``          seq8                           JCS ``{"seq", "hash", "prev_hash", "batch",
                                                   "certificate"}`` (batch = header, spec §4)
``block_txs``       seq8                           JSON list of the transactions' wire form
``block_results``   seq8                           JSON list of results
``block_tx_ids``    seq8                           the raw 32-byte tx_ids, concatenated
``tx_index``        raw 32-byte tx_id              seq8 + index as 4 bytes big-endian (first
                                                   position only)
``state``           UTF-8 key                      JSON ``{"value", "version", "owner"}``
                                                   (owner: client pubkey hex); absent = deleted
``balances``        raw 32-byte pubkey             balance as 8 bytes big-endian; 0 not stored
``records``         UTF-8 ``Record.key``           JCS(``Record.value``)
``state_tree``      depth (2 bytes) + path prefix  a spec §5 state tree node record (see
                                                   :mod:`ledger.state_tree`), kept in the
                                                   block's write transaction
``block_roots``     seq8                           ``state_root || results_root`` (2 x 32 raw
                                                   bytes) after executing the block
``block_execution`` seq8                           JCS(execution certificate, spec §5), once q
                                                   matching execution votes arrived
``evidence``        32-byte validator pubkey +     JCS(misbehaviour evidence, spec §7); bounded
                    JCS([kind, slot...])           and verified by :mod:`ledger.evidence`
==================  =============================  =============================================

One process writes: :meth:`LedgerStore.open` for writing first takes an exclusive ``flock`` on
``DATA_DIR/node.lock`` (:mod:`ledger.datadir_lock`), before LMDB opens, and holds it until
:meth:`LedgerStore.close`; a second writer is refused with the holder's pid. Readers take no
such lock.

Damage: LMDB has no checksums, and mapping a truncated ``data.mdb`` kills the process with
SIGBUS. Before the writer opens the file, its size is checked against LMDB's meta pages; once
open, the head record, the hash chain of the last blocks, the contents of the very last ones and
the head's certificate are checked, and every consensus record (``ledger.records_check``: its
signatures, a batch against its header) (:meth:`LedgerStore.check_recent`). Any damage found is a
:class:`StoreError` that names it; ``phalanx audit`` checks everything else.

Map size: starts at ``map_size`` and doubles on ``MapFullError``: the whole block's write
transaction is aborted and redone after the resize, so nothing is ever half-written. Past
``map_size_max`` the store raises :class:`LedgerFullError` and the node must halt.
"""

from __future__ import annotations

import json
import os
import struct
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import lmdb
import orjson

from consensus.batch import Batch, Tx, block_hash
from consensus.output import Certificate, Committed, Record
from crypto.canonical import canonical_json
from crypto.hashing import hash_object
from crypto.hexcodec import HASH_HEX_LEN, KEY_HEX_LEN, is_hex
from crypto.merkle import merkle_root
from crypto.signing import Ed25519Verifier
from ledger.datadir_lock import DataDirLock, DataDirLocked
from ledger.execution import results_root
from ledger.genesis import Genesis, genesis_from_document
from ledger.receipt import build_receipt, verify_certificate
from ledger.records_check import check_records, first_problem
from ledger.state_machine import ChainRules, Entry, Predecoded, execute_batch
from ledger.state_tree import (
    Lookup,
    StateTree,
    balance_leaf_data,
    balance_path,
    data_hash,
    kv_leaf_data,
    kv_path,
    root_of,
)

FORMAT_VERSION = b"2"  # 2: state entries carry their owner, the genesis its fee_per_byte
MAP_SIZE_DEFAULT = 256 * 1024 * 1024
MAP_SIZE_MAX_DEFAULT = 1 << 40  # 1 TiB of address space; the file only grows as data is written
MAX_DBS = 16
MAX_READERS = 126
_RESIZE_RETRIES_MAX = 64
# Startup integrity check (writer): the hash chain of the last RECENT_CHAIN_CHECKED blocks, the
# full contents of the last RECENT_CONTENT_CHECKED, and the head block's commit certificate.
# The offline audit checks everything; this only keeps a node from serving a damaged head.
RECENT_CHAIN_CHECKED = 256
RECENT_CONTENT_CHECKED = 8

_DB_NAMES = (
    "meta",
    "blocks",
    "block_txs",
    "block_results",
    "block_tx_ids",
    "tx_index",
    "state",
    "balances",
    "records",
    "state_tree",
    "block_roots",
    "block_execution",
    "evidence",
)

_HEADER_FIELDS = ("chain_id", "seq", "time_ms", "tx_count", "tx_root")
_BLOCK_FIELDS = ("seq", "hash", "prev_hash", "batch", "txs", "results", "certificate")
_API_BLOCK_FIELDS = (*_BLOCK_FIELDS, "execution")

T = TypeVar("T")


class StoreError(Exception):
    """The ledger directory cannot be used (missing, another genesis, another format...)."""


class LedgerFullError(StoreError):
    """The ledger cannot grow any more; the node must halt. Nothing was half-written."""


class LedgerInvariantError(AssertionError):
    """The caller broke the store's contract (a block out of order, another chain's batch)."""


def _seq8(seq: int) -> bytes:
    return seq.to_bytes(8, "big")


def _jcs(value: Any) -> bytes:
    return canonical_json(value)


_dump_text = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


def _dump(value: Any) -> bytes:
    """Compact JSON for bulk entries (transactions, results, state) that nobody hashes: orjson
    writes them several times faster than the standard library, and these values were validated
    on their way in. orjson would write a NaN or an infinity as ``null`` where the standard
    encoder refuses them: any ``null`` in its output sends the value to the standard encoder,
    so nothing is ever stored other than as given (and a bug still raises)."""
    try:
        data = orjson.dumps(value)
    except (TypeError, orjson.JSONEncodeError):
        data = None  # a lone surrogate, a huge integer...: the standard encoder says which
    if data is None or b"null" in data:
        return _dump_text(value).encode("utf-8")
    return data


def _load(data: bytes | memoryview | None) -> Any:
    if data is None:
        # Every caller reads an entry that the block's write transaction stored with the others.
        raise StoreError("the ledger is damaged: an entry of a stored block is missing")
    try:
        return orjson.loads(data)  # what _dump wrote, read back several times faster
    except orjson.JSONDecodeError:
        return json.loads(bytes(data))  # an integer beyond 64 bits; or it says what is wrong


def record_seq(value: dict[str, Any]) -> int | None:
    """The seq a consensus record belongs to: its value's integer ``"seq"`` field, if any.

    ``discard_below=s`` deletes the records whose seq is below ``s``; records without a seq (the
    replica's view, its last view-change...) are only ever replaced, never discarded.
    """
    seq = value.get("seq")
    return seq if isinstance(seq, int) and not isinstance(seq, bool) else None


class _SharedExclusiveLock:
    """Many holders of transactions at once (shared), or one map resize (exclusive).

    LMDB's ``set_mapsize`` invalidates every transaction this process has open, so a resize
    waits until none is in use, and no new one starts meanwhile.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._shared = 0
        self._exclusive = False

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            while self._exclusive:
                self._cond.wait()
            self._shared += 1
        try:
            yield
        finally:
            with self._cond:
                self._shared -= 1
                self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            while self._exclusive or self._shared:
                self._cond.wait()
            self._exclusive = True
        try:
            yield
        finally:
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()

    @contextmanager
    def upgraded(self) -> Iterator[None]:
        """From inside ``shared()``: drop this share, hold the lock exclusively, share again.

        Deadlocks if the same thread holds a second share (a snapshot inside a snapshot).
        """
        with self._cond:
            self._shared -= 1
            self._cond.notify_all()
        try:
            with self.exclusive():
                yield
        finally:
            with self._cond:
                while self._exclusive:
                    self._cond.wait()
                self._shared += 1


class _LmdbState:
    """The state machine's :class:`~ledger.state_machine.StateView` over a write transaction."""

    def __init__(self, txn: lmdb.Transaction, dbs: dict[str, Any]) -> None:
        self._txn = txn
        self._state = dbs["state"]
        self._balances = dbs["balances"]
        self._tx_index = dbs["tx_index"]
        # What the block wrote, for the state tree's incremental update: each key's entry as
        # it is now (None: deleted), so that the tree's leaves need no second read.
        self._touched_keys: dict[str, Entry | None] = {}
        self._touched_balances: set[str] = set()

    def get_entry(self, key: str) -> Entry | None:
        data = self._txn.get(key.encode("utf-8"), db=self._state)
        if data is None:
            return None
        stored = _load(data)
        return Entry(stored["value"], stored["version"], stored["owner"])

    def put_entry(self, key: str, entry: Entry) -> None:
        value = _dump(state_record(entry))
        self._txn.put(key.encode("utf-8"), value, db=self._state)
        self._touched_keys[key] = entry

    def delete_entry(self, key: str) -> None:
        self._txn.delete(key.encode("utf-8"), db=self._state)
        self._touched_keys[key] = None

    def get_balance(self, pubkey: str) -> int:
        data = self._txn.get(bytes.fromhex(pubkey), db=self._balances)
        return 0 if data is None else int.from_bytes(data, "big")

    def set_balance(self, pubkey: str, balance: int) -> None:
        if balance:
            self._txn.put(bytes.fromhex(pubkey), balance.to_bytes(8, "big"), db=self._balances)
        else:
            self._txn.delete(bytes.fromhex(pubkey), db=self._balances)
        self._touched_balances.add(pubkey)

    def tree_changes(self) -> dict[bytes, bytes | None]:
        """The state tree changes of everything written so far (values as they are now)."""
        changes: dict[bytes, bytes | None] = {}
        for key, entry in self._touched_keys.items():
            changes[kv_path(key)] = (
                None
                if entry is None
                else data_hash(kv_leaf_data(key, entry.value, entry.version, entry.owner))
            )
        for pubkey in self._touched_balances:
            balance = self.get_balance(pubkey)
            changes[balance_path(pubkey)] = (
                data_hash(balance_leaf_data(pubkey, balance)) if balance else None
            )
        return changes

    def tx_location(self, tx_id: str) -> tuple[int, int] | None:
        data = self._txn.get(bytes.fromhex(tx_id), db=self._tx_index)
        return None if data is None else _decode_location(data)

    def put_tx_location(self, tx_id: str, seq: int, index: int) -> None:
        location = _seq8(seq) + index.to_bytes(4, "big")
        self._txn.put(bytes.fromhex(tx_id), location, db=self._tx_index)


def genesis_state_root(genesis: Genesis) -> str:
    """The state root before block 1: the genesis balances."""
    changes: dict[bytes, bytes] = {
        balance_path(k): data_hash(balance_leaf_data(k, v))
        for k, v in genesis.accounts.items()
        if v
    }
    return root_of(changes).hex()


class _LmdbNodes:
    """The state tree's :class:`~ledger.state_tree.NodeStore` over an LMDB transaction."""

    def __init__(self, txn: lmdb.Transaction, db: Any) -> None:
        self._txn = txn
        self._db = db

    def get_node(self, pos: bytes) -> bytes | None:
        data = self._txn.get(pos, db=self._db)
        return None if data is None else bytes(data)

    def put_node(self, pos: bytes, record: bytes) -> None:
        self._txn.put(pos, record, db=self._db)

    def delete_node(self, pos: bytes) -> None:
        self._txn.delete(pos, db=self._db)


def state_record(entry: Entry) -> dict[str, Any]:
    """What the ``state`` table stores for an entry (the audit rebuilds it the same way)."""
    return {"value": entry.value, "version": entry.version, "owner": entry.owner}


def _decode_location(data: bytes | memoryview) -> tuple[int, int]:
    data = bytes(data)
    return int.from_bytes(data[:8], "big"), int.from_bytes(data[8:12], "big")


class LedgerSnapshot:
    """A consistent read-only view of the ledger (one LMDB read transaction)."""

    def __init__(self, txn: lmdb.Transaction, dbs: dict[str, Any], genesis: Genesis) -> None:
        self._txn = txn
        self._dbs = dbs
        self.genesis = genesis

    def head(self) -> tuple[int, str]:
        """``(seq, block_hash(seq))`` of the last block; ``(0, genesis_hash)`` when empty."""
        data = self._txn.get(b"head", db=self._dbs["meta"])
        if data is None:
            return 0, self.genesis.genesis_hash
        head = _load(data)
        return head["seq"], head["hash"]

    def block(self, seq: int) -> dict[str, Any] | None:
        """The block as ``GET /v1/blocks/{seq}`` answers it, or None beyond the head."""
        if not isinstance(seq, int) or not 1 <= seq < 2**63:
            return None
        key = _seq8(seq)
        header = self._txn.get(key, db=self._dbs["blocks"])
        if header is None:
            return None
        block = _load(header)
        block["txs"] = _load(self._txn.get(key, db=self._dbs["block_txs"]))
        block["results"] = _load(self._txn.get(key, db=self._dbs["block_results"]))
        block["execution"] = self.execution(seq)
        return {k: block[k] for k in _API_BLOCK_FIELDS}

    def execution(self, seq: int) -> dict[str, Any] | None:
        """Block ``seq``'s execution certificate (spec §5), or None while it has none."""
        data = self._txn.get(_seq8(seq), db=self._dbs["block_execution"])
        return None if data is None else dict(_load(data))

    def roots(self, seq: int) -> tuple[str, str] | None:
        """``(state_root, results_root)`` this node computed for block ``seq``; the state root
        of the genesis state for seq 0; None beyond the head."""
        if seq == 0:
            return genesis_state_root(self.genesis), results_root([], [])
        data = self._txn.get(_seq8(seq), db=self._dbs["block_roots"])
        if data is None:
            return None
        raw = bytes(data)
        return raw[:32].hex(), raw[32:].hex()

    def state_root(self) -> str:
        """The state tree's root as of this snapshot's head."""
        return StateTree(_LmdbNodes(self._txn, self._dbs["state_tree"])).root().hex()

    def state_lookup(self, path: bytes) -> Lookup:
        """The state tree's entry on ``path`` with its proof, as of this snapshot's head."""
        return StateTree(_LmdbNodes(self._txn, self._dbs["state_tree"])).lookup(path)

    def block_event(self, seq: int) -> dict[str, Any] | None:
        """Block ``seq``'s SSE event ``{"seq", "hash", "tx_count", "tx_ids"}`` from the stored
        tx_ids (no transaction is decoded or hashed again); None beyond the head."""
        key = _seq8(seq)
        header = self._txn.get(key, db=self._dbs["blocks"])
        if header is None:
            return None
        raw = self._txn.get(key, db=self._dbs["block_tx_ids"])
        if raw is None:
            raise StoreError(f"block {seq} has no tx_ids: the ledger is damaged")
        raw = bytes(raw)
        tx_ids = [raw[i : i + 32].hex() for i in range(0, len(raw), 32)]
        return {
            "seq": seq,
            "hash": _load(header)["hash"],
            "tx_count": len(tx_ids),
            "tx_ids": tx_ids,
        }

    def block_hash(self, seq: int) -> str | None:
        """``block_hash(seq)``; ``genesis_hash`` for seq 0; None beyond the head."""
        if seq == 0:
            return self.genesis.genesis_hash
        header = self._txn.get(_seq8(seq), db=self._dbs["blocks"])
        return None if header is None else str(_load(header)["hash"])

    def iter_blocks(self, start: int = 1, end: int | None = None) -> Iterator[dict[str, Any]]:
        """Blocks ``start..end`` (inclusive; ``end`` defaults to the head) in seq order."""
        last = self.head()[0] if end is None else min(end, self.head()[0])
        for seq in range(max(start, 1), last + 1):
            block = self.block(seq)
            if block is None:
                raise StoreError(f"block {seq} is missing below the head {last}: ledger damaged")
            yield block

    def tx_location(self, tx_id: str) -> tuple[int, int] | None:
        """``(seq, index)`` of the first position of ``tx_id``, or None if not committed."""
        if not is_hex(tx_id, HASH_HEX_LEN):
            return None
        data = self._txn.get(bytes.fromhex(tx_id), db=self._dbs["tx_index"])
        return None if data is None else _decode_location(data)

    def is_committed(self, tx_id: str) -> bool:
        return self.tx_location(tx_id) is not None

    def committed_among(self, tx_ids: Iterable[str]) -> set[str]:
        """Those of ``tx_ids`` the ledger holds."""
        db = self._dbs["tx_index"]
        get = self._txn.get
        return {
            tx_id
            for tx_id in tx_ids
            if is_hex(tx_id, HASH_HEX_LEN) and get(bytes.fromhex(tx_id), db=db) is not None
        }

    def receipt(self, tx_id: str) -> dict[str, Any] | None:
        """The spec §5 receipt of a committed transaction (its first position), else None."""
        location = self.tx_location(tx_id)
        if location is None:
            return None
        seq, index = location
        key = _seq8(seq)
        header = _load(self._txn.get(key, db=self._dbs["blocks"]))
        raw = self._txn.get(key, db=self._dbs["block_tx_ids"])
        if raw is None:
            raise StoreError(f"block {seq} has no tx_ids: the ledger is damaged")
        raw = bytes(raw)
        tx_ids = [raw[i : i + 32] for i in range(0, len(raw), 32)]
        results = _load(self._txn.get(key, db=self._dbs["block_results"]))
        return build_receipt(
            tx_id,
            seq,
            index,
            tx_ids,
            header["batch"],
            header["certificate"],
            results,
            header["prev_hash"],
            self.execution(seq),
        )

    def get_state(self, key: str) -> dict[str, Any] | None:
        """``{"key", "value", "version", "owner", "seq"}`` as ``GET /v1/state/{key}`` answers
        (as of the executed block ``seq``), or None if absent."""
        try:
            raw_key = key.encode("utf-8")
        except UnicodeEncodeError:
            return None
        if not 1 <= len(raw_key) <= 511:
            return None
        data = self._txn.get(raw_key, db=self._dbs["state"])
        if data is None:
            return None
        stored = _load(data)
        return {
            "key": key,
            "value": stored["value"],
            "version": stored["version"],
            "owner": stored["owner"],
            "seq": self.head()[0],
        }

    def proven_state(self, key: str) -> dict[str, Any]:
        """``GET /v1/state/{key}?proof=true`` as of this snapshot's head, without its
        ``execution`` (the caller adds the head block's certificate). Present or absent."""
        seq, head_hash = self.head()
        entry = self.get_state(key)
        answer: dict[str, Any] = {"key": key, "value": None, "version": 0, "owner": None}
        if entry is not None:
            answer.update({k: entry[k] for k in ("value", "version", "owner")})
            expected: bytes | None = data_hash(
                kv_leaf_data(key, entry["value"], entry["version"], entry["owner"])
            )
        else:
            expected = None
        return self._with_proof(answer, kv_path(key), expected, seq, head_hash, f"key {key!r}")

    def proven_balance(self, pubkey: str) -> dict[str, Any]:
        """``GET /v1/accounts/{pubkey}?proof=true`` as of this snapshot's head, without its
        ``execution``."""
        seq, head_hash = self.head()
        balance = self.balance(pubkey)
        expected = data_hash(balance_leaf_data(pubkey, balance)) if balance else None
        answer: dict[str, Any] = {"pubkey": pubkey, "balance": balance}
        return self._with_proof(
            answer, balance_path(pubkey), expected, seq, head_hash, f"balance of {pubkey}"
        )

    def _with_proof(
        self,
        answer: dict[str, Any],
        path: bytes,
        expected: bytes | None,
        seq: int,
        head_hash: str,
        what: str,
    ) -> dict[str, Any]:
        found = self.state_lookup(path)
        if found.data_hash != expected:
            # The state table and the tree disagree: one of them was changed behind the
            # ledger's back. Never serve a proof for a value the tree does not hold.
            raise StoreError(
                f"the ledger is damaged: the stored {what} differs from the state tree; "
                "run phalanx audit on this data directory"
            )
        answer.update({"seq": seq, "block_hash": head_hash, "state_proof": found.proof.to_wire()})
        return answer

    def balance(self, pubkey: str) -> int:
        if not is_hex(pubkey, KEY_HEX_LEN):
            return 0
        data = self._txn.get(bytes.fromhex(pubkey), db=self._dbs["balances"])
        return 0 if data is None else int.from_bytes(data, "big")

    def iter_state(self) -> Iterator[tuple[str, Entry]]:
        """Every present key as ``(key, Entry)``, in UTF-8 byte order."""
        with self._txn.cursor(db=self._dbs["state"]) as cursor:
            for raw_key, data in cursor:
                stored = _load(data)
                entry = Entry(stored["value"], stored["version"], stored["owner"])
                yield bytes(raw_key).decode("utf-8"), entry

    def iter_balances(self) -> Iterator[tuple[str, int]]:
        """Every non-zero balance as ``(pubkey, balance)``, in key order."""
        with self._txn.cursor(db=self._dbs["balances"]) as cursor:
            for raw_key, data in cursor:
                yield bytes(raw_key).hex(), int.from_bytes(data, "big")

    def iter_tx_locations(self) -> Iterator[tuple[str, int, int]]:
        """Every indexed transaction as ``(tx_id, seq, index)``, in tx_id order."""
        with self._txn.cursor(db=self._dbs["tx_index"]) as cursor:
            for raw_key, data in cursor:
                seq, index = _decode_location(data)
                yield bytes(raw_key).hex(), seq, index

    def load_records(self) -> list[Record]:
        with self._txn.cursor(db=self._dbs["records"]) as cursor:
            return [Record(bytes(k).decode("utf-8"), _load(v)) for k, v in cursor]


def committed_from_block(block: Any) -> Committed:
    """Rebuild the ``Committed`` a block was appended from (state transfer, audit replay).

    ``block`` may come from a peer: anything malformed, or transactions that do not match the
    batch header, raises ValueError. The certificate is *not* verified here; use
    :func:`ledger.receipt.verify_committed`.
    """
    if not isinstance(block, Mapping):
        raise ValueError("a block must be an object")
    header, wires, certificate = block.get("batch"), block.get("txs"), block.get("certificate")
    if not isinstance(header, Mapping) or set(header) != set(_HEADER_FIELDS):
        raise ValueError(f"block batch must be an object with {', '.join(_HEADER_FIELDS)}")
    seq, time_ms, chain_id = header["seq"], header["time_ms"], header["chain_id"]
    if not _is_int(seq) or seq < 1 or not _is_int(time_ms) or time_ms < 0:
        raise ValueError("block batch seq and time_ms must be integers")
    if not isinstance(chain_id, str):
        raise ValueError("block batch chain_id must be a string")
    if not isinstance(wires, list) or not all(isinstance(w, Mapping) for w in wires):
        raise ValueError("block txs must be a list of objects")
    if not isinstance(certificate, Mapping) or not _is_int(certificate.get("view")):
        raise ValueError("block certificate must be an object with an integer view")
    signatures = certificate.get("signatures")
    if not isinstance(signatures, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in signatures.items()
    ):
        raise ValueError("block certificate signatures must map strings to strings")
    batch = Batch(chain_id, seq, time_ms, tuple(Tx.from_wire(wire) for wire in wires))
    if batch.header != dict(header):
        raise ValueError(f"block {seq}: transactions do not match the batch header")
    return Committed(batch, Certificate(certificate["view"], dict(signatures)))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class LedgerStore:
    """The ledger of one node. Open with :meth:`open`; one writer process, any number of readers.

    Do not call :meth:`append_block` or :meth:`persist_records` while holding a
    :meth:`snapshot` in the same thread: a map resize waits for every snapshot to end.
    """

    def __init__(
        self,
        env: lmdb.Environment,
        dbs: dict[str, Any],
        genesis: Genesis,
        path: Path,
        readonly: bool,
        map_size_max: int,
        dir_lock: DataDirLock | None = None,
    ) -> None:
        self._env = env
        self._dir_lock = dir_lock
        self._rules = ChainRules.of(genesis)
        self._dbs = dbs
        self.genesis = genesis
        self.path = path
        self.readonly = readonly
        self._map_size_max = map_size_max
        self._lock = _SharedExclusiveLock()
        self._write_mutex = threading.Lock()
        self._head: tuple[int, str] | None = None
        self.last_timing = (0.0, 0.0)  # the last append_block: (whole, roots) CPU seconds
        if not readonly:
            self._head = self._read(lambda snap: snap.head())

    # -- opening ----------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        data_dir: Path | str,
        genesis: Genesis | None = None,
        *,
        readonly: bool = False,
        map_size: int = MAP_SIZE_DEFAULT,
        map_size_max: int = MAP_SIZE_MAX_DEFAULT,
        sync_each_write: bool = True,
    ) -> LedgerStore:
        """Open (the writer creates) the ledger in ``data_dir``.

        The writer needs ``genesis``; it creates the directory (mode 0700) and files (0600) and
        refuses a directory made for another genesis. A reader (``readonly=True``, safe beside
        a running writer in another process) may pass ``genesis=None`` to use the stored one.
        ``sync_each_write=False`` leaves each write in the page cache (safe from a killed
        process, not from the machine going down) until :meth:`flush`: see ledger/power_loss.py.
        """
        path = Path(data_dir)
        dir_lock: DataDirLock | None = None
        if readonly:
            env = _open_reader_env(path, map_size)
        else:
            if genesis is None:
                raise ValueError("the writer must be given the genesis")
            # Before LMDB opens: a second writer (a second node on this directory) would
            # sign beside the first one. The lock lives as long as the store.
            try:
                dir_lock = DataDirLock.acquire(path)
            except DataDirLocked as exc:
                raise StoreError(str(exc)) from exc
            try:
                check_data_file(path)
                env = _open_writer_env(path, map_size, sync_each_write)
            except BaseException:
                dir_lock.release()
                raise
        try:
            dbs = _open_dbs(env, path, readonly)
            stored = _check_meta(env, dbs, path, genesis, readonly)
            store = cls(env, dbs, stored, path, readonly, map_size_max, dir_lock)
        except _DAMAGE_ERRORS as exc:
            env.close()
            if dir_lock is not None:
                dir_lock.release()
            raise _damaged(path, exc) from exc
        except BaseException:
            env.close()
            if dir_lock is not None:
                dir_lock.release()
            raise
        if not readonly:
            # The writer is a node about to serve this ledger: refuse a damaged head.
            try:
                store.check_recent()
            except BaseException:
                store.close()
                raise
        return store

    @staticmethod
    def read_genesis(data_dir: Path | str) -> Genesis:
        """The genesis a ledger directory was created for (opens it read-only)."""
        store = LedgerStore.open(data_dir, readonly=True)
        try:
            return store.genesis
        finally:
            store.close()

    def close(self) -> None:
        with self._write_mutex, self._lock.exclusive():
            self._env.close()
            if self._dir_lock is not None:
                self._dir_lock.release()  # after LMDB is closed: no write can follow

    def __enter__(self) -> LedgerStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading ----------------------------------------------------------------------------

    @contextmanager
    def snapshot(self) -> Iterator[LedgerSnapshot]:
        """A consistent read-only view; keep it short-lived in the node (it pins old pages)."""
        with self._lock.shared():
            txn = self._begin_read()
            try:
                yield LedgerSnapshot(txn, self._dbs, self.genesis)
            finally:
                txn.abort()

    def _begin_read(self) -> lmdb.Transaction:
        # Called with the shared lock held; a reader whose map another process outgrew adopts
        # the new size (which needs the exclusive lock) and tries again.
        for _ in range(_RESIZE_RETRIES_MAX):
            try:
                return self._env.begin(write=False, buffers=False)
            except lmdb.MapResizedError:
                self._lock_upgrade_adopt_map()
        raise StoreError(f"ledger {self.path}: the map keeps being resized; try again")

    def _lock_upgrade_adopt_map(self) -> None:
        # set_mapsize(0) adopts the size another process gave the map. It invalidates every
        # transaction of this process, so it runs under the exclusive lock.
        with self._lock.upgraded():
            self._env.set_mapsize(0)

    def _read(self, fn: Callable[[LedgerSnapshot], T]) -> T:
        with self.snapshot() as snap:
            return fn(snap)

    def head(self) -> tuple[int, str]:
        if self._head is not None:
            return self._head
        return self._read(lambda s: s.head())

    def block(self, seq: int) -> dict[str, Any] | None:
        return self._read(lambda s: s.block(seq))

    def block_hash(self, seq: int) -> str | None:
        return self._read(lambda s: s.block_hash(seq))

    def block_event(self, seq: int) -> dict[str, Any] | None:
        return self._read(lambda s: s.block_event(seq))

    def tx_location(self, tx_id: str) -> tuple[int, int] | None:
        return self._read(lambda s: s.tx_location(tx_id))

    def is_committed(self, tx_id: str) -> bool:
        return self._read(lambda s: s.is_committed(tx_id))

    def committed_among(self, tx_ids: Collection[str]) -> set[str]:
        """Those of ``tx_ids`` the ledger holds, read in one snapshot (one per transaction
        cost the node a fifth of its main thread under load)."""
        if not tx_ids:
            return set()
        return self._read(lambda s: s.committed_among(tx_ids))

    def receipt(self, tx_id: str) -> dict[str, Any] | None:
        return self._read(lambda s: s.receipt(tx_id))

    def get_state(self, key: str) -> dict[str, Any] | None:
        return self._read(lambda s: s.get_state(key))

    def balance(self, pubkey: str) -> int:
        return self._read(lambda s: s.balance(pubkey))

    def balances(self, pubkeys: Collection[str]) -> dict[str, int]:
        """The balance of each of ``pubkeys``, read in one snapshot."""
        if not pubkeys:
            return {}
        return self._read(lambda s: {pubkey: s.balance(pubkey) for pubkey in pubkeys})

    def load_records(self) -> list[Record]:
        """Every persisted consensus record, in key order. :class:`StoreError` if one does not
        decode (a node must not restart without what it signed)."""
        try:
            return self._read(lambda s: s.load_records())
        except _DAMAGE_ERRORS as exc:
            raise _damaged(self.path, exc) from exc

    def iter_blocks(self, start: int = 1, end: int | None = None) -> Iterator[dict[str, Any]]:
        """Blocks in seq order, all from one snapshot taken at the first ``next()``."""
        with self.snapshot() as snap:
            yield from snap.iter_blocks(start, end)

    def map_size(self) -> int:
        return int(self._env.info()["map_size"])

    def check_recent(
        self,
        chain_max: int = RECENT_CHAIN_CHECKED,
        content_max: int = RECENT_CONTENT_CHECKED,
    ) -> None:
        """Raise :class:`StoreError` unless the head record, the hash chain of the last
        ``chain_max`` blocks, the contents (transactions, tx_ids, tx_root, results) of the last
        ``content_max`` and the head block's commit certificate are consistent.

        Bounded work, run when the writer opens: LMDB has no checksums, so damaged bytes can
        read back as plausible data. ``phalanx audit`` checks the whole ledger.
        """
        try:
            with self.snapshot() as snap:
                problem = _recent_damage(snap, chain_max, content_max)
                if problem is None:
                    # Every consensus record too: a node must not sign from a damaged one.
                    problem = first_problem(
                        check_records(
                            snap.load_records(),
                            snap.genesis.chain_id,
                            snap.genesis.validator_keys,
                            Ed25519Verifier(),
                        )
                    )
        except StoreError:
            raise
        except _DAMAGE_ERRORS as exc:
            raise _damaged(self.path, exc) from exc
        if problem is not None:
            raise StoreError(f"ledger {self.path} is damaged: {problem}. {_DAMAGE_ADVICE}")

    # -- writing ----------------------------------------------------------------------------

    def append_block(
        self,
        committed: Committed,
        records: Iterable[Record] = (),
        discard_below: int | None = None,
        predecoded: Predecoded | None = None,
    ) -> list[dict[str, Any]]:
        """Execute and store the block at ``head + 1`` in one durable write transaction, with
        ``records`` and ``discard_below``; return the transactions' results. ``predecoded``:
        see :func:`ledger.state_machine.execute_tx`."""
        ((_, results),) = self.append_blocks(
            [committed], predecoded, records=records, discard_below=discard_below
        )
        return results

    def append_blocks(
        self,
        blocks: Sequence[Committed],
        predecoded: Predecoded | None = None,
        *,
        records: Iterable[Record] = (),
        discard_below: int | None = None,
    ) -> list[tuple[str, list[dict[str, Any]]]]:
        """Execute and store consecutive blocks from ``head + 1`` in ONE durable write
        transaction, with ``records`` and ``discard_below``: a crash leaves all of them or
        none. Returns each block's ``(hash, results)``; ``predecoded``: see
        :func:`ledger.state_machine.execute_tx`. For a node catching up: one write per fetched
        chunk instead of one per block."""
        blocks = list(blocks)
        records = list(records)
        if not blocks:
            return []
        with self._write_mutex:
            head_seq, head_hash = self._writer_head()
            prepared: list[tuple[Committed, bytes, str, bytes, bytes, bytes]] = []
            prev_hash = head_hash
            for offset, committed in enumerate(blocks):
                batch = committed.batch
                if batch.seq != head_seq + 1 + offset:
                    raise LedgerInvariantError(
                        f"block {batch.seq} appended after head {head_seq + offset}; blocks go "
                        "in seq order"
                    )
                if batch.chain_id != self.genesis.chain_id:
                    raise LedgerInvariantError(f"batch of chain {batch.chain_id!r} appended")
                new_hash = block_hash(batch.seq, prev_hash, batch.digest)
                header = _jcs(
                    {
                        "seq": batch.seq,
                        "hash": new_hash,
                        "prev_hash": prev_hash,
                        "batch": batch.header,
                        "certificate": committed.certificate.to_wire(),
                    }
                )
                txs = _dump([dict(tx.wire) for tx in batch.txs])
                tx_ids = b"".join(bytes.fromhex(tx.tx_id) for tx in batch.txs)
                prepared.append((committed, _seq8(batch.seq), new_hash, header, txs, tx_ids))
                prev_hash = new_hash
            roots_s = [0.0]

            def work(txn: lmdb.Transaction) -> list[tuple[str, list[dict[str, Any]]]]:
                roots_s[0] = 0.0  # _write may run this again after growing the map
                appended: list[tuple[str, list[dict[str, Any]]]] = []
                for committed, key, new_hash, header, txs, tx_ids in prepared:
                    batch = committed.batch
                    # A fresh view per block: its tree changes are that block's alone.
                    state = _LmdbState(txn, self._dbs)
                    results = execute_batch(state, batch.seq, batch.txs, self._rules, predecoded)
                    tree_started = time.thread_time()
                    tree = StateTree(_LmdbNodes(txn, self._dbs["state_tree"]))
                    state_root = tree.update(state.tree_changes())
                    tx_id_list = [tx.tx_id for tx in batch.txs]
                    roots = state_root + bytes.fromhex(results_root(tx_id_list, results))
                    roots_s[0] += time.thread_time() - tree_started
                    txn.put(key, roots, db=self._dbs["block_roots"])
                    txn.put(key, header, db=self._dbs["blocks"])
                    txn.put(key, txs, db=self._dbs["block_txs"])
                    txn.put(key, _dump(results), db=self._dbs["block_results"])
                    txn.put(key, tx_ids, db=self._dbs["block_tx_ids"])
                    appended.append((new_hash, results))
                last_seq = blocks[-1].batch.seq
                txn.put(b"head", _jcs({"seq": last_seq, "hash": prev_hash}), db=self._dbs["meta"])
                self._write_records(txn, records, discard_below)
                return appended

            started = time.thread_time()
            appended = self._write(work)
            # What the blocks cost (CPU time of this thread: the machine may be shared), and the
            # part the state and results roots took; the runtime exports both as metrics.
            self.last_timing = (time.thread_time() - started, roots_s[0])
            self._head = (blocks[-1].batch.seq, prev_hash)
            return appended

    def put_executions(self, certificates: Mapping[int, Mapping[str, Any]]) -> None:
        """Durably store execution certificates (``seq -> certificate``, already verified by
        the caller) of blocks the ledger holds, in one write."""
        if not certificates:
            return
        with self._write_mutex:
            head_seq = self._writer_head()[0]
            if any(not 1 <= seq <= head_seq for seq in certificates):
                raise LedgerInvariantError("an execution certificate for a block not stored")
            items = [(_seq8(seq), _jcs(dict(cert))) for seq, cert in certificates.items()]

            def work(txn: lmdb.Transaction) -> None:
                for key, value in items:
                    txn.put(key, value, db=self._dbs["block_execution"])

            self._write(work)

    def execution(self, seq: int) -> dict[str, Any] | None:
        return self._read(lambda s: s.execution(seq))

    def proven_state(self, key: str) -> dict[str, Any]:
        return self._read(lambda s: s.proven_state(key))

    def proven_balance(self, pubkey: str) -> dict[str, Any]:
        return self._read(lambda s: s.proven_balance(pubkey))

    def account(self, pubkey: str) -> dict[str, Any]:
        """``{"pubkey", "balance", "seq"}``: the balance as of the executed block ``seq``."""
        return self._read(
            lambda s: {"pubkey": pubkey, "balance": s.balance(pubkey), "seq": s.head()[0]}
        )

    def roots(self, seq: int) -> tuple[str, str] | None:
        return self._read(lambda s: s.roots(seq))

    def evidence_entries(self) -> list[tuple[bytes, bytes]]:
        """Every (key, value) of the ``evidence`` table, in key order (see ledger/evidence.py)."""

        def read(snap: LedgerSnapshot) -> list[tuple[bytes, bytes]]:
            with snap._txn.cursor(db=self._dbs["evidence"]) as cursor:
                return [(bytes(k), bytes(v)) for k, v in cursor]

        return self._read(read)

    def put_evidence(self, key: bytes, value: bytes) -> bool:
        """Durably store one evidence entry unless ``key`` is already there; True if stored."""

        def work(txn: lmdb.Transaction) -> bool:
            stored: bool = txn.put(key, value, db=self._dbs["evidence"], overwrite=False)
            return stored

        with self._write_mutex:
            return self._write(work)

    def flush(self) -> None:
        """Put every committed write on disk (fsync); blocks the calling thread, not the GIL."""
        if not self.readonly:
            with self._lock.shared():  # not while a resize swaps the map
                self._env.sync(True)

    def persist_records(self, records: Iterable[Record], discard_below: int | None = None) -> None:
        """Durably write consensus records (and discard old ones) for a step without a block."""
        records = list(records)
        if not records and discard_below is None:
            return
        with self._write_mutex:
            self._write(lambda txn: self._write_records(txn, records, discard_below))

    def _writer_head(self) -> tuple[int, str]:
        if self.readonly or self._head is None:
            raise LedgerInvariantError("this ledger store was opened read-only")
        return self._head

    def _write_records(
        self, txn: lmdb.Transaction, records: list[Record], discard_below: int | None
    ) -> None:
        db = self._dbs["records"]
        for record in records:
            # Compact JSON, not JCS: records are read back, never hashed, and a batch record
            # holds a whole batch (JCS cost a backup 4% of its time under load).
            txn.put(record.key.encode("utf-8"), _dump(record.value), db=db)
        if discard_below is None:
            return
        doomed = []
        with txn.cursor(db=db) as cursor:
            for raw_key, data in cursor:
                seq = record_seq(_load(data))
                if seq is not None and seq < discard_below:
                    doomed.append(bytes(raw_key))
        for raw_key in doomed:
            txn.delete(raw_key, db=db)
        txn.put(b"discard_below", str(discard_below).encode("ascii"), db=self._dbs["meta"])

    def _write(self, work: Callable[[lmdb.Transaction], T]) -> T:
        """Run ``work`` in one write transaction; on MapFullError abort, grow, and redo it all."""
        if self.readonly:
            raise LedgerInvariantError("this ledger store was opened read-only")
        for _ in range(_RESIZE_RETRIES_MAX):
            try:
                with self._lock.shared(), self._env.begin(write=True) as txn:
                    result = work(txn)
                return result
            except lmdb.MapFullError:
                self._grow()
            except lmdb.Error as exc:
                raise StoreError(
                    f"ledger {self.path}: write failed and was rolled back ({exc}); "
                    "the node must stop"
                ) from exc
        raise LedgerFullError(f"ledger {self.path}: a block did not fit after repeated growth")

    def _grow(self) -> None:
        current = self.map_size()
        target = current * 2
        if target > self._map_size_max:
            raise LedgerFullError(
                f"ledger {self.path} is full: it needs more than map_size_max = "
                f"{self._map_size_max} bytes (now {current}). The last block was not written. "
                "Free disk space or raise the limit, then restart the node."
            )
        try:
            with self._lock.exclusive():
                self._env.set_mapsize(target)
        except lmdb.Error as exc:
            raise LedgerFullError(
                f"ledger {self.path}: cannot grow the map to {target} bytes ({exc}); "
                "the node must stop. The last block was not written."
            ) from exc


# -- integrity ----------------------------------------------------------------------------------

# What reading damaged LMDB pages raises: LMDB's own checks (MDB_CORRUPTED, MDB_PAGE_NOTFOUND...)
# and, when damaged bytes still look like a page, undecodable or ill-shaped values.
_DAMAGE_ERRORS = (lmdb.Error, ValueError, KeyError, TypeError, IndexError, AttributeError)
_DAMAGE_ADVICE = (
    "Stop using this data directory: move it away and restart the node with an empty one, "
    "which fetches the committed blocks from its peers and verifies them; or restore a backup"
)

# LMDB's file starts with two meta pages (lmdb.h, mdb.c: MDB_page header, then MDB_meta). Offsets
# for 64-bit builds: mm_magic at 16, mm_version at 20, mm_dbs[FREE_DBI].md_pad (the page size)
# at 40, mm_last_pg at 136, mm_txnid at 144.
_LMDB_MAGIC = 0xBEEFC0DE
_LMDB_DATA_VERSION = 1
_META_BYTES = 152


def check_data_file(path: Path) -> None:
    """Refuse a ``data.mdb`` that LMDB would map past its end: reading such pages kills the process
    with SIGBUS instead of raising, so a truncated file must be caught before LMDB opens it.

    Absent file: a fresh ledger (fine). Empty or shorter than its meta pages, bad meta pages, or
    shorter than its last committed transaction says: :class:`StoreError` saying so.
    """
    data = path / "data.mdb"
    try:
        with open(data, "rb") as file:
            size = os.fstat(file.fileno()).st_size
            first = file.read(_META_BYTES)
            page_size = struct.unpack_from("<I", first, 40)[0] if len(first) >= 44 else 0
            if 4096 <= page_size <= 65536:
                file.seek(page_size)
            second = file.read(_META_BYTES)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise StoreError(f"cannot read {data}: {exc}") from exc
    if size == 0:
        raise StoreError(
            f"ledger file {data} is empty (0 bytes): it was truncated or never finished being "
            f"created. {_DAMAGE_ADVICE}"
        )
    metas = [_parse_meta(first), _parse_meta(second)]
    if None in metas or len(second) < _META_BYTES:
        raise StoreError(
            f"ledger file {data} ({size} bytes) does not start with two valid LMDB meta pages: "
            f"it is truncated or overwritten. {_DAMAGE_ADVICE}"
        )
    last_pg, _ = max((m for m in metas if m is not None), key=lambda m: m[1])
    needed = (last_pg + 1) * page_size
    if size < needed:
        raise StoreError(
            f"ledger file {data} is truncated: it has {size} bytes, but its last committed "
            f"transaction uses {needed}. {_DAMAGE_ADVICE}"
        )


def _parse_meta(page: bytes) -> tuple[int, int] | None:
    """``(last_pg, txnid)`` of one LMDB meta page, or None if it is not one."""
    if len(page) < _META_BYTES:
        return None
    magic, version = struct.unpack_from("<II", page, 16)
    if magic != _LMDB_MAGIC or version != _LMDB_DATA_VERSION:
        return None
    last_pg, txnid = struct.unpack_from("<QQ", page, 136)
    return last_pg, txnid


def _damaged(path: Path, exc: BaseException) -> StoreError:
    return StoreError(
        f"ledger {path} is damaged: reading it failed ({type(exc).__name__}: {exc}). "
        f"{_DAMAGE_ADVICE}"
    )


def _recent_damage(snap: LedgerSnapshot, chain_max: int, content_max: int) -> str | None:
    """What is wrong with the head and the last blocks (see :meth:`LedgerStore.check_recent`)."""
    txn, dbs, genesis = snap._txn, snap._dbs, snap.genesis
    head_seq, head_hash = snap.head()
    if not _is_int(head_seq) or head_seq < 0 or not is_hex(head_hash, HASH_HEX_LEN):
        return "the head record is malformed"
    with txn.cursor(db=dbs["blocks"]) as cursor:
        last = int.from_bytes(bytes(cursor.key()), "big") if cursor.last() else 0
    if last != head_seq:
        return f"the head record names block {head_seq}, but the last stored block is {last}"
    if head_seq == 0:
        return None if head_hash == genesis.genesis_hash else "an empty ledger's head is wrong"
    first = max(1, head_seq - chain_max + 1)
    prev: str | None = genesis.genesis_hash if first == 1 else None
    header: dict[str, Any] = {}
    digest = ""
    for seq in range(first, head_seq + 1):
        raw = txn.get(_seq8(seq), db=dbs["blocks"])
        if raw is None:
            return f"block {seq} is missing below the head {head_seq}"
        header = _load(raw)
        batch = header["batch"]
        if header["seq"] != seq or batch["seq"] != seq or batch["chain_id"] != genesis.chain_id:
            return f"block {seq} is stored under the wrong seq or chain"
        if prev is not None and header["prev_hash"] != prev:
            return f"block {seq} does not link to block {seq - 1} (prev_hash differs)"
        digest = hash_object(batch)
        if header["hash"] != block_hash(seq, header["prev_hash"], digest):
            return f"block {seq}: the stored hash is not block_hash(seq, prev_hash, digest)"
        prev = header["hash"]
        if seq > head_seq - content_max:
            problem = _content_damage(txn, dbs, seq, batch)
            if problem is not None:
                return problem
    if prev != head_hash:
        return f"the head record's hash differs from block {head_seq}'s hash"
    failures = verify_certificate(genesis, head_seq, digest, header["certificate"])
    if failures:
        return f"the head block {head_seq} has no valid commit certificate ({failures[-1]})"
    return None


def _content_damage(
    txn: lmdb.Transaction, dbs: dict[str, Any], seq: int, batch: dict[str, Any]
) -> str | None:
    key = _seq8(seq)
    txs = _load(txn.get(key, db=dbs["block_txs"]))
    results = _load(txn.get(key, db=dbs["block_results"]))
    raw_ids = txn.get(key, db=dbs["block_tx_ids"])
    count = batch["tx_count"]
    if len(txs) != count or len(results) != count or raw_ids is None:
        return f"block {seq}: its transactions, results or tx_ids do not match tx_count {count}"
    ids = [bytes.fromhex(hash_object(tx["body"])) for tx in txs]
    if b"".join(ids) != bytes(raw_ids):
        return f"block {seq}: the stored tx_ids are not the ids of its transactions"
    if merkle_root(ids).hex() != batch["tx_root"]:
        return f"block {seq}: its transactions do not hash to the header's tx_root"
    return None


# -- environment setup ------------------------------------------------------------------------


def _open_writer_env(path: Path, map_size: int, sync_each_write: bool) -> lmdb.Environment:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    try:
        env = lmdb.open(
            str(path),
            map_size=map_size,
            subdir=True,
            max_dbs=MAX_DBS,
            max_readers=MAX_READERS,
            sync=sync_each_write,
            metasync=sync_each_write,
            readonly=False,
            lock=True,
            mode=0o700,  # py-lmdb creates the files with this minus the execute bits: 0600
        )
    except lmdb.Error as exc:
        raise StoreError(f"cannot open ledger {path} for writing: {exc}") from exc
    for name in ("data.mdb", "lock.mdb"):
        os.chmod(path / name, 0o600)
    return env


def _open_reader_env(path: Path, map_size: int) -> lmdb.Environment:
    if not (path / "data.mdb").is_file():
        raise StoreError(f"{path} holds no Phalanx ledger (no data.mdb)")
    try:
        # lock=True even read-only: the lock file's reader table is what stops the writer from
        # reusing pages a reader still sees. lock=False is only safe with no writer at all.
        return lmdb.open(
            str(path),
            map_size=map_size,
            subdir=True,
            max_dbs=MAX_DBS,
            max_readers=MAX_READERS,
            readonly=True,
            lock=True,
            create=False,
        )
    except lmdb.Error as exc:
        raise StoreError(f"cannot open ledger {path} read-only: {exc}") from exc


def _open_dbs(env: lmdb.Environment, path: Path, readonly: bool) -> dict[str, Any]:
    dbs: dict[str, Any] = {}
    for name in _DB_NAMES:
        try:
            dbs[name] = env.open_db(name.encode("ascii"), create=not readonly)
        except lmdb.NotFoundError as exc:
            raise StoreError(f"{path} is not a Phalanx ledger (no {name} database)") from exc
    return dbs


def _check_meta(
    env: lmdb.Environment,
    dbs: dict[str, Any],
    path: Path,
    genesis: Genesis | None,
    readonly: bool,
) -> Genesis:
    meta = dbs["meta"]
    with env.begin(write=False, buffers=False) as txn:
        version = txn.get(b"format_version", db=meta)
        stored_hash = txn.get(b"genesis_hash", db=meta)
        stored_doc = txn.get(b"genesis", db=meta)
        has_blocks = txn.stat(dbs["blocks"])["entries"] > 0
    if version is None:
        if readonly or genesis is None:
            raise StoreError(f"{path} holds no initialised Phalanx ledger")
        if has_blocks:
            raise StoreError(f"ledger {path} has blocks but no metadata; it is damaged")
        _initialise(env, dbs, genesis)
        return genesis
    if version != FORMAT_VERSION:
        raise StoreError(
            f"ledger {path} has format version {version.decode('ascii', 'replace')}; "
            f"this program reads version {FORMAT_VERSION.decode('ascii')}"
        )
    assert stored_hash is not None and stored_doc is not None
    if genesis is not None and stored_hash.decode("ascii") != genesis.genesis_hash:
        raise StoreError(
            f"ledger {path} was created for genesis {stored_hash.decode('ascii')}, but this "
            f"genesis ({genesis.chain_id}) hashes to {genesis.genesis_hash}; use the genesis "
            "file the ledger was made with, or a fresh data directory"
        )
    if genesis is None:
        genesis = genesis_from_document(_load(stored_doc))
    return genesis


def _initialise(env: lmdb.Environment, dbs: dict[str, Any], genesis: Genesis) -> None:
    with env.begin(write=True) as txn:
        meta = dbs["meta"]
        txn.put(b"format_version", FORMAT_VERSION, db=meta)
        txn.put(b"genesis_hash", genesis.genesis_hash.encode("ascii"), db=meta)
        txn.put(b"chain_id", genesis.chain_id.encode("utf-8"), db=meta)
        txn.put(b"genesis", genesis.canonical_bytes(), db=meta)
        changes: dict[bytes, bytes | None] = {}
        for pubkey, balance in genesis.accounts.items():
            if balance:
                txn.put(bytes.fromhex(pubkey), balance.to_bytes(8, "big"), db=dbs["balances"])
                changes[balance_path(pubkey)] = data_hash(balance_leaf_data(pubkey, balance))
        StateTree(_LmdbNodes(txn, dbs["state_tree"])).update(changes)
