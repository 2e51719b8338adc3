"""Misbehaviour evidence (spec §7): two things one validator signed that an honest one never signs.

    {"kind", "validator", "a": {"tag", "object", "sig"}, "b": {"tag", "object", "sig"}}

Rules (``RULES``): both statements carry the kind's tag, their objects have exactly the kind's
fields with well-formed values, ``chain_id`` is the genesis's, the ``slot`` fields are equal and
at least one ``conflict`` field differs, ``validator`` is a genesis validator, and both
signatures verify under it (strict Ed25519).

==============  ========================  ===============  =====================================
kind            tag                       same             different (at least one)
==============  ========================  ===============  =====================================
``commit``      ``phalanx/commit/v1``     seq, view        digest            (spec §7)
``execution``   ``phalanx/execution/v1``  seq              block_hash, state_root, results_root
                                                                             (spec §7)
``pre_prepare`` ``phalanx/pre-prepare/v1``  view, seq      digest: two proposals for one slot
``prepare``     ``phalanx/prepare/v1``    view, seq        digest: two prepares for one slot
==============  ========================  ===============  =====================================

The last two are this implementation's kinds. Their objects are exactly what the PRE-PREPARE
and PREPARE messages sign (``consensus/messages.py``): ``{"chain_id", "view", "seq", "digest"}``
(a PRE-PREPARE's batch is not signed; its digest is). An honest replica persists what it signs
before sending it and never signs two digests for one (view, seq) in one phase, across restarts
too; a NEW-VIEW re-proposal of a slot carries the digest the slot prepared with (or the null
batch), so a re-proposal is never in conflict with the same primary's PRE-PREPARE in that view
unless that primary equivocated.

:class:`EvidenceDetector` remembers, per validator, the first statement it saw for each slot
(bounded) and returns evidence when a conflicting one arrives, whether it came as a message of
its own or relayed inside a VIEW-CHANGE (prepared certificates) or a NEW-VIEW (re-proposals);
:class:`EvidenceStore` keeps evidence durably in the ledger's ``evidence`` table, bounded per
validator and in total.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from consensus.messages import TAG_PRE_PREPARE, TAG_PREPARE
from crypto.canonical import MAX_SAFE_INTEGER, CanonicalJsonError, canonical_json, parse_json
from crypto.hexcodec import HASH_HEX_LEN, KEY_HEX_LEN, SIGNATURE_HEX_LEN, is_hex
from crypto.signing import TAG_COMMIT, TAG_EXECUTION, Ed25519Verifier, Verifier
from ledger.genesis import Genesis

# Bounds ("put a limit on everything").
SLOTS_PER_VALIDATOR_MAX = 4_096  # first statements the detector remembers per validator
EVIDENCE_PER_VALIDATOR_MAX = 64  # evidence stored per validator (one proves misbehaviour)
EVIDENCE_MAX = 1_024  # evidence stored in all
EVIDENCE_FILE_ITEMS_MAX = 10_000  # items one evidence file may hold (verify-evidence)
NESTED_STATEMENTS_MAX = 256  # signed votes looked at inside one VIEW-CHANGE or NEW-VIEW
NESTED_DEPTH_MAX = 4  # NEW-VIEW > VIEW-CHANGE > prepared certificate > vote
CHAIN_ID_LEN_MAX = 128

_HASH = "hash"  # 64 lowercase hex characters
_SEQ = "seq"  # integer 1 .. 2^53 - 1
_VIEW = "view"  # integer 0 .. 2^53 - 1
_CHAIN = "chain"  # the chain_id string


@dataclass(frozen=True, slots=True)
class Rule:
    kind: str
    tag: str
    fields: Mapping[str, str]  # field -> value type (_HASH, _SEQ, _VIEW, _CHAIN)
    slot: tuple[str, ...]
    conflict: tuple[str, ...]


_VOTE_FIELDS = {"chain_id": _CHAIN, "view": _VIEW, "seq": _SEQ, "digest": _HASH}
_EXECUTION_FIELDS = {
    "chain_id": _CHAIN,
    "seq": _SEQ,
    "block_hash": _HASH,
    "state_root": _HASH,
    "results_root": _HASH,
}
_EXECUTION_CONFLICT = ("block_hash", "state_root", "results_root")

RULES: dict[str, Rule] = {
    "commit": Rule("commit", TAG_COMMIT, _VOTE_FIELDS, ("seq", "view"), ("digest",)),
    "execution": Rule("execution", TAG_EXECUTION, _EXECUTION_FIELDS, ("seq",), _EXECUTION_CONFLICT),
    "pre_prepare": Rule("pre_prepare", TAG_PRE_PREPARE, _VOTE_FIELDS, ("view", "seq"), ("digest",)),
    "prepare": Rule("prepare", TAG_PREPARE, _VOTE_FIELDS, ("view", "seq"), ("digest",)),
}
_RULE_BY_TAG = {rule.tag: rule for rule in RULES.values()}
# Peer message types (consensus/messages.py) whose signed body is one of the kinds above.
_MESSAGE_KINDS = {"commit": "commit", "prepare": "prepare", "pre_prepare": "pre_prepare"}


class EvidenceError(ValueError):
    """Evidence that does not prove misbehaviour; the message says which check failed."""


@dataclass(frozen=True, slots=True)
class Statement:
    """One signed object: ``sig`` by ``validator`` over ``object`` under ``tag``."""

    tag: str
    object: Mapping[str, Any]
    sig: str
    validator: str

    def to_json(self) -> dict[str, Any]:
        return {"tag": self.tag, "object": dict(self.object), "sig": self.sig}


@dataclass(frozen=True, slots=True)
class Evidence:
    kind: str
    validator: str
    a: Statement
    b: Statement

    @property
    def slot(self) -> tuple[Any, ...]:
        return tuple(self.a.object[name] for name in RULES[self.kind].slot)

    def key(self) -> bytes:
        """What identifies it in the store: one piece of evidence per validator, kind and slot.
        Validator first, so a validator's entries are contiguous."""
        return bytes.fromhex(self.validator) + canonical_json([self.kind, *self.slot])

    def to_json(self) -> dict[str, Any]:
        # a and b in a fixed order, so the same pair seen either way round is the same evidence.
        a, b = sorted((self.a, self.b), key=lambda s: canonical_json(s.to_json()))
        return {"kind": self.kind, "validator": self.validator, "a": a.to_json(), "b": b.to_json()}


