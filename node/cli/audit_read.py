"""``phalanx audit verify-read READ.json --genesis G [--json]``: check a proven read (spec §6).

READ.json is the API's answer to ``GET /v1/state/{key}?proof=true`` or ``GET
/v1/accounts/{pubkey}?proof=true``, saved as it came. It is valid when its state proof leads from
the entry it states (or from its absence) to the execution certificate's ``state_root``, and that
certificate holds q valid execution votes of the genesis validators for its ``seq`` and
``block_hash`` (see ``ledger/proven_read.py``).

``--json`` prints ``{"ok", "kind", "key" | "pubkey", "seq", "present", "failures", "checks",
"tool", "generated_at"}``. Exit codes as ``phalanx audit``: 0 valid, 1 invalid, 2 usage.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from crypto.canonical import CanonicalJsonError, parse_json
from ledger.genesis import Genesis
from ledger.proven_read import verify_read

VERIFY_READ = "verify-read"
READ_CHECKS = ("read_shape", "state_proof", "state_root", "execution_certificate", "chain_id")


def verify_read_file(
    path: Path,
    genesis: Genesis,
    as_json: bool,
    emit: Callable[[str], None],
    provenance: dict[str, Any],
) -> bool:
    """Verify the proven read in ``path`` and report through ``emit``; True if it is valid.
    Raises OSError if the file cannot be read."""
    data = path.read_bytes()
    try:
        answer: Any = parse_json(data)
        failures = verify_read(answer, genesis)
    except CanonicalJsonError as exc:
        answer, failures = None, [f"the file is not Phalanx JSON: {exc}"]
    known = isinstance(answer, dict)
    kind = "state" if known and "key" in answer else "balance"
    present = None
    if known and not failures:
        present = answer["version"] > 0 if kind == "state" else answer["balance"] > 0
    if as_json:
        result = {
            "ok": not failures,
            "kind": kind if known else None,
            "key" if kind == "state" else "pubkey": (
                answer.get("key" if kind == "state" else "pubkey") if known else None
            ),
            "seq": answer.get("seq") if known else None,
            "present": present,
            "failures": failures,
            "checks": list(READ_CHECKS),
            **provenance,
        }
        emit(json.dumps(result, indent=2) + "\n")
    elif failures:
        emit("\n".join([f"read {path} is INVALID:", *[f"  - {f}" for f in failures]]) + "\n")
    else:
        what = f"key {answer['key']!r}" if kind == "state" else f"balance of {answer['pubkey']}"
        state = "present" if present else "absent"
        emit(
            f"read valid: {what} is {state} as of block {answer['seq']} "
            f"(chain {genesis.chain_id}), certified by the validators\n"
            f"checks: {', '.join(READ_CHECKS)}\n"
        )
    return not failures
