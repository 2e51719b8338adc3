"""The message log of one sequence number in the current view (OSDI'99 §4.2)."""

from __future__ import annotations

from dataclasses import dataclass, field

from consensus.messages import Commit, Prepare, PrePrepare


@dataclass(slots=True)
class Slot:
    """What this replica knows about ``seq`` in ``view``: the pre-prepare it accepted (without
    its batch; batches are kept by digest), the PREPAREs and COMMITs received (one per sender, the
    first one wins: a sender that changes its vote is faulty and loses it), and the predicates
    prepared(m, v, n, i) and committed-local(m, v, n, i) once they became true."""

    view: int
    seq: int
    pre_prepare: PrePrepare | None = None
    prepares: dict[str, Prepare] = field(default_factory=dict)
    commits: dict[str, Commit] = field(default_factory=dict)
    prepared: bool = False
    committed: bool = False

    @property
    def digest(self) -> str | None:
        return None if self.pre_prepare is None else self.pre_prepare.digest

    def matching_prepares(self, primary: str) -> list[Prepare]:
        """PREPAREs from backups (never the primary: its pre-prepare stands for its vote) that
        match the accepted pre-prepare, sorted by sender for deterministic certificates."""
        digest = self.digest
        return sorted(
            (p for s, p in self.prepares.items() if p.digest == digest and s != primary),
            key=lambda p: p.sender,
        )

    def matching_commits(self) -> dict[str, str]:
        """Validator key -> commit vote signature, for the accepted digest."""
        digest = self.digest
        return {s: c.signature for s, c in sorted(self.commits.items()) if c.digest == digest}
