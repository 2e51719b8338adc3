"""The offline audit (spec §7): verify ledgers from their LMDB files and compare them.

:func:`audit` opens each data directory read-only (one LMDB read transaction, so it works while
the node writes), runs the checks of ``ledger/audit/checks.py`` with the signature checks spread
over worker processes or threads (``ledger/audit/pool.py``), and then compares the ledgers block
hash by block hash: the first seq at which two ledgers hold different hashes is a divergence.
A ledger that is a prefix of another (it is behind) is not.

Which genesis: the one given (``--genesis``), which every ledger must have been made for; or,
without it, the genesis document each ledger stores (the store keeps ``JCS(genesis)`` in its
``meta`` database beside ``genesis_hash``). Then the audit proves a ledger consistent with the
genesis it claims, and ledgers that claim different ones are reported as diverging at seq 0.

The report as JSON (``phalanx audit --json``)::

    {"ok": bool,
     "genesis": {"source": "file" | "ledger", "path": str | null, "genesis_hash": str | null},
     "ledgers": [{"data_dir": str, "ok": bool, "complete": bool,
                  "genesis_hash": str | null, "chain_id": str | null,
                  "head": {"seq": int, "hash": str | null},
                  "counts": {"blocks", "txs", "signatures", "state_keys", "balances": int},
                  "failures": [{"seq": int | null, "check": str, "detail": str}],
                  "failures_total": int,
                  "records": {"ok": bool, "complete": bool, "checked": int,
                              "failures": [{"key": str, "detail": str}],
                              "failures_total": int} | null}],
     "divergences": [{"seq": int, "data_dirs": [str, str], "hashes": [str | null, str | null]}],
     "elapsed_s": float}

``check`` is one of: genesis, meta, block, batch, chain, certificate, tx, tx_signature, tx_ids,
tx_root, results, tx_index, state, balances. At most 1,000 failures per ledger are listed;
``failures_total`` counts them all. ``records`` reports the node's consensus records (what it
signed: ``ledger.audit.records``) apart from the ledger's own failures; ``ok`` covers both.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lmdb

from ledger.audit.checks import Failure, LedgerAudit, LedgerReport
from ledger.audit.pool import SignaturePool
from ledger.audit.records import audit_records
from ledger.genesis import Genesis
from ledger.store import StoreError, _open_dbs, _open_reader_env, check_data_file

WORKERS_DEFAULT = 2
_READER_MAP_SIZE = 1 << 20  # LMDB adopts the size the writer gave the map
_BEGIN_RETRIES_MAX = 64

# (data_dir, blocks done, blocks in all)
LedgerProgress = Callable[[str, int, int], None]

__all__ = [
    "AuditReport",
    "AuditUsageError",
    "Divergence",
    "Failure",
    "LedgerReport",
    "audit",
    "audit_ledger",
    "compare",
]


class AuditUsageError(Exception):
    """A data directory cannot be audited at all: it does not exist or holds no ledger."""


@dataclass(frozen=True, slots=True)
class Divergence:
    """Two ledgers hold different block hashes at ``seq`` (0: they claim different genesis)."""

    seq: int
    data_dirs: tuple[str, str]
    hashes: tuple[str | None, str | None]

    def to_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "data_dirs": list(self.data_dirs), "hashes": list(self.hashes)}


@dataclass
class AuditReport:
    ledgers: list[LedgerReport]
    divergences: list[Divergence] = field(default_factory=list)
    genesis_path: str | None = None  # None: each ledger's stored genesis was used
    genesis_hash: str | None = None
    elapsed_s: float = 0.0

    @property
    def ok(self) -> bool:
        records_ok = all(r.records is None or r.records.ok for r in self.ledgers)
        return all(r.ok for r in self.ledgers) and records_ok and not self.divergences

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "genesis": {
                "source": "ledger" if self.genesis_path is None else "file",
                "path": self.genesis_path,
                "genesis_hash": self.genesis_hash,
            },
            "ledgers": [r.to_json() for r in self.ledgers],
            "divergences": [d.to_json() for d in self.divergences],
            "elapsed_s": round(self.elapsed_s, 3),
        }


def check_data_dir(data_dir: Path | str) -> Path:
    """Raise :class:`AuditUsageError` unless ``data_dir`` is a directory holding an LMDB file."""
    path = Path(data_dir)
    if not path.exists():
        raise AuditUsageError(f"{path} does not exist")
    if not path.is_dir():
        raise AuditUsageError(f"{path} is not a directory")
    if not (path / "data.mdb").is_file():
        raise AuditUsageError(f"{path} holds no Phalanx ledger (no data.mdb)")
    if not os.access(path / "data.mdb", os.R_OK):
        raise AuditUsageError(f"{path / 'data.mdb'} is not readable by this user")
    return path


def audit_ledger(
    data_dir: Path | str,
    genesis: Genesis | None = None,
    workers: int = WORKERS_DEFAULT,
    progress: LedgerProgress | None = None,
    pool: SignaturePool | None = None,
    processes: bool | None = None,
) -> LedgerReport:
    """Audit one ledger against ``genesis`` (None: the genesis the ledger stores), verifying
    signatures in ``pool``, or in a pool of ``workers`` made for this call (``processes``: see
    :class:`ledger.audit.pool.SignaturePool`)."""
    path = check_data_dir(data_dir)
    if pool is None:
        # The pool forks its workers before the ledger is opened: no child holds the LMDB env.
        with SignaturePool(workers, processes) as own:
            return audit_ledger(path, genesis, workers, progress, own)
    report = LedgerReport(str(data_dir))
    try:
        check_data_file(path)  # a truncated file would kill the process with SIGBUS
        env = _open_reader_env(path, _READER_MAP_SIZE)
    except StoreError as exc:
        report.fail(None, "meta", str(exc))
        report.complete = False
        return report
    try:
        try:
            dbs = _open_dbs(env, path, readonly=True)
        except StoreError as exc:
            report.fail(None, "meta", str(exc))
            report.complete = False
            return report
        txn = _begin(env)
        try:
            on_block = None
            if progress is not None:
                name = str(data_dir)

                def on_block(done: int, total: int) -> None:
                    progress(name, done, total)

            checks = LedgerAudit(txn, dbs, report, genesis, on_block, pool.step_txs)
            try:
                failed = pool.run(checks.steps())
            except lmdb.Error as exc:  # LMDB found its own structures damaged
                report.fail(None, "meta", f"LMDB cannot read the ledger: {exc}")
                report.complete = False
                failed = []
            finished = checks.finish(failed)
            # What this node signed, checked apart: a damaged record stops the node, not the
            # ledger's validity.
            try:
                finished.records = audit_records(txn, dbs, checks.genesis or genesis)
            except lmdb.Error as exc:
                finished.fail(None, "meta", f"LMDB cannot read the consensus records: {exc}")
            return finished
        finally:
            txn.abort()
    finally:
        env.close()


def _begin(env: lmdb.Environment) -> lmdb.Transaction:
    for _ in range(_BEGIN_RETRIES_MAX):
        try:
            return env.begin(write=False, buffers=False)
        except lmdb.MapResizedError:
            env.set_mapsize(0)  # the writer grew the map: adopt its size
    raise StoreError("the ledger's map keeps being resized; try again")


def audit(
    data_dirs: Sequence[Path | str],
    genesis: Genesis | None = None,
    genesis_path: str | None = None,
    workers: int = WORKERS_DEFAULT,
    progress: LedgerProgress | None = None,
    processes: bool | None = None,
) -> AuditReport:
    """Audit every ledger, then compare them. Raises :class:`AuditUsageError` before doing any
    work if a data directory does not exist or holds no ledger."""
    for data_dir in data_dirs:
        check_data_dir(data_dir)
    start = time.perf_counter()
    with SignaturePool(workers, processes) as pool:
        reports = [audit_ledger(d, genesis, workers, progress, pool) for d in data_dirs]
    return AuditReport(
        ledgers=reports,
        divergences=compare(reports),
        genesis_path=genesis_path,
        genesis_hash=None if genesis is None else genesis.genesis_hash,
        elapsed_s=time.perf_counter() - start,
    )


def compare(reports: Sequence[LedgerReport]) -> list[Divergence]:
    """For every pair of ledgers, the first seq where their block hashes differ."""
    divergences = []
    for i, a in enumerate(reports):
        for b in reports[i + 1 :]:
            names = (a.data_dir, b.data_dir)
            if a.genesis_hash != b.genesis_hash:
                divergences.append(Divergence(0, names, (a.genesis_hash, b.genesis_hash)))
                continue
            for seq, (x, y) in enumerate(
                zip(a.block_hashes, b.block_hashes, strict=False), start=1
            ):
                if x is None or x != y:
                    divergences.append(Divergence(seq, names, (x, y)))
                    break
    return divergences
