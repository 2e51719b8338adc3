"""The genesis document (spec §2): the chain's name, its validators, the initial balances and
the fee per byte of every transaction.

Every node must hold the byte-for-byte same document, since ``genesis_hash = h(JCS(genesis))``
anchors the block hash chain and receipts are checked against the validator keys it lists. The
document is validated strictly: unknown fields, floats, duplicate or invalid keys and balances
that could overflow are all refused with a :class:`GenesisError` that says what is wrong.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from consensus.config import ReplicaConfig
from crypto.canonical import MAX_SAFE_INTEGER, CanonicalJsonError, canonical_json, parse_json
from crypto.hashing import sha256_hex
from crypto.signing import is_valid_public_key

CHAIN_ID_LEN_MAX = 64
# 1 to 64 characters of [a-z0-9._-] (spec §2): safe in file names, URLs and log lines.
CHAIN_ID_RE = re.compile(r"[a-z0-9._-]{1,64}")
CHAIN_ID_SUFFIX_BYTES = 8  # a random suffix of 64 bits: two testnets never share a chain_id
VALIDATOR_NAME_LEN_MAX = 64
VALIDATORS_MAX = 256
GENESIS_BYTES_MAX = 16 * 1024 * 1024


class GenesisError(ValueError):
    """The genesis document is malformed or inconsistent."""


@dataclass(frozen=True, slots=True)
class Validator:
    name: str
    pubkey: str


@dataclass(frozen=True)
class Genesis:
    """A validated genesis document. Build it with :func:`parse_genesis` or :func:`load_genesis`."""

    chain_id: str
    validators: tuple[Validator, ...]
    accounts: Mapping[str, int]  # client pubkey hex -> initial balance (read-only view)
    fee_per_byte: int  # every transaction burns fee_per_byte * len(JCS(body)) (spec §3)
    genesis_hash: str
    document: Mapping[str, Any] = field(repr=False, compare=False)
    _validator_set: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_validator_set", frozenset(v.pubkey for v in self.validators))

    @property
    def validator_keys(self) -> tuple[str, ...]:
        """The validators' public keys in genesis order, as ``ReplicaConfig.validators`` wants."""
        return tuple(v.pubkey for v in self.validators)

    @property
    def n(self) -> int:
        return len(self.validators)

    @property
    def f(self) -> int:
        return (self.n - 1) // 3

    @property
    def q(self) -> int:
        """ceil((n + f + 1) / 2) (spec §2)."""
        return (self.n + self.f + 2) // 2

    def is_validator(self, pubkey: str) -> bool:
        return pubkey in self._validator_set

    def validator_name(self, pubkey: str) -> str | None:
        for v in self.validators:
            if v.pubkey == pubkey:
                return v.name
        return None

    def canonical_bytes(self) -> bytes:
        """JCS(genesis): the bytes whose hash is ``genesis_hash``."""
        return canonical_json(dict(self.document))


def new_chain_id(prefix: str = "phalanx") -> str:
    """A chain_id nobody else has: ``prefix`` and 64 random bits, e.g.
    ``phalanx-testnet-3f9c2a7d81e4b605``. Tools that create a genesis use it unless told
    otherwise, so that a transaction signed for one network never executes on another."""
    chain_id = f"{prefix}-{secrets.token_hex(CHAIN_ID_SUFFIX_BYTES)}"
    if not CHAIN_ID_RE.fullmatch(chain_id):
        raise GenesisError(
            f"chain_id prefix {prefix!r} must be at most "
            f"{CHAIN_ID_LEN_MAX - 2 * CHAIN_ID_SUFFIX_BYTES - 1} characters of [a-z0-9._-]"
        )
    return chain_id


def check_chain_id(value: Any) -> str:
    """``value`` if it is a valid chain_id (spec §2), else :class:`GenesisError` saying why."""
    if not isinstance(value, str) or not CHAIN_ID_RE.fullmatch(value):
        raise GenesisError(
            f"chain_id must be 1 to {CHAIN_ID_LEN_MAX} characters of lowercase letters, digits, "
            f"'.', '_' and '-'; got {value!r}"
        )
    return value


def validator_keys(genesis: Genesis) -> tuple[str, ...]:
    """The ``ReplicaConfig.validators`` tuple for this genesis."""
    return genesis.validator_keys


def replica_config(genesis: Genesis, **params: Any) -> ReplicaConfig:
    """A ``ReplicaConfig`` for this genesis; ``params`` override protocol parameters."""
    return ReplicaConfig(
        chain_id=genesis.chain_id,
        genesis_hash=genesis.genesis_hash,
        validators=genesis.validator_keys,
        **params,
    )


