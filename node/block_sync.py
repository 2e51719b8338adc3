"""Catching up by fetching committed blocks from peers (state transfer).

A replica that learns of a stable checkpoint beyond what it can replay asks for blocks. Blocks
are self-certifying: each carries a commit certificate of q validator signatures over its
batch digest, so any single peer can serve them and none has to be trusted. This module:

- answers peers' ``fetch-blocks`` requests from the local ledger (bounded by count and bytes);
- fetches ``head+1 .. target`` in chunks, rotating over the peers that vouched for the target,
  moving to the next peer when one times out or sends anything that does not verify;
- verifies every block (certificate, chain id, seq continuity, transactions matching the header)
  before handing it on, so nothing unverified reaches the replica or the ledger.

Memory stays bounded whatever the gap: one chunk is in flight and held at a time.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any

from consensus.output import Committed
from crypto.canonical import canonical_json
from ledger.genesis import Genesis
from ledger.receipt import verify_committed
from ledger.store import LedgerStore, committed_from_block

FETCH_REQUEST = "fetch-blocks"
FETCH_RESPONSE = "blocks"
CHUNK_BLOCKS_MAX = 32
RESPONSE_BYTES_MAX = 8 * 1024 * 1024
RESPONSE_TIMEOUT_S = 3.0
APPLY_WAIT_POLLS = 200
APPLY_WAIT_POLL_S = 0.01

_log = logging.getLogger("phalanx.block_sync")


class BadBlocks(ValueError):
    """A peer's block response does not verify."""


def serve_fetch(store: LedgerStore, request: dict[str, Any]) -> dict[str, Any] | None:
    """The response to a peer's ``fetch-blocks`` request, or None if the request is malformed."""
    from_seq, count = request.get("from_seq"), request.get("count")
    if type(from_seq) is not int or type(count) is not int or from_seq < 1 or count < 1:
        return None
    blocks: list[dict[str, Any]] = []
    size = 0
    with store.snapshot() as snapshot:
        for seq in range(from_seq, from_seq + min(count, CHUNK_BLOCKS_MAX)):
            block = snapshot.block(seq)
            if block is None:
                break
            block = {k: block[k] for k in ("batch", "txs", "certificate")}
            size += len(canonical_json(block))
            if blocks and size > RESPONSE_BYTES_MAX:
                break
            blocks.append(block)
    return {"type": FETCH_RESPONSE, "from_seq": from_seq, "blocks": blocks}


def verify_blocks(genesis: Genesis, from_seq: int, blocks: Any) -> list[Committed]:
    """Turn a peer's blocks into verified ``Committed`` values, or raise :class:`BadBlocks`."""
    if not isinstance(blocks, list) or not blocks:
        raise BadBlocks("the response holds no blocks")
    verified: list[Committed] = []
    for offset, block in enumerate(blocks):
        try:
            committed = committed_from_block(block)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise BadBlocks(f"block {from_seq + offset} is malformed: {exc}") from exc
        if committed.batch.seq != from_seq + offset:
            raise BadBlocks(f"expected block {from_seq + offset}, got {committed.batch.seq}")
        failures = verify_committed(genesis, committed)
        if failures:
            raise BadBlocks(f"block {committed.batch.seq}: {'; '.join(failures)}")
        verified.append(committed)
    return verified


class BlockFetcher:
    """Fetches blocks up to a target seq; one fetch runs at a time, extended by later targets."""

    def __init__(
        self,
        genesis: Genesis,
        head_seq: Callable[[], int],
        send: Callable[[str, dict[str, Any]], None],
        deliver: Callable[[list[Committed]], None],
        timeout_s: float = RESPONSE_TIMEOUT_S,
    ) -> None:
        self._genesis = genesis
        self._head_seq = head_seq
        self._send = send
        self._deliver = deliver
        self._timeout_s = timeout_s
        self._target = 0
        self._peers: list[str] = []
        self._task: asyncio.Task[None] | None = None
        self._response: asyncio.Future[tuple[str, dict[str, Any]]] | None = None
        self.blocks_fetched = 0
        self.bad_responses = 0

    @property
    def active(self) -> bool:
        return self._task is not None and not self._task.done()

    def want(self, target_seq: int, peers: Sequence[str]) -> None:
        """Fetch up to ``target_seq`` from ``peers`` (extends a running fetch)."""
        if target_seq <= self._target and self.active:
            return
        self._target = max(self._target, target_seq)
        self._peers = [*peers, *(p for p in self._peers if p not in peers)]
        if not self.active:
            self._task = asyncio.create_task(self._run(), name="block-fetch")

    def on_response(self, sender: str, message: dict[str, Any]) -> None:
        waiting = self._response
        if waiting is not None and not waiting.done():
            waiting.set_result((sender, message))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        attempt = 0
        while self._head_seq() < self._target and self._peers:
            peer = self._peers[attempt % len(self._peers)]
            from_seq = self._head_seq() + 1
            count = min(CHUNK_BLOCKS_MAX, self._target - from_seq + 1)
            try:
                blocks = await self._fetch_chunk(peer, from_seq, count)
            except (TimeoutError, BadBlocks) as exc:
                self.bad_responses += 1
                _log.warning("block_fetch_failed", extra={"peer": peer, "reason": str(exc)})
                attempt += 1
                await asyncio.sleep(min(1.0, 0.05 * attempt))
                continue
            self.blocks_fetched += len(blocks)
            self._deliver(blocks)
            attempt += 1  # spread the load over the peers
            await self._until_applied(blocks[-1].batch.seq)
        _log.info("block_fetch_done", extra={"head": self._head_seq(), "target": self._target})

    async def _until_applied(self, seq: int) -> None:
        """Wait (bounded) until the ledger holds ``seq``: one chunk in memory at a time, and no
        re-fetch of blocks that are only queued."""
        for _ in range(APPLY_WAIT_POLLS):
            if self._head_seq() >= seq:
                return
            await asyncio.sleep(APPLY_WAIT_POLL_S)

    async def _fetch_chunk(self, peer: str, from_seq: int, count: int) -> list[Committed]:
        loop = asyncio.get_running_loop()
        self._response = loop.create_future()
        self._send(peer, {"type": FETCH_REQUEST, "from_seq": from_seq, "count": count})
        deadline = loop.time() + self._timeout_s
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"no blocks from {peer[:12]} within {self._timeout_s}s")
            sender, message = await asyncio.wait_for(self._response, remaining)
            self._response = loop.create_future()
            if sender == peer and message.get("from_seq") == from_seq:
                # Signature checks are CPU work; pynacl releases the GIL, so the loop keeps
                # serving while a thread verifies.
                return await asyncio.to_thread(
                    verify_blocks, self._genesis, from_seq, message.get("blocks")
                )
