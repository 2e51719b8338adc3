"""The state tree of spec §5: a sparse Merkle tree over every key entry and non-zero balance.

Each entry has a 256-bit path (``H(JCS({"kind", "key"|"pubkey"}))``) and leaf data (the entry's
JCS); ``leaf_hash = H(0x00 || path || H(data))`` and an inner node hashes
``H(0x01 || left || right)``. A subtree without entries hashes to ``0^32``, and a subtree with
exactly one entry hashes to that entry's leaf hash at whatever depth, so the tree only has as
many levels as it takes to tell its paths apart (about log2 of the entry count).

Storage. The tree is kept as *node records* behind the small :class:`NodeStore` interface, so
the LMDB ledger can keep them in its own write transaction (a restart reads them back instead of
rebuilding anything). A record sits at each *position* that holds a leaf or an inner node;
a position is the depth (2 bytes, big-endian) followed by the path prefix of that many bits
(``ceil(depth / 8)`` bytes, the unused low bits zero). Records:

- ``b"L" || path || data_hash`` (65 bytes): a single-entry subtree (the entry's leaf),
- ``b"I" || left_hash || right_hash`` (65 bytes): an inner node (two or more entries below).

Empty subtrees have no record. Records exist only at live positions: whenever a subtree
collapses (a deletion leaves one entry) the records below it are removed.

Updates are incremental: :meth:`StateTree.update` takes the entries a block changed and rewrites
only the positions on their paths (children the update does not touch keep their hash, read from
the parent's record), so a block costs O(changes * depth) hashes whatever the size of the state.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from crypto.canonical import canonical_json, has_astral, orjson_sorted
from crypto.hexcodec import HASH_HEX_LEN, is_hex

HASH_LEN = 32
PATH_BITS = 256
EMPTY = bytes(HASH_LEN)
_LEAF = b"L"
_INNER = b"I"
_RECORD_LEN = 1 + 2 * HASH_LEN


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


# -- entries: paths and leaf data (spec §5) ---------------------------------------------------


def fast_jcs(value: Any) -> bytes:
    """RFC 8785 bytes of a value already checked to be a Phalanx JSON value (no floats, safe
    integers, bounded depth), written by orjson with sorted keys: it escapes strings as JCS
    does and prints integers alike; its key order (by code point) equals JCS's (by UTF-16 unit)
    unless a string holds a character beyond the Basic Multilingual Plane, and then the exact
    encoder is used. Paths and leaf data are hashed for every changed entry of every block:
    this is their cost."""
    data = orjson_sorted(value)
    if data is None or has_astral(data):
        return canonical_json(value)  # it writes the value, or says what is wrong with it
    return data


def kv_path(key: str) -> bytes:
    return _sha256(fast_jcs({"kind": "kv", "key": key}))


def balance_path(pubkey: str) -> bytes:
    return _sha256(fast_jcs({"kind": "balance", "pubkey": pubkey}))


def kv_leaf_data(key: str, value: Any, version: int, owner: str) -> bytes:
    return fast_jcs({"kind": "kv", "key": key, "value": value, "version": version, "owner": owner})


def balance_leaf_data(pubkey: str, balance: int) -> bytes:
    return fast_jcs({"kind": "balance", "pubkey": pubkey, "balance": balance})


def data_hash(leaf_data: bytes) -> bytes:
    return _sha256(leaf_data)


def leaf_hash(path: bytes, data_hash_: bytes) -> bytes:
    return _sha256(b"\x00" + path + data_hash_)


def inner_hash(left: bytes, right: bytes) -> bytes:
    return _sha256(b"\x01" + left + right)


def bit(path: bytes, i: int) -> int:
    """Bit ``i`` of a path: bit 0 chooses the root's child (0 = left)."""
    return (path[i >> 3] >> (7 - (i & 7))) & 1


_DEPTH_PREFIX = [d.to_bytes(2, "big") for d in range(PATH_BITS + 1)]
_LAST_BYTE_MASK = [(0xFF << (8 - (d & 7))) & 0xFF if d & 7 else 0xFF for d in range(PATH_BITS + 1)]


def position(path: bytes, depth: int) -> bytes:
    """The record key of the subtree at ``depth`` on ``path``'s side."""
    nbytes = (depth + 7) >> 3
    if not depth & 7:
        return _DEPTH_PREFIX[depth] + path[:nbytes]
    last = path[nbytes - 1] & _LAST_BYTE_MASK[depth]
    return _DEPTH_PREFIX[depth] + path[: nbytes - 1] + bytes((last,))


def _child_position(path: bytes, depth: int, side: int) -> bytes:
    """The position of the child on ``side`` of the node at ``depth`` on ``path``."""
    raw = bytearray(path)
    mask = 1 << (7 - (depth & 7))
    raw[depth >> 3] = (raw[depth >> 3] | mask) if side else (raw[depth >> 3] & ~mask & 0xFF)
    return position(bytes(raw), depth + 1)