# -- verification (what a third party runs) ---------------------------------------------------


def verify_evidence(evidence: Any, genesis: Genesis, verifier: Verifier | None = None) -> Evidence:
    """Check ``evidence`` (parsed JSON) against ``genesis``; return it decoded, or raise
    :class:`EvidenceError` naming the first check that failed."""
    checked = _decode(evidence, genesis)
    verifier = verifier or Ed25519Verifier()
    for name, statement in (("a", checked.a), ("b", checked.b)):
        if not verifier.verify(
            checked.validator, statement.tag, dict(statement.object), statement.sig
        ):
            raise EvidenceError(f"{name}.sig is not {_who(genesis, checked.validator)}'s signature")
    return checked


def evidence_items(document: Any) -> list[Any]:
    """The evidence a file holds: one object, or ``{"evidence": [...]}`` (what GET /v1/evidence
    answers)."""
    if isinstance(document, dict) and set(document) == {"evidence"}:
        items = document["evidence"]
        if not isinstance(items, list):
            raise EvidenceError('"evidence" must be a list of evidence objects')
        if len(items) > EVIDENCE_FILE_ITEMS_MAX:
            raise EvidenceError(f"at most {EVIDENCE_FILE_ITEMS_MAX} items, got {len(items)}")
        return items
    return [document]


