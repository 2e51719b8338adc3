"""Catching up by fetching committed blocks from peers (state transfer).

Blocks are self-certifying: each carries a commit certificate of q validator signatures over its
batch digest, so any single peer can serve them and none has to be trusted. This module:

- answers peers' ``fetch-blocks`` requests from the local ledger, off the event loop, bounded by
  count and bytes, one request per peer at a time;
- announces this node's head to its peers every second (``sync-head``) and notices when it lags:
  a peer that was ahead one announcement ago and still is (or is far ahead right away) means
  blocks were committed that consensus will not bring us (we were down, wiped, partitioned, or
  the others went idle before the next checkpoint). A claimed head is only a hint of where to
  fetch, never trusted: what comes back must verify, and a peer that claims more than it
  serves is simply dropped;
- fetches ``head+1 ..`` in chunks, choosing for each chunk among the peers that claim to hold it
  the one with the fewest recent failures, rotating among equals; a peer that times out, sends
  nothing for a range it claimed, or sends anything that does not verify is moved down or
  dropped, and the fetch goes on with the others;
- verifies every block before handing it on: chain id and seq, every transaction (shape, chain,
  signature; in worker processes for big chunks, node/p2p/verify_workers.py), the transactions
  against the header's ``tx_root``, the commit certificate (q distinct
  validators), and the hash chain from our own head (each block's ``hash`` as the peer states it
  must be ``block_hash(seq, prev_hash, digest)`` computed from ours). Nothing unverified reaches
  the replica or the ledger.

Memory stays bounded whatever the gap: at most three chunks are held, one being applied by the
replica, the next one being verified, and the one after it asked for meanwhile (so the serving
peer prepares it while we verify). A crash mid-transfer loses
nothing: the runtime applies a chunk in one durable write transaction (all of it or none), and
after a restart the fetch starts again from the ledger's head.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from consensus.batch import Batch, Tx, TxChecker, block_hash
from consensus.output import Certificate, Committed
from crypto.hexcodec import HASH_HEX_LEN, is_hex
from ledger.execution import verify_execution_certificate
from ledger.genesis import Genesis
from ledger.receipt import verify_committed
from ledger.store import LedgerStore
from ledger.transaction import TxError, check_transaction
from node.p2p.verify_workers import PROCESS_MIN_TXS, BadTx, FetchedTxs, VerifyWorkers

FETCH_REQUEST = "fetch-blocks"  # {"from_seq", "count"}
FETCH_RESPONSE = "blocks"  # {"from_seq", "blocks": [{"batch", "txs", "certificate", "hash"}]}
HEAD = "sync-head"  # {"seq", "hash"}: the sender's head, a hint for catching up
MESSAGE_TYPES = frozenset({FETCH_REQUEST, FETCH_RESPONSE, HEAD})

CHUNK_BLOCKS_MAX = 64
# Bytes of one response (at least one block is always sent). Encoding and parsing a frame runs
# on the event loop at ~25 MB/s, so this also bounds how long either side pauses consensus.
RESPONSE_BYTES_MAX = 2 * 1024 * 1024
RESPONSE_TIMEOUT_S = 3.0
ANNOUNCE_INTERVAL_S = 1.0
# A peer announcing a head this far beyond ours is not just a pipeline ahead: fetch at once
# rather than after a whole announcement round (a restarted or wiped node).
FAR_BEHIND_BLOCKS = 32
# A peer that failed us this many times in a row is dropped until it claims a head again.
STRIKES_MAX = 3
# Waiting for the replica to apply a chunk: give up (and start again from the ledger's head)
# if the head stops moving for this long; the chunk may have been dropped from a full inbox.
APPLY_STALL_S = 5.0
APPLY_POLL_S = 0.005
VERIFY_THREADS = 2
_HEADER_FIELDS = frozenset({"chain_id", "seq", "time_ms", "tx_count", "tx_root"})

_log = logging.getLogger("phalanx.block_sync")

Send = Callable[[str, dict[str, Any]], None]
Head = Callable[[], tuple[int, str]]
Preverify = Callable[[Sequence[Any]], Awaitable[None]]


class BadBlocks(ValueError):
    """A peer's block response does not verify: the peer lied, or its data is damaged."""


class NoBlocks(Exception):
    """A peer answered that it does not hold the first block asked for."""


# ---- serving ------------------------------------------------------------------------------------