def _split_point(changes: Sequence[tuple[bytes, bytes | None]], depth: int) -> int:
    """Index of the first change whose bit ``depth`` is 1 (changes sorted, sharing ``depth``
    prefix bits): a binary search for the smallest such path."""
    if len(changes) < 8:
        for i, change in enumerate(changes):
            if bit(change[0], depth):
                return i
        return len(changes)
    shift = PATH_BITS - 1 - depth
    first_one = ((int.from_bytes(changes[0][0], "big") >> shift) | 1) << shift
    return bisect.bisect_left(changes, (first_one.to_bytes(HASH_LEN, "big"),))


# -- node storage -------------------------------------------------------------------------------


class NodeStore(Protocol):
    """Where the tree keeps its records (see the module docstring for their format)."""

    def get_node(self, pos: bytes) -> bytes | None: ...

    def put_node(self, pos: bytes, record: bytes) -> None: ...

    def delete_node(self, pos: bytes) -> None: ...


class MemoryNodeStore:
    """A :class:`NodeStore` in a dict (tests, audit replay, tools)."""

    def __init__(self, records: MutableMapping[bytes, bytes] | None = None) -> None:
        self.records: MutableMapping[bytes, bytes] = {} if records is None else records

    def get_node(self, pos: bytes) -> bytes | None:
        return self.records.get(pos)

    def put_node(self, pos: bytes, record: bytes) -> None:
        self.records[pos] = record

    def delete_node(self, pos: bytes) -> None:
        self.records.pop(pos, None)


_LEAF_KIND = _LEAF[0]
_INNER_KIND = _INNER[0]
# A record's hash input is its kind byte swapped for the spec's domain byte: a leaf record is
# "L" || path || data_hash and its hash is H(0x00 || path || data_hash); an inner record is
# "I" || left || right and its hash is H(0x01 || left || right).
_DOMAIN = {_LEAF_KIND: b"\x00", _INNER_KIND: b"\x01"}

# The tree works on records as stored (bytes; None for an empty subtree): thousands are read,
# hashed and written per block, and decoding each into an object cost a third of an update.


def _record_hash(record: bytes | None) -> bytes:
    if record is None:
        return EMPTY
    return _sha256(_DOMAIN[record[0]] + record[1:])


class StateTreeDamaged(ValueError):
    """A stored node record is malformed: the node storage is damaged."""


def _checked(record: bytes | None, pos: bytes) -> bytes | None:
    if record is not None and (len(record) != _RECORD_LEN or record[0] not in _DOMAIN):
        raise StateTreeDamaged(f"state tree record at position {pos.hex()} is malformed")
    return record


# -- proofs -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StateProof:
    """Spec §5 state proof: sibling hashes from the root down, and for an absence that ends at
    another entry, that entry's ``(path, data_hash)``."""

    siblings: tuple[bytes, ...]
    leaf: tuple[bytes, bytes] | None

    def to_wire(self) -> dict[str, Any]:
        leaf = None
        if self.leaf is not None:
            leaf = {"path": self.leaf[0].hex(), "data_hash": self.leaf[1].hex()}
        return {"siblings": [s.hex() for s in self.siblings], "leaf": leaf}


@dataclass(frozen=True)
class Lookup:
    """What the tree holds on a path: the entry's data hash (None if absent) and its proof."""

    data_hash: bytes | None
    proof: StateProof


def proof_shape(proof: Any) -> list[str]:
    """Why ``proof`` (untrusted JSON) is not a well-formed state proof; empty if it is."""
    if not isinstance(proof, Mapping) or set(proof) != {"siblings", "leaf"}:
        return ['state_proof must be an object with exactly "siblings" and "leaf"']
    siblings, leaf = proof["siblings"], proof["leaf"]
    failures = []
    if not isinstance(siblings, list) or len(siblings) > PATH_BITS:
        failures.append(f"state_proof.siblings must be a list of at most {PATH_BITS} hashes")
    elif not all(is_hex(s, HASH_HEX_LEN) for s in siblings):
        failures.append("each state_proof sibling must be 64 lowercase hex characters")
    if leaf is not None and (
        not isinstance(leaf, Mapping)
        or set(leaf) != {"path", "data_hash"}
        or not is_hex(leaf["path"], HASH_HEX_LEN)
        or not is_hex(leaf["data_hash"], HASH_HEX_LEN)
    ):
        failures.append('state_proof.leaf must be null or {"path", "data_hash"} (64 hex each)')
    return failures


def proof_from_wire(proof: Any) -> StateProof:
    """Decode a wire proof; ValueError (with the reasons) if it is malformed."""
    failures = proof_shape(proof)
    if failures:
        raise ValueError("; ".join(failures))
    leaf = proof["leaf"]
    return StateProof(
        tuple(bytes.fromhex(s) for s in proof["siblings"]),
        None if leaf is None else (bytes.fromhex(leaf["path"]), bytes.fromhex(leaf["data_hash"])),
    )


