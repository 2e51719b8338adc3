"""The mutation test's machinery (the full run is ``scripts/mutants``, minutes long, not here):
every mutant applies to a copy and leaves the real files alone, and one mutant is killed by the
seed that killed it in the full run, while the same seed passes on the real tree."""

from __future__ import annotations

import hashlib
import py_compile
from pathlib import Path

from consensus.sim import run_seed
from consensus.sim.mutants import MUTANTS, PACKAGE, _apply, run_mutant

KILLED_BY = ("checkpoint_proof_always_passes", 81)  # from a full scripts/mutants run


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(path.read_bytes())
    return h.hexdigest()


def test_every_mutant_applies_to_a_copy_only(tmp_path: Path) -> None:
    before = _digest(PACKAGE)
    assert len(MUTANTS) >= 20 and len({m.name for m in MUTANTS}) == len(MUTANTS)
    for i, mutant in enumerate(MUTANTS):
        root = tmp_path / str(i)
        _apply(mutant, root)
        changed = root / "consensus" / mutant.file
        assert changed.read_text() != (PACKAGE / mutant.file).read_text(), mutant.name
        py_compile.compile(str(changed), doraise=True)
    assert _digest(PACKAGE) == before


def test_a_mutant_is_killed_and_the_real_tree_passes_the_same_seed() -> None:
    name, seed = KILLED_BY
    (mutant,) = [m for m in MUTANTS if m.name == name]
    outcome = run_mutant(mutant, seeds=1, start=seed)
    assert outcome.killed, outcome.detail
    assert f"seed {seed}" in outcome.detail
    assert run_seed(seed).ok
