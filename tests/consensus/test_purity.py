"""consensus/ is a pure state machine (ARCHITECTURE "Boundaries"; etcd raft, h11): no I/O, no
clock, no threads, no global randomness anywhere under it (the simulator in consensus/sim/ may
build a seeded ``random.Random(seed)``, but never call the module-level functions)."""

from __future__ import annotations

import ast
from pathlib import Path

CONSENSUS = Path(__file__).resolve().parents[2] / "consensus"
FORBIDDEN = {"asyncio", "aiohttp", "lmdb", "time", "socket", "threading"}


def _offences(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend(
                f"import {a.name}" for a in node.names if a.name.split(".")[0] in FORBIDDEN
            )
        elif isinstance(node, ast.ImportFrom) and node.module is not None and node.level == 0:
            root = node.module.split(".")[0]
            if root in FORBIDDEN:
                found.append(f"from {node.module} import ...")
            if root == "random":
                found.extend(
                    f"from random import {a.name}" for a in node.names if a.name != "Random"
                )
        elif (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == "random"
            and node.attr != "Random"
        ):
            found.append(f"random.{node.attr} (the global random source)")
    return found


def test_consensus_imports_nothing_impure() -> None:
    """The replica's inputs are messages, requests and ticks only; determinism forbids these."""
    files = sorted(CONSENSUS.rglob("*.py"))
    assert files, "no consensus sources found"
    offenders = [
        f"{path.relative_to(CONSENSUS.parent)}: {what}"
        for path in files
        for what in _offences(path)
    ]
    assert offenders == []


def test_the_purity_check_catches_offenders(tmp_path: Path) -> None:
    """The check itself must bite: each forbidden form is reported."""
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import time\nimport asyncio.tasks\nfrom lmdb import open\nimport random\n"
        "from random import choice\nx = random.random()\ny = random.Random(1)\n"
    )
    found = _offences(bad)
    assert len(found) == 5, found
