"""Validator-to-validator I/O: ``framing`` (length-prefixed frames), ``peers`` (authenticated
links with bounded queues) and ``block_sync`` (verified catch-up from peers)."""
