"""Genesis validation (spec §2)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from crypto.canonical import canonical_json
from crypto.hashing import sha256_hex
from ledger.genesis import (
    CHAIN_ID_RE,
    GenesisError,
    load_genesis,
    new_chain_id,
    parse_genesis,
    replica_config,
)
from tests.ledger.helpers import ALICE, VALIDATORS, genesis_document, make_genesis

SMALL_ORDER_KEY = "01" + "00" * 31  # the identity point: small order, must be refused


def test_valid_genesis_fields_and_quorum() -> None:
    doc = genesis_document()
    g = make_genesis()
    assert g.chain_id == "phalanx-test"
    assert g.validator_keys == tuple(v.public_key for v in VALIDATORS)
    assert [v.name for v in g.validators] == ["node0", "node1", "node2", "node3"]
    assert g.accounts[ALICE.public_key] == 1_000
    assert g.genesis_hash == sha256_hex(canonical_json(doc))
    assert (g.n, g.f, g.q) == (4, 1, 3)
    assert g.is_validator(VALIDATORS[0].public_key) and not g.is_validator(ALICE.public_key)


@pytest.mark.parametrize(
    ("n", "f", "q"), [(1, 0, 1), (2, 0, 2), (3, 0, 2), (4, 1, 3), (5, 1, 4), (7, 2, 5), (10, 3, 7)]
)
def test_quorum_formula(n: int, f: int, q: int) -> None:
    from tests.ledger.helpers import signer

    g = make_genesis(validators=[signer(f"v{i}") for i in range(n)])
    assert (g.n, g.f, g.q) == (n, f, q)


def test_replica_config_matches() -> None:
    g = make_genesis()
    config = replica_config(g, checkpoint_interval=4, watermark_window=8)
    assert config.validators == g.validator_keys
    assert config.genesis_hash == g.genesis_hash
    assert config.q == g.q


def test_load_from_file_and_hash_is_of_canonical_form(tmp_path: Path) -> None:
    doc = genesis_document()
    path = tmp_path / "genesis.json"
    path.write_text(json.dumps(doc, indent=2))  # not canonical on disk: the hash is of JCS
    assert load_genesis(path).genesis_hash == make_genesis().genesis_hash


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(GenesisError, match="cannot read genesis file"):
        load_genesis(tmp_path / "nope.json")


def _mutate(change: Any) -> dict[str, Any]:
    doc = genesis_document()
    change(doc)
    return doc


BAD: list[tuple[str, Any, str]] = [
    ("not an object", lambda d: None, "JSON object"),
    ("unknown field", lambda d: d.update(extra=1), "unknown field"),
    ("missing accounts", lambda d: d.pop("accounts"), "lacks field"),
    ("empty chain_id", lambda d: d.update(chain_id=""), "chain_id"),
    ("chain_id not str", lambda d: d.update(chain_id=5), "chain_id"),
    ("chain_id upper case", lambda d: d.update(chain_id="Phalanx"), "chain_id"),
    ("chain_id space", lambda d: d.update(chain_id="phalanx test"), "chain_id"),
    ("chain_id slash", lambda d: d.update(chain_id="a/b"), "chain_id"),
    ("chain_id 65 chars", lambda d: d.update(chain_id="a" * 65), "chain_id"),
    ("missing fee_per_byte", lambda d: d.pop("fee_per_byte"), "lacks field"),
    ("negative fee_per_byte", lambda d: d.update(fee_per_byte=-1), "fee_per_byte"),
    ("bool fee_per_byte", lambda d: d.update(fee_per_byte=True), "fee_per_byte"),
    ("str fee_per_byte", lambda d: d.update(fee_per_byte="1"), "fee_per_byte"),
    ("huge fee_per_byte", lambda d: d.update(fee_per_byte=2**53), "outside"),
    ("no validators", lambda d: d.update(validators=[]), "non-empty list"),
    (
        "duplicate pubkey",
        lambda d: d["validators"].append(dict(d["validators"][0], name="x")),
        "twice",
    ),
    ("duplicate name", lambda d: d["validators"][1].update(name="node0"), "twice"),
    ("bad hex pubkey", lambda d: d["validators"][0].update(pubkey="AB" * 32), "pubkey"),
    ("short pubkey", lambda d: d["validators"][0].update(pubkey="ab" * 31), "pubkey"),
    ("small order pubkey", lambda d: d["validators"][0].update(pubkey=SMALL_ORDER_KEY), "pubkey"),
    ("validator extra field", lambda d: d["validators"][0].update(weight=1), "unknown field"),
    ("validator empty name", lambda d: d["validators"][0].update(name=""), "name"),
    ("negative balance", lambda d: d["accounts"].update({ALICE.public_key: -1}), "non-negative"),
    ("bool balance", lambda d: d["accounts"].update({ALICE.public_key: True}), "non-negative"),
    ("str balance", lambda d: d["accounts"].update({ALICE.public_key: "5"}), "non-negative"),
    ("bad account key", lambda d: d["accounts"].update({"zz": 1}), "accounts key"),
    ("accounts not object", lambda d: d.update(accounts=[]), "accounts must be"),
    (
        "overflowing total",
        lambda d: d.update(accounts={ALICE.public_key: 2**53 - 1, VALIDATORS[0].public_key: 1}),
        "sum",
    ),
]


@pytest.mark.parametrize(("name", "change", "message"), BAD, ids=[b[0] for b in BAD])
def test_bad_documents_are_refused(name: str, change: Any, message: str) -> None:
    doc = None if name == "not an object" else _mutate(change)
    text = json.dumps(doc)
    with pytest.raises(GenesisError, match=message):
        parse_genesis(text)


def test_float_balance_is_refused() -> None:
    text = json.dumps(genesis_document()).replace("1000", "1000.0")
    with pytest.raises(GenesisError, match="float"):
        parse_genesis(text)


def test_duplicate_json_key_is_refused() -> None:
    text = '{"chain_id": "a", "chain_id": "b", "validators": [], "accounts": {}, "fee_per_byte": 0}'
    with pytest.raises(GenesisError, match="twice"):
        parse_genesis(text)


def test_chain_id_alphabet_and_fee_per_byte_edges_are_accepted() -> None:
    g = make_genesis(chain_id="a" * 64, fee_per_byte=0)
    assert (g.chain_id, g.fee_per_byte) == ("a" * 64, 0)
    g = make_genesis(chain_id="x.y_z-09", fee_per_byte=2**53 - 1)
    assert (g.chain_id, g.fee_per_byte) == ("x.y_z-09", 2**53 - 1)


def test_new_chain_ids_are_valid_and_unique() -> None:
    ids = {new_chain_id("phalanx-testnet") for _ in range(1000)}
    assert len(ids) == 1000
    for chain_id in ids:
        assert CHAIN_ID_RE.fullmatch(chain_id)
        assert chain_id.startswith("phalanx-testnet-") and len(chain_id) == 16 + 16
    with pytest.raises(GenesisError):
        new_chain_id("Bad Prefix")


def test_zero_balance_is_allowed() -> None:
    g = make_genesis(accounts={ALICE.public_key: 0})
    assert g.accounts == {ALICE.public_key: 0}


def test_genesis_is_frozen() -> None:
    g = make_genesis()
    with pytest.raises(AttributeError):
        g.chain_id = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        g.accounts[ALICE.public_key] = 5  # type: ignore[index]
