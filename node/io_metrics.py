"""Prometheus counters for the node's I/O defences (issue 10), on the node's registry.

==================================================  =========  ================================
``phalanx_peer_links_refused_total``                 counter    link set-ups refused, by
                                                                ``reason`` (``plaintext``,
                                                                ``wrong_key``, ``no_certificate``,
                                                                ``timeout``, ``evicted``, ...)
``phalanx_peer_pending_evicted_total``               counter    pending handshakes evicted to
                                                                make room, by ``reason``
``phalanx_peer_penalties_total``                     counter    links cut for invalid input or an
                                                                exhausted budget, by ``reason``
``phalanx_duplicate_validator_links_total``          counter    live links claiming one validator
                                                                key from a second process
``phalanx_http_connections_refused_total``           counter    HTTP connections closed at once
                                                                or reaped, by ``reason``
``phalanx_http_requests_limited_total``              counter    HTTP requests answered 429 by the
                                                                per-client limits, by ``reason``
==================================================  =========  ================================
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter

from node.p2p.peers import PeerMetrics


class IoMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.links_refused = Counter(
            "phalanx_peer_links_refused",
            "Peer link set-ups refused, by reason",
            ["reason"],
            registry=r,
        )
        self.pending_evicted = Counter(
            "phalanx_peer_pending_evicted",
            "Pending peer handshakes evicted, by reason",
            ["reason"],
            registry=r,
        )
        self.penalties = Counter(
            "phalanx_peer_penalties",
            "Peer links cut for invalid input or budgets, by reason",
            ["reason"],
            registry=r,
        )
        self.duplicate_validator_links = Counter(
            "phalanx_duplicate_validator_links",
            "Live links claiming one validator key from a second process",
            registry=r,
        )
        self.http_refused = Counter(
            "phalanx_http_connections_refused",
            "HTTP connections refused or reaped, by reason",
            ["reason"],
            registry=r,
        )
        self.http_limited = Counter(
            "phalanx_http_requests_limited",
            "HTTP requests refused by per-client limits",
            ["reason"],
            registry=r,
        )
        for reason in ("plaintext", "wrong_key", "no_certificate", "timeout", "evicted"):
            self.links_refused.labels(reason=reason)
        self._seen: dict[str, Tally[str]] = {}
        self._duplicates_seen = 0

    def observe_links(self, links: PeerMetrics) -> None:
        """Bring the counters up to date with the link layer's own tallies."""
        self._sync("refused", links.handshakes_refused, self.links_refused)
        self._sync("evicted", links.pending_evicted, self.pending_evicted)
        by_reason: Tally[str] = Tally()
        for (_, reason), count in links.penalties.items():
            by_reason[reason.split(":", 1)[0] if ":" in reason else reason] += count
        self._sync("penalties", by_reason, self.penalties)
        added = links.duplicate_validator_links - self._duplicates_seen
        if added > 0:
            self.duplicate_validator_links.inc(added)
            self._duplicates_seen = links.duplicate_validator_links

    def _sync(self, name: str, current: Mapping[str, int], counter: Counter) -> None:
        seen = self._seen.setdefault(name, Tally())
        for reason, count in current.items():
            if count > seen[reason]:
                counter.labels(reason=reason).inc(count - seen[reason])
                seen[reason] = count