def root_from_proof(path: bytes, data_hash_: bytes | None, proof: StateProof) -> bytes | None:
    """The root a proof implies for ``path`` holding ``data_hash_`` (None: absent), or None if
    the proof cannot prove that at all (a leaf given for a present entry, or a leaf that does not
    share the proof's prefix with ``path`` or is ``path`` itself)."""
    depth = len(proof.siblings)
    if len(path) != HASH_LEN or depth > PATH_BITS:
        return None
    if data_hash_ is not None:
        if proof.leaf is not None:
            return None
        h = leaf_hash(path, data_hash_)
    elif proof.leaf is None:
        h = EMPTY
    else:
        other, other_hash = proof.leaf
        if other == path or len(other) != HASH_LEN or len(other_hash) != HASH_LEN:
            return None
        if any(bit(other, i) != bit(path, i) for i in range(depth)):
            return None
        h = leaf_hash(other, other_hash)
    for i in range(depth - 1, -1, -1):
        sibling = proof.siblings[i]
        h = inner_hash(h, sibling) if bit(path, i) == 0 else inner_hash(sibling, h)
    return h


def verify_proof(
    path: bytes, data_hash_: bytes | None, proof: StateProof, state_root: bytes
) -> bool:
    return root_from_proof(path, data_hash_, proof) == state_root


# -- the tree -----------------------------------------------------------------------------------

_ROOT_POS = position(EMPTY, 0)


