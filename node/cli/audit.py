"""``phalanx audit``: verify ledgers offline and compare them; verify a receipt.

    phalanx audit DATA_DIR... [--genesis FILE] [--json] [--workers N]
    phalanx audit verify-receipt RECEIPT.json --genesis FILE [--tx TX.json] [--json]
    phalanx audit verify-evidence EVIDENCE.json --genesis FILE [--json]  (audit_evidence.py)
    phalanx audit verify-read READ.json --genesis FILE [--json]  (audit_read.py)

The first form opens each ledger read-only (also while its node runs), re-derives every hash,
signature, result and state entry from the genesis (see ``ledger/audit/run.py`` for the checks and
the ``--json`` shape), then compares the ledgers block hash by block hash. The second checks a
receipt (or the API's whole ``{"tx_id", "status", "receipt"}`` answer) against the genesis;
with ``--tx`` it also checks that the receipt is the one of that signed transaction (its
``tx_id`` is the hash of the transaction's body, and the signature verifies), so a receipt
cannot be passed off as another transaction's.

Every report names the checks it ran, the tool's version and when it ran. A report that the pipe
reader stops reading (``| head``) ends quietly.

Exit codes: 0 every check passed (the receipt is valid); 1 something failed; 2 usage (bad
arguments, a missing directory or file, an unreadable genesis). A directory literally named
``verify-receipt`` is audited as ``./verify-receipt``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from collections.abc import Callable

    from ledger.audit import AuditReport
    from ledger.genesis import Genesis

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it

VERIFY_RECEIPT = "verify-receipt"
VERIFY_EVIDENCE = "verify-evidence"  # node/cli/audit_evidence.py
VERIFY_READ = "verify-read"  # node/cli/audit_read.py
WORKERS_MAX = 64
_PROGRESS_INTERVAL_S = 0.1
_PROGRESS_DELAY_S = 0.5
_PROGRESS_WIDTH = 30
_FAILURES_SHOWN_MAX = 50  # per ledger in the human output; --json lists up to 1,000

USAGE = (
    "phalanx audit [-h] [--genesis FILE] [--json] [--workers N] DATA_DIR [DATA_DIR ...]\n"
    "       phalanx audit verify-receipt RECEIPT.json --genesis FILE [--tx TX.json] [--json]\n"
    "       phalanx audit verify-evidence EVIDENCE.json --genesis FILE [--json]\n"
    "       phalanx audit verify-read READ.json --genesis FILE [--json]"
)
CHECKS = (
    "genesis", "meta", "block", "batch", "chain", "certificate", "tx", "tx_signature", "tx_ids",
    "tx_root", "results", "tx_index", "state", "balances", "roots", "execution", "state_tree",
)  # fmt: skip
RECEIPT_CHECKS = (
    "receipt_shape", "chain_id", "tx_root_inclusion", "commit_certificate",
    "result_inclusion", "execution_certificate",
)  # fmt: skip


DESCRIPTION = """\
Verify each ledger in DATA_DIR... read-only (safe beside a running node): the hash chain from
genesis_hash, every commit certificate and transaction signature, every tx_root, the tx index,
and the results, state and balances recomputed by replaying every transaction. Then compare
the ledgers and name the first seq where two hold different block hashes (a ledger that is only
behind does not diverge). `verify-receipt` checks one receipt against the genesis instead.

Exit codes: 0 every check passed, 1 something failed, 2 usage error."""

EPILOG = """\
--json prints one object:
  {"ok", "tool": {"name", "version"}, "generated_at", "checks": [names],
   "genesis": {"source": "file"|"ledger", "path", "genesis_hash"},
   "ledgers": [{"data_dir", "ok", "complete", "genesis_hash", "chain_id",
                "head": {"seq", "hash"},
                "counts": {"blocks", "txs", "signatures", "state_keys", "balances"},
                "failures": [{"seq" (null: ledger-wide), "check", "detail"}],
                "failures_total"}],
   "divergences": [{"seq" (0: different genesis), "data_dirs": [a, b], "hashes": [a, b]}],
   "elapsed_s"}
