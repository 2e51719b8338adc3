"""The mutation test's machinery (the full run is ``scripts/mutants``, minutes long, not here):
every mutant applies to a copy and leaves the real files alone, and one mutant is killed by the
seed that killed it in the full run, while the same seed passes on the real tree."""

from __future__ import annotations

import hashlib
import importlib.util
import py_compile
import sys
from pathlib import Path
from types import ModuleType

from consensus.sim import run_seed


def _load() -> ModuleType:
    path = Path(__file__).resolve().parents[2] / "scripts" / "mutants.py"
    spec = importlib.util.spec_from_file_location("phalanx_mutants", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


mutants = _load()
MUTANTS, PACKAGE = mutants.MUTANTS, mutants.PACKAGE

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
        mutants._apply(mutant, root)
        changed = root / "consensus" / mutant.file
        assert changed.read_text() != (PACKAGE / mutant.file).read_text(), mutant.name
        py_compile.compile(str(changed), doraise=True)
    assert _digest(PACKAGE) == before


def test_a_mutant_is_killed_and_the_real_tree_passes_the_same_seed() -> None:
    name, seed = KILLED_BY
    (mutant,) = [m for m in MUTANTS if m.name == name]
    outcome = mutants.run_mutant(mutant, seeds=1, start=seed)
    assert outcome.killed, outcome.detail
    assert f"seed {seed}" in outcome.detail
    assert run_seed(seed).ok