def _who(genesis: Genesis, validator: str) -> str:
    name = genesis.validator_name(validator)
    return f"validator {name} ({validator[:16]}...)" if name else f"key {validator[:16]}..."


def _exact(value: Any, keys: set[str], what: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise EvidenceError(f"{what} must be a JSON object")
    if set(value) != keys:
        missing, extra = sorted(keys - set(value)), sorted(set(value) - keys)
        raise EvidenceError(f"{what}: missing fields {missing}, unexpected fields {extra}")
    return value


def _decode(evidence: Any, genesis: Genesis) -> Evidence:
    top = _exact(evidence, {"kind", "validator", "a", "b"}, "evidence")
    kind = top["kind"]
    if not isinstance(kind, str) or kind not in RULES:
        raise EvidenceError(f"kind must be one of {sorted(RULES)}, got {kind!r}")
    rule = RULES[kind]
    validator = top["validator"]
    if not is_hex(validator, KEY_HEX_LEN):
        raise EvidenceError(f"validator must be {KEY_HEX_LEN} lowercase hex characters")
    if not genesis.is_validator(validator):
        raise EvidenceError(f"{validator[:16]}... is not a validator of chain {genesis.chain_id}")
    a = _statement(top["a"], "a", rule, validator, genesis)
    b = _statement(top["b"], "b", rule, validator, genesis)
    different_slot = [f for f in rule.slot if a.object[f] != b.object[f]]
    if different_slot:
        raise EvidenceError(f"a and b are not for the same slot: {different_slot} differ")
    if all(a.object[f] == b.object[f] for f in rule.conflict):
        raise EvidenceError(f"a and b do not conflict: same {', '.join(rule.conflict)}")
    return Evidence(kind, validator, a, b)


def _statement(value: Any, name: str, rule: Rule, validator: str, genesis: Genesis) -> Statement:
    raw = _exact(value, {"tag", "object", "sig"}, name)
    if raw["tag"] != rule.tag:
        raise EvidenceError(f"{name}.tag must be {rule.tag!r} for {rule.kind} evidence")
    if not is_hex(raw["sig"], SIGNATURE_HEX_LEN):
        raise EvidenceError(f"{name}.sig must be {SIGNATURE_HEX_LEN} lowercase hex characters")
    obj = _exact(raw["object"], set(rule.fields), f"{name}.object")
    for field_name, kind in rule.fields.items():
        problem = _field_problem(obj[field_name], kind)
        if problem:
            raise EvidenceError(f"{name}.object.{field_name} {problem}")
    if obj["chain_id"] != genesis.chain_id:
        raise EvidenceError(
            f"{name}.object.chain_id is {obj['chain_id']!r}, not this genesis's "
            f"{genesis.chain_id!r}"
        )
    return Statement(rule.tag, dict(obj), raw["sig"], validator)


def _field_problem(value: Any, kind: str) -> str | None:
    if kind == _HASH:
        return None if is_hex(value, HASH_HEX_LEN) else f"must be {HASH_HEX_LEN} lowercase hex"
    if kind == _CHAIN:
        ok = isinstance(value, str) and 1 <= len(value) <= CHAIN_ID_LEN_MAX
        return None if ok else "must be a chain_id string"
    low = 1 if kind == _SEQ else 0
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or not low <= value <= MAX_SAFE_INTEGER
    ):
        return f"must be an integer from {low} to {MAX_SAFE_INTEGER}"
    return None


# -- detection (what a node runs on what it receives) -----------------------------------------


@dataclass(slots=True)
class _Seen:
    statement: Statement
    reported: bool = False


