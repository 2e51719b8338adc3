"""The normal-case protocol (Castro & Liskov OSDI'99 §4.2) through four in-memory replicas."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from consensus.batch import block_hash, commit_vote_body
from consensus.messages import BatchRequest, sign_message
from crypto.signing import TAG_COMMIT, Ed25519Verifier
from tests.consensus.harness import CHAIN_ID, GENESIS_HASH, Cluster, make_tx


def test_normal_case_commits_the_same_batches_everywhere() -> None:
    """OSDI'99 §4.2: pre-prepare, prepare and commit phases; every replica executes the same
    batch at each sequence number, in order, and chains block_hash from genesis_hash (spec §4)."""
    cluster = Cluster(batch_size_max=4)
    cluster.tick()
    cluster.submit([make_tx(i) for i in range(10)])
    cluster.tick(3)
    for i in range(4):
        assert cluster.executed(i) == 3  # 4 + 4 + 2 (the last one cut by the batch delay)
        assert cluster.tx_order(i) == cluster.tx_order(0)
        replica = cluster.replica(i)
        assert replica.last_executed_seq == 3
        assert replica.head_hash == cluster.nodes[i].head_hash
        assert replica.pending_count == 0
        assert not replica.dropped
    assert len(set(cluster.tx_order(0))) == 10
    head = GENESIS_HASH
    for block in cluster.nodes[0].ledger:
        head = block_hash(block.batch.seq, head, block.batch.digest)
    assert head == cluster.replica(2).head_hash


def test_commit_certificate_is_q_distinct_valid_votes() -> None:
    """Spec §4 / OSDI'99 §4.2 committed-local: the certificate holds at least q = 2f + 1 votes
    from distinct validators, each a real Ed25519 signature over commit_vote_body under
    phalanx/commit/v1 for (seq, view, digest)."""
    cluster = Cluster(batch_size_max=2)
    cluster.tick()
    cluster.submit([make_tx(1), make_tx(2)])
    verifier = Ed25519Verifier()
    for node in cluster.nodes:
        (block,) = node.ledger
        certificate = block.certificate
        assert len(certificate.signatures) >= cluster.config.q
        body = commit_vote_body(cluster.config.chain_id, 1, certificate.view, block.batch.digest)
        for key, signature in certificate.signatures.items():
            assert cluster.config.is_validator(key)
            assert verifier.verify(key, TAG_COMMIT, body, signature)


def test_primary_batches_adaptively() -> None:
    """Adaptive batching: while the pipeline has room the primary proposes at once (no tick
    waited); what arrives while it is full waits, and goes out in one batch as soon as an
    execution makes room."""
    cluster = Cluster(batch_size_max=3, pipeline_depth_max=1)
    cluster.tick()
    cluster.filters.append(lambda _sender, _to, wire: wire["type"] != "commit")
    cluster.submit([make_tx(i) for i in range(4)], to=[0])
    assert cluster.executed(0) == 0  # one batch in flight: the pipeline is full
    cluster.submit([make_tx(i) for i in range(4, 6)], to=[0])
    cluster.filters.clear()  # the COMMITs are retransmitted
    cluster.run_until(lambda: cluster.executed(0) >= 2)
    # The full batch of 3 went at once; the other 3 queued behind it and went as one batch
    # when its execution made room, without a tick.
    assert [len(b.batch.txs) for b in cluster.nodes[0].ledger] == [3, 3]


def test_partial_batches_wait_while_two_are_in_flight_and_full_ones_do_not() -> None:
    cluster = Cluster(batch_size_max=2, pipeline_depth_max=8)
    cluster.tick()
    cluster.filters.append(lambda _sender, _to, wire: wire["type"] != "commit")
    for i in range(3):  # one request at a time: two partial batches go out, the third waits
        cluster.submit([make_tx(i)], to=[0])
    assert cluster.nodes[0].replica is not None
    assert cluster.nodes[0].replica._next_seq == 3
    cluster.submit([make_tx(3)], to=[0])  # now two wait: a full batch, it goes
    assert cluster.nodes[0].replica._next_seq == 4
    cluster.filters.clear()
    cluster.run_until(lambda: cluster.executed(0) >= 3)
    assert [len(b.batch.txs) for b in cluster.nodes[0].ledger] == [1, 1, 2]


def test_an_idle_primary_proposes_a_single_request_at_once() -> None:
    cluster = Cluster(batch_size_max=100)
    cluster.tick()
    cluster.submit([make_tx(0)])
    assert cluster.executed(0) == 1 and cluster.executed(3) == 1


def test_primary_bounds_a_batch_by_bytes_so_its_pre_prepare_fits_a_peer_frame() -> None:
    """batch_bytes_max caps the summed Tx.size of a batch; a batch that reaches it is full (cut
    at once), and a single transaction larger than the cap still goes, alone."""
    cluster = Cluster(batch_size_max=100, batch_bytes_max=1_000, pipeline_depth_max=1)
    cluster.tick()
    sized = [replace(make_tx(i), size=300) for i in range(7)] + [replace(make_tx(7), size=5_000)]
    cluster.submit(sized)
    cluster.tick(6)
    sizes = [[tx.tx_id for tx in b.batch.txs] for b in cluster.nodes[0].ledger]
    assert [len(ids) for ids in sizes] == [3, 3, 1, 1]
    assert sizes[-1] == [sized[-1].tx_id]
    assert cluster.tx_order(1) == [tx.tx_id for tx in sized]


def test_batch_request_is_answered_one_batch_per_message() -> None:
    """Batches are fetched by digest (view change, §4.4); every batch travels in a response
    of its own so that no message exceeds what one batch may weigh."""
    cluster = Cluster(batch_size_max=1)
    cluster.tick()
    cluster.submit([make_tx(i) for i in range(3)])
    digests = [b.batch.digest for b in cluster.nodes[0].ledger]
    request = sign_message(cluster.signers[1], BatchRequest(CHAIN_ID, tuple(digests)))
    output = cluster.inject(0, request.to_wire())
    responses = [s for s in output.sends if s.message["type"] == "batch_response"]
    assert len(responses) == 3
    assert all(s.to == cluster.keys[1] for s in responses)
    answered = [s.message["batches"] for s in responses]
    assert [[b["header"]["seq"] for b in batches] for batches in answered] == [[1], [2], [3]]


def test_duplicate_transaction_is_ordered_once() -> None:
    """Spec §3: the same body is the same transaction; honest replicas order it at most once,
    whether it is submitted twice, to several replicas, or again after it committed."""
    cluster = Cluster(batch_size_max=10)
    cluster.tick()
    tx = make_tx(7)
    cluster.submit([tx, tx])
    cluster.submit([tx], to=[0])
    cluster.tick(2)
    cluster.submit([tx, make_tx(8)])
    cluster.tick(2)
    for i in range(4):
        assert cluster.tx_order(i).count(tx.tx_id) == 1
        assert len(cluster.tx_order(i)) == 2


def test_pipeline_depth_bounds_batches_in_flight() -> None:
    """The primary keeps at most pipeline_depth_max batches in flight (proposed, not executed)."""
    cluster = Cluster(batch_size_max=1, pipeline_depth_max=2)
    cluster.filters.append(lambda s, r, w: w["type"] != "commit")  # nothing commits
    cluster.tick()
    cluster.submit([make_tx(i) for i in range(5)])
    cluster.tick(3)
    proposals = [w for s, _, w in _sent(cluster) if w["type"] == "pre_prepare" and s == 0]
    assert sorted({w["seq"] for w in proposals}) == [1, 2]


def test_persist_before_send() -> None:
    """Every message a replica signs is durable no later than the Output that sends it, whose
    persist list the driver writes before sending (ARCHITECTURE, PBFT point 2). Retransmissions
    resend what an earlier Output already persisted."""
    cluster = Cluster(batch_size_max=2, checkpoint_interval=2, watermark_window=4)
    cluster.tick()
    cluster.submit([make_tx(i) for i in range(6)])
    cluster.tick(2)
    durable: dict[int, set[str]] = {i: set() for i in range(4)}
    checked = 0
    for i, output in cluster.outputs:
        for record in output.persist:
            message = record.value.get("message")
            if isinstance(message, dict):
                durable[i].add(message["signature"])
        for send in output.sends:
            if send.message["type"] in {"prepare", "commit", "pre_prepare", "checkpoint"}:
                assert send.message["signature"] in durable[i], send.message["type"]
                checked += 1
    assert checked > 20


def _sent(cluster: Cluster) -> list[tuple[int, str | None, dict[str, Any]]]:
    return [(i, s.to, s.message) for i, output in cluster.outputs for s in output.sends]