def serve_fetch(store: LedgerStore, request: Mapping[str, Any]) -> dict[str, Any] | None:
    """The response to a peer's ``fetch-blocks`` request, or None if the request is malformed.
    Blocking (LMDB reads, JSON): run it in a thread."""
    from_seq, count = request.get("from_seq"), request.get("count")
    if type(from_seq) is not int or type(count) is not int or not 1 <= from_seq < 2**63:
        return None
    if count < 1:
        return None
    blocks: list[dict[str, Any]] = []
    size = 0
    with store.snapshot() as snapshot:
        for seq in range(from_seq, from_seq + min(count, CHUNK_BLOCKS_MAX)):
            block = snapshot.block(seq)
            if block is None:
                break
            # "execution": the block's execution certificate (or null), so that a node catching
            # up checks its own roots against what q validators certified.
            block = {k: block[k] for k in ("batch", "txs", "certificate", "hash", "execution")}
            # The C encoder's length is within a few bytes of the canonical one, at 1/4 the cost.
            size += len(json.dumps(block, separators=(",", ":"), ensure_ascii=False))
            if blocks and size > RESPONSE_BYTES_MAX:
                break
            blocks.append(block)
    return {"type": FETCH_RESPONSE, "from_seq": from_seq, "blocks": blocks}


# ---- verifying ----------------------------------------------------------------------------------


def verify_block(
    genesis: Genesis, seq: int, block: Any, check_signatures: bool = True
) -> Committed:
    """A peer's block at ``seq`` as a verified ``Committed``, or :class:`BadBlocks` saying why.

    Checks every transaction (shape, chain and signature: honest replicas never prepare an
    invalid one, so a committed block holds none; the certificate covers the tx_ids, not the
    signatures), the header against the transactions, and the commit certificate. With
    ``check_signatures=False`` the caller checks the transactions itself. CPU-bound; pynacl
    releases the GIL, so threads run it in parallel.
    """
    header, wires, certificate = block_fields(genesis, seq, block)
    txs: list[Tx] = []
    for index, wire in enumerate(wires):
        try:
            if check_signatures:
                txs.append(Tx(check_transaction(wire, genesis.chain_id).tx_id, wire))
            else:
                txs.append(Tx.from_wire(wire))
        except (TxError, ValueError, TypeError, RecursionError) as exc:
            raise BadBlocks(f"block {seq}, transaction {index}: {exc}") from exc
    return certified_block(genesis, seq, header, txs, certificate)


def block_fields(
    genesis: Genesis, seq: int, block: Any
) -> tuple[Mapping[str, Any], list[Any], Any]:
    """The header (of this chain and seq), the transactions' wires and the certificate of a
    peer's block, or :class:`BadBlocks`; the transactions themselves are not looked at."""
    if not isinstance(block, Mapping):
        raise BadBlocks(f"block {seq} is not an object")
    header, wires, certificate = block.get("batch"), block.get("txs"), block.get("certificate")
    if not isinstance(header, Mapping) or set(header) != _HEADER_FIELDS:
        raise BadBlocks(f"block {seq}: the batch header is malformed")
    if header["chain_id"] != genesis.chain_id or header["seq"] != seq:
        raise BadBlocks(
            f"block {seq}: the header is for chain {header['chain_id']!r}, seq {header['seq']!r}"
        )
    time_ms = header["time_ms"]
    if type(time_ms) is not int or time_ms < 0:
        raise BadBlocks(f"block {seq}: time_ms is not a non-negative integer")
    if not isinstance(wires, list):
        raise BadBlocks(f"block {seq}: txs is not a list")
    return header, wires, certificate


def certified_block(
    genesis: Genesis, seq: int, header: Mapping[str, Any], txs: Sequence[Tx], certificate: Any
) -> Committed:
    """The block of verified ``txs`` as a ``Committed``, once the header matches them and the
    commit certificate holds; else :class:`BadBlocks`."""
    batch = Batch(genesis.chain_id, seq, header["time_ms"], tuple(txs))
    if batch.header != dict(header):
        raise BadBlocks(f"block {seq}: the transactions do not match the batch header")
    if not isinstance(certificate, Mapping):
        raise BadBlocks(f"block {seq}: the certificate is not an object")
    view, signatures = certificate.get("view"), certificate.get("signatures")
    if type(view) is not int or not isinstance(signatures, Mapping):
        raise BadBlocks(f"block {seq}: the certificate is malformed")
    committed = Committed(batch, Certificate(view, dict(signatures)))
    failures = verify_committed(genesis, committed)
    if failures:
        raise BadBlocks(f"block {seq}: {'; '.join(failures)}")
    return committed


