"""Running the audit's checks with the signature checks beside the Python work.

The audit is written as a generator of *steps*: each step does a little Python work (decode and
replay one transaction, check one block header) and yields the signatures it found, as
:data:`SigCheck` items. A :class:`SignaturePool` runs the steps and verifies what they yield,
in one of two ways:

``threads``: PyNaCl releases the GIL while libsodium verifies a signature (~55 us), so threads
verify in parallel. But a thread needs the GIL back for a moment after each signature, and a
thread running Python keeps the GIL until it blocks or its 5 ms switch interval runs out: with
a plain thread pool fed by a busy main thread the verifiers mostly wait. So every thread takes
the next step under a lock, then verifies that step's signatures with the lock released: each
alternates a short Python step with a long GIL-free verification, and the GIL changes hands
voluntarily. Still, a thread that wakes for the GIL waits for the scheduler, and one preempted
while it holds the GIL stalls the others: measured on two cores, 0.56x the raw two-thread
verify rate (against 0.75x for ``processes``).

``processes``: the calling process runs every step, gathering a batch of signatures at a time,
and ``workers - 1`` worker processes, forked when the pool opens (before any ledger is open),
verify batches and answer the positions that fail. When every worker already has a batch
waiting, the caller verifies the batch itself: so ``workers`` cores stay busy, as in the raw
two-thread rate, and no GIL is shared, so a preempted process stalls nobody. This is the
default where ``fork`` is available and the process runs no other thread (forking a threaded
process is unsafe).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.connection
import pickle
import signal
import sys
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from types import TracebackType
from typing import Any

import nacl.exceptions
from nacl.bindings import crypto_sign_open

# (signature || message, public key, reference): the reference is returned for a signature that
# does not verify, so that the caller can say which one it was.
SigCheck = tuple[bytes, bytes, Any]

WORKERS_MAX = 64
BATCH_SIZE = 64  # signatures per message to a worker process: ~3.5 ms of work
BATCHES_IN_FLIGHT_MAX = 2  # per worker process: one being verified, one waiting

_REJECTED = (nacl.exceptions.CryptoError, ValueError, TypeError)


def verify_signed(signed: bytes, public_key: bytes) -> bool:
    """Strict Ed25519 (libsodium: S < L, canonical points, no small-order key or R)."""
    try:
        crypto_sign_open(signed, public_key)
    except _REJECTED:
        return False
    return True


def can_fork() -> bool:
    """Whether worker processes can be forked safely here: POSIX ``fork``, one thread."""
    return "fork" in multiprocessing.get_all_start_methods() and threading.active_count() == 1


class SignaturePool:
    """Runs step generators (:meth:`run`) with ``workers`` signature verifiers.

    ``processes``: True forks worker processes, False uses threads, None (default) forks when
    :func:`can_fork`. Use as a context manager; the worker processes live until it exits.
    """

    def __init__(self, workers: int = 2, processes: bool | None = None) -> None:
        if not 1 <= workers <= WORKERS_MAX:
            raise ValueError(f"workers must be 1 to {WORKERS_MAX}")
        self.workers = workers
        self.processes = can_fork() if processes is None else processes
        self._conns: list[multiprocessing.connection.Connection] = []
        self._procs: list[Any] = []

    def __enter__(self) -> SignaturePool:
        if self.processes:
            context = multiprocessing.get_context("fork")
            for stream in (sys.stdout, sys.stderr):  # else a child could write them out again
                with contextlib.suppress(Exception):
                    stream.flush()
            try:
                for _ in range(self.workers - 1):  # the calling process is the last verifier
                    ours, theirs = context.Pipe()
                    proc = context.Process(
                        target=_verify_worker, args=(theirs,), name="phalanx-audit", daemon=True
                    )
                    proc.start()
                    theirs.close()
                    self._conns.append(ours)
                    self._procs.append(proc)
            except BaseException:
                self.close()
                raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.send_bytes(b"")  # asks the worker to exit
            conn.close()
        for proc in self._procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
                proc.join()
        self._conns, self._procs = [], []

    @property
    def step_txs(self) -> int:
        """How many signatures a step should gather: one, for threads that interleave steps and
        verifications finely; a batch, when the caller runs every step itself."""
        return BATCH_SIZE if self._conns else 1

    def run(self, steps: Iterator[Sequence[SigCheck]]) -> list[Any]:
        """Run every step of ``steps`` and verify every signature they yield. Returns the
        references of the signatures that do not verify, in no particular order. An exception
        raised by a step stops the run and is raised here."""
        if self._conns:
            return _run_with_processes(steps, self._conns)
        return run_steps(steps, self.workers)


# -- threads ----------------------------------------------------------------------------------


def run_steps(steps: Iterator[Sequence[SigCheck]], threads: int) -> list[Any]:
    """The ``threads`` way: ``threads`` threads (the calling one included) each take a step
    under a lock, then verify its signatures with the lock released."""
    if not 1 <= threads <= WORKERS_MAX:
        raise ValueError(f"threads must be 1 to {WORKERS_MAX}")
    lock = threading.Lock()
    failed: list[Any] = []
    errors: list[BaseException] = []
    done = False

    def work() -> None:
        nonlocal done
        verify = crypto_sign_open
        while True:
            with lock:
                if done:
                    return
                try:
                    checks = next(steps)
                except StopIteration:
                    done = True
                    return
                except BaseException as exc:
                    done = True
                    errors.append(exc)
                    return
            for signed, public_key, reference in checks:
                try:
                    verify(signed, public_key)
                except _REJECTED:
                    failed.append(reference)  # list.append is atomic under the GIL

    helpers = [
        threading.Thread(target=work, name=f"phalanx-audit-{i}", daemon=True)
        for i in range(threads - 1)
    ]
    for helper in helpers:
        helper.start()
    try:
        work()
    finally:
        with lock:
            done = True  # also when the caller's thread was interrupted: the helpers stop
        for helper in helpers:
            helper.join()
    if errors:
        raise errors[0]
    return failed


# -- processes --------------------------------------------------------------------------------


def _verify_worker(conn: multiprocessing.connection.Connection) -> None:
    """A worker process: verify each batch of ``(signed, key)`` pairs, answer the positions
    that fail; an empty message ends it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    verify = crypto_sign_open
    while True:
        try:
            data = conn.recv_bytes()
        except EOFError:
            return
        if not data:
            return
        bad = []
        for position, (signed, public_key) in enumerate(pickle.loads(data)):
            try:
                verify(signed, public_key)
            except _REJECTED:
                bad.append(position)
        conn.send_bytes(pickle.dumps(bad))


