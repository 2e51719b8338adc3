"""The consensus error hierarchy, drawn in one place (h11 style: whose fault was it?).

ConsensusError
 ├── MalformedMessage     a peer sent something that is not a well-formed message (its fault);
 │                        the replica drops it and counts it, never lets it escape
 └── InvariantViolation   the replica's own state broke a fact it relies on (our bug); it is
                          raised out of the replica so the node halts instead of signing more
"""

from __future__ import annotations


class ConsensusError(Exception):
    """Base class of every error raised by ``consensus``."""


class MalformedMessage(ConsensusError):
    """A peer message failed shape validation; ``reason`` is a short, stable, countable code."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class InvariantViolation(ConsensusError):
    """An internal invariant of the replica does not hold: a programming error, never peer input."""


def invariant(condition: bool, message: str) -> None:
    """Check an internal fact. Unlike ``assert`` it survives ``python -O``."""
    if not condition:
        raise InvariantViolation(message)