def check_chain(
    from_seq: int, prev_hash: str, blocks: Sequence[Any], committed: Sequence[Committed]
) -> str:
    """Chain verified blocks onto ``prev_hash`` (our block ``from_seq - 1``); a block whose stated
    ``hash`` differs does not extend our ledger. Returns the last block's hash."""
    for offset, (block, one) in enumerate(zip(blocks, committed, strict=True)):
        seq = from_seq + offset
        prev_hash = block_hash(seq, prev_hash, one.batch.digest)
        stated = block.get("hash") if isinstance(block, Mapping) else None
        if stated is not None and stated != prev_hash:
            raise BadBlocks(
                f"block {seq}: its hash {str(stated)[:16]}... is not the one computed from our "
                f"chain ({prev_hash[:16]}...)"
            )
    return prev_hash


def verify_blocks(
    genesis: Genesis, from_seq: int, blocks: Any, prev_hash: str | None = None
) -> list[Committed]:
    """Verify a peer's ``blocks`` starting at ``from_seq`` (and, given ``prev_hash``, their chain
    onto it). Raises :class:`NoBlocks` for an empty list, :class:`BadBlocks` for anything else
    that is wrong."""
    if not isinstance(blocks, list):
        raise BadBlocks("the response holds no list of blocks")
    if not blocks:
        raise NoBlocks(f"no block {from_seq}")
    committed = [verify_block(genesis, from_seq + i, block) for i, block in enumerate(blocks)]
    if prev_hash is not None:
        check_chain(from_seq, prev_hash, blocks, committed)
    return committed


def verified_executions(
    genesis: Genesis,
    from_seq: int,
    prev_hash: str,
    blocks: Sequence[Any],
    committed: Sequence[Committed],
) -> dict[int, dict[str, Any]]:
    """The execution certificates that came with verified blocks, each checked against the
    genesis for its block's hash (chained from ``prev_hash``); a bad one is :class:`BadBlocks`
    (an honest peer never serves one). Blocks without one (null) are skipped."""
    found: dict[int, dict[str, Any]] = {}
    for offset, (block, one) in enumerate(zip(blocks, committed, strict=True)):
        seq = from_seq + offset
        prev_hash = block_hash(seq, prev_hash, one.batch.digest)
        execution = block.get("execution") if isinstance(block, Mapping) else None
        if execution is None:
            continue
        failures = verify_execution_certificate(genesis, seq, prev_hash, execution)
        if failures:
            raise BadBlocks(f"block {seq}: its execution certificate is invalid: {failures[0]}")
        found[seq] = dict(execution)
    return found


