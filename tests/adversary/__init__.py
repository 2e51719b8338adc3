"""Dev-only tools that put real adversaries on real processes (issue 14).

Nothing here is imported by the node, and the package is not installed with it (setuptools
includes only ``node``, ``consensus``, ``crypto`` and ``ledger``): tests import it from the
project root, and ``scripts/chaos`` runs it the same way.

* :mod:`.linearizability`: a Wing-Gong-Lowe / Porcupine-style checker of client histories
  (per-key partitions, unknown outcomes, a step and time budget, per-node sequential checks);
* :mod:`.kv_model`: the Phalanx key/value register model (set, cas, delete, read);
* :mod:`.history`: records what clients invoked and what came back;
* :mod:`.netns`: test hosts in network namespaces with partitions and loss (nftables);
* :mod:`.relay`: a userspace TCP relay adding delay, jitter and stalls where netem is absent;
* :mod:`.clock`: start a node process with a clock offset (clock-skew tests);
* :mod:`.byzantine`: run the real node with a Byzantine hook on what it sends;
* :mod:`.cluster`, :mod:`.workload`, :mod:`.scenario`: real nodes in namespaces,
  recording clients, and the named scenarios ``scripts/chaos`` runs (``python -m tests.adversary``).
"""
