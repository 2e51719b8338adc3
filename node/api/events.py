"""What the node tells its HTTP clients when a block is executed.

* :class:`CommitWaiters`: ``POST /v1/tx?wait=commit`` parks here until the runtime calls
  :meth:`CommitWaiters.notify_committed` for the block holding the transaction.
* :class:`EventHub`: the ``GET /v1/events`` fan-out. Every subscriber has a bounded queue; a
  subscriber that falls ``queue_max`` events behind is disconnected (it may reconnect with
  ``?from_seq=`` and replay from the ledger) rather than slowing the node or growing memory.

Both are used from the event loop's thread only.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

WAITERS_MAX_DEFAULT = 100_000
SUBSCRIBERS_MAX_DEFAULT = 1_000
QUEUE_MAX_DEFAULT = 1_024

_log = logging.getLogger("phalanx.events")


class TooManyWaiters(Exception):
    """More clients wait for commits than the node keeps; answer without waiting."""


class CommitWaiters:
    """Clients waiting for their transaction to be committed, keyed by ``tx_id``."""

    def __init__(self, waiters_max: int = WAITERS_MAX_DEFAULT) -> None:
        self._waiters_max = waiters_max
        self._waiting: dict[str, list[asyncio.Future[int]]] = {}
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def register(self, tx_id: str) -> asyncio.Future[int]:
        """A future resolved with the seq that commits ``tx_id``. Register before checking the
        store, so that no commit can slip between the check and the wait."""
        if self._count >= self._waiters_max:
            raise TooManyWaiters(f"{self._count} clients are already waiting for commits")
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(tx_id, []).append(future)
        self._count += 1
        return future

    def unregister(self, tx_id: str, future: asyncio.Future[int]) -> None:
        futures = self._waiting.get(tx_id)
        if futures is None or future not in futures:
            return
        futures.remove(future)
        self._count -= 1
        if not futures:
            del self._waiting[tx_id]

    async def wait(self, future: asyncio.Future[int], tx_id: str, timeout_s: float) -> int | None:
        """The seq that committed ``tx_id``, or None after ``timeout_s`` (or on :meth:`close`)."""
        try:
            seq = await asyncio.wait_for(asyncio.shield(future), timeout_s)
        except TimeoutError:
            return None
        finally:
            self.unregister(tx_id, future)
        return seq if seq > 0 else None

    def close(self) -> None:
        """Wake every waiter with "not committed" (the node is stopping)."""
        waiting, self._waiting, self._count = self._waiting, {}, 0
        for futures in waiting.values():
            for future in futures:
                if not future.done():
                    future.set_result(0)

    def notify_committed(self, seq: int, tx_ids: Iterable[str]) -> None:
        """Called by the runtime after executing the block at ``seq``."""
        if not self._waiting:
            return
        for tx_id in tx_ids:
            futures = self._waiting.pop(tx_id, None)
            if futures is None:
                continue
            self._count -= len(futures)
            for future in futures:
                if not future.done():
                    future.set_result(seq)


class Subscription:
    """One ``/v1/events`` client: a bounded queue of events; None in it means "disconnect"."""

    def __init__(self, queue_max: int) -> None:
        self.queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(maxsize=queue_max + 1)
        self.queue_max = queue_max
        self.overflowed = False

    def offer(self, event: dict[str, Any]) -> bool:
        """Queue ``event``; False (and a disconnect marker) if the subscriber is too slow."""
        if self.overflowed:
            return False
        if self.queue.qsize() >= self.queue_max:
            self.overflowed = True
            self.queue.put_nowait(None)  # the one slot kept free for the marker
            return False
        self.queue.put_nowait(event)
        return True

    def close(self) -> None:
        if not self.overflowed:
            self.overflowed = True
            self.queue.put_nowait(None)


class EventHub:
    """Fans each block event out to every subscriber's bounded queue."""

    def __init__(
        self,
        queue_max: int = QUEUE_MAX_DEFAULT,
        subscribers_max: int = SUBSCRIBERS_MAX_DEFAULT,
    ) -> None:
        self.queue_max = queue_max
        self.subscribers_max = subscribers_max
        self._subscribers: set[Subscription] = set()
        self.disconnected_slow = 0  # subscribers dropped for falling behind

    def __len__(self) -> int:
        return len(self._subscribers)

    @property
    def full(self) -> bool:
        return len(self._subscribers) >= self.subscribers_max

    def subscribe(self) -> Subscription:
        if self.full:
            raise TooManyWaiters(f"{len(self._subscribers)} event subscribers already")
        subscription = Subscription(self.queue_max)
        self._subscribers.add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        self._subscribers.discard(subscription)

    def close_all(self) -> None:
        """Disconnect every subscriber (the node is stopping)."""
        for subscription in self._subscribers:
            subscription.close()
        self._subscribers.clear()

    def publish(self, event: dict[str, Any]) -> None:
        """``event`` is ``{"seq", "hash", "tx_count", "tx_ids"}`` of a newly executed block."""
        slow = [s for s in self._subscribers if not s.offer(event)]
        for subscription in slow:
            self._subscribers.discard(subscription)
            self.disconnected_slow += 1
            _log.info("events_subscriber_too_slow", extra={"queue_max": self.queue_max})
