"""The node: one validator process wiring the pure replica to the network, the ledger and HTTP.

Every input of the replica (peer messages, client transactions, fetched blocks, ticks) goes
through one bounded inbox and one consumer task, so the replica sees a single ordered stream of
events. Each step's output is carried out in the order that keeps an honest node honest across
a kill -9 (consensus/output.py):

1. persist the replica's records (one durable LMDB write);
2. send its messages;
3. execute committed batches into the ledger (one write transaction per step: per block, or
   per run of blocks such as a fetched chunk);
4. wake clients waiting for those transactions, publish block events, drop them from the pool;
5. start fetching blocks if the replica asked for a state transfer.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any

from consensus.batch import Tx
from consensus.errors import InvariantViolation
from consensus.output import Committed, Output
from consensus.replica import Replica
from crypto.keys import KeyFileError, load_private_key
from crypto.signing import Ed25519Verifier
from ledger import power_loss
from ledger.executed import executed_batch, last_batch_time
from ledger.genesis import GenesisError, load_genesis, replica_config
from ledger.state_machine import ChainRules
from ledger.store import LedgerStore, StoreError
from node.api.app import ApiContext, create_app
from node.api.events import CommitWaiters, EventHub
from node.api.limits import HttpServer, http_limits, http_ssl, start_http
from node.api.operator import OperatorContext
from node.config import ConfigError, NodeConfig
from node.consensus_log import STATUS_MESSAGE, ConsensusLog, PeerTracker, ReplicaState
from node.evidence import NodeEvidence
from node.execution_votes import EXECUTION_VOTE, Divergence, ExecutionVotes
from node.io_metrics import IoMetrics
from node.metrics import NodeMetrics
from node.p2p.block_sync import MESSAGE_TYPES as BLOCK_SYNC_MESSAGES
from node.p2p.block_sync import BlockSync
from node.p2p.guard import PeerGuard, bench_plaintext_links
from node.p2p.peers import PeerNetwork
from node.p2p.verify_workers import FetchedTxs
from node.pool import Pool
from node.version import phalanx_version

INBOX_MAX = 20_000
GIL_SWITCH_INTERVAL_S = 0.001
RELAY = "relay-txs"
RELAY_CHUNK_MAX = 500
BATCH_BYTES_MAX = 4 * 1024 * 1024
# The first view-change timeout (it doubles per failed view). The request timer measures
# progress, not queueing (Replica._request_timer_expired), so a busy primary is not deposed
# by a short one; a crashed primary is usually replaced sooner still (LINK_LOST_S).
VIEW_CHANGE_TIMEOUT_MS = 1_000
# A link to the primary that dropped and stayed down this long (a reconnect takes ~0.1 s) lets a
# backup with waiting requests ask for a view change without waiting for its request timer
# (at once if a redial is refused: nothing listens, the process is gone; PeerNetwork.lost_peers).
LINK_LOST_S = 0.5
# K. A VIEW-CHANGE carries a prepared certificate for every seq above the stable checkpoint,
# and the new view re-runs the three phases for each: with K = 128 under light load (a batch
# per request) a view change handled ~100 seqs and took ~1.5 s on two cores. Checkpoints are
# cheap (one signature and a record per K seqs); the watermark window is 2K.
CHECKPOINT_INTERVAL = 32
OPERATOR_POLL_S = 0.5  # peer/catch-up log events, peer gauge; node-status every other poll

_log = logging.getLogger("phalanx.node")


class StartupError(Exception):
    """The node cannot start; the message says what is wrong and what to do."""


@dataclass(frozen=True, slots=True)
class _Tick:
    now_ms: int


@dataclass(frozen=True, slots=True)
class _PeerMessage:
    sender: str
    wire: dict[str, Any]


@dataclass(frozen=True, slots=True)
class _Requests:
    txs: list[Tx]


@dataclass(frozen=True, slots=True)
class _Blocks:
    committed: list[Committed]


_Event = _Tick | _PeerMessage | _Requests | _Blocks


class NodeRuntime:
    """One validator node. Build it (opens keys, genesis, ledger), then ``await run()``."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        try:
            self.genesis = load_genesis(config.genesis_file)
            self.signer = load_private_key(config.key_file)
        except (GenesisError, KeyFileError, OSError) as exc:
            raise StartupError(str(exc)) from exc
        me = self.signer.public_key
        if not self.genesis.is_validator(me):
            raise StartupError(
                f"the key in {config.key_file} ({me[:16]}...) is not a validator of the genesis "
                f"{config.genesis_file}; use the key made for this node"
            )
        self._sync = config.storage.sync
        self._boot_id = power_loss.boot_id()
        try:
            addresses = config.peer_addresses(self.genesis.validator_keys, me)
            power_loss.check_previous_run(config.data_dir, self._boot_id)
            self.store = LedgerStore.open(
                config.data_dir,
                self.genesis,
                sync_each_write=self._sync == power_loss.SYNC_EVERY_WRITE,
            )
            power_loss.record_start(config.data_dir, self._sync, self._boot_id)
        except (ConfigError, StoreError, power_loss.UnsyncedWritesLost, OSError) as exc:
            raise StartupError(str(exc)) from exc
        self.name = config.name
        self.replica_config = replica_config(
            self.genesis,
            batch_size_max=config.batch.size_max,
            # A PRE-PREPARE carries its batch: keep it well inside one peer frame.
            batch_bytes_max=min(BATCH_BYTES_MAX, config.limits.frame_max_bytes // 4),
            pipeline_depth_max=config.batch.pipeline_depth_max,
            view_change_timeout_ticks=max(10, VIEW_CHANGE_TIMEOUT_MS // config.tick_ms),
            checkpoint_interval=CHECKPOINT_INTERVAL,
            watermark_window=2 * CHECKPOINT_INTERVAL,
        )
        self.metrics = NodeMetrics()
        self.io_metrics = IoMetrics(self.metrics.registry)
        # Conflicting signed statements seen from validators (spec §7; node/evidence.py).
        self.evidence = NodeEvidence(self.genesis, self.store, self.metrics.registry)
        self.pool = Pool(
            ChainRules.of(self.genesis),
            self.store.balances,
            capacity=config.limits.pending_pool_max,
            on_accepted=self._on_txs_accepted,
            committed_among=self.store.committed_among,
        )
        # Transactions of fetched blocks verified by the block fetcher's worker processes: the
        # replica's check of those blocks answers from here, anything else from the pool.
        self.fetched_txs = FetchedTxs(self.pool.tx_checker)
        head_seq, head_hash = self.store.head()
        try:
            self.replica = Replica(
                self.replica_config,
                self.signer,
                Ed25519Verifier(),
                self.fetched_txs.check,
                self.store.committed_among,
                records=self.store.load_records(),
                last_executed_seq=head_seq,
                head_hash=head_hash,
                # Batch times never go back across a restart; executed batches stay servable.
                last_exec_time_ms=last_batch_time(self.store, head_seq),
                executed_batch=lambda seq: executed_batch(self.store, seq),
                known_tx=self.pool.known_tx,
            )
        except (StoreError, InvariantViolation) as exc:
            # Damaged consensus records: restarting without them could make us sign twice.
            self.pool.close()
            self.store.close()
            raise StartupError(
                f"the consensus records in {config.data_dir} are damaged ({exc}); move the data "
                "directory away and start with an empty one to resync from the peers"
            ) from exc
        self.peers = PeerNetwork(
            self.signer,
            addresses,
            self.genesis.chain_id,
            self.genesis.genesis_hash,
            self._on_peer_frame,
            frame_max=config.limits.frame_max_bytes,
            queue_max=config.limits.peer_queue_max,
            queue_bytes_max=config.limits.peer_queue_bytes_max,
            insecure_plaintext_links=bench_plaintext_links(),
        )
        # Per-peer limits on what peers make the replica and the pool do (node/p2p/guard.py).
        self.guard = PeerGuard(
            self.peers.penalize,
            on_drop=lambda reason: self.metrics.dropped_peer_messages.labels(reason=reason).inc(),
        )
        self.block_sync = BlockSync(
            self.genesis,
            self.store,
            send=self.peers.send,
            broadcast=self.peers.broadcast,
            deliver=lambda blocks: self._put(_Blocks(blocks)),
            on_drop=lambda reason: self.metrics.dropped_peer_messages.labels(reason=reason).inc(),
            preverify=self.pool.preverify,
            tx_checker=self.pool.tx_checker,
            fetched=self.fetched_txs,
        )
        self.execution = ExecutionVotes(
            self.genesis,
            self.signer,
            self.store,
            broadcast=self.peers.broadcast,
            send=self.peers.send,
            on_drop=lambda reason: self.metrics.dropped_peer_messages.labels(reason=reason).inc(),
            on_conflict=lambda validator: self.metrics.execution_conflicts.labels(
                validator=validator
            ).inc(),
            on_diverged=self._on_diverged,
            record=config.data_dir / "divergence.json",
        )
        self.waiters = CommitWaiters()
        self.events = EventHub()
        # Why the node stopped serving, if it did; /v1/health reports them (node.api.operator).
        self.halted_reason: str | None = None
        self.diverged_reason: str | None = None
        self.tracker = PeerTracker(
            [k for k in self.genesis.validator_keys if k != me],
            on_drop=lambda reason: self.metrics.dropped_peer_messages.labels(reason=reason).inc(),
        )
        self.consensus_log = ConsensusLog(
            {v.pubkey: v.name for v in self.genesis.validators},
            on_view_change=lambda reason: self.metrics.view_change_starts.labels(reason).inc(),
        )
        self._operator = OperatorContext(
            genesis=self.genesis,
            pubkey=me,
            peer_addresses={key: str(addr) for key, addr in config.peers.items()},
            connected=self.peers.connected_peers,
            catching_up=lambda: self.block_sync.fetcher.active,
            tracker=self.tracker,
            series=self.metrics.series,
            pool_size=lambda: len(self.pool),
            halted=lambda: self.halted_reason,
            diverged=lambda: self.diverged_reason,
            evidence_count=lambda: len(self.evidence),
        )
        self._inbox: asyncio.Queue[_Event] = asyncio.Queue()  # bounded in _put
        self._tick_pending = False
        self._tick_lost: frozenset[str] = frozenset()  # links the last tick reported down
        self._stopping = asyncio.Event()
        self._http: HttpServer | None = None
        self._tasks: list[asyncio.Task[None]] = []

    # ---- life cycle -------------------------------------------------------------------------

    async def run_until_signalled(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopping.set)
        await self.run()

    async def run(self) -> None:
        """Serve until :meth:`stop` (or a signal); then close everything."""
        # Frames, bodies and signatures are handled by worker threads beside the event loop;
        # with CPython's default 5 ms switch interval the loop waited up to 0.6 s for the GIL
        # under a flood of HTTP bodies, at 1 ms it gets it back promptly (issue 10).
        sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
        try:
            await self._start()
            await self._stopping.wait()
        finally:
            await self._shutdown()

    def stop(self) -> None:
        self._stopping.set()

    async def _start(self) -> None:
        await self.peers.start()
        app = create_app(self._api_context())
        host, port = self.config.http_listen
        # Connection caps, timeouts, per-client limits, optional HTTPS (node/api/limits.py).
        self._http = await start_http(
            app, host, port, http_limits(self.config), self.io_metrics, http_ssl(self.config)
        )
        self._tasks = [
            asyncio.create_task(self._consume(), name="replica"),
            asyncio.create_task(self._tick_loop(), name="ticker"),
            asyncio.create_task(self._operator_loop(), name="operator"),
        ]
        if self._sync == power_loss.SYNC_PERIODIC:
            self._tasks.append(asyncio.create_task(self._sync_loop(), name="sync"))
        self.block_sync.start()
        # Our votes for the last blocks without a certificate (lost if we stopped before q
        # votes arrived), once the peer links had a moment to come up.
        self._spawn(self._resend_execution_votes())
        head_seq, head_hash = self.store.head()
        _log.info(
            "node_started",
            extra={
                "pubkey": self.signer.public_key,
                "http": f"{host}:{port}",
                "seq": head_seq,
                "head_hash": head_hash,
                "view": self.replica.view,
            },
        )

    async def _shutdown(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.block_sync.stop()
        if self._http is not None:
            await self._http.stop()
        await self.peers.stop()
        self.pool.close()
        self.store.flush()
        self.store.close()
        power_loss.record_clean_stop(self.config.data_dir, self._sync, self._boot_id)
        _log.info("node_stopped")

    # ---- inputs -----------------------------------------------------------------------------

    def _put(self, event: _Event) -> None:
        if isinstance(event, _PeerMessage) and self._inbox.qsize() >= INBOX_MAX:
            # Consensus tolerates lost peer messages (retransmission, view change); an
            # unbounded inbox would not be tolerated by the machine. Client requests and fetched
            # blocks are never dropped here: the pool's capacity and the fetcher's chunks bound
            # them, and a dropped request would stay pending here with no timer to rescue it.
            self.metrics.dropped_peer_messages.labels(reason="inbox_full").inc()
            return
        self._inbox.put_nowait(event)

    def _on_peer_frame(self, sender: str, wire: dict[str, Any], frame_bytes: int) -> None:
        if self.tracker.on_frame(sender, wire):
            return  # a node-status summary, for the dashboard only
        kind = wire.get("type")
        if kind == RELAY:
            self._spawn(self._on_relay(sender, wire, frame_bytes))
        elif kind == EXECUTION_VOTE:
            self.evidence.observe_execution_vote(wire)
            self.execution.on_message(sender, wire)
        elif kind in BLOCK_SYNC_MESSAGES:
            self.block_sync.on_message(sender, wire)
        else:
            self._put(_PeerMessage(sender, wire))

    async def _on_relay(self, sender: str, wire: dict[str, Any], frame_bytes: int) -> None:
        txs = wire.get("txs")
        if not isinstance(txs, list) or len(txs) > RELAY_CHUNK_MAX:
            self.metrics.dropped_peer_messages.labels(reason="bad_relay").inc()
            self.peers.penalize(sender, "bad_relay")
            return
        if not self.guard.relay_admit(sender, len(txs), frame_bytes):
            return
        errors: list[str | None] = []
        try:
            async with self.guard.relay_slot(sender):
                # Relayed transactions are verified like any client's; not relayed again.
                errors = [result.error for result in await self.pool.submit(txs, relay=False)]
        finally:
            self.guard.relay_done(sender, frame_bytes, errors)

    def _on_txs_accepted(self, txs: list[Tx], relay: bool) -> None:
        """The pool accepted new, verified transactions: order them, and tell the others."""
        self._put(_Requests(txs))
        if relay:
            for chunk in _relay_chunks(txs, self.replica_config.batch_bytes_max):
                self.peers.broadcast({"type": RELAY, "txs": chunk})

    async def _tick_loop(self) -> None:
        interval = self.config.tick_ms / 1000
        while True:
            await asyncio.sleep(interval)
            if not self._tick_pending:  # ticks coalesce while the replica is busy
                self._tick_pending = True
                self._put(_Tick(_now_ms()))

    # ---- the replica step -------------------------------------------------------------------

    async def _consume(self) -> None:
        while True:
            event = await self._inbox.get()
            try:
                before = ReplicaState.of(self.replica)
                output = await self._step(event)
                self._carry_out(output)
                lost = self._tick_lost if isinstance(event, _Tick) else frozenset()
                self.consensus_log.after_step(before, self.replica, _kind(event), output, lost)
            except Exception as exc:
                # A broken invariant in the replica or the ledger: stop rather than serve or
                # sign anything more from a state nobody can vouch for.
                self.halted_reason = f"{type(exc).__name__}: {exc}"
                _log.exception("node_halted", extra={"event": type(event).__name__})
                self.stop()
                raise

    async def _step(self, event: _Event) -> Output:
        if isinstance(event, _Tick):
            self._tick_pending = False
            self._tick_lost = self.peers.lost_peers(LINK_LOST_S)
            return self.replica.on_tick(event.now_ms, self._tick_lost)
        if isinstance(event, _PeerMessage):
            # Verify the transactions of the current primary's proposal in the thread pool
            # first, so the replica's synchronous check is a cache hit and the loop is not
            # blocked; nobody else's message gets that work (issue 10).
            proposed = self.guard.proposal_txs(
                event.sender, event.wire, self.replica.primary, self.replica.view
            )
            if proposed:
                await self.pool.preverify(proposed)
            self.evidence.observe_message(event.wire)
            dropped_before = self.replica.dropped.total()
            output = self.replica.on_message(event.wire)
            self.guard.charge_drops(event.sender, self.replica.dropped, dropped_before)
            return output
        if isinstance(event, _Requests):
            return self.replica.on_requests(event.txs)
        return self.replica.on_blocks_fetched(event.committed)

    def _carry_out(self, output: Output) -> None:
        if output.persist or output.discard_below is not None:
            self.store.persist_records(output.persist, output.discard_below)
        for send in output.sends:
            if send.to is None:
                self.peers.broadcast(send.message)
            else:
                self.peers.send(send.to, send.message)
        # Requests whose timer fired at this backup: relayed again, the primary may lack them.
        for chunk in _relay_chunks(output.relay, self.replica_config.batch_bytes_max):
            self.peers.broadcast({"type": RELAY, "txs": chunk})
        if len(output.committed) > 1:
            # Several blocks at once (a fetched chunk, mostly): one durable write for them all.
            self._execute_run(output.committed)
        else:
            for committed in output.committed:
                self._execute(committed)
        if output.state_transfer is not None:
            transfer = output.state_transfer
            self.block_sync.want(transfer.seq, transfer.peers)
        self.metrics.observe_replica(self.replica, self.pool)

    def _execute(self, committed: Committed) -> None:
        execute_block(committed, self.store, self.pool, self.waiters, self.events, self.metrics)
        self._executed(*self.store.head())

    def _execute_run(self, run: list[Committed]) -> None:
        """Consecutive blocks appended in one write transaction (a crash keeps all or none),
        then, block by block, what :meth:`_execute` does after its write."""
        appended = self.store.append_blocks(run, predecoded=self.pool.predecoded)
        write_s, roots_s = self.store.last_timing
        self.metrics.block_write_seconds.inc(write_s)
        self.metrics.roots_seconds.inc(roots_s)
        for committed, (block_hash, results) in zip(run, appended, strict=True):
            block_executed(
                committed, block_hash, results, self.pool, self.waiters, self.events, self.metrics
            )
            self._executed(committed.batch.seq, block_hash)

    def _executed(self, seq: int, block_hash: str) -> None:
        """Our execution vote for the stored block ``seq`` (its roots)."""
        roots = self.store.roots(seq)
        if roots is None:
            raise RuntimeError(f"block {seq} was executed but the ledger holds no roots for it")
        # A fetched block may bring its certificate: then our roots are checked against it.
        certificate = self.block_sync.fetcher.take_execution(seq)
        self.execution.on_executed(seq, block_hash, *roots, certificate=certificate)

    async def _sync_loop(self) -> None:
        """storage.sync = periodic: put the ledger's writes on disk every interval, on a
        thread (fsync waits for the disk, not for the GIL)."""
        interval = self.config.storage.sync_interval_ms / 1000
        while True:
            await asyncio.sleep(interval)
            await asyncio.to_thread(self.store.flush)

    async def _resend_execution_votes(self) -> None:
        await asyncio.sleep(1.0)
        self.execution.start()

    def _on_diverged(self, divergence: Divergence) -> None:
        self.diverged_reason = divergence.detail()

    # ---- what the API sees ------------------------------------------------------------------

    async def _operator_loop(self) -> None:
        """Log peer and catch-up events, and tell the peers how we are (node.consensus_log)."""
        polls = 0
        evidence_seen = 0  # evidence items already handed to the log (read only when it grows)
        while True:
            await asyncio.sleep(OPERATOR_POLL_S)
            connected = self.peers.connected_peers()
            fetcher = self.block_sync.fetcher
            self.metrics.observe_peers(len(connected))
            self.io_metrics.observe_links(self.peers.metrics)
            evidence_count = len(self.evidence)
            self.consensus_log.poll(
                connected,
                fetcher.active,
                self.store.head()[0],
                fetcher.target,
                fetcher.blocks_fetched,
                self._evidence() if evidence_count != evidence_seen else (),
            )
            evidence_seen = evidence_count
            polls += 1
            if polls % 2 == 0:
                status = self._status()
                self.peers.broadcast(
                    {
                        "type": STATUS_MESSAGE,
                        **{k: status[k] for k in ("view", "seq", "primary", "catching_up")},
                        "peers_connected": len(connected),
                        "healthy": not self._operator.health_reasons(),
                    }
                )

    def _evidence(self) -> list[Any]:
        return self.evidence.all()

    def _api_context(self) -> ApiContext:
        return ApiContext(
            store=self.store,
            pool=self.pool,
            status=self._status,
            events=self.events,
            waiters=self.waiters,
            metrics=self.metrics,
            body_max_bytes=self.config.limits.http_body_max_bytes,
            operator=self._operator,
            evidence=self.evidence.all,
            execution=self.execution,
        )

    def _status(self) -> dict[str, Any]:
        seq, head_hash = self.store.head()
        config = self.replica_config
        return {
            "name": self.name,
            "pubkey": self.signer.public_key,
            "chain_id": self.genesis.chain_id,
            "view": self.replica.view,
            "primary": self.replica.primary,
            "seq": seq,
            "head_hash": head_hash,
            "stable_checkpoint": self.replica.stable_checkpoint,
            "n": config.n,
            "f": config.f,
            "version": phalanx_version(),
            "catching_up": self.block_sync.fetcher.active,
            "peers_connected": len(self.peers.connected_peers()),
        }

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.append(task)
        task.add_done_callback(self._tasks.remove)


def execute_block(
    committed: Committed,
    store: LedgerStore,
    pool: Pool,
    waiters: CommitWaiters,
    events: EventHub,
    metrics: NodeMetrics,
) -> None:
    """Append ``committed`` to the ledger (one durable write), then take its transactions out
    of the pool, wake the clients waiting for them, publish its block event, count it."""
    results = store.append_block(committed, predecoded=pool.predecoded)
    write_s, roots_s = store.last_timing
    metrics.block_write_seconds.inc(write_s)
    metrics.roots_seconds.inc(roots_s)
    block_executed(committed, store.head()[1], results, pool, waiters, events, metrics)


def block_executed(
    committed: Committed,
    block_hash: str,
    results: list[dict[str, Any]],
    pool: Pool,
    waiters: CommitWaiters,
    events: EventHub,
    metrics: NodeMetrics,
) -> None:
    """After ``committed`` is stored: take its transactions out of the pool, wake the clients
    waiting for them, publish its block event, count it."""
    tx_ids = [tx.tx_id for tx in committed.batch.txs]
    seq = committed.batch.seq
    submitted_at = pool.submitted_at(tx_ids)
    pool.remove(tx_ids)
    waiters.notify_committed(seq, tx_ids)
    events.publish({"seq": seq, "hash": block_hash, "tx_count": len(tx_ids), "tx_ids": tx_ids})
    metrics.observe_block(committed.batch, results, submitted_at)


def _relay_chunks(txs: list[Tx], bytes_max: int) -> list[list[dict[str, Any]]]:
    """``txs`` cut into relay messages of at most RELAY_CHUNK_MAX transactions and (but for a
    single larger one) ``bytes_max`` bytes, so that every one fits a peer frame."""
    chunks: list[list[dict[str, Any]]] = []
    chunk: list[dict[str, Any]] = []
    size = 0
    for tx in txs:
        if chunk and (len(chunk) >= RELAY_CHUNK_MAX or size + tx.size > bytes_max):
            chunks.append(chunk)
            chunk, size = [], 0
        chunk.append(dict(tx.wire))
        size += tx.size
    if chunk:
        chunks.append(chunk)
    return chunks


def _kind(event: _Event) -> str:
    if isinstance(event, _Tick):
        return "tick"
    if isinstance(event, _PeerMessage):
        return "message"
    return "requests" if isinstance(event, _Requests) else "blocks"


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
