"""Static configuration of one PBFT replica group, derived from the genesis document."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ReplicaConfig:
    """Who the validators are and the protocol's parameters.

    ``validators`` holds the validators' public keys (hex) in genesis order; the primary of view
    ``v`` is ``validators[v % n]``. Times are counted in ticks: the node ticks the replica at a
    fixed rate (``tick_ms``), the simulator with its virtual clock.
    """

    chain_id: str
    genesis_hash: str
    validators: tuple[str, ...]
    checkpoint_interval: int = 128  # K: a CHECKPOINT every K sequence numbers
    watermark_window: int = 256  # L: the primary may run at most L seqs past the stable checkpoint
    batch_size_max: int = 500  # transactions per batch
    batch_bytes_max: int = 4 * 1024 * 1024  # Tx.size summed over a batch (one tx may exceed it)
    pipeline_depth_max: int = 8  # batches the primary keeps in flight at once
    partial_in_flight_max: int = 2  # a batch that is not full goes out below this many in flight
    view_change_timeout_ticks: int = 100  # first view-change timer; doubles per failed view
    time_skew_max_ms: int = 30_000  # backups refuse batch times further than this from their clock
    _validator_set: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(set(self.validators)) != len(self.validators):
            raise ValueError("validator public keys must be distinct")
        if len(self.validators) < 1:
            raise ValueError("at least one validator is needed")
        if self.watermark_window < 2 * self.checkpoint_interval:
            raise ValueError("watermark_window must be at least 2 * checkpoint_interval")
        object.__setattr__(self, "_validator_set", frozenset(self.validators))

    @property
    def n(self) -> int:
        return len(self.validators)

    @property
    def f(self) -> int:
        return (self.n - 1) // 3

    @property
    def q(self) -> int:
        """Quorum ceil((n + f + 1) / 2); 2f + 1 when n = 3f + 1 (spec section 2)."""
        return (self.n + self.f + 2) // 2

    def primary(self, view: int) -> str:
        return self.validators[view % self.n]

    def is_validator(self, public_key: str) -> bool:
        return public_key in self._validator_set