class StateTree:
    """The state tree over a :class:`NodeStore`. Not thread-safe: one writer at a time."""

    def __init__(self, store: NodeStore) -> None:
        self._store = store

    def root(self) -> bytes:
        return _record_hash(self._read(_ROOT_POS))

    def update(self, changes: Mapping[bytes, bytes | None]) -> bytes:
        """Set each ``path -> data_hash`` (None removes the entry); return the new root."""
        if not changes:
            return self.root()
        for path, value in changes.items():
            if len(path) != HASH_LEN or (value is not None and len(value) != HASH_LEN):
                raise ValueError("state tree paths and data hashes are 32 bytes")
        ordered = sorted(changes.items())
        writes: dict[bytes, bytes | None] = {}
        new_root = self._update(0, ordered[0][0], self._read(_ROOT_POS), ordered, writes)
        writes[_ROOT_POS] = new_root
        for pos, record in writes.items():
            if record is None:
                self._store.delete_node(pos)
            else:
                self._store.put_node(pos, record)
        return _record_hash(new_root)

    def lookup(self, path: bytes) -> Lookup:
        """The entry on ``path`` (its data hash, or None) with its proof."""
        siblings: list[bytes] = []
        record = self._read(_ROOT_POS)
        depth = 0
        while record is not None and record[0] == _INNER_KIND:
            side = bit(path, depth)
            left, right = record[1 : 1 + HASH_LEN], record[1 + HASH_LEN :]
            siblings.append(left if side else right)
            child = right if side else left
            depth += 1
            if child == EMPTY:
                return Lookup(None, StateProof(tuple(siblings), None))
            record = self._read(position(path, depth))
            if record is None:
                raise StateTreeDamaged(f"state tree record at depth {depth} is missing")
        if record is None:
            return Lookup(None, StateProof(tuple(siblings), None))
        leaf_path, leaf_data_hash = record[1 : 1 + HASH_LEN], record[1 + HASH_LEN :]
        if leaf_path == path:
            return Lookup(leaf_data_hash, StateProof(tuple(siblings), None))
        return Lookup(None, StateProof(tuple(siblings), (leaf_path, leaf_data_hash)))

    def _read(self, pos: bytes) -> bytes | None:
        return _checked(self._store.get_node(pos), pos)

    def _update(
        self,
        depth: int,
        rep: bytes,
        record: bytes | None,
        changes: Sequence[tuple[bytes, bytes | None]],
        writes: dict[bytes, bytes | None],
    ) -> bytes | None:
        """The new record at ``(depth, rep's prefix)`` after ``changes`` (all under it; None:
        the subtree is empty). Writes the records strictly below this position; the caller
        writes this position's own."""
        if record is None:
            return self._build(depth, [(p, h) for p, h in changes if h is not None], writes)
        if record[0] == _LEAF_KIND:
            merged = {record[1 : 1 + HASH_LEN]: record[1 + HASH_LEN :]}
            for path, value in changes:
                if value is None:
                    merged.pop(path, None)
                else:
                    merged[path] = value
            return self._build(depth, sorted(merged.items()), writes)
        cut = _split_point(changes, depth)
        sides = (changes[:cut], changes[cut:])
        hashes = [record[1 : 1 + HASH_LEN], record[1 + HASH_LEN :]]
        new: list[bytes | None] = [None, None]
        touched = [False, False]
        # A child's position is taken from a path under it; only computed when needed.
        positions: list[bytes | None] = [None, None]
        for s in (0, 1):
            side = sides[s]
            if side:
                child_pos = position(side[0][0], depth + 1)
                positions[s] = child_pos
                child = self._read(child_pos) if hashes[s] != EMPTY else None
                path, value = side[0]
                if len(side) == 1 and value is not None:
                    updated: bytes | None = self._set_one(depth + 1, child, path, value, writes)
                else:
                    updated = self._update(depth + 1, path, child, side, writes)
                new[s] = updated
                touched[s] = True
                hashes[s] = _record_hash(updated)
        for s in (0, 1):
            if hashes[s] == EMPTY:
                if touched[1 - s]:
                    other = new[1 - s]
                elif hashes[1 - s] != EMPTY:
                    other = self._read(_child_position(rep, depth, 1 - s))
                else:
                    other = None
                if other is None or other[0] != _INNER_KIND:
                    # Zero or one entry left under this position: it collapses to that.
                    for side_bit in (0, 1):
                        writes[_child_position(rep, depth, side_bit)] = None
                    return other
        for s in (0, 1):
            pos = positions[s]
            if touched[s] and pos is not None:
                writes[pos] = new[s]
        return _INNER + hashes[0] + hashes[1]

    def _set_one(
        self,
        depth: int,
        record: bytes | None,
        path: bytes,
        value: bytes,
        writes: dict[bytes, bytes | None],
    ) -> bytes:
        """:meth:`_update` for one change that sets an entry, the case of nearly every subtree
        below the top levels, walked down and back up without recursion: setting never empties
        a subtree, so nothing collapses on the way up."""
        stack: list[tuple[bytes, bytes, int]] = []  # (child position, inner record, side)
        get = self._store.get_node
        while record is not None and record[0] == _INNER_KIND:
            side = (path[depth >> 3] >> (7 - (depth & 7))) & 1
            child_hash = record[1 + HASH_LEN :] if side else record[1 : 1 + HASH_LEN]
            depth += 1
            pos = position(path, depth)
            stack.append((pos, record, side))
            record = _checked(get(pos), pos) if child_hash != EMPTY else None
        new: bytes | None
        if record is None or record[1 : 1 + HASH_LEN] == path:
            new = _LEAF + path + value
        else:
            entries = sorted([(record[1 : 1 + HASH_LEN], record[1 + HASH_LEN :]), (path, value)])
            new = self._build(depth, entries, writes)
        for pos, inner, side in reversed(stack):
            writes[pos] = new
            child_hash = _record_hash(new)
            new = (
                inner[: 1 + HASH_LEN] + child_hash
                if side
                else _INNER + child_hash + inner[1 + HASH_LEN :]
            )
        assert new is not None, "a set leaves an entry under every position on its path"
        return new

    def _build(
        self, depth: int, entries: Sequence[tuple[bytes, bytes]], writes: dict[bytes, bytes | None]
    ) -> bytes | None:
        """The subtree of ``entries`` (sorted, sharing ``depth`` prefix bits), built afresh."""
        if not entries:
            return None
        if len(entries) == 1:
            return _LEAF + entries[0][0] + entries[0][1]
        if depth >= PATH_BITS:
            raise ValueError("two state entries share one path")
        split = _split_point(entries, depth)
        children = (entries[:split], entries[split:])
        hashes = []
        for part in children:
            child = self._build(depth + 1, part, writes)
            if part:
                writes[position(part[0][0], depth + 1)] = child
            hashes.append(_record_hash(child))
        return _INNER + hashes[0] + hashes[1]


def root_of(entries: Mapping[bytes, bytes]) -> bytes:
    """The root over ``path -> data_hash`` computed from scratch (audit, tests, tools)."""
    tree = StateTree(MemoryNodeStore())
    return tree.update(dict(entries))


def entry_changes(
    kv: Iterable[tuple[str, Any, int, str] | tuple[str, None, None, None]],
    balances: Iterable[tuple[str, int]],
) -> dict[bytes, bytes | None]:
    """Tree changes for entries given as ``(key, value, version, owner)`` (``version`` None:
    deleted) and ``(pubkey, balance)`` (0: removed)."""
    changes: dict[bytes, bytes | None] = {}
    for key, value, version, owner in kv:
        if version is None or owner is None:
            changes[kv_path(key)] = None
        else:
            changes[kv_path(key)] = data_hash(kv_leaf_data(key, value, version, owner))
    for pubkey, balance in balances:
        changes[balance_path(pubkey)] = (
            data_hash(balance_leaf_data(pubkey, balance)) if balance else None
        )
    return changes
