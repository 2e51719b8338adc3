"""``scripts/mutants``: does the simulator notice when one safety check is removed or weakened?

Each mutant is one textual change to one file of ``consensus/`` (a check removed, a quorum
lowered, a choice inverted). For each, the package is copied into a temporary directory, the
change applied to the copy (the real files are never touched), and the simulator run from the
copy over N seeds (300 by default: the first N, from seed 0 up, whose scenario has a Byzantine
replica other than a twin, since the checks mutated here are about faulty input), stopping at the
first failing seed: the mutant is *killed*. A mutant that survives every seed names a missing
adversary. Mutants run in parallel worker processes. One line per mutant, then
``mutants: K/M killed``; exit status 1 unless all are killed.

    scripts/mutants [--seeds N] [--jobs J] [--only NAME ...] [--list]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from consensus.sim.scenario import TWIN, scenario_for_seed

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "consensus"  # copied, then mutated; never edited in place
SEEDS_DEFAULT = 300


@dataclass(frozen=True)
class Mutant:
    name: str
    file: str  # relative to consensus/
    old: str  # must occur exactly once in the file
    new: str
    what: str
    more: tuple[tuple[str, str], ...] = ()  # further (old, new) edits of the same file


def _drop(text: str) -> str:
    """Replace a check by nothing (keeping the indentation of its first line)."""
    indent = text[: len(text) - len(text.lstrip())]
    return f"{indent}pass  # mutant: check removed\n"


# Not mutated, as equivalent under at most f faulty replicas: a certificate's pre-prepare being
# from the primary of its view, and its view being older than the VIEW-CHANGE's. Both are
# implied by the q - 1 valid matching PREPAREs the certificate must also hold: honest replicas
# prepare only what that view's primary proposed in a view they installed, and f replicas cannot
# make up q - 1 PREPAREs: no adversary can tell these checks apart, they stay as defence in depth.
VC = "view_change.py"
REP = "replica.py"

MUTANTS: tuple[Mutant, ...] = (
    # --- view_change.py: checkpoint proofs --------------------------------------------------
    Mutant(
        "checkpoint_proof_always_passes",
        VC,
        "    if stable_seq == 0:\n",
        "    return None\n    if stable_seq == 0:\n",
        "check_checkpoint_proof accepts anything",
    ),
    Mutant(
        "checkpoint_proof_one_vote",
        VC,
        "    if len(senders) < config.q:\n",
        "    if len(senders) < 1:\n",
        "a checkpoint proof needs one CHECKPOINT, not q",
    ),
    Mutant(
        "checkpoint_proof_unsigned",
        VC,
        '        if not verify(checkpoint):\n            return "checkpoint_proof_bad_signature"\n',
        _drop("        if"),
        "the CHECKPOINTs of a proof are not verified",
    ),
    Mutant(
        "checkpoint_proof_mismatch",
        VC,
        '            return "checkpoint_proof_mismatch"\n',
        _drop("            return"),
        "a proof's CHECKPOINTs may be for another seq or state",
    ),
    # --- view_change.py: prepared certificates ----------------------------------------------
    Mutant(
        "prepared_cert_always_passes",
        VC,
        "    pre_prepare = cert.pre_prepare\n",
        "    return None\n",
        "check_prepared_cert accepts anything",
    ),
    Mutant(
        "prepared_cert_short",
        VC,
        "    if len(senders) < config.q - 1:\n",
        "    if len(senders) < 0:\n",
        "a prepared certificate needs no PREPAREs",
    ),
    Mutant(
        "prepared_cert_unsigned",
        VC,
        '        if not verify(prepare):\n            return "prepared_bad_signature"\n',
        _drop("        if"),
        "the PREPAREs of a certificate are not verified",
    ),
    Mutant(
        "prepared_cert_mismatch",
        VC,
        '            return "prepared_mismatch"\n',
        _drop("            return"),
        "a certificate's PREPAREs may be for another view, seq or digest",
    ),
    Mutant(
        "plan_lowest_view",
        VC,
        'chosen[cert.seq] = max(chosen.get(cert.seq, (-1, "")), (cert.view, cert.digest))',
        'chosen[cert.seq] = min(chosen.get(cert.seq, (2**62, "")), (cert.view, cert.digest))',
        "the plan re-proposes the digest prepared in the lowest view",
    ),
    Mutant(
        "plan_lowest_checkpoint",
        VC,
        "    best = max(changes, key=lambda vc: vc.stable_seq)\n",
        "    best = min(changes, key=lambda vc: vc.stable_seq)\n",
        "the plan starts from the lowest stable checkpoint",
    ),
    # --- replica.py: NEW-VIEW ---------------------------------------------------------------
    Mutant(
        "new_view_any_proposals",
        REP,
        '            return "proposals_differ"\n',
        _drop("            return"),
        "a NEW-VIEW's re-proposals are not recomputed from its VIEW-CHANGEs",
    ),
    Mutant(
        "new_view_view_changes_unchecked",
        REP,
        "            reason = check_view_change(self._config, self._verify, vc)\n"
        "            if reason is not None:\n"
        "                return reason\n",
        _drop("            reason"),
        "the VIEW-CHANGEs inside a NEW-VIEW are not checked",
    ),
    Mutant(
        "new_view_unsigned_view_changes",
        REP,
        "            if not self._verify(vc):\n"
        '                return "view_change_bad_signature"\n',
        _drop("            if"),
        "the VIEW-CHANGEs inside a NEW-VIEW are not verified",
    ),
    Mutant(
        "new_view_too_few",
        REP,
        '        if len(senders) < self._config.q:\n            return "too_few_view_changes"\n',
        _drop("        if"),
        "a NEW-VIEW may hold fewer than q VIEW-CHANGEs",
    ),
    Mutant(
        "new_view_duplicates",
        REP,
        '        if len(senders) < self._config.q:\n            return "too_few_view_changes"\n',
        "        if len(new_view.view_changes) < self._config.q:\n"
        '            return "too_few_view_changes"\n',
        "a NEW-VIEW's VIEW-CHANGEs are counted, not their distinct senders",
        more=(
            (
                "            if not self._config.is_validator(vc.sender)"
                " or vc.sender in senders:\n",
                "            if not self._config.is_validator(vc.sender):\n",
            ),
        ),
    ),
    Mutant(
        "new_view_from_anyone",
        REP,
        '            self._drop(sender, "new_view_not_from_primary")\n            return\n',
        _drop("            self"),
        "a NEW-VIEW is accepted from a replica that is not the new view's primary",
    ),
    Mutant(
        "view_change_unchecked",
        REP,
        "        reason = check_view_change(self._config, self._verify, view_change)\n",
        "        reason = None\n",
        "a received VIEW-CHANGE's proofs are not checked",
    ),
    # --- replica.py: normal case ------------------------------------------------------------
    Mutant(
        "pre_prepare_from_anyone",
        REP,
        '            self._drop(sender, "pre_prepare_not_from_primary")\n            return\n',
        _drop("            self"),
        "a PRE-PREPARE is accepted from a replica that is not the primary",
    ),
    Mutant(
        "no_batch_time_monotonicity",
        REP,
        '            return "batch_time_not_monotonic"\n',
        "            return None\n",
        "batch times may go back",
    ),
    Mutant(
        "no_batch_time_skew",
        REP,
        '            return "batch_time_skewed"\n',
        "            return None\n",
        "batch times may be anywhere, e.g. far in the future",
    ),
    Mutant(
        "invalid_tx_prepared",
        REP,
        '            if not self._tx_checker(tx):\n                return "invalid_tx"\n',
        _drop("            if"),
        "backups prepare batches holding transactions with forged signatures",
    ),
    Mutant(
        "prepared_quorum_lowered",
        REP,
        "        if len(prepares) < self._config.q - 1:\n",
        "        if len(prepares) < self._config.q - 2:\n",
        "prepared with one PREPARE fewer than 2f",
    ),
    Mutant(
        "commit_quorum_lowered",
        REP,
        "        if len(votes) < self._config.q:\n",
        "        if len(votes) < self._config.q - 1:\n",
        "committed-local with one COMMIT fewer than q",
    ),
    Mutant(
        "stable_at_f_plus_1",
        REP,
        "            if len(proof) < self._config.q or self._last_executed < seq:\n",
        "            if len(proof) < self._config.f + 1 or self._last_executed < seq:\n",
        "a checkpoint becomes stable with f + 1 CHECKPOINTs",
    ),
    Mutant(
        "fetched_batch_txs_unchecked",
        REP,
        "            if not self._txs_signed(batch):\n",
        "            if False:\n",
        "batches fetched by digest are not checked for their transactions' signatures",
    ),
    # --- replica.py: the replica-facing part of block sync (state transfer) -----------------
    Mutant(
        "fetched_block_certificate_unchecked",
        REP,
        "            reason = self._check_certificate(block)\n",
        "            reason = None\n",
        "fetched blocks' commit certificates are not checked",
    ),
    Mutant(
        "fetched_block_certificate_one_vote",
        REP,
        '        return None if good >= self._config.q else "bad_certificate"\n',
        '        return None if good >= 1 else "bad_certificate"\n',
        "a fetched block's certificate needs one valid vote",
    ),
    Mutant(
        "fetched_block_txs_unchecked",
        REP,
        "            if reason is None and not self._txs_signed(block.batch):\n",
        "            if False:\n",
        "fetched blocks' transactions are not checked for their clients' signatures",
    ),
    Mutant(
        "fetched_block_gap",
        REP,
        "            if seq != self._last_executed + 1:\n",
        "            if False:\n",
        "fetched blocks are executed even after a gap",
    ),
)


# The seven weakened checks the review of issue 8 found the simulator did not notice.
ISSUE_LISTED = frozenset(
    {
        "new_view_any_proposals",
        "prepared_cert_always_passes",
        "checkpoint_proof_always_passes",
        "new_view_view_changes_unchecked",
        "no_batch_time_monotonicity",
        "fetched_block_certificate_unchecked",
        "pre_prepare_from_anyone",
    }
)
assert {m.name for m in MUTANTS} >= ISSUE_LISTED


def _apply(mutant: Mutant, root: Path) -> None:
    """Copy consensus/ under ``root`` and apply ``mutant`` to the copy."""
    copy = root / "consensus"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    path = copy / mutant.file
    text = path.read_text(encoding="utf-8")
    for old, new in ((mutant.old, mutant.new), *mutant.more):
        count = text.count(old)
        if count != 1:
            raise ValueError(f"the text to change occurs {count} times: {old.strip()[:60]!r}")
        text = text.replace(old, new)
    path.write_text(text, encoding="utf-8")


@dataclass(frozen=True)
class Outcome:
    mutant: Mutant
    killed: bool
    detail: str
    seconds: float


def faulty_seeds(count: int, start: int = 0) -> list[int]:
    """The first ``count`` seeds from ``start`` whose scenario has a Byzantine replica (twins
    aside): the seeds that exercise the checks the mutants remove."""
    seeds: list[int] = []
    seed = start
    while len(seeds) < count:
        if any(kind != TWIN for kind in scenario_for_seed(seed).byzantine.values()):
            seeds.append(seed)
        seed += 1
    return seeds


def run_mutant(mutant: Mutant, seeds: int, start: int = 0) -> Outcome:
    """Run ``seeds`` faulty seeds from ``start`` on a copy of consensus/ with ``mutant``."""
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f"mutant-{mutant.name}-") as tmp:
        root = Path(tmp)
        try:
            _apply(mutant, root)
        except ValueError as exc:
            return Outcome(mutant, False, f"NOT APPLIED: {exc}", 0.0)
        env = {**os.environ, "PYTHONHASHSEED": "0", "PYTHONPATH": str(root)}
        seed_list = ",".join(map(str, faulty_seeds(seeds, start)))
        # The copy comes first on sys.path (cwd and PYTHONPATH); the child says which
        # consensus it imported, so a run of the unmutated tree cannot pass for a mutant's.
        code = (
            "import sys, consensus.replica as r; print('module', r.__file__, flush=True); "
            "from consensus.sim.__main__ import main; "
            f"sys.exit(main(['--seed-list', '{seed_list}', '--first-failure']))"
        )
        proc = subprocess.run(
            [sys.executable, "-c", code],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        lines = proc.stdout.splitlines()
        seconds = time.monotonic() - started
        if not lines or not lines[0].startswith(f"module {root}"):
            return Outcome(mutant, False, f"ran the wrong tree: {lines[:1]} {proc.stderr}", seconds)
        summary = next((ln for ln in reversed(lines) if ln.startswith("sim: ")), "")
        failing = next((ln for ln in lines if ln.startswith("seed ")), "")
        reason = next(
            (ln.strip() for ln in lines if ln.strip().startswith(("safety:", "liveness:"))), ""
        )
        if proc.returncode == 1 and failing:
            seed = failing.split()[1]
            return Outcome(mutant, True, f"killed by seed {seed} ({reason[:110]})", seconds)
        if proc.returncode == 0:
            return Outcome(mutant, False, f"SURVIVED {summary}", seconds)
        tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return Outcome(mutant, False, f"ERROR (exit {proc.returncode}): {tail}", seconds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/mutants", description=__doc__)
    parser.add_argument("--seeds", type=int, default=SEEDS_DEFAULT, help="seeds per mutant")
    parser.add_argument("--jobs", type=int, default=2, help="mutants run in parallel")
    parser.add_argument("--only", nargs="*", help="run only these mutants")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    args = parser.parse_args(argv)
    mutants = [m for m in MUTANTS if not args.only or m.name in args.only]
    mutants.sort(key=lambda m: m.name not in ISSUE_LISTED)  # those the review named first
    if args.only and len(mutants) != len(set(args.only)):
        known = {m.name for m in MUTANTS}
        print(f"unknown mutants: {sorted(set(args.only) - known)}", file=sys.stderr)
        return 2
    if args.list:
        for m in mutants:
            print(f"{m.name}: {m.file}: {m.what}")
        return 0
    killed = 0
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        # Printed as each finishes: a survivor runs every seed, a killed mutant stops early.
        futures = [pool.submit(run_mutant, m, args.seeds) for m in mutants]
        for future in as_completed(futures):
            outcome = future.result()
            killed += outcome.killed
            m = outcome.mutant
            print(
                f"mutant {m.name} [{m.file}: {m.what}]: {outcome.detail} ({outcome.seconds:.0f} s)",
                flush=True,
            )
    print(f"mutants: {killed}/{len(mutants)} killed")
    return 0 if killed == len(mutants) else 1


if __name__ == "__main__":
    sys.exit(main())