async def _verify_in_threads(
    genesis: Genesis, from_seq: int, blocks: Any, prev_hash: str, check_signatures: bool
) -> tuple[list[Committed], str]:
    if not isinstance(blocks, list):
        raise BadBlocks("the response holds no list of blocks")
    if not blocks:
        raise NoBlocks(f"no block {from_seq}")
    parts = min(VERIFY_THREADS, len(blocks))
    size = -(-len(blocks) // parts)

    def verify_part(start: int) -> list[Committed]:
        return [
            verify_block(genesis, from_seq + i, blocks[i], check_signatures)
            for i in range(start, min(start + size, len(blocks)))
        ]

    results = await asyncio.gather(
        *(asyncio.to_thread(verify_part, start) for start in range(0, len(blocks), size))
    )
    committed = [one for part in results for one in part]
    return committed, check_chain(from_seq, prev_hash, blocks, committed)


# ---- fetching -----------------------------------------------------------------------------------


class BlockFetcher:
    """Fetches blocks beyond the ledger's head from the peers that claim to hold them.

    ``want`` (the replica's state transfer: peers vouching for a checkpoint) and ``offer`` (a
    peer's announced head) add claims; one fetch task runs while any claim is above the head.

    Transactions are checked in ``workers`` (processes, node/p2p/verify_workers.py) when a
    chunk holds at least ``process_min_txs`` of them; their verdicts go to ``fetched``, where the
    replica's own check of the fetched blocks finds them. Smaller chunks are checked here in
    threads, or, given ``preverify`` and ``tx_checker`` (the node's pool), by them: the pool
    verifies in its thread pool and caches the verdicts, for the replica's check too.
    """

    def __init__(
        self,
        genesis: Genesis,
        head: Head,
        send: Send,
        deliver: Callable[[list[Committed]], None],
        timeout_s: float = RESPONSE_TIMEOUT_S,
        chunk_blocks: int = CHUNK_BLOCKS_MAX,
        preverify: Preverify | None = None,
        tx_checker: TxChecker | None = None,
        workers: VerifyWorkers | None = None,
        fetched: FetchedTxs | None = None,
        process_min_txs: int = PROCESS_MIN_TXS,
    ) -> None:
        self._genesis = genesis
        self._head = head
        self._send = send
        self._deliver = deliver
        self._timeout_s = timeout_s
        self._chunk_blocks = chunk_blocks
        self._preverify = preverify
        self._tx_checker = tx_checker
        self._own_workers = workers is None  # closed by stop(); given ones by their owner
        self._workers = workers or VerifyWorkers()
        self._fetched = fetched
        self._process_min_txs = process_min_txs
        self._claims: dict[str, int] = {}  # peer -> highest seq it claims to hold
        self._strikes: Counter[str] = Counter()  # peer -> failures since its last good answer
        self._waiting: dict[tuple[str, int], asyncio.Future[dict[str, Any]]] = {}
        self._task: asyncio.Task[None] | None = None
        self._rotation = 0
        self.blocks_fetched = 0
        self.txs_fetched = 0
        self.bad_responses = 0
        self.timeouts = 0
        self.failures: Counter[tuple[str, str]] = Counter()  # (peer, reason)
        # Verified execution certificates of fetched blocks, until the runtime executes them.
        self._executions: dict[int, dict[str, Any]] = {}

    def take_execution(self, seq: int) -> dict[str, Any] | None:
        """The verified execution certificate that came with fetched block ``seq``, if any
        (and forget those of older blocks)."""
        certificate = self._executions.pop(seq, None)
        for older in [s for s in self._executions if s < seq]:
            del self._executions[older]
        return certificate

    @property
    def active(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def target(self) -> int:
        """The highest seq any peer claims (0 if none)."""
        return max(self._claims.values(), default=0)

    def want(self, target_seq: int, peers: Sequence[str]) -> None:
        """The replica asks for blocks up to ``target_seq``; ``peers`` vouch for it."""
        for peer in peers:
            self._claim(peer, target_seq)
        self._kick()

    def offer(self, peer: str, seq: int) -> None:
        """``peer`` says it holds blocks up to ``seq``."""
        self._claim(peer, seq)
        self._kick()

    def on_response(self, sender: str, message: Mapping[str, Any]) -> bool:
        """A ``blocks`` message; False if nobody asked ``sender`` for it."""
        from_seq = message.get("from_seq")
        waiting = self._waiting.get((sender, from_seq)) if type(from_seq) is int else None
        if waiting is None or waiting.done():
            return False
        waiting.set_result(dict(message))
        return True

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._own_workers:
            self._workers.close()

    def _claim(self, peer: str, seq: int) -> None:
        if seq > self._claims.get(peer, 0):
            self._claims[peer] = seq

    def _kick(self) -> None:
        if not self.active and self.target > self._head()[0]:
            self._task = asyncio.create_task(self._run(), name="block-fetch")

    def _pick(self, from_seq: int) -> str | None:
        """Among the peers claiming ``from_seq``, one with the fewest strikes, rotating."""
        holders = sorted(p for p, seq in self._claims.items() if seq >= from_seq)
        if not holders:
            return None
        fewest = min(self._strikes[p] for p in holders)
        best = [p for p in holders if self._strikes[p] == fewest]
        self._rotation += 1
        return best[self._rotation % len(best)]

    async def _run(self) -> None:
        start_seq = self._head()[0]
        _log.info("block_fetch_started", extra={"from": start_seq, "target": self.target})
        if self.target - start_seq >= FAR_BEHIND_BLOCKS:
            self._workers.warm()  # a long way to go: start the processes while we ask
        next_seq = 0
        prev_hash = ""
        unapplied: int | None = None  # last seq of the chunk handed on but not yet applied
        ahead: _Request | None = None  # the next chunk, asked for while this one is verified
        early: _Early | None = None  # the next chunk, being verified already
        try:
            while True:
                if unapplied is None:
                    head_seq, head_hash = self._head()
                    if next_seq <= head_seq:
                        next_seq, prev_hash = head_seq + 1, head_hash
                if ahead is not None and ahead.from_seq != next_seq:
                    self._forget(ahead)
                    ahead = None
                request = ahead or self._request(next_seq)
                ahead = None
                if early is not None and early.request is not request:
                    self._drop_early(early)
                    early = None
                if request is None:
                    break
                peer = request.peer
                try:
                    if early is not None:
                        ahead, verifying, early = early.ahead, early.verifying, None
                        committed, last_hash = await verifying
                    else:
                        blocks = await self._answer(request)
                        if isinstance(blocks, list) and 0 < len(blocks) <= request.count:
                            # The serving peer works on the next chunk while we verify this one.
                            ahead = self._request(next_seq + len(blocks))
                        committed, last_hash = await self._verify(request, blocks, prev_hash)
                except NoBlocks:
                    self._claims[peer] = next_seq - 1  # honest peers may simply be behind us
                    self.failures[(peer, "no_blocks")] += 1
                    continue
                except TimeoutError:
                    self._fail(peer, "timeout", strikes=1)
                    self.timeouts += 1
                    continue
                except BadBlocks as exc:
                    self._fail(peer, "bad_blocks", strikes=STRIKES_MAX, detail=str(exc))
                    self.bad_responses += 1
                    continue
                self._strikes.pop(peer, None)
                # Hand on one chunk at a time: the previous one must be applied first.
                if unapplied is not None and not await self._until_applied(unapplied):
                    _log.warning("block_fetch_not_applied", extra={"seq": unapplied})
                    unapplied = None
                    next_seq = 0  # start again from the ledger's head
                    continue
                if ahead is not None and ahead.future.done() and not ahead.future.cancelled():
                    # The next chunk is here: its checks start before this one is handed on,
                    # so the workers verify it while the replica applies this one (which holds
                    # the event loop until it is done).
                    early = self._verify_early(ahead, last_hash)
                self._deliver(committed)
                self.blocks_fetched += len(committed)
                self.txs_fetched += sum(len(c.batch.txs) for c in committed)
                unapplied = committed[-1].batch.seq
                next_seq, prev_hash = unapplied + 1, last_hash
            if unapplied is not None:
                await self._until_applied(unapplied)
        finally:
            if ahead is not None:
                self._forget(ahead)
            if early is not None:
                self._drop_early(early)
            if self._fetched is not None:
                self._fetched.clear()
            self._workers.release()
        for peer in [p for p, seq in self._claims.items() if seq <= self._head()[0]]:
            del self._claims[peer]
        _log.info(
            "block_fetch_done",
            extra={"from": start_seq, "head": self._head()[0], "fetched": self.blocks_fetched},
        )

    def _verify_early(self, request: _Request, prev_hash: str) -> _Early:
        """Start verifying the chunk that answered ``request`` (chained onto ``prev_hash``),
        and ask for the one after it."""
        blocks = request.future.result().get("blocks")
        self._forget(request)
        after = None
        if isinstance(blocks, list) and 0 < len(blocks) <= request.count:
            after = self._request(request.from_seq + len(blocks))
        verifying = asyncio.create_task(self._verify(request, blocks, prev_hash))
        # Its failure is reported when it is awaited; if it never is (the fetch started over),
        # the exception is retrieved here rather than logged as lost.
        verifying.add_done_callback(lambda task: task.cancelled() or task.exception())
        return _Early(request, verifying, after)

    def _drop_early(self, early: _Early) -> None:
        early.verifying.cancel()
        if early.ahead is not None:
            self._forget(early.ahead)

    def _fail(self, peer: str, reason: str, strikes: int, detail: str = "") -> None:
        self._strikes[peer] += strikes
        self.failures[(peer, reason)] += 1
        if self._strikes[peer] >= STRIKES_MAX:
            self._claims.pop(peer, None)  # until it claims a head again
        _log.warning(
            "block_fetch_failed", extra={"peer": peer, "reason": reason, "detail": detail[:200]}
        )

    async def _until_applied(self, seq: int) -> bool:
        """Wait until the ledger holds ``seq``; False if its head stops moving for a while."""
        loop = asyncio.get_running_loop()
        last_head, last_move = self._head()[0], loop.time()
        while True:
            head = self._head()[0]
            if head >= seq:
                return True
            if head != last_head:
                last_head, last_move = head, loop.time()
            elif loop.time() - last_move > APPLY_STALL_S:
                return False
            await asyncio.sleep(APPLY_POLL_S)

    def _request(self, from_seq: int) -> _Request | None:
        """Ask a peer claiming ``from_seq`` for the chunk starting there (None: nobody claims)."""
        peer = self._pick(from_seq)
        if peer is None:
            return None
        count = min(self._chunk_blocks, self._claims[peer] - from_seq + 1)
        loop = asyncio.get_running_loop()
        request = _Request(peer, from_seq, count, loop.create_future(), loop.time())
        self._waiting[(peer, from_seq)] = request.future
        self._send(peer, {"type": FETCH_REQUEST, "from_seq": from_seq, "count": count})
        return request

    def _forget(self, request: _Request) -> None:
        request.future.cancel()
        key = (request.peer, request.from_seq)
        if self._waiting.get(key) is request.future:
            del self._waiting[key]

    async def _answer(self, request: _Request) -> Any:
        """The ``blocks`` of the peer's answer, or TimeoutError."""
        loop = asyncio.get_running_loop()
        remaining = request.sent_at + self._timeout_s - loop.time()
        try:
            message = await asyncio.wait_for(request.future, max(0.0, remaining))
        except TimeoutError:
            raise TimeoutError(f"no blocks within {self._timeout_s} s") from None
        finally:
            self._forget(request)
        return message.get("blocks")

    async def _verify(
        self, request: _Request, blocks: Any, prev_hash: str
    ) -> tuple[list[Committed], str]:
        if isinstance(blocks, list) and len(blocks) > request.count:
            raise BadBlocks(f"{len(blocks)} blocks sent, {request.count} asked for")
        committed = await self._verify_in_workers(request.from_seq, blocks)
        if committed is not None:
            last_hash = check_chain(request.from_seq, prev_hash, blocks, committed)
        else:
            committed, last_hash = await self._verify_in_threads(
                request.from_seq, blocks, prev_hash
            )
        certificates = await asyncio.to_thread(
            verified_executions, self._genesis, request.from_seq, prev_hash, blocks, committed
        )
        self._executions.update(certificates)
        return committed, last_hash

    async def _verify_in_threads(
        self, from_seq: int, blocks: Any, prev_hash: str
    ) -> tuple[list[Committed], str]:
        pooled = self._preverify is not None and self._tx_checker is not None
        committed, last_hash = await _verify_in_threads(
            self._genesis, from_seq, blocks, prev_hash, check_signatures=not pooled
        )
        if self._preverify is not None and self._tx_checker is not None:
            txs = [tx for one in committed for tx in one.batch.txs]
            await self._preverify([tx.wire for tx in txs])
            for tx in txs:
                if not self._tx_checker(tx):
                    raise BadBlocks(f"transaction {tx.tx_id} is not validly signed")
        return committed, last_hash

    async def _verify_in_workers(self, from_seq: int, blocks: Any) -> list[Committed] | None:
        """The blocks verified with their transactions checked in the worker processes; None
        when the chunk is too small for them (or they cannot be used): check it in threads."""
        if not isinstance(blocks, list) or not blocks:
            return None
        fields = [block_fields(self._genesis, from_seq + i, b) for i, b in enumerate(blocks)]
        wires = [wire for _, block_wires, _ in fields for wire in block_wires]
        if len(wires) < self._process_min_txs:
            return None
        checked = await self._workers.check(self._genesis.chain_id, wires)
        if checked is None:
            return None
        if isinstance(checked, BadTx):
            index = checked.index
            for offset, (_, block_wires, _) in enumerate(fields):
                if index < len(block_wires):
                    raise BadBlocks(
                        f"block {from_seq + offset}, transaction {index}: {checked.reason}"
                    )
                index -= len(block_wires)
            raise BadBlocks(f"transaction {checked.index} of the chunk: {checked.reason}")
        per_block: list[list[Tx]] = []
        start = 0
        for _, block_wires, _ in fields:
            per_block.append(checked[start : start + len(block_wires)])
            start += len(block_wires)

        def certify() -> list[Committed]:
            return [
                certified_block(self._genesis, from_seq + offset, header, txs, certificate)
                for offset, ((header, _, certificate), txs) in enumerate(
                    zip(fields, per_block, strict=True)
                )
            ]

        # Headers against the transactions (hashing) and commit certificates (q signatures
        # each): off the event loop.
        committed = await asyncio.to_thread(certify)
        if self._fetched is not None:
            self._fetched.add(committed[-1].batch.seq, checked, self._head()[0])
        return committed


@dataclass
class _Early:
    """A chunk whose verification started before the previous chunk was handed on, and the
    request for the chunk after it (None if its answer was not a usable list)."""

    request: _Request
    verifying: asyncio.Task[tuple[list[Committed], str]]
    ahead: _Request | None


@dataclass
class _Request:
    """A ``fetch-blocks`` request in flight."""

    peer: str
    from_seq: int
    count: int
    future: asyncio.Future[dict[str, Any]]
    sent_at: float


# ---- the node's side: serving, announcing, fetching ---------------------------------------------


class BlockSync:
    """Block exchange between validators, for the node runtime.

    ``start()`` begins announcing our head; ``on_message`` takes the three message types of this
    module; ``want`` passes on the replica's state-transfer requests.
    """

    def __init__(
        self,
        genesis: Genesis,
        store: LedgerStore,
        send: Send,
        broadcast: Callable[[dict[str, Any]], None],
        deliver: Callable[[list[Committed]], None],
        on_drop: Callable[[str], None] = lambda reason: None,
        announce_interval_s: float = ANNOUNCE_INTERVAL_S,
        timeout_s: float = RESPONSE_TIMEOUT_S,
        preverify: Preverify | None = None,
        tx_checker: TxChecker | None = None,
        fetched: FetchedTxs | None = None,
    ) -> None:
        self._store = store
        self._send = send
        self._broadcast = broadcast
        self._on_drop = on_drop
        self._announce_interval_s = announce_interval_s
        self.fetcher = BlockFetcher(
            genesis,
            store.head,
            send,
            deliver,
            timeout_s=timeout_s,
            preverify=preverify,
            tx_checker=tx_checker,
            fetched=fetched,
        )
        self._heads: dict[str, int] = {}  # peer -> head it announced last
        self._heads_before: dict[str, int] = {}  # ... as of the previous announcement round
        self._serving: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self._spawn(self._announce_loop())

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.fetcher.stop()

    def want(self, target_seq: int, peers: Sequence[str]) -> None:
        self.fetcher.want(target_seq, peers)

    def on_message(self, sender: str, wire: Mapping[str, Any]) -> None:
        kind = wire.get("type")
        if kind == FETCH_REQUEST:
            if sender in self._serving:
                self._on_drop("fetch_request_busy")  # one at a time per peer
            else:
                self._serving.add(sender)
                self._spawn(self._serve(sender, wire))
        elif kind == FETCH_RESPONSE:
            if not self.fetcher.on_response(sender, wire):
                self._on_drop("unsolicited_blocks")
        elif kind == HEAD:
            seq = wire.get("seq")
            if type(seq) is int and 0 <= seq < 2**63 and is_hex(wire.get("hash"), HASH_HEX_LEN):
                self._heads[sender] = seq
                if seq > self._store.head()[0] + FAR_BEHIND_BLOCKS:
                    self.fetcher.offer(sender, seq)
            else:
                self._on_drop("bad_head")

    async def _serve(self, sender: str, request: Mapping[str, Any]) -> None:
        try:
            response = await asyncio.to_thread(serve_fetch, self._store, request)
        finally:
            self._serving.discard(sender)
        if response is None:
            self._on_drop("bad_fetch_request")
        else:
            self._send(sender, response)

    async def _announce_loop(self) -> None:
        while True:
            await asyncio.sleep(self._announce_interval_s)
            self.announce()

    def announce(self) -> None:
        """Tell the peers our head, and fetch from any peer that was ahead of us one round ago
        and still is: consensus is not bringing us those blocks."""
        head_seq, head_hash = self._store.head()
        self._broadcast({"type": HEAD, "seq": head_seq, "hash": head_hash})
        for peer, seq in self._heads_before.items():
            if seq > head_seq:
                self.fetcher.offer(peer, self._heads.get(peer, seq))
        self._heads_before = dict(self._heads)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
