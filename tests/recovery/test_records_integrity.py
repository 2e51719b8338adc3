"""Issue 8 (7): a damaged consensus record stops the node at start-up with a message naming it,
and ``phalanx audit`` reports it apart from the ledger's own failures.

The records are what a node signed: restarting from a flipped byte could make it sign from a
state nobody can vouch for. Each damage below is made to bytes in data.mdb, as a disk would."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from consensus import records as rec
from consensus.batch import Batch
from consensus.messages import Checkpoint, Prepare, PreparedCert, PrePrepare, sign_message
from consensus.output import Record
from crypto.signing import Ed25519Verifier
from ledger.audit.run import audit_ledger
from ledger.genesis import Genesis
from ledger.records_check import check_records
from ledger.store import LedgerStore, StoreError
from tests.ledger.helpers import ALICE, CHAIN_ID, VALIDATORS, committed, make_genesis, tx

PRIMARY, ME, OTHER = VALIDATORS[0], VALIDATORS[1], VALIDATORS[2]


def _records(genesis: Genesis) -> tuple[list[Record], Batch, Prepare]:
    """What a backup persists for seq 2 (pre-prepare, its batch, PREPARE, prepared certificate)
    and a stable checkpoint at seq 1."""
    batch = Batch(
        CHAIN_ID, 2, 1_764_000_000_000, (tx(ALICE, 7, {"op": "set", "key": "k", "value": "v"}),)
    )
    pp = sign_message(PRIMARY, PrePrepare(CHAIN_ID, 0, 2, batch.digest, batch))
    mine = sign_message(ME, Prepare(CHAIN_ID, 0, 2, batch.digest))
    other = sign_message(OTHER, Prepare(CHAIN_ID, 0, 2, batch.digest))
    cert = PreparedCert(pp.without_batch(), (mine, other))
    block = "ab" * 32
    proof = [sign_message(v, Checkpoint(CHAIN_ID, 1, block)).to_wire() for v in VALIDATORS[:3]]
    records = [
        rec.view_record(0, active=True),
        Record(rec.KEY_STABLE, {"stable_seq": 1, "block_hash": block, "proof": proof}),
        rec.seq_record(2, rec.PHASE_PRE_PREPARE, "message", pp.without_batch().to_wire()),
        rec.batch_record(2, batch.digest, batch.to_wire()),
        rec.seq_record(2, rec.PHASE_PREPARE, "message", mine.to_wire()),
        rec.seq_record(2, rec.PHASE_PREPARED, "certificate", cert.to_wire()),
    ]
    return records, batch, mine


@pytest.fixture(scope="module")
def genesis() -> Genesis:
    return make_genesis()


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory, genesis: Genesis) -> Path:
    path = tmp_path_factory.mktemp("records") / "data"
    with LedgerStore.open(path, genesis, map_size=1 << 20) as store:
        store.append_block(
            committed(genesis, 1, [tx(ALICE, 0, {"op": "set", "key": "a", "value": 1})])
        )
        store.persist_records(_records(genesis)[0])
    (path / "lock.mdb").unlink()
    return path


@pytest.fixture
def copy(tmp_path: Path, pristine: Path) -> Path:
    path = tmp_path / "data"
    shutil.copytree(pristine, path)
    return path


def _edit(path: Path, old: bytes, new: bytes, times: int = 1) -> None:
    assert len(old) == len(new)
    data = (path / "data.mdb").read_bytes()
    assert data.count(old) == times, f"{old!r} occurs {data.count(old)} times"
    (path / "data.mdb").write_bytes(data.replace(old, new))


def _flip_hex(text: str) -> str:
    return ("0" if text[0] != "0" else "1") + text[1:]


def _refused(path: Path, genesis: Genesis, *needles: str) -> str:
    with pytest.raises(StoreError) as caught:
        LedgerStore.open(path, genesis).close()
    message = str(caught.value)
    for needle in needles:
        assert needle in message, message
    assert "move it away" in message
    return message


def test_sound_records_open_and_audit_clean(copy: Path, genesis: Genesis) -> None:
    with LedgerStore.open(copy, genesis) as store:
        assert len(store.load_records()) == 6
    report = audit_ledger(copy, genesis, workers=1)
    assert report.ok and report.records is not None
    assert report.records.ok and report.records.checked == 6


def test_a_flipped_byte_in_a_stored_batch_is_refused(copy: Path, genesis: Genesis) -> None:
    """The batch no longer matches its header's tx_root (a transaction's nonce changed)."""
    _, batch, _ = _records(genesis)
    _edit(copy, b'"nonce":7', b'"nonce":8')
    _refused(copy, genesis, f"batch/{batch.digest}", "tx_root")


def test_a_flipped_byte_in_our_vote_is_refused(copy: Path, genesis: Genesis) -> None:
    _, _, mine = _records(genesis)
    # Our PREPARE is stored twice: as our vote, and inside our prepared certificate.
    _edit(copy, mine.signature.encode(), _flip_hex(mine.signature).encode(), times=2)
    message = _refused(copy, genesis, "seq/0000000000000002/prepare'", "signature", ME.public_key)
    assert "and 1 more damaged record" in message


def test_a_flipped_byte_in_a_checkpoint_proof_is_refused(copy: Path, genesis: Genesis) -> None:
    records, _, _ = _records(genesis)
    signature = records[1].value["proof"][2]["signature"]
    _edit(copy, signature.encode(), _flip_hex(signature).encode())
    _refused(copy, genesis, "'stable'", "signature")


def test_the_audit_reports_damaged_records_apart(copy: Path, genesis: Genesis) -> None:
    _, batch, mine = _records(genesis)
    _edit(copy, mine.signature.encode(), _flip_hex(mine.signature).encode(), times=2)
    _edit(copy, b'"nonce":7', b'"nonce":8')
    report = audit_ledger(copy, genesis, workers=1)
    assert report.failures_total == 0  # the ledger itself is sound...
    assert report.records is not None and not report.records.ok  # ...its records are not
    keys = sorted(f.key for f in report.records.failures)
    assert keys == [
        f"batch/{batch.digest}",
        "seq/0000000000000002/prepare",
        "seq/0000000000000002/prepared",
    ]
    ledger = report.to_json()["records"]
    assert ledger["failures_total"] == 3 and not ledger["ok"]


def test_every_record_kind_is_checked(genesis: Genesis) -> None:
    """Unit level: each record's damage is found, the sound ones pass."""
    records, batch, mine = _records(genesis)
    verifier = Ed25519Verifier()
    keys = genesis.validator_keys
    assert check_records(records, CHAIN_ID, keys, verifier) == []
    damaged = [
        Record(r.key, {**r.value, "seq": 3}) if r.key.startswith("seq/") else r for r in records
    ]
    found = {p.key for p in check_records(damaged, CHAIN_ID, keys, verifier)}
    assert found == {r.key for r in records if r.key.startswith("seq/")}
    assert check_records(records, "another-chain", keys, verifier) != []
    unknown = check_records([Record("nonsense", {})], CHAIN_ID, keys, verifier)
    assert [p.detail for p in unknown] == ["unknown key"]
    other = Batch(CHAIN_ID, 2, batch.time_ms + 1, batch.txs)
    swapped = rec.batch_record(2, batch.digest, other.to_wire())
    (problem,) = check_records([swapped], CHAIN_ID, keys, verifier)
    assert "digest" in problem.detail
    del mine