class EvidenceDetector:
    """Remembers the first signed statement per (validator, kind, slot) and turns a conflicting
    second one into verified :class:`Evidence`.

    Signatures are checked only on a conflict (the replica checks every message anyway; checking
    twice would double the cost of the normal case). So a forged statement may be remembered
    first; when a genuine one conflicts with it, the forgery fails verification and the genuine
    one takes its place. A forger can thus make us verify at most a few signatures per message
    it sends, and can never make evidence. Memory: at most ``slots_max`` statements per
    validator, oldest forgotten first; only genesis validators' statements are kept.
    """

    def __init__(
        self,
        genesis: Genesis,
        verifier: Verifier | None = None,
        slots_max: int = SLOTS_PER_VALIDATOR_MAX,
    ) -> None:
        self._genesis = genesis
        self._verifier = verifier or Ed25519Verifier()
        self._slots_max = slots_max
        self._seen: dict[str, OrderedDict[tuple[Any, ...], _Seen]] = {}

    def observe_message(self, wire: Mapping[str, Any]) -> Evidence | None:
        """A peer message as received (before the replica sees it): COMMIT, PREPARE and
        PRE-PREPARE are looked at; anything else, or anything ill-formed, is ignored here (the
        replica drops and counts it)."""
        if not isinstance(wire, Mapping) or not isinstance(wire.get("type"), str):
            return None
        kind = _MESSAGE_KINDS.get(wire["type"])
        if kind is None:
            return None
        rule = RULES[kind]
        obj = {name: wire.get(name) for name in rule.fields}
        validator, sig = wire.get("sender"), wire.get("signature")
        if not isinstance(validator, str) or not isinstance(sig, str):
            return None
        return self.observe(Statement(rule.tag, obj, sig, validator))

    def observe_nested(self, wire: Mapping[str, Any]) -> list[Evidence]:
        """The signed PRE-PREPAREs and PREPAREs a VIEW-CHANGE (its prepared certificates) or a
        NEW-VIEW (its re-proposals, and the VIEW-CHANGEs it carries) holds: statements of other
        validators, relayed. At most NESTED_STATEMENTS_MAX per message are looked at."""
        found: list[Evidence] = []
        for statement in _nested_statements(wire):
            evidence = self.observe_message(statement)
            if evidence is not None:
                found.append(evidence)
        return found

    def observe(self, statement: Statement) -> Evidence | None:
        """One signed statement (e.g. an execution vote). Returns evidence the first time a
        validator is caught signing a conflicting one for the same slot, else None."""
        rule = _RULE_BY_TAG.get(statement.tag)
        if rule is None or not self._genesis.is_validator(statement.validator):
            return None
        obj = statement.object
        if set(obj) != set(rule.fields) or obj.get("chain_id") != self._genesis.chain_id:
            return None
        if any(_field_problem(obj[f], t) for f, t in rule.fields.items()):
            return None
        if not is_hex(statement.sig, SIGNATURE_HEX_LEN):
            return None
        slot = (rule.kind, *(obj[f] for f in rule.slot))
        seen = self._seen.setdefault(statement.validator, OrderedDict())
        first = seen.get(slot)
        if first is None:
            seen[slot] = _Seen(statement)
            if len(seen) > self._slots_max:
                seen.popitem(last=False)
            return None
        if first.reported or all(first.statement.object[f] == obj[f] for f in rule.conflict):
            return None
        return self._conflict(rule, slot, first, statement)

    def _conflict(
        self, rule: Rule, slot: tuple[Any, ...], first: _Seen, second: Statement
    ) -> Evidence | None:
        candidate = Evidence(rule.kind, second.validator, first.statement, second).to_json()
        try:
            evidence = verify_evidence(candidate, self._genesis, self._verifier)
        except (EvidenceError, CanonicalJsonError):
            # One of the two is a forgery. If it is the one remembered, the newcomer (checked
            # here) takes its place, so the validator's genuine first statement is what counts.
            valid = self._verifier.verify(
                second.validator, second.tag, dict(second.object), second.sig
            )
            if valid:
                self._seen[second.validator][slot] = _Seen(second)
            return None
        first.reported = True
        return evidence