def load_genesis(path: Path | str) -> Genesis:
    """Read and validate a genesis file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise GenesisError(f"cannot read genesis file {path}: {exc.strerror or exc}") from exc
    try:
        return parse_genesis(data)
    except GenesisError as exc:
        raise GenesisError(f"genesis file {path}: {exc}") from exc


def parse_genesis(data: bytes | str) -> Genesis:
    """Parse genesis JSON text (floats and duplicate object keys refused) and validate it."""
    if len(data) > GENESIS_BYTES_MAX:
        raise GenesisError(f"genesis is larger than {GENESIS_BYTES_MAX} bytes")
    try:
        document = parse_json(data)
    except CanonicalJsonError as exc:
        raise GenesisError(str(exc)) from exc
    return genesis_from_document(document)


def genesis_from_document(document: Any) -> Genesis:
    """Validate an already parsed genesis document."""
    if not isinstance(document, dict):
        raise GenesisError("genesis must be a JSON object")
    try:
        canonical = canonical_json(document)
    except CanonicalJsonError as exc:
        raise GenesisError(str(exc)) from exc
    _exact_fields(document, {"chain_id", "validators", "accounts", "fee_per_byte"}, "genesis")
    chain_id = check_chain_id(document["chain_id"])
    validators = _validators(document["validators"])
    accounts = _accounts(document["accounts"])
    fee_per_byte = document["fee_per_byte"]
    if not _is_int(fee_per_byte) or not 0 <= fee_per_byte <= MAX_SAFE_INTEGER:
        raise GenesisError(
            f"fee_per_byte must be an integer from 0 (no fees) to 2^53 - 1; got {fee_per_byte!r}"
        )
    return Genesis(
        chain_id=chain_id,
        validators=validators,
        accounts=MappingProxyType(accounts),
        fee_per_byte=fee_per_byte,
        genesis_hash=sha256_hex(canonical),
        document=MappingProxyType(dict(document)),
    )


def _exact_fields(obj: dict[str, Any], expected: set[str], what: str) -> None:
    missing = expected - obj.keys()
    if missing:
        raise GenesisError(f"{what} lacks field(s) {', '.join(sorted(missing))}")
    unknown = obj.keys() - expected
    if unknown:
        raise GenesisError(f"{what} has unknown field(s) {', '.join(sorted(unknown))}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _validators(value: Any) -> tuple[Validator, ...]:
    if not isinstance(value, list) or not value:
        raise GenesisError("validators must be a non-empty list")
    if len(value) > VALIDATORS_MAX:
        raise GenesisError(f"at most {VALIDATORS_MAX} validators are supported")
    result: list[Validator] = []
    names: set[str] = set()
    keys: set[str] = set()
    for i, item in enumerate(value):
        what = f"validators[{i}]"
        if not isinstance(item, dict):
            raise GenesisError(f"{what} must be an object with name and pubkey")
        _exact_fields(item, {"name", "pubkey"}, what)
        name, pubkey = item["name"], item["pubkey"]
        if not isinstance(name, str) or not name or len(name) > VALIDATOR_NAME_LEN_MAX:
            raise GenesisError(f"{what}.name must be 1 to {VALIDATOR_NAME_LEN_MAX} characters")
        if not isinstance(pubkey, str) or not is_valid_public_key(pubkey):
            raise GenesisError(
                f"{what}.pubkey is not a valid Ed25519 public key (64 lowercase hex characters "
                "of a canonical point that is not of small order)"
            )
        if name in names:
            raise GenesisError(f"{what}.name {name!r} is used twice")
        if pubkey in keys:
            raise GenesisError(f"{what}.pubkey {pubkey} is used twice; validators must be distinct")
        names.add(name)
        keys.add(pubkey)
        result.append(Validator(name, pubkey))
    return tuple(result)


def _accounts(value: Any) -> dict[str, int]:
    if not isinstance(value, dict):
        raise GenesisError("accounts must be an object mapping client public keys to balances")
    total = 0
    for pubkey, balance in value.items():
        if not is_valid_public_key(pubkey):
            raise GenesisError(f"accounts key {pubkey!r} is not a valid Ed25519 public key")
        if isinstance(balance, bool) or not isinstance(balance, int) or balance < 0:
            raise GenesisError(f"accounts[{pubkey}] must be a non-negative integer")
        total += balance
    if total > MAX_SAFE_INTEGER:
        # With the total bounded, no transfer can ever push a balance past 2^53 - 1.
        raise GenesisError("the sum of all account balances exceeds 2^53 - 1")
    return dict(value)
