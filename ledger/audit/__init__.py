"""The offline audit: verify ledgers from their LMDB files and compare them (``phalanx audit``).

``run`` opens the ledgers and compares them, ``checks`` holds every per-ledger check, ``pool``
spreads the signature checks over processes or threads, ``codec`` is the audit's fast canonical
JSON, ``bench`` measures the audit against the raw verify rate (``scripts/bench-audit``).
"""

from ledger.audit.run import AuditReport, AuditUsageError, audit, audit_ledger, check_data_dir

__all__ = ["AuditReport", "AuditUsageError", "audit", "audit_ledger", "check_data_dir"]