class WorkerLostError(RuntimeError):
    """A signature worker process died (killed, out of memory)."""


def _run_with_processes(
    steps: Iterator[Sequence[SigCheck]], conns: list[multiprocessing.connection.Connection]
) -> list[Any]:
    """The calling process runs the steps and is a verifier too: a batch goes to the least
    busy worker process, unless every one already holds ``BATCHES_IN_FLIGHT_MAX`` batches, and
    then the caller verifies it itself. So no core waits: ``workers - 1`` processes and the
    caller share the work as their speeds allow, with nothing to tune."""
    in_flight: list[deque[list[Any]]] = [deque() for _ in conns]  # references, per batch
    failed: list[Any] = []

    def collect(k: int) -> None:
        references = in_flight[k].popleft()
        try:
            answer = conns[k].recv_bytes()
        except (EOFError, OSError) as exc:
            raise WorkerLostError("a signature worker process exited; audit again") from exc
        failed.extend(references[position] for position in pickle.loads(answer))

    def dispatch(batch: list[SigCheck]) -> None:
        for k, conn in enumerate(conns):  # take in what is ready, without waiting
            while in_flight[k] and conn.poll():
                collect(k)
        k = min(range(len(conns)), key=lambda j: len(in_flight[j]))
        if len(in_flight[k]) >= BATCHES_IN_FLIGHT_MAX:
            verify = crypto_sign_open
            for signed, public_key, reference in batch:
                try:
                    verify(signed, public_key)
                except _REJECTED:
                    failed.append(reference)
            return
        payload = pickle.dumps([(signed, key) for signed, key, _ in batch], protocol=5)
        try:
            conns[k].send_bytes(payload)
        except OSError as exc:
            raise WorkerLostError("a signature worker process exited; audit again") from exc
        in_flight[k].append([reference for _, _, reference in batch])

    batch: list[SigCheck] = []
    try:
        for checks in steps:
            if checks:
                batch.extend(checks)
                if len(batch) >= BATCH_SIZE:
                    dispatch(batch)
                    batch = []
        if batch:
            dispatch(batch)
    finally:
        # Also after an error: every answer is read, so the pipes are clean for the next run.
        for k in range(len(conns)):
            while in_flight[k]:
                collect(k)
    return failed