check is one of genesis, meta, block, batch, chain, certificate, tx, tx_signature, tx_ids,
tx_root, results, tx_index, state, balances.
verify-receipt --json prints {"ok", "tx_id", "seq", "index", "failures": [sentences],
"checks", "tool", "generated_at", "tx_bound" (true when --tx was given and matches)}."""


class UsageError(Exception):
    pass


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "audit",
        usage=USAGE,
        help="verify ledgers offline and compare them, or verify a receipt",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=DESCRIPTION,
        epilog=EPILOG,
    )
    parser.add_argument("paths", nargs="+", metavar="DATA_DIR", help="ledger data directories")
    parser.add_argument(
        "--genesis",
        type=Path,
        metavar="FILE",
        help="the genesis every ledger must have been made for (default: the one each ledger "
        "stores); required by verify-receipt",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON report on stdout")
    parser.add_argument(
        "--tx",
        type=Path,
        metavar="TX.json",
        help="verify-receipt only: the signed transaction the receipt must be for",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=2,
        metavar="N",
        help="signature verifiers, worker processes where possible, else threads (default 2)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        if args.paths[0] == VERIFY_RECEIPT:
            return _verify_receipt(args)
        if args.paths[0] == VERIFY_EVIDENCE:
            return _verify_evidence(args)
        if args.paths[0] == VERIFY_READ:
            return _verify_read(args)
        return _audit(args)
    except UsageError as exc:
        print(f"usage: {USAGE}\nphalanx audit: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("\nphalanx audit: interrupted; nothing was verified to the end", file=sys.stderr)
        return EXIT_INTERRUPTED


def _emit(text: str) -> None:
    """Write the report to stdout; a reader that went away (``| head``) is not an error."""
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        # Point stdout at /dev/null so that the interpreter's final flush does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def _provenance() -> dict[str, Any]:
    from node.version import phalanx_version

    return {
        "tool": {"name": "phalanx audit", "version": phalanx_version()},
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
    }


def _load_genesis(path: Path) -> Genesis:
    from ledger.genesis import GenesisError, load_genesis

    try:
        return load_genesis(path)
    except GenesisError as exc:
        raise UsageError(str(exc)) from exc


# -- audit ------------------------------------------------------------------------------------


def _audit(args: argparse.Namespace) -> int:
    from ledger.audit import AuditUsageError, audit, check_data_dir

    if not 1 <= args.workers <= WORKERS_MAX:
        raise UsageError(f"--workers must be 1 to {WORKERS_MAX}")
    try:
        for path in args.paths:
            check_data_dir(path)
    except AuditUsageError as exc:
        raise UsageError(str(exc)) from exc
    genesis = None if args.genesis is None else _load_genesis(args.genesis)
    bar = _ProgressBar(sys.stderr) if sys.stderr.isatty() else None
    try:
        report = audit(
            args.paths,
            genesis,
            genesis_path=None if args.genesis is None else str(args.genesis),
            workers=args.workers,
            progress=None if bar is None else bar.update,
        )
    finally:
        if bar is not None:
            bar.clear()
    data = {**_provenance(), "checks": list(CHECKS), **report.to_json()}
    genesis_info = data.get("genesis")
    if isinstance(genesis_info, dict) and genesis_info.get("genesis_hash") is None:
        # No --genesis: name the genesis the ledgers store, when they all agree on one.
        stored = {ledger.genesis_hash for ledger in report.ledgers}
        if len(stored) == 1:
            genesis_info["genesis_hash"] = stored.pop()
    if args.json:
        _emit(json.dumps(data, indent=2) + "\n")
    else:
        out = io.StringIO()
        _print_report(report, out, data)
        _emit(out.getvalue())
    return EXIT_OK if report.ok else EXIT_FAILED


class _ProgressBar:
    """``DATA_DIR [#####.....] 1,234/5,000 blocks`` on a terminal, at most ten times a second,
    once the audit has run for ``delay_s`` (a short audit shows none)."""

    def __init__(self, stream: TextIO, delay_s: float = _PROGRESS_DELAY_S) -> None:
        self._stream = stream
        self._shown_at = time.monotonic() + delay_s - _PROGRESS_INTERVAL_S
        self._drawn = False

    def update(self, name: str, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self._shown_at < _PROGRESS_INTERVAL_S and (done != total or not self._drawn):
            return
        self._shown_at = now
        self._drawn = True
        filled = _PROGRESS_WIDTH * done // max(total, 1)
        bar = "#" * filled + "." * (_PROGRESS_WIDTH - filled)
        self._stream.write(f"\r\033[K{name} [{bar}] {done:,}/{total:,} blocks")
        self._stream.flush()

    def clear(self) -> None:
        if self._drawn:
            self._stream.write("\r\033[K")
            self._stream.flush()


def _print_report(report: AuditReport, out: TextIO, data: dict[str, Any]) -> None:
    print(f"{data['tool']['name']} {data['tool']['version']}, {data['generated_at']}", file=out)
    print(f"checks: {', '.join(data['checks'])}", file=out)
    if report.genesis_path is None:
        stored = data["genesis"].get("genesis_hash") or "differs between the ledgers"
        print(
            f"genesis: each ledger's stored genesis ({stored}; pass --genesis to check yours)",
            file=out,
        )
    else:
        print(f"genesis: {report.genesis_path} ({report.genesis_hash})", file=out)
    for ledger in report.ledgers:
        print(f"\n{ledger.data_dir}", file=out)
        print(f"  chain {ledger.chain_id}, genesis {ledger.genesis_hash}", file=out)
        print(f"  head seq {ledger.head_seq}, hash {ledger.head_hash}", file=out)
        print(
            f"  {ledger.blocks:,} blocks, {ledger.txs:,} transactions, {ledger.signatures:,} "
            f"signatures, {ledger.state_keys:,} state keys, {ledger.balances:,} balances",
            file=out,
        )
        _print_records(ledger, out)
        if ledger.ok:
            print("  OK: every check passed", file=out)
            continue
        print(f"  FAILED: {ledger.failures_total} problem(s)", file=out)
        for failure in ledger.failures[:_FAILURES_SHOWN_MAX]:
            where = "ledger" if failure.seq is None else f"seq {failure.seq}"
            print(f"    {where}: {failure.check}: {failure.detail}", file=out)
        if ledger.failures_total > _FAILURES_SHOWN_MAX:
            hidden = ledger.failures_total - _FAILURES_SHOWN_MAX
            print(f"    ... and {hidden} more (see --json)", file=out)
    if len(report.ledgers) > 1:
        _print_comparison(report, out)
    verdict = "OK" if report.ok else "FAILED"
    print(f"\naudit {verdict} ({report.elapsed_s:.2f} s)", file=out)


def _print_records(ledger: Any, out: TextIO) -> None:
    """The consensus records (what the node signed), apart from the ledger's own checks."""
    records = ledger.records
    if records is None:
        return
    if not records.complete:
        print(f"  records: {records.checked} not checked (no genesis)", file=out)
    elif records.ok:
        print(f"  records: {records.checked} consensus records OK", file=out)
    else:
        print(f"  records: FAILED: {records.failures_total} damaged consensus record(s)", file=out)
        for failure in records.failures[:_FAILURES_SHOWN_MAX]:
            print(f"    {failure}", file=out)


def _print_comparison(report: AuditReport, out: TextIO) -> None:
    print("\ncomparison:", file=out)
    for ledger in report.ledgers:
        print(f"  {ledger.data_dir}: head seq {ledger.head_seq} {ledger.head_hash}", file=out)
    for d in report.divergences:
        a, b = d.data_dirs
        if d.seq == 0:
            print(f"  DIVERGED: {a} and {b} were made for different genesis documents", file=out)
        else:
            print(
                f"  DIVERGED at seq {d.seq}: {a} has block hash {d.hashes[0]}, "
                f"{b} has {d.hashes[1]}",
                file=out,
            )
    if not report.divergences:
        common = min(ledger.head_seq for ledger in report.ledgers)
        print(f"  no divergence: all ledgers agree up to seq {common}", file=out)
    if not all(ledger.ok for ledger in report.ledgers):
        print(
            "  (the block hashes each ledger stores are compared; see its failures above)", file=out
        )


# -- verify-receipt ---------------------------------------------------------------------------


def _verify_receipt(args: argparse.Namespace) -> int:
    from crypto.canonical import CanonicalJsonError, parse_json
    from ledger.receipt import verify_receipt

    if len(args.paths) != 2:
        raise UsageError(f"{VERIFY_RECEIPT} takes exactly one RECEIPT.json")
    if args.genesis is None:
        raise UsageError(f"{VERIFY_RECEIPT} needs --genesis FILE")
    path = Path(args.paths[1])
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from exc
    genesis = _load_genesis(args.genesis)
    tx = None if args.tx is None else _read_tx(args.tx)
    try:
        receipt: Any = parse_json(data)
        if isinstance(receipt, dict) and "receipt" in receipt and "status" in receipt:
            receipt = receipt["receipt"]  # the API's whole answer to POST/GET /v1/tx
        failures = verify_receipt(receipt, genesis)
    except CanonicalJsonError as exc:
        receipt, failures = None, [f"the receipt is not Phalanx JSON: {exc}"]
    known = isinstance(receipt, dict)
    if tx is not None:
        failures += _tx_binding_failures(tx, receipt if known else {}, genesis)
    result = {
        "ok": not failures,
        "tx_id": receipt.get("tx_id") if known else None,
        "seq": receipt.get("seq") if known else None,
        "index": receipt.get("index") if known else None,
        "failures": failures,
        "tx_bound": tx is not None and not failures,
        "checks": list(RECEIPT_CHECKS) + (["tx_binding"] if tx is not None else []),
        **_provenance(),
    }
    if args.json:
        _emit(json.dumps(result, indent=2) + "\n")
    elif failures:
        lines = [f"receipt {path} is INVALID:", *[f"  - {failure}" for failure in failures]]
        _emit("\n".join(lines) + "\n")
    else:
        bound = f", and it is the receipt of {args.tx}" if tx is not None else ""
        _emit(
            f"receipt valid: tx {result['tx_id']} committed at seq {result['seq']} "
            f"index {result['index']} (chain {genesis.chain_id}){bound}\n"
            f"checks: {', '.join(result['checks'])}\n"
        )
    return EXIT_FAILED if failures else EXIT_OK


def _verify_evidence(args: argparse.Namespace) -> int:
    from node.cli.audit_evidence import verify_evidence_file

    return _verify_file(args, VERIFY_EVIDENCE, "EVIDENCE.json", verify_evidence_file)


def _verify_read(args: argparse.Namespace) -> int:
    from node.cli.audit_read import verify_read_file

    return _verify_file(args, VERIFY_READ, "READ.json", verify_read_file)


def _verify_file(
    args: argparse.Namespace,
    command: str,
    what: str,
    verify: Callable[[Path, Genesis, bool, Callable[[str], None], dict[str, Any]], bool],
) -> int:
    """``phalanx audit COMMAND FILE --genesis G``: ``verify`` reports on stdout; exit 0 if valid."""
    if len(args.paths) != 2:
        raise UsageError(f"{command} takes exactly one {what}")
    if args.genesis is None:
        raise UsageError(f"{command} needs --genesis FILE")
    genesis = _load_genesis(args.genesis)
    try:
        ok = verify(Path(args.paths[1]), genesis, args.json, _emit, _provenance())
    except OSError as exc:
        raise UsageError(f"cannot read {args.paths[1]}: {exc.strerror or exc}") from exc
    return EXIT_OK if ok else EXIT_FAILED


def _read_tx(path: Path) -> Any:
    from crypto.canonical import CanonicalJsonError, parse_json

    try:
        return parse_json(path.read_bytes())
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except CanonicalJsonError as exc:
        raise UsageError(f"--tx {path} is not a JSON transaction: {exc}") from exc


def _tx_binding_failures(tx: Any, receipt: dict[str, Any], genesis: Genesis) -> list[str]:
    """Why ``receipt`` is not the receipt of the signed transaction ``tx``; empty if it is."""
    from crypto.hashing import hash_object
    from ledger.transaction import TxError, check_transaction

    if not isinstance(tx, dict) or not isinstance(tx.get("body"), dict):
        return ['--tx is not a transaction ({"body", "sig"})']
    failures = []
    tx_id = hash_object(tx["body"])
    if receipt.get("tx_id") != tx_id:
        failures.append(
            f"the receipt is for tx {receipt.get('tx_id')}, but the given transaction's id is "
            f"{tx_id}"
        )
    try:
        check_transaction(tx, genesis.chain_id)
    except TxError as exc:
        failures.append(f"the given transaction is not validly signed for this chain: {exc}")
    return failures