def _nested_statements(wire: Any) -> list[Mapping[str, Any]]:
    """Signed votes nested in a VIEW-CHANGE or NEW-VIEW, breadth first, at most
    NESTED_STATEMENTS_MAX of them and NESTED_DEPTH_MAX levels down."""
    found: list[Mapping[str, Any]] = []
    level: list[Any] = [wire]
    for _ in range(NESTED_DEPTH_MAX):
        below: list[Any] = []
        for item in level:
            if not isinstance(item, Mapping):
                continue
            kind = item.get("type")
            if kind == "view_change":
                below.extend(_items(item.get("prepared")))
            elif kind == "new_view":
                below.extend(_items(item.get("pre_prepares")))
                below.extend(_items(item.get("view_changes")))
            elif "pre_prepare" in item and "prepares" in item:  # a prepared certificate
                below.append(item.get("pre_prepare"))
                below.extend(_items(item.get("prepares")))
            elif kind in _MESSAGE_KINDS and item is not wire:
                found.append(item)
            if len(found) >= NESTED_STATEMENTS_MAX or len(below) > 4 * NESTED_STATEMENTS_MAX:
                return found[:NESTED_STATEMENTS_MAX]
        level = below
    return found[:NESTED_STATEMENTS_MAX]


def _items(value: Any) -> list[Any]:
    return value[: 4 * NESTED_STATEMENTS_MAX] if isinstance(value, list) else []


# -- durable store ----------------------------------------------------------------------------


class EvidenceTable(Protocol):
    """The ledger's ``evidence`` table (``ledger.store.LedgerStore`` is one)."""

    def evidence_entries(self) -> list[tuple[bytes, bytes]]: ...

    def put_evidence(self, key: bytes, value: bytes) -> bool: ...


class EvidenceStore:
    """Evidence kept durably, bounded: at most ``per_validator_max`` per validator and
    ``total_max`` in all. Past a bound new evidence is not stored (the first pieces prove the
    misbehaviour as well as any later ones) and ``dropped`` counts it."""

    def __init__(
        self,
        table: EvidenceTable,
        per_validator_max: int = EVIDENCE_PER_VALIDATOR_MAX,
        total_max: int = EVIDENCE_MAX,
        on_stored: Callable[[Evidence], None] | None = None,
    ) -> None:
        self._table = table
        self._per_validator_max = per_validator_max
        self._total_max = total_max
        self._on_stored = on_stored
        self._keys: set[bytes] = set()
        self._per_validator: dict[bytes, int] = {}
        self.dropped = 0
        for key, _value in table.evidence_entries():
            self._count(key)

    def __len__(self) -> int:
        return len(self._keys)

    def _count(self, key: bytes) -> None:
        self._keys.add(key)
        owner = key[:32]
        self._per_validator[owner] = self._per_validator.get(owner, 0) + 1

    def add(self, evidence: Evidence) -> bool:
        """Store ``evidence`` (already verified); True if it is new and was stored."""
        key = evidence.key()
        if key in self._keys:
            return False
        if (
            len(self._keys) >= self._total_max
            or self._per_validator.get(key[:32], 0) >= self._per_validator_max
        ):
            self.dropped += 1
            return False
        if not self._table.put_evidence(key, canonical_json(evidence.to_json())):
            return False
        self._count(key)
        if self._on_stored is not None:
            self._on_stored(evidence)
        return True

    def all(self) -> list[dict[str, Any]]:
        """Every stored piece of evidence as spec §7 JSON, grouped by validator."""
        return [parse_json(value) for _key, value in self._table.evidence_entries()]


def describe(evidence: Evidence, genesis: Genesis) -> str:
    """One line for a log or a terminal."""
    slot = ", ".join(f"{f}={evidence.a.object[f]}" for f in RULES[evidence.kind].slot)
    return f"{_who(genesis, evidence.validator)} signed conflicting {evidence.kind} ({slot})"
